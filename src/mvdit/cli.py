"""The `mvdit` command line: one typer app, each subcommand a thin call into a module.

User mistakes (MvditError) print one line and exit with status 2; nothing half-written is left.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mvdit import MvditError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="mvdit: small, fast text-to-video diffusion transformers.")


def fail(msg: str) -> None:
    typer.echo(f"error: {msg}", err=True)
    raise typer.Exit(2)


data_app = typer.Typer(no_args_is_help=True, help="Datasets: write example clips.")
app.add_typer(data_app, name="data")


@data_app.command("shapes")
def data_shapes(
    out: Annotated[Path, typer.Option("--out", "-o", help="directory for the mp4s, contact_sheet.png and captions.json")] = Path("shapes_examples"),
    n: Annotated[int, typer.Option("-n", help="number of clips")] = 8,
    frames: Annotated[int, typer.Option(help="frames per clip")] = 9,
    height: Annotated[int, typer.Option(help="frame height")] = 32,
    width: Annotated[int, typer.Option(help="frame width")] = 32,
    fps: Annotated[float, typer.Option(help="frames per second")] = 8.0,
    seed: Annotated[int, typer.Option(help="dataset seed")] = 0,
    split: Annotated[str, typer.Option(help="train, val or holdout")] = "train",
    holdout: Annotated[list[str] | None, typer.Option(help="held-out 'colour shape motion' combination (repeatable)")] = None,
) -> None:
    """Write example clips of the procedural `shapes` dataset (mp4 + captioned contact sheet)."""
    from mvdit.data.shapes import write_examples

    paths = write_examples(out, n, frames, height, width, fps, seed, split=split, holdout=holdout or ())
    typer.echo(f"wrote {n} clips of {frames}x{height}x{width} to {out} (contact sheet: {paths[-2]})")


def main() -> None:
    try:
        app()
    except MvditError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

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

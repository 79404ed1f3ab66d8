"""Studies: each runs a stage several ways on one start and writes one table, CSV and plot
(`mvdit study vae`, `mvdit study prune`, `mvdit study distill`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mvdit import MvditError
from mvdit.io import claim_output_dir, write_record


def raise_for_failed_clips(rows: Sequence[dict], where: Path) -> None:
    """After a study has written everything: one line, exit 2, when any row's sampling produced
    NaN/inf clips (they were scored as what they show, and counted in `where`)."""
    bad = {r["row"]: r["failed_clips"] for r in rows if r.get("failed_clips")}
    if bad:
        raise MvditError(
            f"{sum(bad.values())} clips went NaN/inf while sampling ({', '.join(bad)}); the study "
            f"was written and counts them under failed_clips in {where}"
        )


def claim_study_dir(out: str | Path, command: str) -> Path:
    """A study's directory: new, empty, or this study's own from an earlier (resumed) run; it is
    marked as the study's at once, so a rerun continues where it stopped."""
    out = claim_output_dir(out, command=command)
    out.mkdir(parents=True, exist_ok=True)
    write_record(out, command)
    return out

"""Rows of docs/student_quality.md from `mvdit eval` directories: every attribute with its 95%
bootstrap interval over prompts, then shape accuracy by the shape asked.

    python scripts/student_quality_rows.py LABEL=DIR [LABEL=DIR ...]
"""

import json
import sys
from pathlib import Path

ATTRS = ("overall", "colour", "count", "shape", "motion", "speed")
SHAPES = ("circle", "square", "triangle", "star")


def row(label: str, run: Path) -> str:
    ev = json.loads((run / "eval.json").read_text())
    f, nfe = ev["faithfulness"], ev["sampler"]["nfe"]
    cells = []
    for a in ATTRS:
        lo_hi = (f.get("ci95") or {}).get(a)
        ci = f" [{lo_hi[0]:.2f}, {lo_hi[1]:.2f}]" if lo_hi else ""
        cells.append(f"{f['all'][a]:.3f}{ci}")
    by = f["by_shape"]
    cells += [f"{by[s]['accuracy']:.2f}" if s in by else "–" for s in SHAPES]
    return f"| {label} | {nfe} | " + " | ".join(cells) + " |"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        label, _, path = arg.partition("=")
        print(row(label, Path(path)))

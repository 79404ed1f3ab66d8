"""`mvdit report`: several models' eval and bench results on one page, with a speed-quality plot.

Each RUN_DIR is a directory holding eval.json (from `mvdit eval`) and/or bench.json (from
`mvdit bench`), directly or one level down (e.g. RUN/eval/eval.json and RUN/bench/bench.json).
A bench.json with several targets contributes the one whose name matches the run (else its
first). The plot puts seconds per clip (log scale) against prompt faithfulness, or against the
FVD analogue when the prompts were not shapes captions.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from mvdit import MvditError
from mvdit.bench.measure import si
from mvdit.eval.evaluate import faithfulness_splits
from mvdit.io import atomic_write_text, save_figure


def _find(run: Path, name: str) -> dict | None:
    for path in (run / name, *sorted(run.glob(f"*/{name}"))):
        if path.is_file():
            try:
                return json.loads(path.read_text())
            except json.JSONDecodeError as e:
                raise MvditError(f"{path} is not valid JSON ({e.msg})") from None
    return None


def collect(run: str | Path) -> dict:
    """The numbers of one run directory that the report shows (None where a file is missing)."""
    run = Path(run)
    if not run.is_dir():
        raise MvditError(f"run directory {run} does not exist")
    ev, bench = _find(run, "eval.json"), _find(run, "bench.json")
    if ev is None and bench is None:
        raise MvditError(
            f"{run} has neither eval.json nor bench.json: run `mvdit eval` or `mvdit bench` into it"
        )
    row: dict = {"name": run.name, "path": str(run)}
    if ev is not None:
        f = ev.get("faithfulness")
        row["faithfulness"] = f["all"]["overall"] if f else None
        row["faithfulness_splits"] = {
            k: v["overall"] for k, v in faithfulness_splits(f or {}).items() if k != "all"
        }
        row["vbench"] = {k: v["value"] for k, v in ev["vbench"].items()}
        row["labels"] = {k: v["label"] for k, v in ev["vbench"].items()}
        d = ev.get("distribution")
        row["fvd_analogue"] = d["value"] if d else None
        row["nfe"] = ev["sampler"]["nfe"]
        row["eval_seconds_per_clip"] = ev["generate_seconds_per_clip"]
    if bench is not None:
        targets = bench["targets"]
        t = next(
            (t for t in targets if Path(t["name"]).name == run.name or run.name in t["name"]),
            targets[0],
        )
        row["bench"] = {
            "target": t["name"], "params": t["params"]["dit"], "flops_per_step": t["flops_per_step"],
            "dit_step_s": t["latency_s"]["dit_step"], "seconds_per_clip": t["end_to_end"]["seconds"],
            "measured": t["end_to_end"]["measured"], "output_fps": t["end_to_end"]["output_fps"],
            "fraction_of_peak": t["dit_fraction_of_peak"], "device": bench["machine"]["device"],
            "threads": bench["machine"]["threads"], "nfe": t["sampler"]["nfe"],
        }  # fmt: skip
    return row


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def report_markdown(rows: Sequence[dict], plot: str | None) -> str:
    lines = ["# Models compared", ""]
    lines += [
        "| model | DiT params | FLOPs/step | NFE | s/clip | out FPS | DiT % of GEMM peak | faithfulness | FVD analogue | flickering | smoothness | dynamic | subject | background |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, v = r.get("bench"), r.get("vbench", {})
        if b is None:
            params = flops = fps = peak = "–"
            speed, nfe = _f(r.get("eval_seconds_per_clip"), 2), r.get("nfe", "–")
        else:
            params, flops, fps, peak = (
                f"{b['params'] / 1e6:.1f}M",
                si(b["flops_per_step"]),
                f"{b['output_fps']:.2f}",
                f"{100 * b['fraction_of_peak']:.0f}%",
            )
            speed, nfe = (
                _f(b["seconds_per_clip"], 2) + ("" if b["measured"] else "*"),
                r.get("nfe") or b["nfe"],
            )
        dims = (
            "temporal_flickering",
            "motion_smoothness",
            "dynamic_degree",
            "subject_consistency",
            "background_consistency",
        )
        lines.append(
            f"| {r['name']} | {params} | {flops} | {nfe} | {speed} | {fps} | {peak} | {_f(r.get('faithfulness'))} | "
            f"{_f(r.get('fvd_analogue'), 2)} | " + " | ".join(_f(v.get(k)) for k in dims) + " |"
        )
    splits = sorted({k for r in rows for k in r.get("faithfulness_splits", {})})
    if splits:
        lines += [
            "",
            "Prompt faithfulness per split:",
            "",
            "| model | " + " | ".join(splits) + " |",
            "|---" * (len(splits) + 1) + "|",
        ]
        for r in rows:
            s = r.get("faithfulness_splits", {})
            lines.append(f"| {r['name']} | " + " | ".join(_f(s.get(k)) for k in splits) + " |")
    labels = next((r["labels"] for r in rows if "labels" in r), None)
    lines += [
        "",
        "s/clip: end-to-end seconds per clip from `mvdit bench` (* = estimated from stage timings), "
        "else the generation time measured by `mvdit eval`. Faithfulness: the project's own metric "
        "(own). FVD analogue: substitute.",
    ]
    if labels:
        lines.append(
            "VBench-style dimensions: "
            + ", ".join(f"{k.replace('_', ' ')} ({v})" for k, v in labels.items())
            + "."
        )
    if plot:
        lines += ["", f"![speed vs quality]({plot})"]
    return "\n".join(lines) + "\n"


def speed_quality_plot(rows: Sequence[dict], path: Path) -> bool:
    """Seconds per clip (log x) against faithfulness (or the FVD analogue). False if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    use_faith = any(r.get("faithfulness") is not None for r in rows)
    key = "faithfulness" if use_faith else "fvd_analogue"
    pts = []
    for r in rows:
        speed = r["bench"]["seconds_per_clip"] if "bench" in r else r.get("eval_seconds_per_clip")
        if speed is not None and r.get(key) is not None:
            pts.append((speed, r[key], r["name"]))
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(5.5, 4), dpi=120)
    for x, y, name in pts:
        ax.scatter([x], [y], s=40)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=9)
    ax.set_xscale("log")
    ax.margins(x=0.2, y=0.15)  # room for the labels beside the outermost points
    ax.set_xlabel("seconds per clip (lower is faster)")
    ax.set_ylabel(
        "prompt faithfulness (higher is better)" if use_faith else "FVD analogue (lower is better)"
    )
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return True


def write_report(runs: Sequence[str | Path], out: str | Path) -> Path:
    """Write OUT (markdown) and OUT with .png (the plot) for the given run directories."""
    if not runs:
        raise MvditError("give at least one run directory")
    out = Path(out)
    if out.suffix.lower() != ".md":
        raise MvditError(f"--out must end in .md, got {out}")
    rows = [collect(r) for r in runs]
    out.parent.mkdir(parents=True, exist_ok=True)
    png = out.with_suffix(".png")
    plotted = speed_quality_plot(rows, png)
    atomic_write_text(out, report_markdown(rows, png.name if plotted else None))
    return out

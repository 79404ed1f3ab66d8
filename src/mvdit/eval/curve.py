"""Prompt faithfulness along a training run (`mvdit eval-curve RUN -p PROMPTS`).

Every checkpoint a run kept (RUN/checkpoints/step_*) is loaded into the run's exported pipeline
(RUN/model: its config, VAE and text encoder), generates the same clips as `mvdit eval` would
(same prompts, seeds and sampler) and is scored by the shapes detector. The curve answers "how
long must I train before motion follows the prompt?" without exporting a model per checkpoint.

Only the detector runs (no VBench dimensions, no feature network), so a checkpoint costs about
as much as generating its clips. Finished checkpoints are kept in OUT/curve.json and reused when
the command is rerun with the same prompts and sampler on the same checkpoint, so an interrupted
curve resumes and a retrained run is scored again.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from mvdit import MvditError
from mvdit.data.shapes import parse_caption
from mvdit.eval.evaluate import faithfulness, faithfulness_splits, read_prompts, sample_prompts
from mvdit.io import (
    atomic_write_text,
    load_state_strict,
    load_tensors,
    read_json,
    save_figure,
    write_json,
)
from mvdit.pipeline import Pipeline

ATTRS = ("overall", "count", "colour", "shape", "motion", "speed", "background")
_STEP = re.compile(r"step_(\d+)$")


def run_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, directory) of every checkpoint of a run, in step order."""
    ck = run_dir / "checkpoints"
    found = sorted(
        (int(m.group(1)), p)
        for p in ck.glob("step_*")
        if p.is_dir() and (m := _STEP.search(p.name))
    )
    if not found:
        raise MvditError(
            f"{ck} holds no checkpoints: train with `mvdit train` (and --set run.keep_checkpoints=N to keep N of them)"
        )
    return found


def checkpoint_curve(
    run_dir: str | Path,
    prompt_files: Sequence[str | Path],
    out: str | Path,
    *,
    seeds: int = 1,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    weights: str = "ema",
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Score every checkpoint of a run; writes OUT/curve.json, curve.md and curve.png."""
    if seeds < 1:
        raise MvditError(f"--seeds must be at least 1, got {seeds}")
    if weights not in ("ema", "model"):
        raise MvditError(f"--weights must be 'ema' or 'model', got '{weights}'")
    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "model").is_dir():
        raise MvditError(
            f"{run_dir} has no exported model/ directory: point at the out_dir of a `mvdit train` run"
        )
    ckpts = run_checkpoints(run_dir)
    rows = [r for f in prompt_files for r in read_prompts(f)]
    for r in rows:
        try:
            parse_caption(r["prompt"])
        except MvditError as e:
            raise MvditError(
                f"the curve scores shapes captions only; '{r['prompt']}': {e}"
            ) from None
    pipe = Pipeline.from_pretrained(run_dir / "model", device=device)
    settings = {
        "prompts": [r["prompt"] for r in rows],
        "splits": [r["split"] for r in rows],
        "seeds": seeds,
        "seed": seed,
        **pipe.sampling(steps, guidance).summary(),
        "weights": weights,
    }
    done: dict[int, dict] = {}
    if (out / "curve.json").is_file():
        prev = read_json(out / "curve.json")
        if prev.get("settings") == settings:
            done = {p["step"]: p for p in prev.get("points", [])}

    points = []
    bar = tqdm(ckpts, desc="checkpoints", disable=not progress, dynamic_ncols=True)
    for step, path in bar:
        # a point is reused only for the same checkpoint: its state.json holds the run's config
        # and optimizer settings, so a retrained run under another config is scored again
        stamp = hashlib.sha1((path / "state.json").read_bytes()).hexdigest()[:16]
        if done.get(step, {}).get("checkpoint") == stamp:
            points.append(done[step])
            continue
        bar.set_postfix(step=step)
        state = load_tensors(path / f"{weights}.safetensors")
        load_state_strict(pipe.dit, state, str(path / f"{weights}.safetensors"))
        videos, clip_rows = [], []
        for _, row, g, _ in sample_prompts(pipe, rows, seeds, steps, guidance, seed):
            videos += list(g.videos.numpy())
            clip_rows += [row] * seeds
        f = faithfulness(videos, clip_rows)
        keep = ("clips", *ATTRS)
        point = {"step": step, "checkpoint": stamp}
        point |= {s: {k: v[k] for k in keep} for s, v in faithfulness_splits(f).items()}
        point["by_motion"] = {m: r["accuracy"] for m, r in f["by_motion"].items()}
        points.append(point)
        _write(out, run_dir, settings, points)
    bar.close()
    return _write(out, run_dir, settings, points)


def _write(out: Path, run_dir: Path, settings: dict, points: list[dict]) -> dict:
    result = {"run": str(run_dir), "settings": settings, "points": points}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "curve.json", result)
    atomic_write_text(out / "curve.md", curve_markdown(result))
    plot_curve(result, out / "curve.png")
    return result


def _cell(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def curve_markdown(result: dict) -> str:
    s = result["settings"]
    lines = [
        f"# Prompt faithfulness along `{result['run']}`",
        "",
        f"{len(s['prompts'])} prompts × {s['seeds']} samples per checkpoint ({s['weights']} weights); "
        f"{s['steps']} steps, guidance {s['guidance']}, seed {s['seed']}. Detector accuracies over all prompts:",
        "",
        "| step | " + " | ".join(ATTRS) + " |",
        "|---:|" + "---:|" * len(ATTRS),
    ]
    for p in result["points"]:
        lines.append(f"| {p['step']} | " + " | ".join(_cell(p["all"][k]) for k in ATTRS) + " |")
    splits = sorted(
        {
            s
            for p in result["points"]
            for s in p
            if s not in ("step", "checkpoint", "all", "by_motion")
        }
    )
    if len(splits) > 1:
        lines += [
            "",
            "Motion accuracy by prompt file:",
            "",
            "| step | " + " | ".join(splits) + " |",
            "|---:|" + "---:|" * len(splits),
        ]
        for p in result["points"]:
            lines.append(
                f"| {p['step']} | "
                + " | ".join(_cell(p[s]["motion"]) if s in p else "–" for s in splits)
                + " |"
            )
    motions = sorted({m for p in result["points"] for m in p.get("by_motion", {})})
    if motions:
        lines += ["", "Motion accuracy by the motion asked for (one-object prompts):", ""]
        lines += ["| step | " + " | ".join(motions) + " |", "|---:|" + "---:|" * len(motions)]
        for p in result["points"]:
            bm = p.get("by_motion", {})
            lines.append(f"| {p['step']} | " + " | ".join(_cell(bm.get(m)) for m in motions) + " |")
    return "\n".join(lines) + "\n"


def plot_curve(result: dict, png: Path) -> None:
    import matplotlib  # deferred: seconds of import that generating does not need

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = result["points"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    steps = [p["step"] for p in pts]
    for k in ATTRS:
        ys = [p["all"][k] for p in pts]
        if all(y is None for y in ys):
            continue
        ax.plot(steps, [float("nan") if y is None else y for y in ys], marker="o", ms=3,
                lw=2.2 if k in ("motion", "overall") else 1.2, label=k)  # fmt: skip
    ax.set_xlabel("training step")
    ax.set_ylabel("detector accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2, loc="lower right")
    ax.set_title(f"prompt faithfulness along {Path(result['run']).name}", fontsize=10)
    save_figure(fig, png, dpi=110)


def curve_summary(result: dict, out: str | Path) -> str:
    """What `mvdit eval-curve` prints: one line a checkpoint, then the files."""
    lines = []
    for p in result["points"]:
        a = p["all"]
        lines.append(f"step {p['step']:>7}: overall {a['overall']:.2f}  colour {a['colour']:.2f}  "
                     f"shape {a['shape']:.2f}  motion {a['motion']:.2f}")  # fmt: skip
    return "\n".join([*lines, f"wrote {Path(out) / 'curve.md'}, curve.json, curve.png"])

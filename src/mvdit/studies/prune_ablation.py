"""The pruning ablation (`mvdit study prune`): the paper's Table 4, extended to every level.

One teacher, one parameter budget (default: keep 55% of the DiT's parameters). Variants:
tri-level, block-only, head-only and FFN-only search with the KD criterion, and tri-level with
magnitude and first-order Taylor scores. Each pruned model is measured right after pruning and
after the same KD recovery budget (`mvdit kd`): parameters, FLOPs per step, measured DiT latency,
the KD loss on a held-out calibration set (other prompts and noise seeds than the search used),
and the shapes detector's faithfulness (overall, colour, shape, motion) of its generated clips.

Resumable: each variant lives in OUT/<variant>/ (pruned/, kd/, and rows.json once measured), and
a rerun skips what is complete.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import torch
from pydantic import Field

from mvdit import MvditError
from mvdit.compress.importance import CALIBRATION_TIMESTEPS, LEVELS, Calibration, reference_outputs
from mvdit.compress.search import BudgetUnreachable, parse_budget
from mvdit.config import Strict
from mvdit.eval.evaluate import EVAL_PROMPTS, PARAPHRASE_PROMPTS, read_prompts
from mvdit.io import atomic_write_text, read_json, save_figure, write_json
from mvdit.pipeline import Pipeline
from mvdit.results import Result
from mvdit.stages import kd as kd_stage
from mvdit.stages.prune import (
    CalibrationConfig,
    PruneConfig,
    calibration_for,
    latency_and_memory,
    run_prune,
    sampled_faithfulness,
)
from mvdit.studies import claim_study_dir, raise_for_failed_clips

VARIANTS: dict[str, tuple[list[str], str]] = {
    "tri-level-kd": (list(LEVELS), "kd"),
    "block-kd": (["block"], "kd"),
    "head-kd": (["head", "cross_head"], "kd"),
    "ffn-kd": (["ffn"], "kd"),
    "tri-level-magnitude": (list(LEVELS), "magnitude"),
    "tri-level-taylor": (list(LEVELS), "taylor"),
}


def heldout_kd(teacher: Pipeline, student: Pipeline, calib: Calibration, batch: int = 40) -> float:
    """Velocity MSE between teacher and student on a calibration set."""
    ref = reference_outputs(teacher.dit, calib, None, batch)
    got = reference_outputs(student.dit, calib, None, batch)
    err = sum(
        float((a[0] - b[0]).pow(2).mean()) * a[0].shape[0] for a, b in zip(ref, got, strict=True)
    )
    return err / len(calib)


def _measure(
    teacher: Pipeline, model_dir: Path, calib: Calibration, rows: list[dict], seeds: int
) -> dict:
    pipe = Pipeline.from_pretrained(model_dir)
    lat, mem = latency_and_memory(pipe.dit, calib)
    out = {
        "params": sum(p.numel() for p in pipe.dit.parameters()),
        "flops": pipe.dit.flops_per_step(
            pipe.dit.config.tokens(calib.x_t.shape[-3:]), calib.text.shape[1]
        ),
        "latency_ms": round(1000 * lat, 3),
        "heldout_kd": heldout_kd(teacher, pipe, calib),
    }
    f = sampled_faithfulness(pipe, rows, seeds)
    if f is not None:
        out |= {k: f["all"][k] for k in ("overall", "colour", "shape", "motion", "count")}
        out["failed_clips"] = f["failed_clips"]
    return out


def run_prune_study(cfg: StudyPruneConfig, *, progress: bool = True) -> list[dict]:
    """Prune, measure, recover and measure again, per variant; write study.{md,csv,json,png}."""
    teacher_dir, kd_config, budget = cfg.teacher, cfg.kd_config, cfg.budget
    recovery_steps, calib_prompts, heldout_prompts = (
        cfg.recovery_steps,
        cfg.calib_prompts,
        cfg.heldout_prompts,
    )
    eval_prompts, eval_seeds, variants = cfg.prompts, cfg.seeds, cfg.variants
    out_dir = claim_study_dir(cfg.out, "study prune")
    variants = list(variants or VARIANTS)
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise MvditError(f"unknown variant(s) {bad}; choose from {', '.join(VARIANTS)}")
    b = parse_budget(budget)
    teacher = Pipeline.from_pretrained(teacher_dir)
    # held out from the search: other prompts and other noise seeds
    calib, _ = calibration_for(
        teacher, heldout_prompts, 8, 2, CALIBRATION_TIMESTEPS, seed_offset=100
    )
    rows = [r for f in eval_prompts for r in read_prompts(f)]
    base_path = out_dir / "teacher.json"
    if not base_path.is_file():
        write_json(base_path, _measure(teacher, Path(teacher_dir), calib, rows, eval_seeds))
    base = read_json(base_path)
    results = []
    for name in variants:
        vdir = out_dir / name
        done = vdir / "rows.json"
        if done.is_file():
            results.append(read_json(done))
            continue
        levels, criterion = VARIANTS[name]
        t0 = time.perf_counter()
        if not (vdir / "pruned" / "prune.json").is_file():
            try:
                run_prune(
                    PruneConfig(
                        model=str(teacher_dir), out=str(vdir / "pruned"), budget=budget,
                        levels=levels, criterion=criterion,
                        calibration=CalibrationConfig(prompts=str(calib_prompts)),
                    ),
                    progress=progress,
                )  # fmt: skip
            except BudgetUnreachable as e:  # a row saying so; the other variants go on
                row = {"variant": name, "levels": levels, "criterion": criterion,
                       "budget": str(b), "unreachable": str(e)}  # fmt: skip
                write_json(done, row)
                results.append(row)
                continue
        prune_s = time.perf_counter() - t0
        before = _measure(teacher, vdir / "pruned", calib, rows, eval_seeds)
        t0 = time.perf_counter()
        cfg = kd_stage.load_kd_config(kd_config, changes={
            "kd.student": str(vdir / "pruned"), "kd.teacher": str(teacher_dir),
            "optim.steps": recovery_steps, "run.out_dir": str(vdir / "kd"),
        })  # fmt: skip
        summary_path = vdir / "kd" / "summary.json"
        if not (summary_path.is_file() and read_json(summary_path).get("steps") == recovery_steps):
            kd_stage.train_kd(cfg, resume=(vdir / "kd" / "checkpoints").is_dir(), progress=progress)
        kd_s = time.perf_counter() - t0
        after = _measure(teacher, vdir / "kd" / "model", calib, rows, eval_seeds)
        row = {
            "variant": name,
            "levels": levels,
            "criterion": criterion,
            "budget": str(b),
            "recovery_steps": recovery_steps,
            "before": before,
            "after": after,
            "seconds": {"prune": round(prune_s, 1), "kd": round(kd_s, 1)},
        }
        write_json(done, row)
        results.append(row)
    report = {"teacher": str(teacher_dir), "teacher_scores": base, "rows": results,
              "eval_clips": len(rows) * eval_seeds, "threads": torch.get_num_threads()}  # fmt: skip
    write_json(out_dir / "study.json", report)
    atomic_write_text(out_dir / "study.md", study_markdown(report))
    _write_csv(out_dir / "study.csv", report)
    plot_study(report, out_dir / "study.png")
    raise_for_failed_clips(
        [{"row": f"{r['variant']}/{k}", "failed_clips": r[k].get("failed_clips", 0)}
         for r in results for k in ("before", "after") if k in r],
        out_dir / "study.json",
    )  # fmt: skip
    return results


COLUMNS = ("params", "flops", "latency_ms", "heldout_kd", "overall", "colour", "shape", "motion")


def _cell(x) -> str:
    if x is None:
        return "–"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.3g}" if abs(x) < 0.01 or abs(x) >= 100 else f"{x:.3f}"


def study_markdown(report: dict) -> str:
    t = report["teacher_scores"]
    lines = [
        f"# Pruning ablation on {report['teacher']}",
        "",
        f"Faithfulness over {report['eval_clips']} generated clips per model; held-out KD loss: velocity "
        "MSE against the teacher on prompts and noise seeds the search did not see.",
        "",
        "| model | when | " + " | ".join(COLUMNS) + " | prune s | KD s |",
        "|---|---|" + "---:|" * (len(COLUMNS) + 2),
        "| teacher | – | " + " | ".join(_cell(t.get(c)) for c in COLUMNS) + " | – | – |",
    ]
    for r in report["rows"]:
        if "unreachable" in r:
            lines.append(f"| {r['variant']} | not reachable: {r['unreachable']} |" + " |" * 11)
            continue
        for when in ("before", "after"):
            m = r[when]
            label = "pruned" if when == "before" else f"after {r['recovery_steps']} KD steps"
            secs = (
                f"{r['seconds']['prune']:.0f} | {r['seconds']['kd']:.0f}"
                if when == "after"
                else "– | –"
            )
            lines.append(
                f"| {r['variant']} | {label} | "
                + " | ".join(_cell(m.get(c)) for c in COLUMNS)
                + f" | {secs} |"
            )
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, report: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["variant", "when", *COLUMNS])
        w.writerow(["teacher", "", *(report["teacher_scores"].get(c) for c in COLUMNS)])
        for r in report["rows"]:
            if "unreachable" in r:
                w.writerow([r["variant"], "unreachable", *([None] * len(COLUMNS))])
                continue
            for when in ("before", "after"):
                w.writerow([r["variant"], when, *(r[when].get(c) for c in COLUMNS)])
    tmp.replace(path)


def plot_study(report: dict, png: Path) -> None:
    """Held-out KD loss per variant (pruned, after recovery), and the detector's colour, shape and
    motion after recovery against the teacher's (dashed)."""
    import matplotlib  # deferred: seconds of import that generating does not need

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if "unreachable" not in r]
    names = [r["variant"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    x = range(len(rows))
    ax = axes[0]
    for k, (when, colour) in enumerate((("before", "tab:gray"), ("after", "tab:blue"))):
        vals = [r[when]["heldout_kd"] for r in rows]
        label = (
            "pruned"
            if when == "before"
            else f"after {rows[0]['recovery_steps'] if rows else 0} KD steps"
        )
        ax.bar([i + 0.4 * k - 0.2 for i in x], vals, width=0.4, color=colour, label=label)
    ax.set_yscale("log")
    ax.set_ylabel("held-out KD loss (log)")
    ax = axes[1]
    attrs = ("colour", "shape", "motion")
    teacher = report["teacher_scores"]
    for k, a in enumerate(attrs):
        vals = [r["after"].get(a) or 0 for r in rows]
        xs = [i + 0.27 * (k - 1) for i in x]
        ax.bar(xs, vals, width=0.27, color=f"C{k}", label=f"{a} after KD")
        if teacher.get(a) is not None:
            for xx in xs:
                ax.plot([xx - 0.13, xx + 0.13], [teacher[a]] * 2, color="k", ls="--", lw=1)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("detector accuracy (dashed: teacher)")
    for ax in axes:
        ax.set_xticks(list(x), names, rotation=25, ha="right", fontsize=8)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=8)
    budget = rows[0]["budget"] if rows else ""
    fig.suptitle(
        f"pruning to {budget}: each variant at the same budget, before and after recovery",
        fontsize=10,
    )
    save_figure(fig, png, dpi=100)


class StudyPruneConfig(Strict):
    """[study_prune]: `mvdit study prune`"""

    teacher: str = Field(default="runs/tiny/model", description="pipeline directory to prune")
    out: str = Field(default="runs/study-prune", description="study directory; rerun to resume")
    kd_config: str = Field(
        default="configs/kd-tiny.toml",
        description="KD config of the recovery (its data and optim sections; kd.student is set per variant)",
    )
    budget: str = Field(default="params=0.55", description="the budget every variant is pruned to")
    recovery_steps: int = Field(
        default=500, ge=0, description="KD steps per variant (the same for all)"
    )
    variants: list[str] = Field(
        default_factory=lambda: list(VARIANTS), description="variants to run"
    )
    prompts: list[str] = Field(
        default_factory=lambda: [EVAL_PROMPTS],
        description="prompt files of the faithfulness columns",
    )
    seeds: int = Field(default=1, ge=1, description="clips per prompt for the faithfulness columns")
    calib_prompts: str = Field(
        default=EVAL_PROMPTS, description="prompts of the search's calibration set"
    )
    heldout_prompts: str = Field(
        default=PARAPHRASE_PROMPTS, description="prompts of the held-out KD loss (other seeds too)"
    )


class StudyPruneSections(Strict):
    study_prune: StudyPruneConfig = Field(default_factory=StudyPruneConfig)


def study_prune(cfg: StudyPruneConfig) -> Result:
    rows = run_prune_study(cfg)
    return Result({"rows": rows}, lambda r: _study_lines(r["rows"], Path(cfg.out)), Path(cfg.out))


def _study_lines(rows: list[dict], out: Path) -> str:
    lines = []
    for r in rows:
        if "unreachable" in r:
            lines.append(f"{r['variant']:>20}  not reachable: {r['unreachable']}")
            continue
        b, a = r["before"], r["after"]
        lines.append(
            f"{r['variant']:>20}  params {b['params']:>9,}  held-out KD {b['heldout_kd']:.4g} -> {a['heldout_kd']:.4g}"
            + (f"  overall {b['overall']:.2f} -> {a['overall']:.2f}" if "overall" in a else "")
        )
    return "\n".join([*lines, f"wrote {out / 'study.md'}, study.csv, study.json, study.png"])

"""The few-step comparison (`mvdit study distill`): what adversarial distillation buys.

Same prompts (the shipped prompt files), same seeds, every row scored by `mvdit eval`:
- the teacher at 40 steps with CFG (the quality reference), at 4 and 2 steps with and without CFG;
- the starting model (the student's initialisation, when it is not the teacher) at 4 steps;
- the distilled 4-step student, a 2-step student, and the ablations: a partly trainable
  discriminator backbone, per-token heads, and the run without the adversarial term.

Students are trained by the study from one distillation config (`mvdit distill`'s), each row
overriding a few keys, into OUT/students/<row>; a row's evaluation goes to OUT/rows/<row>. A rerun
skips what is complete (and resumes an interrupted training). Then every row's end-to-end time
per clip (text encoding + sampling + decode, one clip, the median of interleaved repeats, all
rows in one pass so they share the machine's load) is measured, and the table (study.md,
study.csv, study.json) and the figure of sample grids side by side (study.png) are written.
"""

from __future__ import annotations

import csv
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import Field

from mvdit import MvditError
from mvdit.bench.measure import load_average
from mvdit.config import Strict
from mvdit.eval.evaluate import SHIPPED_PROMPTS, EvalConfig, evaluate
from mvdit.io import atomic_write_text, read_json, save_figure, write_json
from mvdit.pipeline import Pipeline
from mvdit.results import Result
from mvdit.stages import distill as distill_stage
from mvdit.studies import claim_study_dir, raise_for_failed_clips


@dataclass(frozen=True)
class Row:
    label: str
    model: str  # "teacher", "start" or "student"
    steps: int | None = None  # None: the model's own
    guidance: float | None = None  # None: the model's own; 1.0: no guidance
    overrides: dict = field(default_factory=dict)  # distillation config keys (students)


ROWS: dict[str, Row] = {
    "teacher-40-cfg": Row("teacher, 40 steps, CFG", "teacher", 40),
    "teacher-4-cfg": Row("teacher, 4 steps, CFG", "teacher", 4),
    "teacher-4": Row("teacher, 4 steps, no CFG", "teacher", 4, 1.0),
    "teacher-2-cfg": Row("teacher, 2 steps, CFG", "teacher", 2),
    "teacher-2": Row("teacher, 2 steps, no CFG", "teacher", 2, 1.0),
    "start-4": Row("starting model, 4 steps, no CFG", "start", 4, 1.0),
    "student-4": Row("distilled student, 4 steps", "student"),
    "student-2": Row("distilled student, 2 steps", "student", overrides={"distill.steps": 2}),
    "partial-disc": Row(
        "4 steps, last 2 backbone blocks trained",
        "student",
        overrides={"disc.trainable_blocks": 2},
    ),  # fmt: skip
    "token-head": Row("4 steps, per-token heads", "student", overrides={"disc.head": "token"}),
    "no-adv": Row("4 steps, regression only", "student", overrides={"distill.adv": 0.0}),
}
ATTRS = ("overall", "colour", "shape", "motion", "speed")


def _student(
    cfg_path: str | Path, name: str, row: Row, out: Path, user: list[str], teacher: str
) -> Path:
    run = out / "students" / name
    if (run / "summary.json").is_file() and (run / "model" / "pipeline.json").is_file():
        return run / "model"
    changes = {"distill.teacher": teacher, **row.overrides, "run.out_dir": str(run)}
    cfg = distill_stage.load_distill_config(cfg_path, user, changes)
    resume = (run / "checkpoints").is_dir()
    distill_stage.train_distill(cfg, resume=resume)
    return run / "model"


def _end_to_end(
    models: dict[str, tuple[str, int | None, float | None]], reps: int, threads: int | None
) -> tuple[dict, dict]:
    """Median seconds per clip (total and DiT) of every row, repeats interleaved across rows, at
    `threads` CPU threads (None: those in effect); and how it was timed (threads, load)."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        load_start = load_average()
        rows = _time_rows(models, reps)
        how = {
            "threads": torch.get_num_threads(), "reps": reps,
            "loadavg_start": load_start, "loadavg_end": load_average(),
        }  # fmt: skip
    finally:
        torch.set_num_threads(before)
    return rows, how


def _time_rows(models: dict[str, tuple[str, int | None, float | None]], reps: int) -> dict:
    loaded: dict[str, Pipeline] = {}  # the teacher rows share one teacher
    for m, _, _ in models.values():
        if m not in loaded:
            loaded[m] = Pipeline.from_pretrained(m)
    pipes = {k: loaded[m] for k, (m, _, _) in models.items()}
    prompt = ["a red circle moves to the left on a black background"]
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in models}
    for k, pipe in pipes.items():  # warm-up
        pipe.generate(prompt, models[k][1], models[k][2])
    for r in range(reps):
        for k, pipe in pipes.items():
            t0 = time.perf_counter()
            g = pipe.generate(prompt, models[k][1], models[k][2], seed=r)
            times[k].append((time.perf_counter() - t0, g.timings["dit"]))
    return {
        k: {
            "end_to_end_s": statistics.median(t for t, _ in v),
            "dit_s": statistics.median(d for _, d in v),
            "nfe": pipes[k].sampling(models[k][1], models[k][2]).nfe,
        }
        for k, v in times.items()
    }


def run_distill_study(cfg: StudyDistillConfig) -> dict:
    """Train the students, evaluate every row, time them side by side (at cfg.threads CPU
    threads, None: those in effect); write the study files."""
    teacher, config, rows, overrides = cfg.teacher, cfg.distill_config, cfg.rows, cfg.student_set
    prompt_files, seeds, reps, threads = cfg.prompts, cfg.seeds, cfg.reps, cfg.threads
    names = list(rows) if rows else list(ROWS)
    bad = [n for n in names if n not in ROWS]
    if bad:
        raise MvditError(f"unknown study row(s) {bad}; choose from {', '.join(ROWS)}")
    out = claim_study_dir(cfg.out, "study distill")
    cfg = distill_stage.load_distill_config(config, list(overrides))
    start = cfg.distill.student
    if "start-4" in names and Path(start).resolve() == Path(teacher).resolve():
        names.remove("start-4")  # the student starts from the teacher: that row is teacher-4
    models: dict[str, tuple[str, int | None, float | None]] = {}
    for name in names:
        row = ROWS[name]
        if row.model == "student":
            path = str(_student(config, name, row, out, list(overrides), str(teacher)))
        else:
            path = str(teacher if row.model == "teacher" else start)
        models[name] = (path, row.steps, row.guidance)
        ev = out / "rows" / name
        if not (ev / "eval.json").is_file():
            evaluate(EvalConfig(model=path, prompts=list(prompt_files), out=str(ev), seeds=seeds,
                                steps=row.steps, guidance=row.guidance))  # fmt: skip
    timing, timed = _end_to_end(models, reps, threads)
    table = []
    for name in names:
        ev = read_json(out / "rows" / name / "eval.json")
        f = ev["faithfulness"] or {}
        entry = {"row": name, "label": ROWS[name].label, "clips": ev["clips"], **timing[name]}
        entry["failed_clips"] = len(ev.get("failed_clips", []))
        for a in ATTRS:
            entry[a] = f.get("all", {}).get(a)
            entry[f"{a}_ci95"] = (f.get("ci95") or {}).get(a)
        d = ev.get("distribution") or {}
        entry["fvd_analogue"] = d.get("value")
        entry["kid"] = d.get("kid")
        entry["vbench"] = {k: v["value"] for k, v in ev["vbench"].items()}
        table.append(entry)
    report = {
        "teacher": str(teacher),
        "config": str(config),
        "overrides": list(overrides),
        "prompt_files": [str(p) for p in prompt_files],
        "seeds": seeds,
        "timing": timed,
        "rows": table,
    }
    write_json(out / "study.json", report)
    atomic_write_text(out / "study.md", study_markdown(report))
    _write_csv(out / "study.csv", table)
    plot_samples(out, names, out / "study.png")
    raise_for_failed_clips(table, out / "study.json")
    return report


def _ci(v, ci) -> str:
    if v is None:
        return "–"
    return f"{v:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def study_markdown(report: dict) -> str:
    rows = report["rows"]
    ref = next((r for r in rows if r["row"] == "teacher-40-cfg"), None)
    lines = [
        f"Teacher `{report['teacher']}`, students from `{report['config']}`; "
        f"{', '.join(report['prompt_files'])}, {report['seeds']} seeds "
        f"({rows[0]['clips'] if rows else 0} clips a row). Accuracy with a bootstrap 95% interval over prompts.",
        *_timing_note(report.get("timing")),
        "",
        "| row | NFE | DiT ms/clip | end-to-end ms/clip | speed-up | "
        + " | ".join(ATTRS)
        + " | FVD analogue | KID |",
        "|---|---:|---:|---:|---:|" + "---|" * len(ATTRS) + "---:|---:|",
    ]
    for r in rows:
        up = f"{ref['end_to_end_s'] / r['end_to_end_s']:.1f}x" if ref else "–"
        fvd = "–" if r["fvd_analogue"] is None else f"{r['fvd_analogue']:.1f}"
        kid = "–" if r.get("kid") is None else f"{r['kid']:.4f}"
        lines.append(
            f"| {r['label']} | {r['nfe']} | {1000 * r['dit_s']:.0f} | {1000 * r['end_to_end_s']:.0f} | {up} | "
            + " | ".join(_ci(r[a], r[f"{a}_ci95"]) for a in ATTRS)
            + f" | {fvd} | {kid} |"
        )
    return "\n".join(lines) + "\n"


def _timing_note(t: dict | None) -> list[str]:
    if not t:
        return []
    a, b = t["loadavg_start"], t["loadavg_end"]
    load = f", load average {a[0]:.2f} before and {b[0]:.2f} after" if a and b else ""
    return [
        f"Times: the median of {t['reps']} interleaved single-clip generations (text + sampling + "
        f"decode) at {t['threads']} CPU thread{'s' if t['threads'] != 1 else ''}{load}."
    ]


def _write_csv(path: Path, rows: list[dict]) -> None:
    keys = ["row", "label", "clips", "nfe", "dit_s", "end_to_end_s", *ATTRS, "fvd_analogue", "kid"]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(keys)
        for r in rows:
            w.writerow([r.get(k) for k in keys])
    tmp.replace(path)


def plot_samples(out: Path, names: Sequence[str], png: Path) -> None:
    """Each row's contact sheet (its first clips, one prompt per line), side by side."""
    import matplotlib  # deferred: seconds of import that generating does not need

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sheets = [(n, out / "rows" / n / "contact_sheet.png") for n in names]
    sheets = [(n, p) for n, p in sheets if p.is_file()]
    if not sheets:
        return
    imgs = [plt.imread(p) for _, p in sheets]
    imgs = [img[: img.shape[0] // 3] for img in imgs]  # the first third: 8 prompts
    aspect = imgs[0].shape[0] / imgs[0].shape[1]
    fig, axes = plt.subplots(
        1, len(sheets), figsize=(3.2 * len(sheets), 3.2 * aspect + 0.4), squeeze=False
    )
    for ax, (n, _), img in zip(axes[0], sheets, imgs, strict=True):
        ax.imshow(img)
        ax.set_title(ROWS[n].label, fontsize=8)
        ax.axis("off")
    save_figure(fig, png, dpi=110)


class StudyDistillConfig(Strict):
    """[study_distill]: `mvdit study distill`"""

    teacher: str = Field(default="runs/tiny/model", description="the teacher pipeline")
    distill_config: str = Field(
        default="configs/distill-tiny.toml",
        description="distillation config the students are trained from",
    )
    out: str = Field(default="runs/study-distill", description="study directory; rerun to resume")
    rows: list[str] = Field(default_factory=lambda: list(ROWS), description="rows to run")
    prompts: list[str] = Field(
        default_factory=lambda: list(SHIPPED_PROMPTS), description="prompt files"
    )
    seeds: int = Field(default=4, ge=1, description="clips per prompt")
    student_set: list[str] = Field(
        default_factory=list,
        description="override a distillation key for every student, e.g. optim.steps=2",
    )
    reps: int = Field(default=5, ge=1, description="timed clips per row (the median is reported)")
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads of the timing pass (default: torch's; 1 is steadiest)",
    )


class StudyDistillSections(Strict):
    study_distill: StudyDistillConfig = Field(default_factory=StudyDistillConfig)


def study_distill(cfg: StudyDistillConfig) -> Result:
    report = run_distill_study(cfg)
    out = Path(cfg.out)
    return Result(
        report,
        lambda r: f"{study_markdown(r)}wrote {out / 'study.md'}, study.csv, study.json, study.png",
        out,
    )

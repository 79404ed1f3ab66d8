"""`mvdit recipe`: the paper's chain — teacher, prune, KD, synthetic data, 4-step distillation,
convert, export, evaluation, benchmark — as one resumable command with one report.

Each stage is a section of the recipe config, the same section (or, for the training stages, the
same config file and overrides) its own command reads; the recipe fills in what chains them (each
stage's model and output directory). Stage S writes OUT/S/. OUT/recipe.json records, per stage, a
key (a hash of its resolved config and of the keys of the stages it reads), whether it finished,
and its time. A rerun skips a finished stage whose key is unchanged, resumes an interrupted
training stage from its checkpoint, and reruns a stage whose config or input changed, and then
everything after it. OUT/report.md shows what each stage cost and kept.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from mvdit import MvditError
from mvdit.bench.dit import BenchConfig, run_bench
from mvdit.config import Strict, default_config_path, load_config, load_train_config
from mvdit.eval.evaluate import EvalConfig, evaluate
from mvdit.eval.report import collect, report_markdown, speed_quality_plot
from mvdit.export.compare import eval_exported_to
from mvdit.export.pipeline import ExportConfig, run_export
from mvdit.io import atomic_write_text, read_json, write_json
from mvdit.pipeline import is_model_dir
from mvdit.stages.convert import ConvertConfig, run_convert
from mvdit.stages.distill import SynthConfig, load_distill_config, run_synth, train_distill
from mvdit.stages.kd import load_kd_config, train_kd
from mvdit.stages.prune import PruneConfig, run_prune
from mvdit.stages.teacher import train_teacher

STAGES = ("teacher", "prune", "kd", "synth", "distill", "convert", "export", "eval", "bench")
STATE = "recipe.json"


class TeacherStage(Strict):
    """[teacher]: train one (`config`, `set`: what `mvdit train` reads), or start from a model
    directory (`from`: a trained mvdit model or a diffusers pipeline)."""

    from_: str | None = Field(default=None, alias="from", description="an existing teacher")
    config: str | None = Field(default=None, description="training config (default: tiny.toml)")
    set: list[str] = Field(default_factory=list, description="overrides of the training config")


class TrainingStage(Strict):
    """[kd] / [distill]: the stage's config file and overrides, as its command reads them."""

    config: str | None = Field(default=None, description="the stage's TOML/YAML config")
    set: list[str] = Field(default_factory=list, description="overrides, KEY=VALUE")


class RecipeConfig(Strict):
    teacher: TeacherStage = Field(default_factory=TeacherStage)
    prune: PruneConfig = Field(default_factory=PruneConfig)
    kd: TrainingStage | None = None  # None: the pruned model is distilled without recovery
    synth: SynthConfig = Field(default_factory=SynthConfig)
    distill: TrainingStage
    convert: ConvertConfig = Field(default_factory=ConvertConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    bench: BenchConfig = Field(default_factory=BenchConfig)


def load_recipe_config(path: str | Path, overrides: list[str] | None = None) -> RecipeConfig:
    return load_config(RecipeConfig, path, overrides)


@dataclass
class _Stage:
    name: str
    reads: tuple[str, ...]  # the stages whose outputs it reads
    config: Callable[[RecipeConfig, Path], Any]  # its resolved config (what its key hashes)
    run: Callable[[Any, Path, bool], dict]  # (config, OUT, resume) -> its summary


def _key(config: Any, upstream: list[str]) -> str:
    raw = config.model_dump(mode="json") if hasattr(config, "model_dump") else config
    blob = json.dumps({"config": raw, "upstream": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _teacher_dir(cfg: RecipeConfig, out: Path) -> Path:
    return Path(cfg.teacher.from_) if cfg.teacher.from_ else out / "teacher" / "model"


def _student_source(cfg: RecipeConfig, out: Path) -> Path:
    return out / "kd" / "model" if cfg.kd is not None else out / "prune"


def _teacher_config(cfg: RecipeConfig, out: Path):
    if cfg.teacher.from_:
        if not is_model_dir(cfg.teacher.from_):
            raise MvditError(
                f"teacher.from = {cfg.teacher.from_} is not a model directory (pipeline.json or "
                "model_index.json)"
            )
        return {"from": str(Path(cfg.teacher.from_).resolve())}
    path = cfg.teacher.config or default_config_path()
    return load_train_config(path, [*cfg.teacher.set, f"run.out_dir={out / 'teacher'}"])


def _run_teacher(tc, out: Path, resume: bool) -> dict:
    if isinstance(tc, dict):
        return {"from": tc["from"]}
    return train_teacher(tc, resume=resume, progress=True)


def _training(stage: str, load, fixed: Callable[[RecipeConfig, Path], list[str]]):
    def config(cfg: RecipeConfig, out: Path):
        section: TrainingStage = getattr(cfg, stage)
        return load(section.config, [*section.set, *fixed(cfg, out), f"run.out_dir={out / stage}"])

    return config


def _q(path: Path) -> str:
    return json.dumps(str(path))  # a TOML string: quoted, any character escaped


STAGE_LIST = [
    _Stage("teacher", (), _teacher_config, _run_teacher),
    _Stage(
        "prune", ("teacher",),
        lambda cfg, out: cfg.prune.model_copy(update={
            "model": str(_teacher_dir(cfg, out)), "out": str(out / "prune"), "overwrite": True}),
        lambda c, out, resume: dict(run_prune(c, progress=True)),
    ),
    _Stage(
        "kd", ("prune",),
        _training("kd", load_kd_config, lambda cfg, out: [
            f"kd.student={_q(out / 'prune')}", f"kd.teacher={_q(_teacher_dir(cfg, out))}"]),
        lambda c, out, resume: train_kd(c, resume=resume, progress=True),
    ),
    _Stage(
        "synth", ("teacher",),
        lambda cfg, out: cfg.synth.model_copy(update={
            "model": str(_teacher_dir(cfg, out)), "out": str(out / "synth")}),
        lambda c, out, resume: dict(run_synth(c, progress=True)),
    ),
    _Stage(
        "distill", ("kd", "synth"),
        _training("distill", load_distill_config, lambda cfg, out: [
            f"distill.student={_q(_student_source(cfg, out))}",
            f"distill.teacher={_q(_teacher_dir(cfg, out))}",
            f"distill.synthetic={_q(out / 'synth')}"]),
        lambda c, out, resume: train_distill(c, resume=resume, progress=True),
    ),
    _Stage(
        "convert", ("distill",),
        lambda cfg, out: cfg.convert.model_copy(update={
            "model": str(out / "distill" / "model"), "out": str(out / "convert"),
            "overwrite": True}),
        lambda c, out, resume: dict(run_convert(c)),
    ),
    _Stage(
        "export", ("convert",),
        lambda cfg, out: cfg.export.model_copy(update={
            "model": str(out / "convert"), "out": str(out / "export"), "overwrite": True}),
        lambda c, out, resume: dict(run_export(c, progress=None)),
    ),
    _Stage("eval", ("teacher", "prune", "kd", "convert", "export"),
           lambda cfg, out: cfg.eval, lambda c, out, resume: _run_evals(c, out)),
    _Stage("bench", ("teacher", "convert"),
           lambda cfg, out: cfg.bench, lambda c, out, resume: _run_bench(c, out)),
]  # fmt: skip


def _models(out: Path, teacher: Path) -> dict[str, Path]:
    """The models the report compares, by row name, where the recipe made them."""
    rows = {"teacher": teacher, "pruned": out / "prune", "kd": out / "kd" / "model",
            "student": out / "convert"}  # fmt: skip
    return {k: v for k, v in rows.items() if is_model_dir(v)}


def _run_evals(c: EvalConfig, out: Path) -> dict:
    state = read_json(out / STATE)
    teacher = Path(state["teacher_dir"])
    done = {}
    for name, model in _models(out, teacher).items():
        r = evaluate(c.model_copy(update={"model": str(model), "out": str(out / "eval" / name)}))
        f = r.get("faithfulness")
        done[name] = f["all"]["overall"] if f else None
    export = out / "export"
    if (export / "manifest.json").is_file() and read_json(export / "manifest.json")["format"] in (
        "onnx", "executorch"
    ):  # fmt: skip
        (out / "eval").mkdir(parents=True, exist_ok=True)
        eval_exported_to(
            export, [Path(p) for p in c.prompts], c.seeds, out=out / "eval" / "exported.json"
        )
        done["exported"] = True
    return {"evaluated": done}


def _run_bench(c: BenchConfig, out: Path) -> dict:
    state = read_json(out / STATE)
    targets = [str(p) for p in _models(out, Path(state["teacher_dir"])).values()]
    result = run_bench(c.model_copy(update={"targets": targets, "out": str(out / "bench")}))
    return {"targets": targets, "bench": str(out / "bench" / "bench.json"), "ok": bool(result)}


# ---------------------------------------------------------------------------------------------
# running


def _bounds(start: str | None, until: str | None) -> tuple[int, int]:
    for flag, name in (("--from", start), ("--until", until)):
        if name is not None and name not in STAGES:
            raise MvditError(f"{flag} {name}: not a stage; the stages are {', '.join(STAGES)}")
    a = STAGES.index(start) if start else 0
    b = STAGES.index(until) if until else len(STAGES) - 1
    if a > b:
        raise MvditError(f"--from {start} comes after --until {until}")
    return a, b


def run_recipe(
    cfg: RecipeConfig,
    out: str | Path,
    *,
    start: str | None = None,
    until: str | None = None,
    echo: Callable[[str], None] = print,
) -> dict:
    """Run the stages in order into OUT (see the module docstring); returns the state."""
    out = Path(out)
    a, b = _bounds(start, until)
    out.mkdir(parents=True, exist_ok=True)
    state = read_json(out / STATE) if (out / STATE).is_file() else {"stages": {}}
    state["teacher_dir"] = str(_teacher_dir(cfg, out).resolve())
    keys: dict[str, str] = {}
    stages = [s for s in STAGE_LIST if s.name != "kd" or cfg.kd is not None]
    t_all = time.perf_counter()
    changed = False
    for i, stage in enumerate(stages):
        resolved = stage.config(cfg, out)
        keys[stage.name] = _key(resolved, [keys.get(r, "") for r in stage.reads])
        if not a <= STAGES.index(stage.name) <= b:
            continue
        rec = state["stages"].get(stage.name, {})
        if rec.get("key") == keys[stage.name] and rec.get("done") and not changed:
            echo(f"[{stage.name}] unchanged since its run ({rec['seconds']:.0f} s): skipped")
            continue
        resume = rec.get("key") == keys[stage.name] and not rec.get("done")
        if not resume and (out / stage.name).exists():
            shutil.rmtree(out / stage.name)  # a changed stage starts over in its own directory
        changed = True  # what follows reads what this stage writes now
        state["stages"][stage.name] = {"key": keys[stage.name], "done": False}
        write_json(out / STATE, state)
        left = [s.name for s in stages[i:] if STAGES.index(s.name) <= b]
        est = _estimate(state, left)
        echo(f"[{stage.name}] {'resuming' if resume else 'running'}"
             + (f" (about {est:.0f} s of stages left, from earlier runs)" if est else ""))  # fmt: skip
        t0 = time.perf_counter()
        summary = stage.run(resolved, out, resume)
        seconds = time.perf_counter() - t0 + (rec.get("seconds", 0.0) if resume else 0.0)
        state["stages"][stage.name] = {
            "key": keys[stage.name], "done": True, "seconds": round(seconds, 1),
            "summary": json.loads(json.dumps(summary, default=str)),
        }  # fmt: skip
        write_json(out / STATE, state)
        echo(f"[{stage.name}] done in {seconds:.0f} s (total {time.perf_counter() - t_all:.0f} s)")
    write_report(out, state)
    return state


def _estimate(state: dict, left: list[str]) -> float:
    """Seconds the stages left took in an earlier run of this recipe (0 when none did)."""
    times = state.get("seconds_seen", {})
    return sum(times.get(s, 0.0) for s in left)


# ---------------------------------------------------------------------------------------------
# the report


def write_report(out: Path, state: dict) -> Path:
    """OUT/report.md: a row per stage (time), a row per model (parameters, FLOPs per step, NFE,
    faithfulness, FVD analogue, DiT time), the speed-quality plot and the contact sheets."""
    state.setdefault("seconds_seen", {})
    for name, rec in state["stages"].items():
        if rec.get("done"):
            state["seconds_seen"][name] = rec["seconds"]
    write_json(out / STATE, state)
    lines = ["# Recipe report", "", f"`{out}`; state in `{STATE}`.", "",
             "| stage | time | output |", "|---|---:|---|"]  # fmt: skip
    for name in STAGES:
        rec = state["stages"].get(name)
        if rec is None:
            continue
        t = f"{rec['seconds']:.0f} s" if rec.get("done") else "not finished"
        lines.append(f"| {name} | {t} | `{name}/` |")
    rows = []
    teacher = Path(state["teacher_dir"])
    bench = out / "bench" / "bench.json"
    for name, model in _models(out, teacher).items():
        ev = out / "eval" / name
        if not (ev / "eval.json").is_file():
            continue
        row = collect(ev) | {"name": name}
        if bench.is_file():
            targets = read_json(bench)["targets"]
            t = next((t for t in targets if Path(t["name"]).resolve() == model.resolve()), None)
            if t is not None:
                row["bench"] = {
                    "target": t["name"], "params": t["params"]["dit"],
                    "flops_per_step": t["flops_per_step"], "dit_step_s": t["latency_s"]["dit_step"],
                    "seconds_per_clip": t["end_to_end"]["seconds"],
                    "measured": t["end_to_end"]["measured"],
                    "output_fps": t["end_to_end"]["output_fps"],
                    "fraction_of_peak": t["dit_fraction_of_peak"],
                    "device": read_json(bench)["machine"]["device"],
                    "threads": read_json(bench)["machine"]["threads"], "nfe": t["sampler"]["nfe"],
                }  # fmt: skip
        rows.append(row)
    if rows:
        plotted = speed_quality_plot(rows, out / "report.png")
        lines += ["", report_markdown(rows, "report.png" if plotted else None)]
        sheets = [f"![{r['name']}](eval/{r['name']}/contact_sheet.png)" for r in rows
                  if (out / "eval" / r["name"] / "contact_sheet.png").is_file()]  # fmt: skip
        if sheets:
            lines += ["", "## Contact sheets", "", *sheets]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return out / "report.md"


def describe(path: Path) -> str:
    """One line naming the recipe's outputs (for the command's last line)."""
    return f"report: {path / 'report.md'}   student: {path / 'convert'}   export: {path / 'export'}"

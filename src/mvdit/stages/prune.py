"""Stage: the sensitivity analysis and the pruning of a DiT (`mvdit sensitivity`, `mvdit prune`).

`run_sensitivity` scores every unit of a pipeline's DiT (mvdit.compress.importance) on a fixed
calibration set, one unit at a time with a progress bar, appending each score to
OUT/scores.jsonl so a killed run continues where it stopped; then the cheap criteria and their
rank correlation with the KD score, and the Figure-3 analogue: per-level sensitivity bars, and for
each level pruned alone to growing depths, the parameters, FLOPs, measured latency, peak memory,
KD loss and (for a shapes model) the detector's faithfulness of the pruned model's clips.

`run_prune` searches (mvdit.compress.search), slices the DiT and writes a pipeline directory the
other commands take as it is, with prune.json: the budget, criterion, calibration, the kept teacher
units and one row per removal. `prune_paper_preset` does the surgery on a randomly initialised
paper-size teacher. `run_prune_diffusers` does the same search and slicing on a diffusers Wan or
LTX-Video transformer directory (mvdit.compress.diffusers_dit).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field, field_validator
from tqdm.auto import tqdm

from mvdit import MvditError
from mvdit.bench.measure import PeakMemory, si, timed
from mvdit.compress.diffusers_dit import is_diffusers_transformer, load_transformer, save_pruned
from mvdit.compress.importance import (
    ADAPTER_CRITERIA,
    CALIBRATION_TIMESTEPS,
    CRITERIA,
    LEVELS,
    Calibration,
    Unit,
    build_calibration,
    check_criterion,
    criterion_scores,
    default_group,
    enumerate_units,
    kd_discrepancy,
    random_calibration,
    rank_correlation,
    reference_outputs,
    remove,
)
from mvdit.compress.search import Budget, greedy_prune, parse_budget, prune_to_shape
from mvdit.config import Strict, preset_config, required
from mvdit.eval.evaluate import EVAL_PROMPTS, faithfulness, read_prompts, sample_prompts
from mvdit.io import (
    OVERWRITE_HELP,
    atomic_write_text,
    claim_output_dir,
    output_dir,
    read_json,
    save_figure,
    write_json,
)
from mvdit.limits import bounded
from mvdit.models.dit import LEVEL_NAMES, UnitMask, VideoDiT, keep_sets
from mvdit.pipeline import Pipeline
from mvdit.results import Result

DEPTHS = (0.125, 0.25, 0.375, 0.5)  # fractions of a level's units removed in the Figure-3 curves
Level = Literal["block", "head", "cross_head", "ffn"]


# ---------------------------------------------------------------------------------------------
# the stage's config sections ([sensitivity] and [prune]; command flags override their keys)


class CalibrationConfig(Strict):
    """What unit scores are measured on: the first `n_prompts` captions of `prompts`, each noised
    with `seeds` seeds at each flow time of `timesteps`. A bare diffusers transformer has no text
    encoder or VAE here: Gaussian latents of shape `latent` (T, H, W) and Gaussian text of
    `text_len` tokens, stated in the output."""

    prompts: str = Field(default=EVAL_PROMPTS, description="prompt file of the calibration set")
    n_prompts: int = Field(default=8, ge=1, description="calibration prompts (the file's first N)")
    seeds: int = Field(default=2, ge=1, description="noise seeds per calibration prompt")
    timesteps: list[float] = Field(
        default_factory=lambda: list(CALIBRATION_TIMESTEPS),
        description="flow times of the calibration set",
    )
    latent: list[int] = Field(
        default_factory=lambda: [3, 8, 8],
        description="T,H,W of a bare diffusers transformer's Gaussian calibration latents",
    )
    text_len: int = Field(default=16, ge=1)
    batch: int = bounded("batch", 40)  # calibration items per forward pass

    @field_validator("timesteps")
    @classmethod
    def _times(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 < t < 1 for t in v):
            raise ValueError(f"timesteps are flow times in (0, 1), e.g. [0.1, 0.5, 0.9]; got {v}")
        return v

    @field_validator("latent")
    @classmethod
    def _latent(cls, v: list[int]) -> list[int]:
        if len(v) != 3 or min(v) < 1:
            raise ValueError(f"latent is T, H, W (three positive integers), got {v}")
        return v

    def check_applies(self, gaussian: bool, model: str) -> None:
        """One line naming a key set away from its default that this model's calibration does
        not read (a bare diffusers transformer: Gaussian inputs, no prompts or flow-time list; a
        pipeline: its own VAE and text encoder, no Gaussian shapes), never a silent ignore."""
        unread = ("prompts", "timesteps") if gaussian else ("latent", "text_len")
        for key in unread:
            if getattr(self, key) != type(self).model_fields[key].get_default(
                call_default_factory=True
            ):
                how = (
                    "a bare diffusers transformer is calibrated on Gaussian latents (latent, "
                    "text_len, n_prompts x seeds items at random flow times)"
                    if gaussian
                    else "a pipeline is calibrated on its own prompts, VAE and text encoder"
                )
                raise MvditError(
                    f"calibration.{key} (--{key.replace('_', '-')}) does not apply to {model}: "
                    f"{how}; drop it"
                )


MODEL_HELP = "pipeline directory, or a diffusers Wan / LTX transformer"
GROUP_HELP = "FFN channels per unit (default: at least 8 units a block)"


class SensitivityConfig(Strict):
    """[sensitivity]: what removing each block, head and FFN group costs (`mvdit sensitivity`)."""

    model: str | None = Field(default=None, description=MODEL_HELP)
    out: str | None = Field(default=None, description="output directory (resumable)")
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    group: int | None = Field(default=None, ge=1, description=GROUP_HELP)
    depths: list[float] = Field(default_factory=lambda: list(DEPTHS))
    faith_prompts: int = Field(
        default=16, ge=0, description="prompts generated per point of the depth curves (0: none)"
    )


class PruneConfig(Strict):
    """[prune]: the greedy tri-level search under a budget (`mvdit prune`)."""

    model: str | None = Field(default=None, description=MODEL_HELP)
    out: str | None = Field(default=None, description="the pruned model's directory")
    budget: str = Field(
        default="params=0.55",
        description="params=F, flops=F, latency=F (fractions kept) or memory=BYTES",
    )
    levels: list[Level] = Field(
        default_factory=lambda: ["block", "head", "ffn"],
        description="levels the search may cut (head covers cross-attention heads; cross_head "
        "alone names only those)",
    )
    # None: "kd", or "magnitude" for preset = "paper", whose random weights have no KD score
    criterion: Literal["kd", "magnitude", "taylor", "activation"] | None = Field(
        default=None, description="unit score (default: kd; magnitude for --preset paper)"
    )
    rescore_every: int = Field(default=8, ge=1)  # re-score the units left every k removals
    group: int | None = Field(default=None, ge=1, description=GROUP_HELP)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    preset: Literal["paper"] | None = Field(
        default=None,
        description="'paper': prune a random paper-teacher to 20 blocks, 20 heads, FFN 6144",
    )
    overwrite: bool = Field(default=False, description=OVERWRITE_HELP)

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: str) -> str:
        parse_budget(v)  # an MvditError names the problem
        return v

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("levels is empty: name at least one of block, head, ffn")
        return list(dict.fromkeys([*v, "cross_head"] if "head" in v else v))


class SensitivitySections(Strict):
    sensitivity: SensitivityConfig = Field(default_factory=SensitivityConfig)


class PruneSections(Strict):
    prune: PruneConfig = Field(default_factory=PruneConfig)


def calibration_for(
    pipe: Pipeline,
    prompts_file: str | Path,
    n_prompts: int,
    seeds: int,
    timesteps: Sequence[float],
    seed_offset: int = 0,
) -> tuple[Calibration, list[dict]]:
    """The calibration set of the first `n_prompts` prompts of a file, noise seeds from
    `seed_offset` on (a held-out set: other prompts and another offset)."""
    rows = read_prompts(prompts_file)[:n_prompts]
    seed_list = range(seed_offset, seed_offset + seeds)
    calib = build_calibration(pipe, [r["prompt"] for r in rows], seed_list, timesteps)
    calib.record["prompts_file"] = str(prompts_file)
    return calib, rows


def _check_calibration(out: Path, record: dict) -> None:
    path = out / "calibration.json"
    if path.exists():
        if read_json(path) != json.loads(json.dumps(record)):
            raise MvditError(
                f"{out} holds scores of another calibration set or model; use a new --out or delete it"
            )
    else:
        write_json(path, record)


def _read_scores(path: Path) -> dict[str, dict]:
    done: dict[str, dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill: scored again
            done[row["unit"]] = row
    return done


def latency_and_memory(dit: VideoDiT, calib: Calibration) -> tuple[float, float]:
    """Seconds of one DiT step at batch 1 (the fastest of the repeats), and parameter bytes plus
    the activation peak of that step."""
    args = calib.inputs(slice(0, 1))
    with torch.no_grad():
        # the fastest of the repeats: on a shared machine the slower ones measure the neighbours
        lat = min(timed(lambda: dit(*args), reps=10, min_seconds=0.2))
        with PeakMemory() as pm:
            dit(*args)
    weights = sum(p.numel() * p.element_size() for p in dit.parameters())
    return lat, weights + max(0, pm.peak - pm.start)


def sampled_faithfulness(pipe: Pipeline, rows: list[dict], seeds: int) -> dict | None:
    """The shapes detector's faithfulness of `seeds` clips per prompt row (the evaluation's
    sampling: clip k of a prompt is sample k of a batch from seed 0), or None when the prompts
    are not shapes captions. Clips whose sampling went NaN/inf are scored as what they show and
    counted under "failed_clips"."""
    videos, clip_rows, failed = [], [], 0
    for _, row, g, _ in sample_prompts(pipe, rows, seeds):
        videos += list(g.videos.numpy())
        clip_rows += [row] * seeds
        failed += len(g.failed)
    f = faithfulness(videos, clip_rows) if rows else None
    return None if f is None else f | {"failed_clips": failed}


def run_sensitivity(cfg: SensitivityConfig, *, progress: bool = True) -> Result:
    """Score every unit of MODEL_DIR's DiT; write OUT/sensitivity.json and OUT/sensitivity.png.

    MODEL_DIR is an mvdit pipeline directory, or a diffusers Wan / LTX-Video transformer
    directory: that has no text encoder or VAE, so its calibration set is `n_prompts x seeds`
    Gaussian latents of shape `latent` and Gaussian text features of `text_len` tokens, its cheap
    criterion is magnitude alone (ADAPTER_CRITERIA) and its depth curves have no faithfulness."""
    model_dir = required(cfg.model, "sensitivity.model (--model)")
    out = Path(required(cfg.out, "sensitivity.out (--out)"))
    cal = cfg.calibration
    batch, depths, faith_prompts = cal.batch, cfg.depths, cfg.faith_prompts
    t_start = time.perf_counter()
    cal.check_applies(is_diffusers_transformer(model_dir), model_dir)
    if is_diffusers_transformer(model_dir):
        pipe = None
        dit = load_transformer(model_dir).eval()
        calib = random_calibration(
            dit.config, tuple(cal.latent), cal.n_prompts * cal.seeds, cal.text_len
        )
        rows: list[dict] = []
        criteria = [c for c in ADAPTER_CRITERIA if c != "kd"]
    else:
        pipe = Pipeline.from_pretrained(model_dir)  # a bad model directory leaves no OUT behind
        dit = pipe.dit.eval()
        calib, rows = calibration_for(pipe, cal.prompts, cal.n_prompts, cal.seeds, cal.timesteps)
        criteria = [c for c in CRITERIA if c != "kd" and c in dit.criteria]
    group = cfg.group or default_group(dit.config)
    record = calib.record | {"group": group, "model": str(Path(model_dir).resolve())}
    out.mkdir(parents=True, exist_ok=True)
    _check_calibration(out, record)
    units = enumerate_units(dit.config, group)
    scores_path = out / "scores.jsonl"
    done = _read_scores(scores_path)
    todo = [u for u in units if u.key not in done]
    reference = reference_outputs(dit, calib, None, batch)
    full = UnitMask.full(dit.config)
    bar = tqdm(
        total=len(units), initial=len(units) - len(todo), desc="sensitivity", disable=not progress
    )
    with scores_path.open("a") as f:
        for u in todo:
            v, feat = kd_discrepancy(dit, calib, remove(full, u, group), reference, batch)
            row = {"unit": u.key, "kd": v, "kd_features": feat}
            f.write(json.dumps(row) + "\n")
            f.flush()
            done[u.key] = row
            bar.update(1)
    bar.close()
    kd_s = time.perf_counter() - t_start

    cheap = {c: criterion_scores(c, dit, calib, units, group, None, batch) for c in criteria}
    per_unit = []
    for u in units:
        row = {"unit": u.key, "level": u.level, "block": u.block, "index": u.index}
        row |= {"kd": done[u.key]["kd"], "kd_features": done[u.key]["kd_features"]}
        row |= {c: cheap[c][u.key] for c in cheap}
        per_unit.append(row)
    correlation = {}
    for level in LEVELS:
        rs = [r for r in per_unit if r["level"] == level]
        correlation[level] = {
            c: rank_correlation([r["kd"] for r in rs], [r[c] for r in rs]) for c in cheap
        }
    rs = per_unit
    correlation["all"] = {
        c: rank_correlation([r["kd"] for r in rs], [r[c] for r in rs]) for c in cheap
    }

    curves = depth_curves(
        dit, pipe, calib, rows[:faith_prompts], units, done, group, batch, depths, progress
    )
    result = {
        "model": str(model_dir),
        "out": str(out),
        "calibration": record,
        "group": group,
        "units": per_unit,
        "rank_correlation_with_kd": correlation,
        "curves": curves,
        "seconds": {"kd_scores": round(kd_s, 1), "total": round(time.perf_counter() - t_start, 1)},
        "threads": torch.get_num_threads(),
    }
    write_json(out / "sensitivity.json", result)
    atomic_write_text(out / "sensitivity.md", sensitivity_markdown(result))
    plot_sensitivity(result, out / "sensitivity.png")
    return Result(result, sensitivity_summary, out)


def sensitivity_summary(r: dict) -> str:
    """What `mvdit sensitivity` prints: the units scored, the rank correlations, the files."""
    lines = [
        f"{len(r['units'])} units scored on {r['calibration']['items']} calibration items in "
        f"{r['seconds']['total']:.0f}s"
    ]
    for level, corr in r["rank_correlation_with_kd"].items():
        cells = ", ".join(f"{c} {'n/a' if v is None else f'{v:+.2f}'}" for c, v in corr.items())
        lines.append(f"  rank correlation with KD, {level}: {cells}")
    lines.append(f"wrote {r['out']}/sensitivity.json and {r['out']}/sensitivity.png")
    return "\n".join(lines)


def sensitivity_markdown(result: dict) -> str:
    """The depth curves as a table, and the rank correlations of the cheap criteria."""
    cal = result["calibration"]
    if cal.get("kind") == "random":  # a diffusers transformer: no text encoder to calibrate with
        items = (
            f"{cal['items']} Gaussian calibration items (latents {cal['latent']}, "
            f"{cal['text_len']} text tokens)"
        )
    else:
        items = (
            f"{cal['items']} calibration items: {len(cal['prompts'])} prompts x "
            f"{len(cal['seeds'])} noise seeds x timesteps {cal['timesteps']}"
        )
    lines = [
        f"# Sensitivity of {_model_name(result['model'])}",
        "",
        f"{len(result['units'])} units (FFN groups of {result['group']} channels) scored on "
        f"{items}. {result['seconds']['total']:.0f} s at {result['threads']} thread(s).",
        "",
        "## Each level pruned alone (least KD-sensitive units first)",
        "",
        "| level | removed | params | FLOPs/step | latency (ms) | memory (MiB) | KD loss | overall | shape | motion |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for level, pts in result["curves"].items():
        for p in pts:
            f = p.get("faithfulness", {})
            cell = {
                k: "–" if f.get(k) is None else f"{f[k]:.2f}"
                for k in ("overall", "shape", "motion")
            }
            lines.append(
                f"| {LEVEL_NAMES[level]} | {p['removed']} ({p['depth']:.0%}) | {p['params']:,} | "
                f"{p['flops']:,} | {p['latency_ms']:.2f} | {p['memory_bytes'] / 2**20:.1f} | "
                f"{p['kd']:.3g} | {cell['overall']} | {cell['shape']} | {cell['motion']} |"
            )
    lines += ["", "## Rank correlation (Spearman) of the cheap criteria with the KD score", ""]
    crits = list(next(iter(result["rank_correlation_with_kd"].values())))
    lines += ["| level | " + " | ".join(crits) + " |", "|---" * (len(crits) + 1) + "|"]
    for level, corr in result["rank_correlation_with_kd"].items():
        cells = " | ".join("–" if corr[c] is None else f"{corr[c]:+.2f}" for c in crits)
        lines.append(f"| {LEVEL_NAMES.get(level, level)} | {cells} |")
    return "\n".join(lines) + "\n"


def depth_curves(
    dit,
    pipe: Pipeline | None,
    calib: Calibration,
    rows: list[dict],
    units: list[Unit],
    scores: dict[str, dict],
    group: int,
    batch: int,
    depths: Sequence[float],
    progress: bool,
) -> dict[str, list[dict]]:
    """For each level alone: remove the least sensitive `depth` fraction of its units and measure
    the pruned model (parameters, FLOPs, latency, peak memory, KD loss, and faithfulness when
    `pipe` generates clips). `dit`: mvdit's DiT or an adapted diffusers transformer."""
    cfg = dit.config
    tokens, text_len = cfg.tokens(calib.x_t.shape[-3:]), calib.text.shape[1]
    reference = reference_outputs(dit, calib, None, batch)
    full = UnitMask.full(cfg)

    def measure(mask: UnitMask, depth: float, removed: int) -> dict:
        small = dit.slice(mask).eval()
        lat, mem = latency_and_memory(small, calib)
        kd, kd_f = kd_discrepancy(dit, calib, mask, reference, batch)
        point = {"depth": depth, "removed": removed, **dit.cost(mask, tokens, text_len)}
        point |= {
            "latency_ms": round(1000 * lat, 3),
            "memory_bytes": int(mem),
            "kd": kd,
            "kd_features": kd_f,
        }
        if rows and pipe is not None:
            p = pipe.replace(dit=small)
            f = sampled_faithfulness(p, rows, 1)
            if f is not None:
                point["faithfulness"] = {
                    k: f["all"][k] for k in ("overall", "colour", "shape", "motion")
                }
        return point

    base = measure(full, 0.0, 0)
    curves: dict[str, list[dict]] = {}
    levels = [lv for lv in LEVELS if any(u.level == lv for u in units)]
    bar = tqdm(total=len(levels) * len(depths), desc="depth curves", disable=not progress)
    for level in levels:
        ranked = sorted((u for u in units if u.level == level), key=lambda u: scores[u.key]["kd"])
        pts = [base]
        most = len(ranked) - 1 if level == "block" else len(ranked)  # a DiT keeps one block
        for depth in depths:
            n = min(most, max(pts[-1]["removed"] + 1, round(depth * len(ranked))))
            if n == pts[-1]["removed"]:
                bar.update(1)
                continue
            mask = full
            for u in ranked[:n]:
                mask = remove(mask, u, group)
            pts.append(measure(mask, depth, n))
            bar.update(1)
        curves[level] = pts
    bar.close()
    return curves


def _panel_value(point: dict, key: str, base: dict) -> float:
    if key == "faithfulness":
        return point[key]["overall"]
    if key == "memory_bytes":
        return point[key] / 2**20
    if key == "flops":
        return point[key] / base[key]
    return point[key]


def _model_name(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.name == "model" else p.name


def plot_sensitivity(result: dict, png: Path) -> None:
    """Top row: KD sensitivity of every unit per level (log scale, by block). Bottom row: each
    level pruned alone to growing depth: KD loss, latency, and faithfulness when measured."""
    import matplotlib  # deferred: seconds of import that generating does not need

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    units = result["units"]
    levels = [lv for lv in LEVELS if any(u["level"] == lv for u in units)]
    fig, axes = plt.subplots(2, 4, figsize=(16.8, 7.4))
    for ax, level in zip(axes[0], levels, strict=False):
        rs = [u for u in units if u["level"] == level]
        xs = range(len(rs))
        ax.bar(xs, [max(u["kd"], 1e-12) for u in rs], color=[f"C{u['block'] % 10}" for u in rs])
        ax.set_yscale("log")
        ax.set_title(f"{LEVEL_NAMES[level]} ({len(rs)})", fontsize=10)
        ax.set_xlabel("unit (colour: block)")
        ax.set_ylabel("KD loss when removed")
        ax.grid(alpha=0.3, axis="y")
    for ax in axes[0][len(levels) :]:
        ax.axis("off")
    curves = result["curves"]
    base_params = curves[levels[0]][0]["params"]
    panels = [
        ("kd", "KD loss (velocity MSE)", True),
        ("latency_ms", "DiT step latency, batch 1 (ms)", False),
        ("memory_bytes", "weights + activation peak (MiB)", False),
    ]
    if any("faithfulness" in p for pts in curves.values() for p in pts):
        panels.append(("faithfulness", "detector: overall faithfulness", False))
    else:
        panels.append(("flops", "FLOPs per step (fraction kept)", False))
    for ax, (key, label, log) in zip(axes[1], panels, strict=False):
        for i, level in enumerate(levels):
            pts = curves[level][1:] if log else curves[level]  # the unpruned KD loss is 0
            xs = [1 - p["params"] / base_params for p in pts]
            ys = [_panel_value(p, key, curves[level][0]) for p in pts]
            ax.plot(xs, ys, marker="o", ms=3, color=f"C{i}", label=LEVEL_NAMES[level])
        if log:
            ax.set_yscale("log")
        ax.set_xlabel("fraction of DiT parameters removed")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in axes[1][len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        f"sensitivity of {_model_name(result['model'])}: each unit removed alone (top), each level pruned alone (bottom)",
        fontsize=10,
    )
    save_figure(fig, png, dpi=100)


# ---------------------------------------------------------------------------------------------
# pruning


def prune_summary(r: dict, cfg: PruneConfig) -> str:
    """What `mvdit prune` prints: what was removed, what it costs now, where it went."""
    if cfg.preset == "paper":
        return "\n".join([
            r["note"],
            f"paper-teacher {r['teacher_params'] / 1e9:.3f}B -> {r['pruned_params'] / 1e9:.3f}B: "
            f"{r['blocks']} blocks, heads {r['heads']}, cross heads {r['cross_heads']}, mean FFN "
            f"{r['mean_ffn']:.0f}",
            f"saved and reloaded ({r['reloaded_params'] / 1e9:.3f}B); sliced vs masked max |diff| "
            f"{r['sliced_vs_masked_max_abs_diff']:.2e}; {r['seconds']:.0f}s",
            f"wrote {cfg.out}",
        ])  # fmt: skip
    b, f = r["base"], r["final"]
    widths = ", ".join(f"{x['heads']}/{x['cross_heads']}/{x['ffn_dim']}" for x in r["blocks"])
    if "family" in r:  # a diffusers transformer
        how = {
            "stock": f"diffusers' own {r['class']}.from_pretrained loads it (uniform widths)",
            "remote": "per-block widths in a custom component beside it: diffusers loads it with "
            "from_pretrained(DIR, trust_remote_code=True), mvdit with load_transformer",
            "mvdit": "per-block widths: load it with mvdit.compress.diffusers_dit.load_transformer "
            "(diffusers' from_pretrained cannot express them)",
        }[r["loader"]]
        return "\n".join([
            f"{r['family']}: {len(r['history'])} units removed ({r['criterion']}, Gaussian "
            f"calibration {r['calibration']['latent']}): params {b['params'] / 1e6:.3f}M -> "
            f"{f['params'] / 1e6:.3f}M ({f['params'] / b['params']:.1%}); reloaded vs masked max "
            f"|diff| {r['reloaded_vs_masked_max_abs_diff']:.2e}",
            f"blocks kept (heads/cross heads/FFN): {widths}",
            f"wrote {cfg.out}: {how}",
        ])  # fmt: skip
    return "\n".join([
        f"{len(r['history'])} units removed ({r['criterion']}, {r['rescored']} scorings): params "
        f"{b['params'] / 1e6:.3f}M -> {f['params'] / 1e6:.3f}M ({f['params'] / b['params']:.1%}), "
        f"FLOPs/step {si(b['flops'])} -> {si(f['flops'])}",
        f"blocks kept (heads/cross heads/FFN): {widths}",
        f"calibration KD loss {r['calibration_kd']['velocity_mse']:.4g}; sliced vs masked max "
        f"|diff| {r['sliced_vs_masked_max_abs_diff']:.2e}",
        f"wrote {cfg.out} (a pipeline directory; prune.json holds the search)",
    ])  # fmt: skip


def _search(
    model,
    calib: Calibration,
    budget: Budget,
    levels,
    criterion,
    group,
    rescore_every,
    batch,
    progress: bool,
):
    """greedy_prune with a progress bar; returns the result and the report fields every pruned
    model records (the search, the calibration, the costs, the calibration KD loss)."""
    bar = tqdm(desc=f"prune to {budget}", unit="unit", disable=not progress)

    def step(row: dict) -> None:
        bar.update(1)
        bar.set_postfix(params=f"{row['params'] / 1e6:.3f}M", unit=row["unit"])

    result = greedy_prune(
        model, calib, budget, levels, criterion, group, rescore_every, batch, progress=step
    )
    bar.close()
    kd, kd_f = kd_discrepancy(
        model, calib, result.mask, reference_outputs(model, calib, None, batch), batch
    )
    report = {
        "budget": str(budget),
        "levels": list(levels),
        "criterion": criterion,
        "group": group,
        "rescore_every": rescore_every,
        "rescored": result.rescored,
        "calibration": calib.record,
        "base": result.base,
        "final": result.final,
        "kept_fraction": {
            k: result.final[k] / result.base[k] for k in result.base if k in result.final
        },
        "calibration_kd": {"velocity_mse": kd, "last_block_mse": kd_f},
    }
    return result, report


def run_prune(cfg: PruneConfig, *, progress: bool = True) -> Result:
    """Prune to cfg.budget and write the smaller model to cfg.out: an mvdit pipeline (its DiT
    sliced), a diffusers Wan / LTX transformer (through its adapter), or with cfg.preset = "paper"
    the surgery on a random paper-teacher. The result's record is the report (prune.json)."""
    out = required(cfg.out, "prune.out (--out)")
    if cfg.preset == "paper":
        if cfg.model:
            raise MvditError("give prune.model (--model) or prune.preset = 'paper', not both")
        r = prune_paper_preset(out, cfg.criterion or "magnitude", overwrite=cfg.overwrite)
    elif is_diffusers_transformer(required(cfg.model, "prune.model (--model)")):
        r = run_prune_diffusers(cfg, progress=progress)
    else:
        r = _prune_pipeline(cfg, progress=progress)
    return Result(r, lambda rec: prune_summary(rec, cfg), Path(out))


def _prune_pipeline(cfg: PruneConfig, *, progress: bool = True) -> dict:
    """Prune an mvdit pipeline's DiT; write the pruned pipeline (atomically; OUT new, empty or an
    earlier prune's unless cfg.overwrite)."""
    model_dir, out, cal = cfg.model, cfg.out, cfg.calibration
    overwrite, criterion = cfg.overwrite, cfg.criterion or "kd"
    cal.check_applies(False, model_dir)
    claim_output_dir(out, command="prune", overwrite=overwrite, sources=[model_dir])
    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(model_dir)
    dit = pipe.dit.eval()
    group = cfg.group or default_group(dit.config)
    batch = cal.batch
    calib, _ = calibration_for(pipe, cal.prompts, cal.n_prompts, cal.seeds, cal.timesteps)
    result, search = _search(
        dit, calib, parse_budget(cfg.budget), cfg.levels, criterion, group, cfg.rescore_every,
        batch, progress,
    )  # fmt: skip
    small = dit.slice(result.mask).eval()
    # the sliced model computes what the masked teacher computed
    ref = reference_outputs(dit, calib, result.mask, batch)
    got = reference_outputs(small, calib, None, batch)
    max_diff = max(float((a[0] - b[0]).abs().max()) for a, b in zip(ref, got, strict=True))
    report = {
        "teacher": str(model_dir),
        **search,
        "sliced_vs_masked_max_abs_diff": max_diff,
        "blocks": [b.model_dump() for b in small.config.blocks],
        "kept": keep_sets(result.mask),
        "history": result.history,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    pruned = pipe.replace(dit=small)
    with output_dir(
        out, command="prune", overwrite=overwrite, sources=[model_dir], teacher=str(model_dir)
    ) as tmp:
        pruned.write(tmp)
        write_json(tmp / "prune.json", report)
    return report


def run_prune_diffusers(cfg: PruneConfig, *, progress: bool = True) -> dict:
    """Prune a diffusers Wan / LTX-Video transformer directory to `budget`; write it to OUT.

    A transformer directory has no text encoder or VAE here, so the calibration set is Gaussian
    latents of shape `latent` (C from the model) and Gaussian text features (recorded in the
    report). Returns the report, including which loader reads the output ("stock": diffusers'
    from_pretrained; "mvdit": mvdit.compress.diffusers_dit.load_transformer)."""

    model_dir, out, cal = cfg.model, cfg.out, cfg.calibration
    overwrite, criterion = cfg.overwrite, cfg.criterion or "kd"
    check_criterion(criterion, ADAPTER_CRITERIA)
    cal.check_applies(True, model_dir)
    claim_output_dir(out, command="prune", overwrite=overwrite, sources=[model_dir])
    t0 = time.perf_counter()
    model = load_transformer(model_dir).eval()
    group = cfg.group or default_group(model.config)
    n = cal.n_prompts * cal.seeds
    calib = random_calibration(model.config, tuple(cal.latent), n=n, text_len=cal.text_len)
    batch = cal.batch
    result, search = _search(
        model, calib, parse_budget(cfg.budget), cfg.levels, criterion, group, cfg.rescore_every,
        batch, progress,
    )  # fmt: skip
    small = model.slice(result.mask).eval()
    ref = reference_outputs(model, calib, result.mask, batch)
    report = {
        "teacher": str(model_dir),
        "family": model.family,
        "class": type(model.transformer).__name__,
        **search,
        "blocks": [b.model_dump() for b in small.config.blocks],
        "kept": small.config.sources,
        "history": result.history,
    }
    loader = save_pruned(small, out, report, overwrite=overwrite, sources=[model_dir])
    # what was written is what was scored: reload it and compare with the masked teacher
    got = reference_outputs(load_transformer(out).eval(), calib, None, batch)
    report["loader"] = loader
    report["reloaded_vs_masked_max_abs_diff"] = max(
        float((a[0] - b[0]).abs().max()) for a, b in zip(ref, got, strict=True)
    )
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(Path(out) / "prune.json", report)
    return report


def prune_paper_preset(
    out: str | Path,
    criterion: str = "magnitude",
    blocks: int = 20,
    heads: int = 20,
    ffn: int = 6144,
    *,
    overwrite: bool = False,
) -> dict:
    """The paper's surgery on a randomly initialised paper-teacher: 28 -> `blocks` blocks, 32 ->
    `heads` self- and cross-attention heads, 8192 -> `ffn` FFN channels, saved and reloaded."""
    if criterion == "kd":
        raise MvditError(
            "random weights have no meaningful KD score: use --criterion magnitude (the default here)"
        )
    claim_output_dir(out, command="prune", overwrite=overwrite)
    t0 = time.perf_counter()
    cfg = preset_config("paper-teacher")
    torch.manual_seed(0)
    teacher = VideoDiT(cfg).eval()
    # the zero-initialised output layer would make every comparison below 0 = 0
    torch.nn.init.normal_(teacher.out.weight, std=0.02)
    group = 1024 if ffn % 1024 == 0 else default_group(cfg)
    units = enumerate_units(cfg, group)
    calib = (
        random_calibration(cfg, (2, 4, 4), n=2, text_len=8) if criterion != "magnitude" else None
    )
    scores = criterion_scores(criterion, teacher, calib, units, group, None, 1)
    mask = prune_to_shape(teacher, scores, blocks, heads, ffn, group)
    small = teacher.slice(mask).eval()
    before, after = (sum(p.numel() for p in m.parameters()) for m in (teacher, small))
    # equal to the masked teacher, on a small random input
    check = calib or random_calibration(cfg, (2, 4, 4), n=1, text_len=8)
    args = check.inputs(slice(0, 1))
    with torch.no_grad():
        masked = teacher(*args, unit_mask=mask)
        diff = float((masked - small(*args)).abs().max())
        scale = float(masked.abs().max())
    del teacher
    with output_dir(out, command="prune", overwrite=overwrite) as tmp:
        small.save_pretrained(tmp)
        reloaded = VideoDiT.from_pretrained(tmp)
        ffns = [b.ffn_dim for b in reloaded.config.blocks]
        report = {
            "note": f"random weights: {criterion} scores (a KD score of an untrained model means nothing)",
            "teacher_params": before,
            "pruned_params": after,
            "reloaded_params": sum(p.numel() for p in reloaded.parameters()),
            "blocks": len(reloaded.config.blocks),
            "heads": sorted({b.heads for b in reloaded.config.blocks}),
            "cross_heads": sorted({b.cross_heads for b in reloaded.config.blocks}),
            "mean_ffn": sum(ffns) / len(ffns),
            "sources": [b.source for b in reloaded.config.blocks],
            "sliced_vs_masked_max_abs_diff": diff,
            "masked_velocity_max_abs": scale,
            "seconds": round(time.perf_counter() - t0, 1),
        }
        write_json(tmp / "prune.json", report)
    return report

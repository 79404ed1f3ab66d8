"""`mvdit eval`: generate clips for a prompt set with fixed seeds, score them, write a report.

    OUT/eval.json           every number, each metric with its label (vbench-faithful / substitute / own)
    OUT/eval.md             the same as tables
    OUT/contact_sheet.png   the first sample of each prompt
    OUT/videos/*.mp4        every clip (run the real VBench on these: docs/evaluation.md)
    OUT/videos/prompts.json {video path: prompt}, VBench's --prompt_file format

Scores: prompt faithfulness (when the prompts are `shapes` captions; per split), the offline
VBench dimensions (eval/vbench.py), and the FVD analogue against real `shapes` clips of the same
size drawn from the prompts' vocabulary (eval/metrics.py).
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from pydantic import Field

from mvdit import MvditError
from mvdit.build import build_dataset
from mvdit.config import (
    DataConfig,
    Strict,
    default_train_config,
    load_train_config,
    require_device,
    required,
)
from mvdit.data.shapes import ShapesDataset, caption, parse_caption, render
from mvdit.eval.faithfulness import ATTRIBUTES, score_clip, summarize
from mvdit.eval.metrics import distribution_distance
from mvdit.eval.vbench import score_videos
from mvdit.io import atomic_write_text, read_json, read_text, write_json
from mvdit.limits import GUIDANCE_HELP, STEPS_HELP, bounded
from mvdit.pipeline import Pipeline
from mvdit.results import Result
from mvdit.video import contact_sheet, save_png, write_mp4

# ---------------------------------------------------------------------------------------------
# prompt files


# the shipped evaluation prompts (a repository file, not packaged): the default of every command
# that calibrates or scores on prompts
EVAL_PROMPTS = "prompts/shapes-eval.txt"
HOLDOUT_PROMPTS = "prompts/shapes-holdout.txt"
PARAPHRASE_PROMPTS = "prompts/shapes-paraphrase.txt"
# the three shipped prompt files every model card and study scores on (24 prompts each)
SHIPPED_PROMPTS = (EVAL_PROMPTS, HOLDOUT_PROMPTS, PARAPHRASE_PROMPTS)


def read_prompts(path: str | Path) -> list[dict]:
    """Read a prompt file: plain text (one prompt a line, '#' comments) or JSONL with
    {"prompt": ..., "split": ...}. A plain file's split is its name without extension."""
    path = Path(path)
    out = []
    for n, line in enumerate(read_text(path, "prompt file").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise MvditError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            if (
                not isinstance(row, dict)
                or not isinstance(row.get("prompt"), str)
                or not row["prompt"].strip()
            ):
                raise MvditError(f'{path}:{n}: each line needs {{"prompt": "...", "split": "..."}}')
            out.append({"prompt": row["prompt"].strip(), "split": str(row.get("split", path.stem))})
        else:
            out.append({"prompt": line, "split": path.stem})
    if not out:
        raise MvditError(f"prompt file {path} has no prompts")
    return out


def default_holdout() -> list[str]:
    """The combinations the default model never trains on: data.holdout of the embedded default
    config, the one place they are written (prompts/shapes-holdout.txt is made from them)."""
    return list(default_train_config().data.holdout)


def shapes_prompt_sets(
    data: DataConfig, n: int = 24, seed: int = 0, holdout: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """Prompt sets from a shapes data config: plain captions of the validation split
    ("shapes-eval"), paraphrases of other validation clips ("shapes-paraphrase") and plain
    captions of held-out combinations ("shapes-holdout"; default: the default config's)."""
    holdout = list(data.holdout or holdout or default_holdout())
    data = data.model_copy(update={"seed": seed, "holdout": holdout})
    val, held = build_dataset(data, "val"), build_dataset(data, "holdout")
    plain = lambda ds, i: caption(ds.spec(i)[0], paraphrase=False)  # noqa: E731
    return {
        "shapes-eval": [plain(val, i) for i in range(n)],
        "shapes-paraphrase": [caption(*val.spec(i)) for i in range(n, 2 * n)],
        "shapes-holdout": [plain(held, i) for i in range(n)],
    }


# ---------------------------------------------------------------------------------------------
# scoring


def faithfulness(videos: Sequence[np.ndarray], rows: Sequence[dict]) -> dict | None:
    """Per-split prompt faithfulness, or None when some prompt is not a shapes caption."""
    try:
        wants = [parse_caption(r["prompt"]) for r in rows]
    except MvditError:
        return None
    scores = [score_clip(v, w) for v, w in zip(videos, wants, strict=True)]
    out: dict = {
        "label": "own",
        "note": "analytic detector from the shapes renderer (GenEval analogue)",
    }
    out["all"] = summarize(scores)
    for split in sorted({r["split"] for r in rows}):
        out[split] = summarize(
            [s for s, r in zip(scores, rows, strict=True) if r["split"] == split]
        )
    out["by_motion"] = attribute_breakdown(scores, wants, "motion")
    out["by_shape"] = attribute_breakdown(scores, wants, "shape")
    out["per_clip"] = [bool(s["overall"]) for s in scores]
    out["per_clip_scores"] = [
        {a: None if s[a] is None else bool(s[a]) for a in CI_ATTRS} for s in scores
    ]
    out["prompt_of_clip"] = prompt_clusters(rows)
    out["ci95"] = bootstrap_ci(out["per_clip_scores"], out["prompt_of_clip"])
    # clips whose prompt gives the attribute no value the parser could read: not scored for it
    out["unscored"] = {a: sum(s[a] is None for s in scores) for a in ATTRIBUTES}
    return out


# keys of a faithfulness() result that are not per-split summaries
FAITHFULNESS_META = (
    "label", "note", "per_clip", "by_motion", "by_shape", "unscored", "per_clip_scores", "prompt_of_clip",
    "ci95",
)  # fmt: skip
CI_ATTRS = ("overall", *ATTRIBUTES)
BOOTSTRAP = 2000  # resamples of the prompt set behind every interval


def prompt_clusters(rows: Sequence[dict]) -> list[int]:
    """The prompt index of every clip: clips of one prompt (its seeds) resample together."""
    ids: dict[tuple, int] = {}
    return [ids.setdefault((r.get("split"), r["prompt"]), len(ids)) for r in rows]


def _cluster_sums(per_clip: Sequence[dict], prompt_of: Sequence[int], attr: str):
    n_prompts = max(prompt_of) + 1
    right, scored = np.zeros(n_prompts), np.zeros(n_prompts)
    for s, p in zip(per_clip, prompt_of, strict=True):
        if s[attr] is not None:
            right[p] += bool(s[attr])
            scored[p] += 1
    return right, scored


def _resampled_accuracy(right, scored, idx) -> np.ndarray:
    n = scored[idx].sum(1)
    return np.where(n > 0, right[idx].sum(1) / np.maximum(n, 1), np.nan)


def bootstrap_ci(
    per_clip: Sequence[dict], prompt_of: Sequence[int], seed: int = 0
) -> dict[str, list[float] | None]:
    """95% interval of each attribute's accuracy, resampling prompts (with all their clips)
    with replacement BOOTSTRAP times: the spread a different prompt set of this size would give."""
    if not per_clip:
        return {a: None for a in CI_ATTRS}
    idx = np.random.default_rng(seed).integers(
        0, max(prompt_of) + 1, (BOOTSTRAP, max(prompt_of) + 1)
    )
    out: dict[str, list[float] | None] = {}
    for a in CI_ATTRS:
        right, scored = _cluster_sums(per_clip, prompt_of, a)
        if scored.sum() == 0:
            out[a] = None
            continue
        acc = _resampled_accuracy(right, scored, idx)
        out[a] = [float(np.nanpercentile(acc, 2.5)), float(np.nanpercentile(acc, 97.5))]
    return out


def paired_difference(a: dict, b: dict, seed: int = 0) -> dict[str, dict]:
    """Accuracy of model A minus model B on the same clips' prompts (two faithfulness() results of
    one prompt set and seed count), with a paired bootstrap 95% interval over prompts."""
    for f in (a, b):
        if "per_clip_scores" not in f:
            raise MvditError(
                "an eval.json without per-clip scores (written by an older mvdit): rerun mvdit eval"
            )
    if a["prompt_of_clip"] != b["prompt_of_clip"]:
        raise MvditError(
            "the two evaluations are not of the same prompts and seeds; compare runs of "
            "mvdit eval with the same -p files and --seeds"
        )
    prompt_of = a["prompt_of_clip"]
    idx = np.random.default_rng(seed).integers(
        0, max(prompt_of) + 1, (BOOTSTRAP, max(prompt_of) + 1)
    )
    out = {}
    for attr in CI_ATTRS:
        ra, sa = _cluster_sums(a["per_clip_scores"], prompt_of, attr)
        rb, sb = _cluster_sums(b["per_clip_scores"], prompt_of, attr)
        if sa.sum() == 0 or sb.sum() == 0:
            continue
        d = _resampled_accuracy(ra, sa, idx) - _resampled_accuracy(rb, sb, idx)
        out[attr] = {
            "a": float(ra.sum() / sa.sum()),
            "b": float(rb.sum() / sb.sum()),
            "diff": float(ra.sum() / sa.sum() - rb.sum() / sb.sum()),
            "ci95": [float(np.nanpercentile(d, 2.5)), float(np.nanpercentile(d, 97.5))],
        }
    return out


def difference_markdown(diff: dict[str, dict], name_a: str, name_b: str) -> str:
    """The paired comparison as a markdown table."""
    lines = [
        f"| attribute | {name_a} | {name_b} | difference | 95% interval (paired bootstrap over prompts) |",
        "|---|---:|---:|---:|---|",
    ]
    for attr, d in diff.items():
        lo, hi = d["ci95"]
        lines.append(
            f"| {attr} | {d['a']:.3f} | {d['b']:.3f} | {d['diff']:+.3f} | [{lo:+.3f}, {hi:+.3f}] |"
        )
    return "\n".join(lines) + "\n"


def faithfulness_splits(f: dict) -> dict[str, dict]:
    """The summaries of a faithfulness() result ("all", then one per split), without its metadata."""
    return {k: v for k, v in f.items() if k not in FAITHFULNESS_META}


def attribute_breakdown(scores: Sequence[dict], wants: Sequence, attr: str) -> dict:
    """Accuracy of `attr` ("motion" or "shape") per asked value over the one-object prompts, with
    what the detector saw instead ("none": no object found; "2 objects": more than one)."""
    table: dict[str, dict] = {}
    for s, w in zip(scores, wants, strict=True):
        if len(w.objects) != 1 or getattr(w.objects[0], attr) is None:
            continue
        objs = s["detected"]["objects"]
        seen = objs[0][attr] if len(objs) == 1 else "none" if not objs else f"{len(objs)} objects"
        row = table.setdefault(
            getattr(w.objects[0], attr), {"clips": 0, "right": 0, "seen": Counter()}
        )
        row["clips"] += 1
        row["right"] += bool(s[attr])
        row["seen"][str(seen)] += 1
    return {
        m: {
            "clips": r["clips"],
            "accuracy": r["right"] / r["clips"],
            "seen": dict(r["seen"].most_common()),
        }
        for m, r in sorted(table.items())
    }


def real_shapes_clips(
    prompts: Sequence[str], n: int, frames: int, height: int, width: int, seed: int = 1
) -> list[np.ndarray]:
    """Real clips from the vocabulary the prompts use (colours, shapes, motions, backgrounds),
    drawn at the embedded default's object sizes and angles, so the FVD analogue compares like
    with like."""
    attrs = [parse_caption(p) for p in prompts]
    objs = [o for a in attrs for o in a.objects]
    pick = lambda xs: sorted({x for x in xs if x is not None}) or None  # noqa: E731
    drawn = default_train_config().data
    ds = ShapesDataset(
        size=n, frames=frames, height=height, width=width, seed=seed, split="val",
        max_objects=max(len(a.objects) for a in attrs),
        colours=pick(o.colour for o in objs), shapes=pick(o.shape for o in objs),
        motions=pick(o.motion for o in objs), backgrounds=pick(a.background for a in attrs),
        background_styles=pick(a.background_style for a in attrs),
        object_size=drawn.object_size, upright=drawn.upright,
    )  # fmt: skip
    return [render(ds.spec(i)[0], frames, height, width, 8.0)[0] for i in range(n)]


def score(
    videos: Sequence[np.ndarray],
    rows: Sequence[dict],
    fps: float,
    feature_size: int = 224,
    real: Sequence[np.ndarray] | None = None,
) -> dict:
    """All metrics of a set of generated clips (uint8 (T, H, W, 3)) and their prompt rows."""
    out: dict = {
        "faithfulness": faithfulness(videos, rows),
        "vbench": score_videos(videos, fps, feature_size),
    }
    if real is not None and len(videos) >= 2 and len(real) >= 2:
        out["distribution"] = distribution_distance(videos, real, feature_size)
    else:
        out["distribution"] = None
    return out


# ---------------------------------------------------------------------------------------------
# the command


def sample_prompts(
    pipe,
    rows: Sequence[dict],
    seeds: int,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
):
    """Generate the clips of prompt rows, one batch per prompt: clip k of a prompt is sample k of a
    batch of `seeds` drawn from `seed`, so a prompt's clips never depend on the other prompts.
    Yields (index, row, Generation, seconds spent generating)."""
    for i, row in enumerate(rows):
        t0 = time.perf_counter()
        g = pipe.generate([row["prompt"]] * seeds, steps=steps, guidance=guidance, seed=seed)
        yield i, row, g, time.perf_counter() - t0


class EvalConfig(Strict):
    """[eval]: generate clips for prompt sets with fixed seeds and score them (`mvdit eval`)."""

    model: str | None = Field(
        default=None, description="model directory (pipeline.json + dit/ + vae/)"
    )
    prompts: list[str] = Field(
        default_factory=lambda: list(SHIPPED_PROMPTS),
        description="prompt files: text (one a line) or JSONL {prompt, split}; repeatable",
    )
    out: str | None = Field(
        default=None,
        description="output directory for eval.json, eval.md, contact_sheet.png, videos/",
    )
    seeds: int = Field(default=2, ge=1, description="samples per prompt")
    seed: int = bounded("seed", 0, description="noise seed of each prompt's batch")
    steps: int | None = bounded("steps", None, description=STEPS_HELP)
    guidance: float | None = bounded(
        "guidance", None, allow_inf_nan=False, description=GUIDANCE_HELP
    )
    feature_size: int = Field(
        default=224, ge=8, description="frame side fed to the feature network (VBench: 224)"
    )
    device: str = Field(default="cpu", description="cpu or cuda")


class EvalSections(Strict):
    eval: EvalConfig = Field(default_factory=EvalConfig)


def run_eval(cfg: EvalConfig) -> Result:
    """`mvdit eval`: `evaluate` on a config section. Clips that went NaN/inf are kept and scored;
    an MvditError at the end names them (after every file is written)."""
    require_device(cfg.device, "eval.device (--device)")
    out = Path(required(cfg.out, "eval.out (--out)"))
    r = evaluate(cfg)
    if bad := r["failed_clips"]:
        raise MvditError(
            f"{len(bad)} of {r['clips']} clips failed ({bad[0]['prompt']!r}: {bad[0]['why']}); "
            f"they are listed in {out / 'eval.json'} under failed_clips"
        )
    return Result(r, lambda r: _eval_summary(r, out), out)


def _eval_summary(r: Mapping, out: Path) -> str:
    f = r["faithfulness"]
    head = f"{r['clips']} clips scored" + (f"; faithfulness {f['all']['overall']:.3f}" if f else "")
    return f"{head}\nresults: {out / 'eval.md'}   {out / 'eval.json'}   sheet: {out / 'contact_sheet.png'}"


def evaluate(cfg: EvalConfig) -> dict:
    """Generate `seeds` clips per prompt (clip k of a prompt: sample k of a batch drawn from `seed`),
    score everything and write OUT/eval.json, eval.md, contact_sheet.png and videos/. Clips that
    went NaN/inf are kept, scored and listed (`failed_clips`); run_eval reports them."""
    model = required(cfg.model, "eval.model (--model)")
    out = required(cfg.out, "eval.out (--out)")
    prompt_files, seeds, steps, guidance = cfg.prompts, cfg.seeds, cfg.steps, cfg.guidance
    seed, feature_size, device = cfg.seed, cfg.feature_size, cfg.device
    rows = [r for f in prompt_files for r in read_prompts(f)]
    pipe = Pipeline.from_pretrained(model, device=device)
    c = pipe.config
    out = Path(out)
    (out / "videos").mkdir(parents=True, exist_ok=True)

    sampling = pipe.sampling(steps, guidance)  # the model's sampler; refuses what it cannot run
    videos, clip_rows, files, gen_s, failed = [], [], {}, 0.0, []
    for i, row, g, seconds in sample_prompts(pipe, rows, seeds, steps, guidance, seed):
        gen_s += seconds
        # a clip whose sampling went NaN/inf stays in the set (scored as what it shows, a blank
        # clip) and is listed, so one bad clip neither stops the evaluation nor hides
        failed += [{"prompt": row["prompt"], "sample": k, "why": g.failure(k)} for k in g.failed]
        for k, v in enumerate(g.videos.numpy()):
            name = f"{i:03d}-{k}.mp4"
            write_mp4(out / "videos" / name, v, c.fps)
            files[str((out / "videos" / name).resolve())] = row["prompt"]
            videos.append(v)
            clip_rows.append(row | {"sample": k, "file": f"videos/{name}"})

    real = None
    try:
        real = real_shapes_clips(
            [r["prompt"] for r in rows], max(len(videos), 2), c.frames, c.height, c.width
        )
    except MvditError:
        pass  # prompts are not shapes captions: no reference set to compare against
    result = {
        "model": str(model),
        "prompt_files": [str(p) for p in prompt_files],
        "clip": {"frames": c.frames, "height": c.height, "width": c.width, "fps": c.fps},
        "sampler": {
            **sampling.summary(),
            "seed": seed,
            "samples_per_prompt": seeds,
        },
        "prompts": len(rows),
        "clips": len(videos),
        "generate_seconds_per_clip": gen_s / len(videos),
        "failed_clips": failed,
        **score(videos, clip_rows, c.fps, feature_size, real),
        "clips_index": clip_rows,
    }
    write_json(out / "videos" / "prompts.json", files)
    first = [k for k, r in enumerate(clip_rows) if r["sample"] == 0][:24]
    save_png(
        out / "contact_sheet.png",
        contact_sheet([videos[k] for k in first], [clip_rows[k]["prompt"] for k in first]),
    )
    write_json(out / "eval.json", result)
    atomic_write_text(out / "eval.md", eval_markdown(result))
    return result


def _fmt(x) -> str:
    if x is None:
        return "–"
    return f"{x:.4f}" if isinstance(x, float) else str(x)


def eval_markdown(r: dict) -> str:
    c, s = r["clip"], r["sampler"]
    lines = [
        f"# Evaluation of `{r['model']}`",
        "",
        f"{r['prompts']} prompts × {s['samples_per_prompt']} samples = {r['clips']} clips of "
        f"{c['frames']}×{c['height']}×{c['width']} at {c['fps']:g} fps; {s['steps']} steps, guidance {s['guidance']:g} "
        f"({s['nfe']} network evaluations); {r['generate_seconds_per_clip']:.2f} s per clip.",
        "",
    ]
    f = r.get("faithfulness")
    if f:
        splits = list(faithfulness_splits(f))
        attrs = ["overall", "count", "colour", "shape", "motion", "speed", "background"]
        lines += [
            f"## Prompt faithfulness ({f['label']}: {f['note']})",
            "",
            "| split | clips | " + " | ".join(attrs) + " |",
            "|---" * (len(attrs) + 2) + "|",
        ]
        for k in splits:
            lines.append(
                f"| {k} | {f[k]['clips']} | " + " | ".join(_fmt(f[k].get(a)) for a in attrs) + " |"
            )
        if f.get("ci95"):
            cells = ", ".join(
                f"{a} [{v[0]:.2f}, {v[1]:.2f}]" for a, v in f["ci95"].items() if v is not None
            )
            lines += ["", f"95% intervals over prompts (bootstrap, all splits): {cells}."]
        if "unscored" in f:
            lines += [
                "",
                f"Clips not scored for an attribute (their prompt states none the parser reads), of {f['all']['clips']}: "
                + ", ".join(f"{a} {n}" for a, n in f["unscored"].items())
                + ".",
            ]
        lines.append("")
        for key, what in (("by_motion", "Motion"), ("by_shape", "Shape")):
            if not f.get(key):
                continue
            lines += [
                f"{what} by the {what.lower()} asked for (one-object prompts, all splits):",
                "",
                "| asked | clips | accuracy | what the detector saw |",
                "|---|---:|---:|---|",
            ]
            for m, row in f[key].items():
                seen = ", ".join(f"{k} {v}" for k, v in row["seen"].items())
                lines.append(f"| {m} | {row['clips']} | {row['accuracy']:.2f} | {seen} |")
            lines.append("")
    lines += [
        "## VBench-style dimensions",
        "",
        "| dimension | score | label | how |",
        "|---|---|---|---|",
    ]
    for name, d in r["vbench"].items():
        lines.append(
            f"| {name.replace('_', ' ')} | {_fmt(d['value'])} | {d['label']} | {d['note']} |"
        )
    d = r.get("distribution")
    if d:
        lines += [
            "",
            "## Distribution distance",
            "",
            "| metric | value | label | how |",
            "|---|---|---|---|",
        ]
        lines.append(
            f"| FVD analogue ({d['n_generated']} generated vs {d['n_real']} real) | {d['value']:.3f} | {d['label']} | {d['note']} |"
        )
        if "kid" in d:
            lines.append(
                f"| KID (same embeddings) | {d['kid']:.4f} | {d['label']} | unbiased at small sample sizes |"
            )
    return "\n".join(lines) + "\n"


def write_prompt_files(
    config: str | Path | None, out_dir: str | Path, n: int = 24, seed: int = 0
) -> list[Path]:
    """Write prompts/shapes-{eval,paraphrase,holdout}.txt from a training config's data section."""
    cfg = load_train_config(config)
    sets = shapes_prompt_sets(cfg.data, n, seed)
    holdout = cfg.data.holdout or default_holdout()
    paths = []
    for name, prompts in sets.items():
        head = f"# {name}: {len(prompts)} prompts from the shapes vocabulary of {config or 'the default config'}"
        if name == "shapes-holdout":
            head += f"\n# held-out combinations (data.holdout): {', '.join(holdout)}"
        path = Path(out_dir) / f"{name}.txt"
        atomic_write_text(path, head + "\n" + "\n".join(prompts) + "\n")
        paths.append(path)
    return paths


# python -m mvdit.eval.evaluate CONFIG OUT_DIR: regenerate the shipped prompt files
if __name__ == "__main__":
    for p in write_prompt_files(
        sys.argv[1] if len(sys.argv) > 1 else None, sys.argv[2] if len(sys.argv) > 2 else "prompts"
    ):
        print(p)


def compare_evals(a: str | Path, b: str | Path, out: str | Path | None = None) -> Result:
    """`mvdit eval-compare`: faithfulness of A minus B per attribute with paired bootstrap
    intervals over prompts; the table also written to `out` (.md) when given."""
    evals = []
    for p in (Path(a), Path(b)):
        path = p / "eval.json" if p.is_dir() else p
        f = read_json(path).get("faithfulness")
        if not f:
            raise MvditError(
                f"{path} has no faithfulness scores (its prompts are not shapes captions)"
            )
        evals.append(f)
    table = difference_markdown(paired_difference(*evals), "A", "B")
    if out is not None:
        atomic_write_text(out, f"A = `{a}`, B = `{b}`\n\n{table}")
    text = f"A = {a}\nB = {b}, {evals[0]['all']['clips']} clips each\n{table}".rstrip("\n")
    return Result(
        {"table": table}, lambda r: text + (f"\nwrote {out}" if out else ""), out and Path(out)
    )

"""An exported directory against the eager pipeline it came from, measured in one run:
`mvdit run-exported` (one clip, frames and stage latencies side by side) and `mvdit eval-exported`
(the shapes detector over a prompt file, with the mean latency of each stage)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mvdit import MvditError
from mvdit.bench.measure import si
from mvdit.eval.evaluate import read_prompts
from mvdit.eval.faithfulness import score_clip, summarize
from mvdit.export.runtime import ExportedPipeline
from mvdit.io import check_output_file, write_json
from mvdit.pipeline import Pipeline, is_model_dir, start_noise
from mvdit.results import Result


def torch_noise(shape: list[int], seed: int) -> np.ndarray:
    """The start noise the eager pipeline draws for one clip with `seed` (manifest shape
    (1, C, t, h, w)), so the two can be compared."""
    return start_noise(shape[0], tuple(shape[1:]), seed).numpy()


def run_side_by_side(export_dir: str | Path, prompt: str, seed: int, *, eager: bool = True) -> dict:
    """One clip from the exported graphs and, when the source pipeline is on disk, from eager
    PyTorch with the same noise: frames, per-stage seconds, and the largest frame difference."""
    t0 = time.perf_counter()
    exported = ExportedPipeline(export_dir)
    load = time.perf_counter() - t0
    noise = torch_noise(exported.manifest["latent"]["shape"], seed)
    exported.generate(prompt, noise=noise)  # warm-up: first calls allocate and pick kernels
    frames, timings = exported.generate(prompt, noise=noise)
    out = {
        "exported": {"runtime": exported.runtime, "load": load, **timings},
        "frames": frames,
        "pipe": exported,
    }
    source = Path(exported.manifest["source"])
    if not eager:
        return out
    if not is_model_dir(source):
        out["eager_missing"] = f"the source pipeline {source} is not on disk: no eager comparison"
        return out
    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(source)
    load = time.perf_counter() - t0
    pipe.generate([prompt], seed=seed)  # warm-up, as above
    g = pipe.generate([prompt], seed=seed)
    ref = g.videos[0].numpy()
    out["eager"] = {"runtime": "PyTorch eager", "load": load, **g.timings}
    out["max_frame_difference"] = int(np.abs(frames.astype(int) - ref.astype(int)).max())
    return out


def eval_exported(export_dir: str | Path, prompt_files: list[Path], seeds: int) -> dict:
    """The shapes detector's accuracy on clips from the exported graphs alone (each prompt at
    seeds 0..seeds-1, torch's noise for that seed), with the mean seconds of each stage."""
    if seeds < 1:
        raise MvditError(f"--seeds must be at least 1, got {seeds}")
    exported = ExportedPipeline(export_dir)
    prompts = [r["prompt"] for f in prompt_files for r in read_prompts(f)]
    shape = exported.manifest["latent"]["shape"]
    scores, stages = [], []
    jobs = [(p, s) for s in range(seeds) for p in prompts]
    for prompt, seed in tqdm(jobs, desc="eval-exported", leave=False):
        frames, timings = exported.generate(prompt, noise=torch_noise(shape, seed))
        scores.append(score_clip(frames, prompt))
        stages.append(timings)
    mean = {k: float(np.mean([t[k] for t in stages])) for k in stages[0]}
    return {
        "export": str(export_dir),
        "runtime": exported.runtime,
        "precision": exported.manifest["precision"],
        "bytes": sum(a["bytes"] for a in exported.manifest["artefacts"].values()),
        "faithfulness": summarize(scores),
        "seconds_per_clip": mean | {"total": sum(mean.values())},
    }


def run_exported(export_dir: str | Path, prompt: str, output: str | Path, *, seed: int = 0,
                 eager: bool = True) -> Result:  # fmt: skip
    """`mvdit run-exported`: run_side_by_side, the clip written to `output` (.mp4)."""
    output = Path(output)
    if output.suffix.lower() != ".mp4":
        raise MvditError(f"output must end in .mp4, got {output}")
    check_output_file(output, "--output")
    r = run_side_by_side(export_dir, prompt, seed, eager=eager)
    r["pipe"].write(r["frames"], output)
    record = {k: v for k, v in r.items() if k not in ("frames", "pipe")}
    return Result(record, lambda r: _side_by_side_table(r, output), output)


def _side_by_side_table(r: dict, output: Path) -> str:
    lines = ["| runtime | load | text | DiT | decode |", "|---|---|---|---|---|"]
    for row in [r["exported"]] + ([r["eager"]] if "eager" in r else []):
        cells = " | ".join(f"{row[k] * 1e3:.1f} ms" for k in ("text", "dit", "decode"))
        lines.append(f"| {row['runtime']} | {si(row['load'], 's')} | {cells} |")
    if "max_frame_difference" in r:
        lines.append(f"largest frame difference against eager: {r['max_frame_difference']} of 255")
    elif "eager_missing" in r:
        lines.append(r["eager_missing"])
    return "\n".join([*lines, f"wrote {output}"])


def eval_exported_to(export_dir: str | Path, prompt_files: list[Path], seeds: int, *,
                     out: str | Path | None = None) -> Result:  # fmt: skip
    """`mvdit eval-exported`: eval_exported, also written as JSON to `out` when given."""
    if out is not None:
        check_output_file(out, "--out")
    r = eval_exported(export_dir, prompt_files, seeds)
    if out is not None:
        write_json(out, r)
    return Result(r, lambda r: _eval_exported_lines(r, out), None if out is None else Path(out))


def _eval_exported_lines(r: dict, out: str | Path | None) -> str:
    f, t = r["faithfulness"], r["seconds_per_clip"]
    attrs = ("overall", "count", "colour", "shape", "motion", "speed")
    scores = ", ".join(f"{k} {f[k]:.3f}" for k in attrs if f.get(k) is not None)
    lines = [
        f"{r['runtime']} {r['precision']}, {r['bytes'] / 2**20:.2f} MiB, {f['clips']} clips: {scores}",
        "per clip: " + " | ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items()),
    ]
    return "\n".join(lines + ([f"wrote {out}"] if out is not None else []))

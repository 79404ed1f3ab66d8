"""An exported directory against the eager pipeline it came from, measured in one run:
`mvdit run-exported` (one clip, frames and stage latencies side by side) and `mvdit eval-exported`
(the shapes detector over a prompt file, with the mean latency of each stage)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from mvdit import MvditError
from mvdit.eval.evaluate import read_prompts
from mvdit.eval.faithfulness import score_clip, summarize
from mvdit.export.runtime import ExportedPipeline
from mvdit.pipeline import Pipeline, start_noise


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
    if not (source / "pipeline.json").is_file():
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

"""Measure the offline VBench dimensions and the FVD analogue on real `shapes` clips and on controls.

Every number in docs/evaluation.md's "VBench-style dimensions" table comes from this script:

    python scripts/check_vbench.py                 # 48 clips of 9x32x32, features at 224 px
    python scripts/check_vbench.py -n 24 --size 64 # quicker
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mvdit.data.shapes import ShapesDataset, render
from mvdit.eval.metrics import clip_embedding, frechet_distance
from mvdit.eval.vbench import score_videos


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("-n", type=int, default=48, help="clips per condition")
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--height", type=int, default=32)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--size", type=int, default=224, help="frame side fed to the feature network")
    a = p.parse_args()

    def clips(seed: int) -> list[np.ndarray]:
        ds = ShapesDataset(
            size=a.n, frames=a.frames, height=a.height, width=a.width, seed=seed, split="val"
        )
        return [render(ds.spec(i)[0], a.frames, a.height, a.width, 8.0)[0] for i in range(a.n)]

    real = clips(0)
    reference = torch.stack(
        [clip_embedding(v, a.size) for v in clips(1)]
    )  # another draw of real clips
    rng = np.random.default_rng(0)
    conditions = {
        "real clips": real,
        "control: first frame frozen": [np.repeat(v[:1], len(v), 0) for v in real],
        "control: frames shuffled": [v[rng.permutation(len(v))] for v in real],
        "control: odd frames jittered 2 px": [
            np.stack(
                [
                    np.roll(f, tuple(rng.integers(-2, 3, 2)), (0, 1)) if t % 2 else f
                    for t, f in enumerate(v)
                ]
            )
            for v in real
        ],
        "control: scene cut half-way": [
            np.concatenate([v[: len(v) // 2], w[len(v) // 2 :]])
            for v, w in zip(real, real[1:] + real[:1], strict=True)
        ],
        "control: uniform noise": [rng.integers(0, 256, v.shape, dtype=np.uint8) for v in real],
    }
    dims = (
        "temporal_flickering",
        "dynamic_degree",
        "motion_smoothness",
        "subject_consistency",
        "background_consistency",
    )
    print(
        f"| {a.n} clips, {a.frames}x{a.height}x{a.width}, features at {a.size} px | "
        + " | ".join(d.replace("_", " ") for d in dims)
        + " | FVD analogue | scoring s/clip |"
    )
    print("|---" * (len(dims) + 3) + "|")
    for name, videos in conditions.items():
        t0 = time.perf_counter()
        s = score_videos(videos, 8.0, a.size)
        fd = frechet_distance(torch.stack([clip_embedding(v, a.size) for v in videos]), reference)
        dt = (time.perf_counter() - t0) / len(videos)
        print(
            f"| {name} | "
            + " | ".join(f"{s[d]['value']:.4f}" for d in dims)
            + f" | {fd:.2f} | {dt:.2f} |"
        )
    print(
        "labels: " + ", ".join(f"{d}: {s[d]['label']}" for d in dims) + ", FVD analogue: substitute"
    )


if __name__ == "__main__":
    main()

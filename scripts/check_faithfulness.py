"""How right the prompt-faithfulness detector is: real clips, degraded clips and negative controls.

    python scripts/check_faithfulness.py                              # 200 clips, 9x32x32
    python scripts/check_faithfulness.py --frames 16 --height 64 --width 64

Real `shapes` clips (validation split, full vocabulary, one or two objects) are scored against
their own captions; a faithful detector gets them all right. The degraded rows add what a
generator's output may carry (grain, blur, H.264). The controls must score near chance: uniform
noise in place of the clip, every clip against another clip's prompt, the clip played backwards
(right except for direction), and the first frame frozen (right except for motion).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from mvdit.data.shapes import ShapesDataset, render
from mvdit.eval.faithfulness import ATTRIBUTES, score_clip, summarize
from mvdit.video import read_video, write_mp4


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("-n", type=int, default=200, help="clips")
    ap.add_argument("--frames", type=int, default=9)
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--seed", type=int, default=123)
    args = ap.parse_args()
    t, h, w = args.frames, args.height, args.width
    ds = ShapesDataset(size=args.n, frames=t, height=h, width=w, seed=args.seed, split="val")
    specs = [ds.spec(i)[0] for i in range(args.n)]
    videos = [render(s, t, h, w, 8.0)[0] for s in specs]
    prompts = [s.attributes() for s in specs]
    rng = np.random.default_rng(0)
    tmp = Path(tempfile.mkdtemp())

    def mp4(v: np.ndarray) -> np.ndarray:
        back, _ = read_video(write_mp4(tmp / "clip.mp4", v, 8.0))  # default: upscaled >= 128 px
        k = back.shape[1] // h
        return back.reshape(t, h, k, w, k, 3).mean(axis=(2, 4)).round().astype(np.uint8)

    rows = {
        "real clips": (lambda v: v, prompts),
        "+ grain (sigma 15)": (
            lambda v: np.clip(v + rng.normal(0, 15, v.shape), 0, 255).astype(np.uint8),
            prompts,
        ),
        "+ blur (sigma 0.7 px)": (
            lambda v: (
                ndimage.gaussian_filter(v.astype(np.float32), (0, 0.7, 0.7, 0))
                .round()
                .astype(np.uint8)
            ),
            prompts,
        ),
        "+ H.264 mp4 round trip": (mp4, prompts),
        "+ blur (1 px) and grain (10)": (
            lambda v: np.clip(
                ndimage.gaussian_filter(v.astype(np.float32), (0, 1, 1, 0))
                + rng.normal(0, 10, v.shape),
                0,
                255,
            ).astype(np.uint8),
            prompts,
        ),
        "control: uniform noise": (
            lambda v: rng.integers(0, 256, v.shape, dtype=np.uint8),
            prompts,
        ),
        "control: another clip's prompt": (lambda v: v, prompts[1:] + prompts[:1]),
        "control: played backwards": (lambda v: v[::-1].copy(), prompts),
        "control: first frame frozen": (lambda v: np.repeat(v[:1], len(v), axis=0), prompts),
    }
    print(
        f"{args.n} validation clips of {t}x{h}x{w}; accuracy per attribute (over clips whose prompt states it)"
    )
    print(
        f"{'':34s}{'overall':>8s}" + "".join(f"{k:>11s}" for k in ATTRIBUTES) + f"{'ms/clip':>9s}"
    )
    for name, (make, want) in rows.items():
        t0 = time.perf_counter()
        s = summarize([score_clip(make(v), p) for v, p in zip(videos, want, strict=True)])
        ms = 1e3 * (time.perf_counter() - t0) / args.n
        print(
            f"{name:34s}{s['overall']:8.3f}"
            + "".join(f"{s[k]:11.3f}" for k in ATTRIBUTES)
            + f"{ms:9.1f}"
        )


if __name__ == "__main__":
    main()

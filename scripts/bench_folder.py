"""How fast a video folder is scanned and decoded, and why frames are resized with swscale.

    python scripts/bench_folder.py                 # 100 clips of 3 s at 640x360, 30 fps
    python scripts/bench_folder.py --videos 50 --threads 1

Writes synthetic H.264 clips to a temporary folder, then times (1) building VideoFolderDataset,
which reads headers only, (2) one item (decode + resample + resize + crop) at two clip sizes,
and (3) the resize alone: swscale's bilinear (what the dataset uses) against
F.interpolate(antialias=True) on the same decoded frames.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
import torch.nn.functional as F

from mvdit.data.folder import VideoFolderDataset, decode_clip


def write_clip(path: Path, frames: int, fps: int, width: int, height: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast"}
        for i in range(frames):  # a smooth moving texture, so the encoder does real work
            img = np.roll(base.repeat(8, 0).repeat(8, 1), 4 * i, axis=1)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def timeit(fn, repeat: int) -> float:
    fn()  # warm-up
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t) / repeat


def torch_resize(frames: list[av.VideoFrame], height: int, width: int) -> torch.Tensor:
    x = torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in frames]))
    x = x.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    scale = max(height / h, width / w)
    sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
    x = F.interpolate(x, size=(sh, sw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (sh - height) // 2, (sw - width) // 2
    return x[..., top : top + height, left : left + width]


def swscale_resize(frames: list[av.VideoFrame], height: int, width: int) -> np.ndarray:
    h, w = frames[0].height, frames[0].width
    scale = max(height / h, width / w)
    sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
    top, left = (sh - height) // 2, (sw - width) // 2
    out = [
        f.reformat(width=sw, height=sh, format="rgb24", interpolation="BILINEAR").to_ndarray()
        for f in frames
    ]
    return np.stack(out)[:, top : top + height, left : left + width]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        for k in range(args.videos):
            write_clip(root / f"v{k:04d}.mp4", 90, 30, 640, 360, k)
        rows = "".join(f"v{k:04d}.mp4,clip {k}\n" for k in range(args.videos))
        (root / "captions.csv").write_text("path,caption\n" + rows)
        print(
            f"wrote {args.videos} clips (3 s, 640x360, 30 fps) in {time.perf_counter() - t:.1f} s"
        )

        t = time.perf_counter()
        ds = VideoFolderDataset(root, frames=9, height=32, width=32, fps=8)
        scan = time.perf_counter() - t
        print(
            f"scan (headers only): {scan:.2f} s for {len(ds)} clips, {1e3 * scan / len(ds):.2f} ms per clip"
        )

        for frames, size in ((9, 32), (17, 64), (49, 256)):
            ds = VideoFolderDataset(root, frames=frames, height=size, width=size, fps=24)
            ms = 1e3 * timeit(lambda ds=ds: ds[0], 10)
            print(f"item {frames}x{size}x{size} at 24 fps: {ms:.1f} ms")

        with av.open(str(root / "v0000.mp4")) as c:
            decoded = [f for _, f in zip(range(49), c.decode(video=0), strict=False)]
        for size in (32, 256):
            a = 1e3 * timeit(lambda s=size: swscale_resize(decoded, s, s), 10)
            b = 1e3 * timeit(lambda s=size: torch_resize(decoded, s, s), 10)
            diff = np.abs(
                swscale_resize(decoded, size, size)
                - torch_resize(decoded, size, size).permute(0, 2, 3, 1).numpy()
            )
            print(
                f"resize 49 frames 640x360 -> {size}x{size}: swscale {a:.1f} ms, "
                f"F.interpolate(antialias) {b:.1f} ms ({b / a:.0f}x), mean |diff| {diff.mean():.2f}/255"
            )
        # decode_clip is what an item costs without the dataset around it
        ms = 1e3 * timeit(lambda: decode_clip(root / "v0000.mp4", 49, 256, 256, 24.0), 10)
        print(f"decode_clip 49x256x256: {ms:.1f} ms")


if __name__ == "__main__":
    main()

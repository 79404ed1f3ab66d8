"""Video files and pictures: H.264 mp4 via PyAV, contact sheets and PNGs, all written atomically
(mvdit.io.atomic_file)."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from mvdit import MvditError
from mvdit.io import atomic_file
from mvdit.limits import check_bound


def _check_video(video: np.ndarray) -> np.ndarray:
    video = np.asarray(video)
    if video.ndim != 4 or video.shape[-1] != 3:
        raise MvditError(f"a video must be uint8 (T, H, W, 3), got shape {video.shape}")
    if video.dtype != np.uint8:
        raise MvditError(f"a video must be uint8 (T, H, W, 3), got dtype {video.dtype}")
    return video


def upscale(video: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (..., H, W, C): keeps tiny clips sharp when viewed."""
    if factor == 1:
        return video
    return video.repeat(factor, axis=-3).repeat(factor, axis=-2)


def auto_scale(height: int, width: int, min_side: int = 128) -> int:
    """The smallest integer factor that makes a clip at least min_side pixels and even-sized
    (H.264 in yuv420p stores chroma at half resolution, so odd sizes cannot be encoded)."""
    k = max(1, math.ceil(min_side / min(height, width)))
    if (height * k) % 2 or (width * k) % 2:
        k += 1
    return k


def write_mp4(
    path: str | Path, video: np.ndarray, fps: float, scale: int | None = None, crf: int = 18
) -> Path:
    """Write uint8 (T, H, W, 3) as H.264/yuv420p mp4, atomically.

    scale: nearest upscale factor; None picks one that makes tiny clips viewable and even-sized.
    """
    import av

    video = _check_video(video)
    if fps <= 0:
        raise MvditError(f"fps must be positive, got {fps}")
    k = auto_scale(*video.shape[1:3]) if scale is None else int(scale)
    check_bound("scale", k, "--scale")
    video = upscale(video, k)
    h, w = video.shape[1:3]
    if h % 2 or w % 2:
        raise MvditError(f"H.264 needs an even width and height, got {w}x{h}: pass another scale")
    with atomic_file(path, suffix=".mp4") as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
            stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in video:
                container.mux(
                    stream.encode(
                        av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                    )
                )
            container.mux(stream.encode())
    return Path(path)


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """Decode a video file into uint8 (T, H, W, 3) and its frame rate."""
    import av

    path = Path(path)
    if not path.is_file():
        raise MvditError(f"{path} not found")
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0) or 0.0
            frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    except (av.error.FFmpegError, IndexError) as e:
        raise MvditError(f"cannot read {path} as a video ({e})") from None
    if not frames:
        raise MvditError(f"{path} has no video frames")
    return np.stack(frames), fps


def contact_sheet(
    videos: Sequence[np.ndarray],
    captions: Sequence[str] | None = None,
    max_frames: int = 9,
    min_side: int = 64,
) -> np.ndarray:
    """One row per video: its caption, then up to max_frames frames spread over the clip.

    Returns uint8 (H, W, 3). Frames smaller than min_side are upscaled (nearest) to stay legible.
    """
    from PIL import Image, ImageDraw, ImageFont

    if not videos:
        raise MvditError("contact_sheet needs at least one video")
    videos = [_check_video(v) for v in videos]
    captions = list(captions) if captions is not None else [""] * len(videos)
    if len(captions) != len(videos):
        raise MvditError(f"{len(videos)} videos but {len(captions)} captions")
    h, w = videos[0].shape[1:3]
    k = max(1, math.ceil(min_side / min(h, w)))
    pad, line = 4, 12
    cols = min(max_frames, max(len(v) for v in videos))
    fw, fh = w * k, h * k
    width = pad + cols * (fw + pad)
    chars = max(20, width // 6)
    wrapped = [textwrap.wrap(c, chars) or [""] for c in captions]
    height = pad + sum(len(lines) * line + fh + 2 * pad for lines in wrapped)
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    y = pad
    for video, lines in zip(videos, wrapped, strict=True):
        if video.shape[1:3] != (h, w):
            raise MvditError(
                f"contact_sheet needs videos of one size, got {video.shape[1:3]} and {(h, w)}"
            )
        for j, text in enumerate(lines):
            draw.text((pad, y + j * line), text, fill=(0, 0, 0), font=font)
        y += len(lines) * line + pad
        idx = np.linspace(0, len(video) - 1, min(cols, len(video))).round().astype(int)
        for c, t in enumerate(idx):
            sheet.paste(Image.fromarray(upscale(video[t], k)), (pad + c * (fw + pad), y))
        y += fh + pad
    return np.asarray(sheet)


def save_png(path: str | Path, image) -> Path:
    """Write an (H, W, 3) uint8 array or a PIL image as PNG, atomically."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    with atomic_file(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
    return Path(path)

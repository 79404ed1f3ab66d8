"""Your own videos: a folder of clips with captions, decoded with PyAV into training clips.

Layout (the LTX-Video-Trainer / finetrainers / Hugging Face `videofolder` convention):

    root/
      captions.csv        path,caption   (or captions.jsonl, metadata.csv, metadata.jsonl)
      clips/a.mp4
      clips/b.webm

Paths in the caption file are relative to `root`. Without a caption file, every video under
`root` is paired with a same-named `.txt` file beside it (`a.mp4` + `a.txt`).

Each item is resampled by timestamp to `frames` frames at `fps`, resized (aspect kept) to cover
`height` x `width` and centre-cropped, and returned as `{"video": float32 (3, T, H, W) in [-1, 1],
"caption": str, "path": str}`, the same items the shapes dataset yields.

Files are checked when the dataset is built by reading their headers only (about 1 ms a file):
an unreadable (corrupt, truncated, empty), too-short, missing or non-video (audio only, a still
image) file is skipped with a warning naming it, and a summary counts the skips by reason.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import av
import numpy as np
import torch
from torch.utils.data import Dataset

from mvdit import MvditError
from mvdit.io import read_text

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mov", ".mkv")
CAPTION_FILES = ("captions.csv", "captions.jsonl", "metadata.csv", "metadata.jsonl")
# Column names used by the common trainers, in order of preference.
PATH_KEYS = ("path", "video", "video_path", "media_path", "file_name")
CAPTION_KEYS = ("caption", "text", "prompt")
MAX_REPORTED = 20  # individual skip warnings before only the summary is printed
EPS = 1e-3  # seconds of slack for container timestamps rounded to milliseconds (webm)


class DecodeError(Exception):
    """A file that passed the header check but could not deliver the clip."""


class NotAVideo(DecodeError):
    """A readable file that holds no moving pictures: audio only, or a still image."""


@dataclass(frozen=True)
class VideoEntry:
    path: str  # as written in the caption file
    caption: str
    file: Path
    duration: float | None  # seconds, from the header; None when the container does not say
    fps: float  # source frame rate


# ---------------------------------------------------------------------------------------------
# captions


def find_caption_file(root: Path) -> Path | None:
    for name in CAPTION_FILES:
        if (root / name).is_file():
            return root / name
    return None


def _pick(row: dict, keys: tuple[str, ...], what: str, source: Path) -> str:
    for k in keys:
        if k in row:
            return "" if row[k] is None else str(row[k])
    raise MvditError(
        f"{source}: no {what} column (expected one of {', '.join(keys)}; found {', '.join(map(str, row))})"
    )


def read_captions(path: str | Path) -> list[tuple[str, str]]:
    """Read (video path, caption) pairs from a CSV with a header row, a JSONL or a JSON list."""
    path = Path(path)
    if not path.is_file():
        raise MvditError(f"caption file {path} not found")
    text = read_text(path, "caption file")
    if path.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    elif path.suffix == ".jsonl":
        rows = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise MvditError(f"{path}:{i}: not valid JSON ({e.msg})") from None
    elif path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise MvditError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    else:
        raise MvditError(f"caption file {path} must be .csv, .jsonl or .json")
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise MvditError(f"{path}: expected one object per row with a path and a caption")
    return [
        (_pick(r, PATH_KEYS, "video path", path), _pick(r, CAPTION_KEYS, "caption", path))
        for r in rows
    ]


def sidecar_captions(root: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """Pair every video under `root` with the .txt beside it; return (pairs, videos without one)."""
    pairs, uncaptioned = [], []
    for f in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS):
        rel = f.relative_to(root).as_posix()
        txt = f.with_suffix(".txt")
        if txt.is_file():
            pairs.append((rel, txt.read_text(encoding="utf-8").strip()))
        else:
            uncaptioned.append(rel)
    return pairs, uncaptioned


# ---------------------------------------------------------------------------------------------
# probing and decoding


def probe_video(file: Path) -> tuple[float | None, float]:
    """(duration in seconds or None, frame rate) from the container header; no frame is decoded."""
    with av.open(str(file), metadata_errors="ignore") as c:
        if not c.streams.video:
            raise NotAVideo("no video stream")
        if c.format.name == "image2" or c.format.name.endswith("_pipe"):
            raise NotAVideo(f"a still image ({c.format.name}), not a video")
        s = c.streams.video[0]
        rate = s.average_rate or s.guessed_rate or s.base_rate
        if not rate or s.codec_context.width <= 0:
            raise DecodeError("video stream has no frame rate or size")
        if s.duration is not None and s.time_base is not None:
            duration = float(s.duration * s.time_base)
        elif c.duration is not None:
            duration = c.duration / av.time_base  # mkv/webm store it per container
        elif s.frames:
            duration = s.frames / float(rate)
        else:
            duration = None
        return duration, float(rate)


def decode_clip(
    file: Path, frames: int, height: int, width: int, fps: float, start: float = 0.0
) -> torch.Tensor:
    """Decode `frames` frames at `fps` from `start` seconds; return uint8 (T, H, W, 3).

    Target time t takes the source frame whose timestamp is nearest (ties to the earlier one),
    so any source rate resamples correctly, variable frame rate included.
    """
    try:
        with av.open(str(file), metadata_errors="ignore") as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"
            t0 = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
            period = 1.0 / float(s.average_rate or s.guessed_rate or s.base_rate or fps)
            targets = [t0 + start + i / fps for i in range(frames)]
            if start > 0:
                c.seek(int((t0 + start) / s.time_base), stream=s, backward=True)
            picked: list[av.VideoFrame] = []
            prev, prev_t = None, -math.inf
            for k, frame in enumerate(c.decode(s)):
                t = float(frame.time) if frame.time is not None else t0 + k * period
                while len(picked) < frames and t >= targets[len(picked)]:
                    target = targets[len(picked)]
                    picked.append(
                        prev if prev is not None and target - prev_t <= t - target else frame
                    )
                if len(picked) == frames:
                    break
                prev, prev_t = frame, t
            # Targets past the last timestamp still show the last frame until its period ends.
            while (
                len(picked) < frames
                and prev is not None
                and targets[len(picked)] < prev_t + period - EPS
            ):
                picked.append(prev)
            if len(picked) < frames:
                raise DecodeError(f"too short: {len(picked)} of {frames} frames at {fps:g} fps")
            return _resize_crop(picked, height, width)
    except (av.FFmpegError, OSError, IndexError) as e:
        raise DecodeError(f"decoding failed ({e})") from None


def _resize_crop(picked: list[av.VideoFrame], height: int, width: int) -> torch.Tensor:
    # Phones store portrait video as landscape frames plus a display rotation: honour it, or
    # every portrait clip trains the model on sideways scenes.
    turns = round((picked[0].rotation or 0) / 90) % 4  # counter-clockwise quarter turns
    if turns % 2:
        height, width = width, height  # crop in stored orientation, rotate at the end
    h, w = picked[0].height, picked[0].width
    scale = max(height / h, width / w)  # cover the target, then centre-crop the excess
    sh, sw = max(height, round(h * scale)), max(width, round(w * scale))
    top, left = (sh - height) // 2, (sw - width) // 2
    # Resize in swscale, as ffmpeg's scale filter does: its bilinear widens the kernel when
    # shrinking (antialiased, like F.interpolate(antialias=True)) and runs 9-25x faster than
    # converting to RGB and resizing in torch (scripts/bench_folder.py, docs/data.md).
    arrays, seen = [], {}
    for f in picked:  # a frame picked twice (upsampling in time) is converted once
        if id(f) not in seen:
            seen[id(f)] = f.reformat(
                width=sw, height=sh, format="rgb24", interpolation="BILINEAR"
            ).to_ndarray()
        arrays.append(seen[id(f)][top : top + height, left : left + width])
    clip = np.rot90(np.stack(arrays), turns, axes=(1, 2))
    return torch.from_numpy(np.ascontiguousarray(clip))


# ---------------------------------------------------------------------------------------------
# the dataset


class VideoFolderDataset(Dataset):
    """Captioned videos from a folder, as fixed-size clips in [-1, 1].

    window: where a clip longer than needed is cut: "start" (first frames) or "center".
    """

    def __init__(
        self,
        root: str | Path,
        captions: str | Path | None = None,
        frames: int = 9,
        height: int = 32,
        width: int = 32,
        fps: float = 8.0,
        window: Literal["start", "center"] = "start",
        probe_workers: int = 8,
    ):
        self.root = Path(root)
        if not self.root.is_dir():
            raise MvditError(f"video folder {self.root} does not exist")
        if min(frames, height, width) < 1 or fps <= 0:
            raise MvditError(
                f"frames, height, width and fps must be positive, got {frames}, {height}, {width}, {fps}"
            )
        if window not in ("start", "center"):
            raise MvditError(f"window must be 'start' or 'center', got {window!r}")
        self.frames, self.height, self.width = frames, height, width
        self.fps, self.window = fps, window

        skips: list[tuple[str, str, str]] = []  # (path, reason, explanation)
        uncaptioned: list[str] = []
        if captions is not None:
            pairs = read_captions(self._resolve_caption_path(captions))
        elif (cap := find_caption_file(self.root)) is not None:
            pairs = read_captions(cap)
        else:
            pairs, uncaptioned = sidecar_captions(self.root)
            why = "no caption file in the folder and no .txt beside the video"
            skips += [(p, "no caption", why) for p in uncaptioned]
            if not pairs and not uncaptioned:
                raise MvditError(
                    f"{self.root} has no caption file ({', '.join(CAPTION_FILES)}) and no videos "
                    f"({', '.join(VIDEO_EXTENSIONS)}) with .txt captions beside them"
                )

        with ThreadPoolExecutor(max(1, probe_workers)) as pool:  # header reads wait on disk
            checked = list(pool.map(self._check, pairs))
        self.entries: list[VideoEntry] = []
        for (path, _), result in zip(pairs, checked, strict=True):
            if isinstance(result, VideoEntry):
                self.entries.append(result)
            else:
                skips.append((path, *result))
        self.skipped = [(path, reason) for path, reason, _ in skips]  # e.g. ("a.mp4", "too short")
        self.broken: set[int] = set()  # entries whose decode failed after a good header
        self._report(skips, total=len(pairs) + len(uncaptioned))

    def _resolve_caption_path(self, captions: str | Path) -> Path:
        # A relative caption path is looked up in the video folder first, then the working dir.
        inside = self.root / captions
        return inside if inside.is_file() else Path(captions)

    def _check(self, pair: tuple[str, str]) -> VideoEntry | tuple[str, str]:
        """The entry, or why the file is skipped: (reason, explanation)."""
        path, caption = pair
        file = self.root / path
        if not file.is_file():
            return "missing", "listed in the captions but the file does not exist"
        try:
            duration, rate = probe_video(file)
        except NotAVideo as e:
            return "not a video", str(e)
        except (DecodeError, av.FFmpegError, OSError) as e:
            return "unreadable", f"not a readable video ({getattr(e, 'strerror', None) or e})"
        need = (self.frames - 1) / self.fps
        if duration is not None and duration < need + EPS:
            return "too short", (
                f"{duration:.2f} s long; {self.frames} frames at {self.fps:g} fps need more than {need:.2f} s"
            )
        return VideoEntry(path, caption, file, duration, rate)

    def _report(self, skips: list[tuple[str, str, str]], total: int) -> None:
        for path, _, why in skips[:MAX_REPORTED]:
            log.warning("skipping %s: %s", self.root / path, why)
        if not self.skipped and not self.entries:
            raise MvditError(f"the caption file for {self.root} lists no videos")
        if self.skipped:
            counts = Counter(reason for _, reason in self.skipped)
            detail = ", ".join(f"{n} {reason}" for reason, n in counts.most_common())
            log.warning(
                "skipped %d of %d videos in %s: %s", len(self.skipped), total, self.root, detail
            )
            if not self.entries:
                raise MvditError(
                    f"no usable videos in {self.root}: all {total} were skipped ({detail})"
                )

    def __len__(self) -> int:
        return len(self.entries)

    def start_time(self, entry: VideoEntry) -> float:
        if self.window == "start" or entry.duration is None:
            return 0.0
        span = (self.frames - 1) / self.fps + 1 / entry.fps
        return max(0.0, (entry.duration - span) / 2)

    def load(self, index: int) -> dict:
        """Decode one entry; raises DecodeError when the file fails past its header."""
        e = self.entries[index]
        clip = decode_clip(
            e.file, self.frames, self.height, self.width, self.fps, self.start_time(e)
        )
        video = clip.permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)
        return {"video": video, "caption": e.caption, "path": e.path}

    def __getitem__(self, index: int) -> dict:
        # A file whose header was fine can still break mid-stream (truncated webm). A crash hours
        # into training helps nobody: warn and serve the next entry, a deterministic substitute.
        for k in range(len(self)):
            j = (index + k) % len(self)
            if j in self.broken:
                continue
            try:
                return self.load(j)
            except DecodeError as err:
                self.broken.add(j)
                log.warning("skipping %s: %s", self.entries[j].file, err)
        raise MvditError(f"none of the {len(self)} videos in {self.root} could be decoded")

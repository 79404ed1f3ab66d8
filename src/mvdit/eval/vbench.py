"""VBench dimensions that can be measured offline, written from VBench's own definitions.

VBench (Huang et al., CVPR 2024; github.com/Vchitect/VBench, `vbench/*.py`) scores five of its
quality dimensions with rules that need either no network or one we can substitute:

| dimension              | VBench                                 | here                              | label           |
|------------------------|----------------------------------------|-----------------------------------|-----------------|
| temporal flickering    | mean abs diff of adjacent frames       | the same                          | vbench-faithful |
| dynamic degree         | RAFT flow, top-5% magnitude, threshold | OpenCV DIS flow, same rule        | substitute      |
| motion smoothness      | AMT interpolates even→odd frames       | flow-warp interpolator, same rule | substitute      |
| subject consistency    | DINO ViT-B/16 features, cosine rule    | EfficientNet-Lite0 global, same   | substitute      |
| background consistency | CLIP ViT-B/32 features, cosine rule    | EfficientNet-Lite0 layout, same   | substitute      |

Frames are uint8 RGB (T, H, W, 3), as a model writes them. VBench reads them back from mp4,
so its numbers include codec noise; ours are on the raw frames (docs/evaluation.md says how
to run VBench itself on our mp4 outputs).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mvdit import MvditError
from mvdit.eval.features import as_frames, frame_features

FAITHFUL, SUBSTITUTE, OWN = "vbench-faithful", "substitute", "own"

DIMENSIONS: dict[str, dict[str, str]] = {
    "temporal_flickering": {
        "label": FAITHFUL,
        "note": "VBench's rule on raw frames (VBench reads mp4)",
    },
    "dynamic_degree": {
        "label": SUBSTITUTE,
        "note": "VBench's rule; OpenCV DIS optical flow in place of RAFT",
    },
    "motion_smoothness": {
        "label": SUBSTITUTE,
        "note": "VBench's frame indexing and normalisation; flow-warp interpolation in place of AMT",
    },
    "subject_consistency": {
        "label": SUBSTITUTE,
        "note": "VBench's cosine rule; EfficientNet-Lite0 pooled head features in place of DINO ViT-B/16",
    },
    "background_consistency": {
        "label": SUBSTITUTE,
        "note": "VBench's cosine rule; EfficientNet-Lite0 4x4-grid stride-16 features in place of CLIP ViT-B/32",
    },
}


# ---------------------------------------------------------------------------------------------
# temporal flickering (vbench/temporal_flickering.py)


def temporal_flickering(video) -> float:
    """(255 - mean over adjacent pairs of the mean |frame_i - frame_i+1|) / 255; 1.0 for a still clip."""
    f = as_frames(video).astype(np.float32)
    if len(f) < 2:
        raise MvditError("temporal flickering needs at least 2 frames")
    mae = np.abs(f[1:] - f[:-1]).mean(axis=(1, 2, 3))
    return float((255.0 - mae.mean()) / 255.0)


# ---------------------------------------------------------------------------------------------
# optical flow: the substitute for RAFT


def dense_flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Flow (H, W, 2) in pixels that carries frame a to frame b: a(x) ≈ b(x + flow(x))."""
    import cv2

    if min(a.shape[:2]) < 16:
        raise MvditError(
            f"optical flow needs frames of at least 16x16 pixels, got {a.shape[1]}x{a.shape[0]}"
        )
    ga, gb = (cv2.cvtColor(np.ascontiguousarray(x), cv2.COLOR_RGB2GRAY) for x in (a, b))
    # DIS (Kroeger et al. 2016): the classical flow that is closest to RAFT on small, sharp
    # synthetic frames in our checks, and fast enough for every frame pair of every clip.
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(ga, gb, None)


# ---------------------------------------------------------------------------------------------
# dynamic degree (vbench/dynamic_degree.py)


def top_flow_magnitude(flow: np.ndarray) -> float:
    """Mean of the largest 5% flow magnitudes: a frame pair's motion, robust to a still background."""
    rad = np.sqrt((flow.astype(np.float64) ** 2).sum(-1)).ravel()
    k = max(1, int(rad.size * 0.05))
    return float(np.sort(rad)[::-1][:k].mean())


def dynamic_degree(video, fps: float = 8.0) -> bool:
    """Whether the clip moves, by VBench's rule.

    Frames are subsampled to about 8 fps; a pair "moves" when its top-5% flow magnitude exceeds
    6 * min(H, W) / 256 pixels (scaled up for clips slower than 8 fps); the clip moves when at
    least round(4 * N / 16) of its N frames' pairs do.
    """
    f = as_frames(video)
    f = f[:: max(1, round(fps / 8))]
    if len(f) < 2:
        raise MvditError("dynamic degree needs at least 2 frames after subsampling to 8 fps")
    thres = max(1.0, 8.0 / fps) * 6.0 * min(f.shape[1:3]) / 256.0
    need = round(4 * len(f) / 16)  # Python's round, as VBench uses
    moving = sum(
        top_flow_magnitude(dense_flow(a, b)) > thres for a, b in zip(f[:-1], f[1:], strict=True)
    )
    return moving >= need


# ---------------------------------------------------------------------------------------------
# motion smoothness (vbench/motion_smoothness.py)


def warp(img: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward warp: out(x) = img(x + flow(x)), bilinear, borders replicated."""
    import cv2

    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(
        img.astype(np.float32),
        gx + flow[..., 0],
        gy + flow[..., 1],
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )


def interpolate_midpoint(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The frame halfway between a and b, from flow in both directions (Super SloMo's linear
    flow approximation at t = 1/2: F_t→a = (F_b→a - F_a→b) / 4, F_t→b = -F_t→a), uint8."""
    f_ab, f_ba = dense_flow(a, b), dense_flow(b, a)
    f_ta = 0.25 * (f_ba - f_ab)
    mid = 0.5 * (warp(a, f_ta) + warp(b, -f_ta))
    return np.clip(np.round(mid), 0, 255).astype(np.uint8)


def motion_smoothness(video) -> float:
    """Keep frames 0, 2, 4, ...; interpolate the frames between them; compare with the real odd
    frames: (255 - mean |real - interpolated|) / 255. Smooth motion is predictable from its
    neighbours, so it scores near 1."""
    f = as_frames(video)
    even, odd = f[0::2], f[1::2]
    if len(even) < 2:
        raise MvditError("motion smoothness needs at least 3 frames")
    diffs = [
        np.abs(
            odd[i].astype(np.int16) - interpolate_midpoint(even[i], even[i + 1]).astype(np.int16)
        ).mean()
        for i in range(len(even) - 1)
    ]
    return float((255.0 - np.mean(diffs)) / 255.0)


# ---------------------------------------------------------------------------------------------
# subject / background consistency (vbench/subject_consistency.py, background_consistency.py)


def consistency(features: torch.Tensor) -> tuple[float, int]:
    """VBench's consistency sum over frames i >= 1 of (max(0, cos(f_i-1, f_i)) + max(0, cos(f_0, f_i))) / 2.

    Returns (sum, number of terms): VBench averages per frame over the whole set, so clips of
    different lengths are weighted by their frame count.
    """
    f = F.normalize(features.double(), dim=-1)
    if len(f) < 2:
        return 0.0, 0
    prev = (f[1:] * f[:-1]).sum(-1).clamp(min=0)
    first = (f[1:] * f[:1]).sum(-1).clamp(min=0)
    return float(((prev + first) / 2).sum()), len(f) - 1


# ---------------------------------------------------------------------------------------------
# all dimensions over a set of clips


def score_videos(videos: Sequence, fps: float = 8.0, size: int = 224) -> dict:
    """Score every clip on every dimension. Returns {dimension: {value, label, note, per_clip}}.

    The set's value is what VBench reports: the mean over clips, except the consistency
    dimensions, which VBench averages over all frames of all clips.
    """
    per: dict[str, list[float]] = {k: [] for k in DIMENSIONS}
    sums = {"subject_consistency": [0.0, 0], "background_consistency": [0.0, 0]}
    for video in videos:
        frames = as_frames(video)
        per["temporal_flickering"].append(temporal_flickering(frames))
        per["dynamic_degree"].append(float(dynamic_degree(frames, fps)))
        per["motion_smoothness"].append(motion_smoothness(frames))
        feats = frame_features(frames, size=size)
        for name, key in (("subject_consistency", "global"), ("background_consistency", "layout")):
            s, n = consistency(feats[key])
            per[name].append(s / max(n, 1))
            sums[name][0] += s
            sums[name][1] += n
    out = {}
    for name, meta in DIMENSIONS.items():
        if name in sums:
            value = sums[name][0] / max(sums[name][1], 1)
        else:
            value = float(np.mean(per[name])) if per[name] else float("nan")
        out[name] = {"value": value, **meta, "per_clip": per[name]}
    return out

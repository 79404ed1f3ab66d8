"""The shapes detector: what a `shapes`-style clip shows, read back from its pixels.

It inverts the renderer in mvdit.data.shapes with the renderer's own rules rather than a learned
detector: no detector weights can be downloaded here, and the rules are exact, so on real clips
the detector is right ~100% of the time and every miss on a generated clip is the model's.

Per clip: fit the static background (a plane per RGB channel, robust to the objects), segment
pixels that differ from it, label them with the named colour whose background-to-colour line
explains them best, split into connected components, then for each object in each frame measure
its soft coverage (alpha), area, centre, and best-fitting shape and angle by rendering every shape
template at that area and comparing. Objects are linked into tracks across frames; a track's motion
follows from its centre, area and angle over time, with thresholds half-way between the slow and
fast settings of the generator. Scoring a clip against its prompt is mvdit.eval.faithfulness.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from mvdit import MvditError
from mvdit.data.shapes import (
    BOUNCE_TRAVEL,
    COLOURS,
    DIRECTIONS,
    GROWTH,
    POLYGONS,
    SHAPES,
    SYMMETRY,
    TRAVEL,
    TURN,
    polar_coverage,
)

_NAMES = list(COLOURS)
_PALETTE = np.array([COLOURS[c] for c in _NAMES], np.float32)
# Area of each shape at circumradius 1: an n-point star of inner radius r covers n r sin(pi / n).
UNIT_AREA = {"circle": math.pi} | {
    s: n * r * math.sin(math.pi / n) for s, (n, r) in POLYGONS.items()
}

# An object pixel differs from the background by more than this RGB distance (objects keep >= 70).
FG_THRESHOLD = 30.0
MIN_TEMPLATE_SCORE = 0.5  # below this overlap with every shape, a blob is not an object
MIN_AREA_FRAC = 0.003  # smallest object mass, as a share of the frame
MAX_AREA_FRAC = (
    0.35  # the largest shapes object (a grown disc) covers 18%; a bigger blob is not one
)
NOISY = 3.0  # pixel noise (RGB standard deviation) above which contrast is measured after smoothing
MIN_SPLIT = 70.0  # two opaque colours this far apart in one blob are two touching objects
# Motion thresholds, in units of the free span (frame minus object) or of the clip.
MOVE = 0.2  # net travel that makes a straight motion (the slow setting travels 0.45)
BOUNCE_LEG = 0.15  # both legs of a reversal must be this long (the slow setting: >= 0.35)
GROW = math.log(1.2)  # |log size ratio| that makes growing/shrinking (slow: log 1.5)
ROTATE = 20.0  # degrees of turn that make rotating (slow: 45)


def _split(table: dict[str, float]) -> float:
    """Half-way (geometric) between the slow and fast settings of the generator."""
    return math.sqrt(table["slow"] * table["fast"])


# ---------------------------------------------------------------------------------------------
# Background and per-frame detection


def as_video(video: np.ndarray | torch.Tensor) -> np.ndarray:
    """float32 (T, H, W, 3) in 0..255 from uint8 (T, H, W, 3), or float in [-1, 1] as
    (T, H, W, 3) or the model layout (3, T, H, W)."""
    v = video.detach().cpu().numpy() if isinstance(video, torch.Tensor) else np.asarray(video)
    if v.ndim == 4 and v.shape[-1] != 3 and v.shape[0] == 3:
        v = v.transpose(1, 2, 3, 0)
    if v.ndim != 4 or v.shape[-1] != 3:
        raise MvditError(f"a clip must be (T, H, W, 3) or (3, T, H, W), got shape {v.shape}")
    if v.dtype == np.uint8:
        return v.astype(np.float32)
    return (np.clip(v.astype(np.float32), -1, 1) + 1) * 127.5


def _design(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([np.ones_like(xx), xx / width - 0.5, yy / height - 0.5], axis=-1)


def fit_background(
    video: np.ndarray, iters: int = 4, max_samples: int = 20_000
) -> tuple[np.ndarray, float]:
    """(H, W, 3) background and the pixel noise around it (robust standard deviation per channel).

    Per channel a + b x + c y, fitted to the whole clip by iteratively dropping the pixels that
    do not fit (the objects). Shapes backgrounds are exactly planar."""
    t, h, w, _ = video.shape
    stride = max(1, int(math.sqrt(t * h * w / max_samples)))
    pix = video[:, ::stride, ::stride].reshape(t, -1, 3)
    design = _design(h, w)[::stride, ::stride].reshape(-1, 3)
    x = np.broadcast_to(design, (t, *design.shape)).reshape(-1, 3)
    y = pix.reshape(-1, 3)
    coef = np.zeros((3, 3), np.float32)
    coef[0] = np.median(y, axis=0)
    for _ in range(iters):
        res = np.linalg.norm(y - x @ coef, axis=1)
        keep = res <= max(15.0, 2.5 * float(np.median(res)))
        if keep.sum() < 3:
            break
        coef = np.linalg.lstsq(x[keep], y[keep], rcond=None)[0].astype(np.float32)
    noise = 1.4826 * float(np.median(np.abs(y[keep] - x[keep] @ coef)))  # MAD of the inliers
    return _design(h, w) @ coef, noise


def _line_fit(p: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How well each pixel p is background b blended with colour c: alpha in [0, 1] and the
    distance left over. Pixels (N, 3), backgrounds (N, 3), colours (K, 3) -> (N, K) each."""
    d = c[None] - b[:, None]  # (N, K, 3)
    alpha = np.clip(((p - b)[:, None] * d).sum(-1) / np.maximum((d * d).sum(-1), 1.0), 0, 1)
    err = np.linalg.norm(p[:, None] - b[:, None] - alpha[..., None] * d, axis=-1)
    return alpha, err


@dataclass
class Detection:
    """One object in one frame."""

    frame: int
    colour: str
    area: float  # sum of soft coverage, pixels
    centre: np.ndarray  # (x, y) pixels
    scores: dict[str, float]  # template overlap per shape
    angles: dict[str, float]  # best angle per shape, degrees
    radii: dict[str, float]  # circumradius per shape implied by the area


def _best_angle(
    shape: str, rho: np.ndarray, phi: np.ndarray, r: float, alpha: np.ndarray, angles: np.ndarray
) -> tuple[float, float]:
    errs = np.abs(polar_coverage(shape, rho, phi, r, angles[:, None, None]) - alpha).sum(
        axis=(1, 2)
    )
    return float(errs.min()), float(angles[errs.argmin()])


def fit_shape(alpha: np.ndarray, cx: float, cy: float) -> tuple[dict, dict, dict]:
    """Compare a soft mask with every shape template of the same area centred on it.

    Returns per shape: the overlap score (1 = identical, 0 = disjoint), the best angle in degrees
    (modulo the shape's symmetry) and the circumradius that gives the template the mask's area.
    """
    yy, xx = np.mgrid[0 : alpha.shape[0], 0 : alpha.shape[1]].astype(np.float32)
    dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
    rho, phi = np.hypot(dx, dy), np.arctan2(dy, dx)
    mass = float(alpha.sum())
    scores, angles, radii = {}, {}, {}
    for shape in SHAPES:
        r = radii[shape] = math.sqrt(mass / UNIT_AREA[shape])
        if shape == "circle":
            err, best = float(np.abs(polar_coverage(shape, rho, phi, r, 0.0) - alpha).sum()), 0.0
        else:
            # A coarse search over one symmetry period, then a finer one around the best angle.
            period = SYMMETRY[shape]
            _, best = _best_angle(shape, rho, phi, r, alpha, np.arange(12) * period / 12)
            err, best = _best_angle(
                shape, rho, phi, r, alpha, best + np.arange(-4, 5) * period / 48
            )
            best %= period
        scores[shape], angles[shape] = 1 - err / (2 * mass + 1e-6), best
    return scores, angles, radii


def detect_frame(
    frame: np.ndarray, background: np.ndarray, index: int = 0, noise: float = 0.0
) -> list[Detection]:
    """Find the objects in one (H, W, 3) float frame given the background and the pixel noise."""
    from scipy import ndimage  # deferred: a third of a second that generating does not need

    h, w, _ = frame.shape
    diff = frame - background
    if noise > NOISY:
        # Grainy clips (a generated one, say): judge contrast on a lightly smoothed difference,
        # or the grain itself crosses the threshold and every object melts into the noise.
        diff = ndimage.gaussian_filter(diff, (1.0, 1.0, 0))
    contrast = np.linalg.norm(diff, axis=-1)
    fg = contrast > FG_THRESHOLD
    eight = np.ones((3, 3), bool)
    blobs, n = ndimage.label(fg, structure=eight)
    # Opaque pixels hold an object's own colour; anti-aliased edges are blends that have a more
    # contrasted neighbour (a grey rim around a black disc on white must not read as grey).
    opaque = fg & (contrast >= 0.75 * ndimage.maximum_filter(contrast, size=3))
    objects: list[tuple[np.ndarray, np.ndarray]] = []  # (mask, colour)
    for j in range(1, n + 1):
        m = blobs == j
        core = frame[m & opaque]
        names = np.linalg.norm(core[:, None] - _PALETTE[None], axis=-1).argmin(1)
        counts = np.bincount(names, minlength=len(_NAMES))
        colours = [
            core[names == k].mean(0) for k in np.flatnonzero(counts >= max(2, 0.25 * len(core)))
        ]
        if len(colours) == 2 and np.linalg.norm(colours[0] - colours[1]) < MIN_SPLIT:
            colours = [core.mean(0)]
        if len(colours) <= 1:
            objects.append((m, core.mean(0)))
            continue
        # Two objects touch: each pixel goes to the colour that explains it as a blend with the background.
        _, err = _line_fit(frame[m], background[m], np.stack(colours))
        which = err.argmin(1)
        for i, colour in enumerate(colours):
            part = np.zeros_like(m)
            part[m] = which == i
            if part.any():
                objects.append((part, colour))
    taken = np.zeros((h, w), bool)
    for m, _ in objects:
        taken |= m
    min_area = max(3.0, MIN_AREA_FRAC * h * w)
    out = []
    for m, colour in objects:
        # Soft coverage over the mask and its one-pixel rim (faint anti-aliased edges).
        region = ndimage.binary_dilation(m, structure=eight) & (m | ~taken)
        ys, xs = np.nonzero(region)
        y0, y1 = max(ys.min() - 1, 0), min(ys.max() + 2, h)
        x0, x1 = max(xs.min() - 1, 0), min(xs.max() + 2, w)
        sub = region[y0:y1, x0:x1]
        a, _ = _line_fit(frame[y0:y1, x0:x1][sub], background[y0:y1, x0:x1][sub], colour[None])
        alpha_patch = np.zeros(sub.shape, np.float32)
        alpha_patch[sub] = a[:, 0]
        area = float(alpha_patch.sum())
        if not min_area <= area <= MAX_AREA_FRAC * h * w:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
        cx, cy = float((alpha_patch * xx).sum() / area), float((alpha_patch * yy).sum() / area)
        scores, angles, radii = fit_shape(alpha_patch, cx - x0, cy - y0)
        if max(scores.values()) < MIN_TEMPLATE_SCORE:
            continue
        name = _NAMES[int(np.linalg.norm(_PALETTE - colour, axis=1).argmin())]
        out.append(Detection(index, name, area, np.array([cx, cy]), scores, angles, radii))
    return out


# ---------------------------------------------------------------------------------------------
# Tracks and motion


@dataclass
class Track:
    detections: list[Detection] = field(default_factory=list)

    @property
    def colour(self) -> str:
        names = [d.colour for d in self.detections]
        return max(set(names), key=names.count)

    @property
    def shape(self) -> str:
        return max(SHAPES, key=lambda s: sum(d.scores[s] for d in self.detections))


def link(frames: list[list[Detection]], height: int, width: int) -> list[Track]:
    """Join detections of the same colour in successive frames, nearest first."""
    tracks: list[Track] = []
    reach = 0.5 * max(height, width)
    for f, dets in enumerate(frames):
        pairs = sorted(
            (float(np.linalg.norm(d.centre - t.detections[-1].centre)), i, j)
            for i, d in enumerate(dets)
            for j, t in enumerate(tracks)
            if t.detections[-1].frame < f and t.detections[-1].colour == d.colour
        )
        used_d, used_t = set(), set()
        for dist, i, j in pairs:
            if dist <= reach and i not in used_d and j not in used_t:
                tracks[j].detections.append(dets[i])
                used_d.add(i)
                used_t.add(j)
        tracks += [Track([d]) for i, d in enumerate(dets) if i not in used_d]
    return tracks


def classify_motion(
    track: Track, frames: int, height: int, width: int
) -> tuple[str | None, str | None, dict]:
    """(motion, speed, measurements) of a track; (None, None, ...) when a clip has one frame."""
    dets = track.detections
    if frames < 2 or len(dets) < 2:
        return None, None, {}
    shape = track.shape
    t = np.array([d.frame for d in dets]) / (frames - 1)
    pos = np.stack([d.centre for d in dets])
    r_max = max(d.radii[shape] for d in dets)
    span = np.array([max(width - 2 * r_max, 0.25 * width), max(height - 2 * r_max, 0.25 * height)])
    s = (pos - pos[0]) / span  # displacement in free spans since the first frame
    # Slopes over the clip (t in [0, 1]) of a line fit: the total change, robust to one bad frame.
    grow = float(np.polyfit(t, 0.5 * np.log([d.area for d in dets]), 1)[0])
    turn = 0.0
    if shape != "circle":
        # Unwrap modulo the symmetry: a shape turns less than half a period between frames.
        period = SYMMETRY[shape]
        steps = (np.diff([d.angles[shape] for d in dets]) + period / 2) % period - period / 2
        turn = float(np.polyfit(t, np.concatenate([[0.0], np.cumsum(steps)]), 1)[0])
    info = {
        "displacement": s[-1].round(3).tolist(),
        "log_growth": round(grow, 3),
        "turn": round(turn, 1),
    }
    # A bounce: one axis goes out and comes back, both legs long.
    for axis in (0, 1):
        k = int(np.abs(s[:, axis]).argmax())
        out, back = s[k, axis], s[-1, axis] - s[k, axis]
        if out * back < 0 and min(abs(out), abs(back)) >= BOUNCE_LEG:
            path = abs(out) + abs(back)
            return (
                "bouncing",
                "fast" if path >= _split(BOUNCE_TRAVEL) else "slow",
                info | {"path": round(path, 3)},
            )
    net = s[-1]
    moved = np.abs(net).max()
    if moved >= MOVE:
        sx, sy = (int(np.sign(v)) if abs(v) >= 0.4 * moved else 0 for v in net)
        motion = next(m for m, d in DIRECTIONS.items() if d == (sx, sy))
        travel = float(np.mean([abs(v) for v, sgn in zip(net, (sx, sy), strict=True) if sgn]))
        return motion, "fast" if travel >= _split(TRAVEL) else "slow", info
    if abs(grow) >= GROW:
        motion = "growing" if grow > 0 else "shrinking"
        return motion, "fast" if abs(grow) >= math.log(_split(GROWTH)) else "slow", info
    if abs(turn) >= ROTATE:
        return "rotating", "fast" if abs(turn) >= _split(TURN) else "slow", info
    return "still", None, info


def background_attributes(background: np.ndarray) -> tuple[str, str]:
    """Named colour and style of a fitted background: a gradient starts at its named colour."""
    corners = background[[0, 0, -1, -1], [0, -1, 0, -1]]
    d = np.linalg.norm(corners[:, None] - _PALETTE[None], axis=-1)  # (4, colours)
    name = _NAMES[int(d.min(0).argmin())]
    spread = np.linalg.norm(corners[:, None] - corners[None], axis=-1).max()
    return name, "gradient" if spread > 30 else "solid"


def detect(video: np.ndarray | torch.Tensor) -> dict:
    """Everything the detector sees in a clip: background and object tracks with their attributes."""
    v = as_video(video)
    frames, height, width, _ = v.shape
    bg, noise = fit_background(v)
    tracks = link([detect_frame(v[f], bg, f, noise) for f in range(frames)], height, width)
    # A real object is seen in at least half of the frames; shorter tracks are flicker.
    tracks = [tr for tr in tracks if len(tr.detections) >= max(1, frames / 2)]
    objects = []
    for tr in tracks:
        motion, speed, info = classify_motion(tr, frames, height, width)
        objects.append(
            {
                "colour": tr.colour,
                "shape": tr.shape,
                "motion": motion,
                "speed": speed,
                "frames": len(tr.detections),
            }
            | info
        )
    name, style = background_attributes(bg)
    return {"objects": objects, "background": name, "background_style": style}

"""The `shapes` dataset: procedural captioned clips with exact ground truth.

No video data can be downloaded here, so the project trains and evaluates on clips it draws
itself: one or two coloured shapes moving on a solid or shaded background, each with a caption
("a red circle moves quickly to the left on a blue background") and the true per-frame position,
size and angle of every object. Item i is a pure function of (seed, split, i, clip size): the same
clip comes back in any process and any order of access, which is what makes resumed training exact.

Motion is defined per clip, not per second: a "fast left" object covers ~85% of the free span of
the frame over the clip whatever its length, so the motion is visible in an 8-frame 32x32 clip and
the object never leaves a 49-frame one. `fps` only stamps the ground-truth times.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from mvdit import MvditError
from mvdit.io import write_json
from mvdit.video import contact_sheet, save_png, write_mp4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 30),
    "green": (40, 180, 60),
    "cyan": (30, 200, 220),
    "blue": (40, 80, 220),
    "purple": (140, 50, 190),
    "pink": (245, 130, 190),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
DIRECTIONS: dict[str, tuple[int, int]] = {  # (dx, dy) with y pointing down, as in image rows
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "up-left": (-1, -1),
    "up-right": (1, -1),
    "down-left": (-1, 1),
    "down-right": (1, 1),
}
MOTIONS: tuple[str, ...] = (*DIRECTIONS, "bouncing", "still", "growing", "shrinking", "rotating")
SPEEDS: tuple[str, ...] = ("slow", "fast")
BACKGROUND_STYLES: tuple[str, ...] = ("solid", "gradient")
SPLITS: tuple[str, ...] = ("train", "val", "holdout")

# Polygon geometry as "stars": n points at radius 1, n inner vertices at radius `inner`, half-way
# between. An n-gon is the star whose inner radius is its apothem, so one distance function draws
# every shape (see _shape_sdf). `size` is the circumscribed diameter, the same for all shapes, so
# "stays in frame" is exact.
POLYGONS: dict[str, tuple[int, float]] = {
    "square": (4, math.cos(math.pi / 4)),
    "triangle": (3, math.cos(math.pi / 3)),
    "star": (5, 0.5),  # fatter than a pentagram (0.38) so its points survive at 32x32
}
# Rotational symmetry in degrees: a rotation by this angle looks the same (the circle never changes).
SYMMETRY: dict[str, float] = {"circle": 0.0, "square": 90.0, "triangle": 120.0, "star": 72.0}

# How far each motion goes over one clip, in units of the free span (frame minus object).
TRAVEL = {"slow": 0.45, "fast": 0.85}  # straight motions
BOUNCE_TRAVEL = {"slow": 1.0, "fast": 1.5}  # total path along the bouncing axis: one wall hit
TURN = {"slow": 45.0, "fast": 90.0}  # degrees per clip
GROWTH = {"slow": 1.5, "fast": 2.0}  # size ratio end / start
SIZE_RANGE = (0.2, 0.35)  # object diameter / min(H, W), unless the vocabulary sets object_size
MAX_OBJECT_SIZE = 0.6  # larger leaves a moving object almost no room to move
GROW_MIN_SIZE = (0.18, 0.24)  # smallest size of a growing/shrinking object
SHADE = 0.35  # a gradient background darkens (or, for dark colours, lightens) by up to this much
MIN_CONTRAST = 70.0  # RGB distance an object keeps from every shade of its background


@dataclass(frozen=True)
class ObjectSpec:
    """One object: its caption attributes and the numbers that realise them.

    Positions are in units of the free span [0, 1] (0: touching the left/top edge, 1: the
    right/bottom edge), so a spec renders at any resolution and always stays in frame.
    """

    shape: str
    colour: str
    motion: str
    speed: str  # "slow" | "fast"; ignored (and not captioned) for "still"
    x: float  # start position in the free span
    y: float
    dx: float  # displacement over the clip in free-span units, before reflection off the walls
    dy: float
    size: float  # start diameter / min(H, W)
    angle: float  # start angle, degrees
    turn: float = 0.0  # rotation over the clip, degrees
    grow: float = 1.0  # size ratio end / start


@dataclass(frozen=True)
class ClipSpec:
    """The ground truth of one clip (objects are drawn in order, the last on top)."""

    objects: tuple[ObjectSpec, ...]
    background: str
    background_style: str  # "solid" | "gradient"
    shade_angle: float = 0.0  # direction of a gradient, degrees

    def attributes(self) -> PromptAttributes:
        """What a caption of this clip states (and what parse_caption recovers)."""
        return PromptAttributes(
            objects=tuple(
                ObjectAttributes(
                    o.colour, o.shape, o.motion, None if o.motion == "still" else o.speed
                )
                for o in self.objects
            ),
            background=self.background,
            background_style=self.background_style,
        )


@dataclass(frozen=True)
class ObjectAttributes:
    """What a prompt asks of one object; None means the prompt does not say."""

    colour: str | None
    shape: str | None
    motion: str | None = None
    speed: str | None = None


@dataclass(frozen=True)
class PromptAttributes:
    """What a prompt asks for, as parsed from its words (see parse_caption)."""

    objects: tuple[ObjectAttributes, ...]
    background: str | None = None
    background_style: str | None = None


# ---------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class Vocabulary:
    """The attribute values a dataset draws from (default: all of them)."""

    colours: tuple[str, ...] = tuple(COLOURS)
    shapes: tuple[str, ...] = SHAPES
    motions: tuple[str, ...] = MOTIONS
    speeds: tuple[str, ...] = SPEEDS
    backgrounds: tuple[str, ...] = tuple(COLOURS)
    background_styles: tuple[str, ...] = BACKGROUND_STYLES
    # every shape drawn at angle 0 (a rotating one starts there): the caption then fixes how an
    # object looks up to its place and size, where a random angle leaves a DiT the orientation to
    # choose at high noise (docs/vae.md)
    upright: bool = False
    # the range an object's diameter is drawn from, as a fraction of min(H, W); a growing or
    # shrinking object's smallest size scales with its lower end
    object_size: tuple[float, float] = SIZE_RANGE

    @classmethod
    def make(
        cls,
        upright: bool = False,
        object_size: Sequence[float] | None = None,
        **subsets: Sequence[str] | None,
    ) -> Vocabulary:
        full = cls()
        kw = {}
        for name, values in subsets.items():
            if values is None:
                continue
            allowed = getattr(full, name)
            values = tuple(values)
            if not values:
                raise MvditError(f"{name} is empty: give at least one of {', '.join(allowed)}")
            for v in values:
                if v not in allowed:
                    raise MvditError(
                        f"unknown {name[:-1].replace('_', ' ')} '{v}'; choose from {', '.join(allowed)}"
                    )
            kw[name] = values
        if object_size is not None:
            kw["object_size"] = _object_size(object_size)
        vocab = cls(**kw, upright=upright)
        if not any(
            compatible(c, b, s)
            for c in vocab.colours
            for b in vocab.backgrounds
            for s in vocab.background_styles
        ):
            raise MvditError(
                f"no object colour in {vocab.colours} stands out from a background in {vocab.backgrounds}: add colours"
            )
        if vocab.shapes == ("circle",) and vocab.motions == ("rotating",):
            raise MvditError(
                "a rotating circle looks still: add a shape other than circle or a motion other than rotating"
            )
        return vocab


def _object_size(size: Sequence[float]) -> tuple[float, float]:
    size = tuple(float(v) for v in size)
    if len(size) != 2 or not 0.05 <= size[0] <= size[1] <= MAX_OBJECT_SIZE:
        raise MvditError(
            f"object_size must be [smallest, largest] diameter as a fraction of the frame, with "
            f"0.05 <= smallest <= largest <= {MAX_OBJECT_SIZE}, got {list(size)}"
        )
    return size  # type: ignore[return-value]


def grow_min_size(object_size: tuple[float, float]) -> tuple[float, float]:
    """The range a growing object starts (a shrinking one ends) at: GROW_MIN_SIZE scaled with
    the lower end of `object_size`, capped so that the fast growth still fits the frame."""
    k = object_size[0] / SIZE_RANGE[0]  # 1.0 for the default range: GROW_MIN_SIZE exactly
    cap = 0.95 / max(GROWTH.values())
    hi = min(GROW_MIN_SIZE[1] * k, cap)
    return min(GROW_MIN_SIZE[0] * k, hi), hi


def background_shades(background: str, style: str) -> np.ndarray:
    """The darkest and lightest RGB of a background (equal for a solid one)."""
    c = np.array(COLOURS[background], dtype=np.float32)
    if style == "solid":
        return np.stack([c, c])
    # Dark colours cannot get darker, so they shade toward white instead.
    target = np.full(3, 255.0, np.float32) if c.mean() < 80 else np.zeros(3, np.float32)
    return np.stack([c, c + SHADE * (target - c)])


@cache
def compatible(colour: str, background: str, style: str) -> bool:
    """An object must stand out from every shade of its background."""
    if colour == background:
        return False
    c = np.array(COLOURS[colour], dtype=np.float32)
    lo, hi = background_shades(background, style)
    shades = lo[None] + np.linspace(0, 1, 5, dtype=np.float32)[:, None] * (hi - lo)[None]
    return bool(np.linalg.norm(shades - c, axis=1).min() >= MIN_CONTRAST)


def _choice(rng: np.random.Generator, values: Sequence[str]) -> str:
    return values[int(rng.integers(len(values)))]


def sample_object(
    rng: np.random.Generator,
    vocab: Vocabulary = Vocabulary(),
    colour: str | None = None,
    shape: str | None = None,
    motion: str | None = None,
) -> ObjectSpec:
    """Draw one object; `colour`/`shape`/`motion` pin an attribute instead of drawing it."""
    # A rotating circle looks still, so the pair is never drawn.
    if shape is None:
        circle_moves = [m for m in ([motion] if motion else vocab.motions) if m != "rotating"]
        shapes = [sh for sh in vocab.shapes if sh != "circle" or circle_moves]
        if not shapes:
            raise MvditError("a rotating circle looks still: add a shape other than circle")
        shape = _choice(rng, shapes)
    if motion is None:
        motions = [m for m in vocab.motions if not (shape == "circle" and m == "rotating")]
        if not motions:
            raise MvditError("a rotating circle looks still: add a motion other than rotating")
        motion = _choice(rng, motions)
    colour = colour or _choice(rng, vocab.colours)
    speed = _choice(rng, vocab.speeds)
    angle = float(rng.uniform(0, 360)) if shape != "circle" else 0.0
    if vocab.upright:
        angle = 0.0  # drawn all the same, so the rest of the clip is the clip a random angle gets
    size = float(rng.uniform(*vocab.object_size))
    x, y = (float(v) for v in rng.uniform(0, 1, 2))
    dx = dy = turn = 0.0
    grow = 1.0
    if motion in DIRECTIONS:
        d = TRAVEL[speed]
        sx, sy = DIRECTIONS[motion]
        dx, dy = sx * d, sy * d
        # Start far enough from the wall the object is heading to that it ends inside the frame.
        x = float(rng.uniform(0, 1 - d)) if sx > 0 else float(rng.uniform(d, 1)) if sx < 0 else x
        y = float(rng.uniform(0, 1 - d)) if sy > 0 else float(rng.uniform(d, 1)) if sy < 0 else y
    elif motion == "bouncing":
        # Head for a wall, hit it in the middle third of the clip, come back: one clear reversal.
        v = BOUNCE_TRAVEL[speed]
        hit = float(rng.uniform(0.35, 0.65))
        toward = 1 if rng.random() < 0.5 else -1
        start = 1 - v * hit if toward > 0 else v * hit
        drift = float(rng.uniform(-0.3, 0.3))
        other = float(rng.uniform(max(0, -drift), min(1, 1 - drift)))
        if rng.random() < 0.5:
            x, dx, y, dy = start, toward * v, other, drift
        else:
            y, dy, x, dx = start, toward * v, other, drift
    elif motion == "rotating":
        turn = TURN[speed] * (1 if rng.random() < 0.5 else -1)
    elif motion in ("growing", "shrinking"):
        g = GROWTH[speed]
        small = float(rng.uniform(*grow_min_size(vocab.object_size)))
        size, grow = (small, g) if motion == "growing" else (small * g, 1 / g)
    return ObjectSpec(shape, colour, motion, speed, x, y, dx, dy, size, angle, turn, grow)


def sample_spec(
    rng: np.random.Generator,
    vocab: Vocabulary = Vocabulary(),
    max_objects: int = 2,
    pin: ObjectAttributes | None = None,
    aspect: float = 1.0,
) -> ClipSpec:
    """Draw a clip: background, then 1..max_objects objects that never overlap.

    `pin` fixes the first object's colour/shape/motion (used to draw held-out combinations);
    `aspect` is width / height, needed to check overlaps in pixels.
    """
    style = _choice(rng, vocab.background_styles)
    n = int(rng.integers(1, max_objects + 1))
    background = _choice(rng, vocab.backgrounds)
    objects: list[ObjectSpec] = []
    for tries in range(200):
        if len(objects) == n:
            break
        p = pin if not objects and pin is not None else ObjectAttributes(None, None)
        o = sample_object(rng, vocab, p.colour, p.shape, p.motion)
        if not compatible(o.colour, background, style):
            # no object colour fits this background: pick another one, but never drop an object
            # already placed (it was checked against the current background)
            if not objects and tries % 20 == 19:
                background = _choice(rng, vocab.backgrounds)
            continue
        if any(o.colour == q.colour or _overlap(o, q, aspect) for q in objects):
            continue
        objects.append(o)
    if len(objects) < 1:
        raise MvditError(f"cannot draw a clip from this vocabulary: {vocab}")
    return ClipSpec(tuple(objects), background, style, float(rng.uniform(0, 360)))


def _overlap(a: ObjectSpec, b: ObjectSpec, aspect: float, samples: int = 33) -> bool:
    t = np.linspace(0, 1, samples)
    h, w = (1.0, aspect) if aspect >= 1 else (1 / aspect, 1.0)
    (ca, ra), (cb, rb) = (_trajectory(o, t, h, w) for o in (a, b))
    gap = np.linalg.norm(ca - cb, axis=-1) - ra - rb
    return bool(gap.min() < 0.03)


def _reflect(u: np.ndarray) -> np.ndarray:
    """Fold a path onto [0, 1] as if it bounced off both walls."""
    u = np.mod(u, 2.0)
    return np.where(u > 1, 2 - u, u)


def _trajectory(
    o: ObjectSpec, t: np.ndarray, height: float, width: float
) -> tuple[np.ndarray, np.ndarray]:
    """Centres (len(t), 2) as (x, y) and circumradii (len(t),) in the units of height/width."""
    m = min(height, width)
    radius = o.size * m / 2 * np.power(o.grow, t)
    r_max = o.size * m / 2 * max(1.0, o.grow)
    x = r_max + _reflect(o.x + o.dx * t) * (width - 2 * r_max)
    y = r_max + _reflect(o.y + o.dy * t) * (height - 2 * r_max)
    return np.stack([x, y], axis=-1), radius


# ---------------------------------------------------------------------------------------------
# Rendering


def _shape_sdf(
    shape: str, rho: np.ndarray, phi: np.ndarray, radius: float, angle_deg: float | np.ndarray
) -> np.ndarray:
    """Signed distance in pixels to a shape's outline (negative inside), at polar coordinates
    (rho, phi radians) around its centre.

    Polygons and the star fold the plane into one sector by symmetry and measure the distance to a
    single edge, from a tip (radius) to an inner vertex: exact, and the same code for every shape.
    """
    if shape == "circle":
        return rho - radius
    n, inner = POLYGONS[shape]
    sector = 2 * math.pi / n
    psi = np.mod(phi - np.radians(angle_deg), sector)
    psi = np.minimum(psi, sector - psi)
    qx, qy = rho * np.cos(psi), rho * np.sin(psi)
    ex, ey = inner * radius * math.cos(sector / 2) - radius, inner * radius * math.sin(sector / 2)
    wx, wy = qx - radius, qy
    h = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0, 1)
    dist = np.hypot(wx - ex * h, wy - ey * h)
    return np.where(ex * wy - ey * wx > 0, -dist, dist)


def polar_coverage(
    shape: str, rho: np.ndarray, phi: np.ndarray, radius: float, angle_deg: float | np.ndarray
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of pixels at polar offsets (rho, phi) from the centre;
    an array of angles (K, 1, 1) gives K templates at once."""
    return np.clip(0.5 - _shape_sdf(shape, rho, phi, radius, angle_deg), 0, 1)


def coverage(
    shape: str, dx: np.ndarray, dy: np.ndarray, radius: float, angle_deg: float | np.ndarray
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of pixels at offsets (dx, dy) from the shape's centre."""
    return polar_coverage(shape, np.hypot(dx, dy), np.arctan2(dy, dx), radius, angle_deg)


def render_background(spec: ClipSpec, height: int, width: int) -> np.ndarray:
    """(H, W, 3) float32 RGB: solid, or a linear shade across the frame."""
    lo, hi = background_shades(spec.background, spec.background_style)
    if spec.background_style == "solid":
        return np.broadcast_to(lo, (height, width, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    a = math.radians(spec.shade_angle)
    p = (xx / width - 0.5) * math.cos(a) + (yy / height - 0.5) * math.sin(a)
    p = (p - p.min()) / max(float(p.max() - p.min()), 1e-6)
    return lo + p[..., None] * (hi - lo)


def render(
    spec: ClipSpec, frames: int, height: int, width: int, fps: float
) -> tuple[np.ndarray, dict]:
    """Draw a clip: uint8 video (T, H, W, 3) and its ground truth.

    truth: "centre" (T, N, 2) pixel (x, y), "size" (T, N) circumscribed diameter in pixels,
    "angle" (T, N) degrees, "visible" (T, N) bool, "time" (T,) seconds.
    """
    if frames < 1 or height < 8 or width < 8:
        raise MvditError(
            f"clip size must be at least 1x8x8 frames x height x width, got {frames}x{height}x{width}"
        )
    if fps <= 0:
        raise MvditError(f"fps must be positive, got {fps}")
    t = np.linspace(0.0, 1.0, frames) if frames > 1 else np.zeros(1)
    n = len(spec.objects)
    centres, sizes, angles = np.zeros((frames, n, 2)), np.zeros((frames, n)), np.zeros((frames, n))
    for k, o in enumerate(spec.objects):
        c, r = _trajectory(o, t, height, width)
        centres[:, k], sizes[:, k], angles[:, k] = c, 2 * r, o.angle + o.turn * t
    background = render_background(spec, height, width)
    video = np.empty((frames, height, width, 3), np.uint8)
    for f in range(frames):
        frame = background.copy()
        for k, o in enumerate(spec.objects):
            # Draw only inside the object's bounding box: a 49x384x512 clip stays well under a second.
            (cx, cy), r = centres[f, k], sizes[f, k] / 2
            x0, x1 = max(int(cx - r - 1), 0), min(int(cx + r + 2), width)
            y0, y1 = max(int(cy - r - 1), 0), min(int(cy + r + 2), height)
            if x0 >= x1 or y0 >= y1:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            a = coverage(o.shape, xx + 0.5 - cx, yy + 0.5 - cy, r, angles[f, k])[..., None]
            box = frame[y0:y1, x0:x1]
            box += a * (np.array(COLOURS[o.colour], np.float32) - box)
        video[f] = np.clip(frame + 0.5, 0, 255).astype(np.uint8)
    visible = (
        (centres[..., 0] >= 0)
        & (centres[..., 0] < width)
        & (centres[..., 1] >= 0)
        & (centres[..., 1] < height)
    )
    truth = {
        "centre": centres,
        "size": sizes,
        "angle": angles,
        "visible": visible,
        "time": t * (frames - 1) / fps,
    }
    return video, truth


# ---------------------------------------------------------------------------------------------
# Captions. Every phrase maps back to one attribute value, so parse_caption inverts caption.

COLOUR_WORDS: dict[str, tuple[str, ...]] = {c: (c,) for c in COLOURS} | {
    "gray": ("gray", "grey"),
    "purple": ("purple", "violet"),
}
SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "disc", "ball", "dot"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle",),
    "star": ("star",),
}
SPEED_WORDS: dict[str, tuple[str, ...]] = {
    "slow": ("slowly", "gently"),
    "fast": ("quickly", "rapidly", "fast"),
}
DIRECTION_WORDS: dict[str, tuple[str, ...]] = {
    "left": ("to the left", "left", "leftward"),
    "right": ("to the right", "right", "rightward"),
    "up": ("up", "upward", "toward the top"),
    "down": ("down", "downward", "toward the bottom"),
    "up-left": ("up and to the left", "diagonally up-left", "toward the top left"),
    "up-right": ("up and to the right", "diagonally up-right", "toward the top right"),
    "down-left": ("down and to the left", "diagonally down-left", "toward the bottom left"),
    "down-right": ("down and to the right", "diagonally down-right", "toward the bottom right"),
}
MOVE_VERBS = ("moves", "slides", "travels", "glides")
# {adv} is the speed adverb. The first template of each motion is its plain (paraphrase=False) form.
MOTION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "bouncing": ("bounces {adv} around", "bounces {adv} off the walls", "is bouncing {adv}"),
    "still": ("stays still", "sits still", "does not move", "rests in place"),
    "growing": ("grows {adv}", "{adv} gets bigger", "expands {adv}"),
    "shrinking": ("shrinks {adv}", "{adv} gets smaller", "contracts {adv}"),
    "rotating": ("rotates {adv}", "spins {adv}", "is spinning {adv}"),
}
# Words that identify a motion when no direction is named (checked in this order: "spinning in
# place" rotates, so rotation is read before the "in place" of standing still).
MOTION_CUES: dict[str, tuple[str, ...]] = {
    "bouncing": ("bounces", "bouncing"),
    "rotating": ("rotates", "rotating", "spins", "spinning"),
    "still": ("still", "does not move", "in place", "motionless"),
    "growing": ("grows", "growing", "bigger", "expands"),
    "shrinking": ("shrinks", "shrinking", "smaller", "contracts"),
}
# Wordings the parser reads but captions never use (adding them to the tables above would change
# the captions the generator draws, and with them every trained model).
READ_ONLY_DIRECTIONS: dict[str, tuple[str, ...]] = {
    "left": ("leftwards",),
    "right": ("rightwards",),
    "up": ("upwards",),
    "down": ("downwards",),
}
ONE_OBJECT = (
    "{o1} on {bg} background",
    "on {bgs}, {o1}",
    "{o1}, {bgs} background",
    "{o1} against {bg} backdrop",
)
TWO_OBJECTS = (
    "{o1} and {o2} on {bg} background",
    "on {bgs}, {o1} while {o2}",
    "{o1} and {o2}, {bgs} background",
)


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def caption(spec: ClipSpec, rng: np.random.Generator | None = None, paraphrase: bool = True) -> str:
    """Describe a clip in words. paraphrase=True draws synonyms and templates from `rng`."""
    if paraphrase and rng is None:
        rng = np.random.default_rng(0)
    pick = (lambda xs: _choice(rng, xs)) if paraphrase else (lambda xs: xs[0])

    def motion_phrase(o: ObjectSpec) -> str:
        adv = pick(SPEED_WORDS[o.speed])
        if o.motion in DIRECTIONS:
            return f"{pick(MOVE_VERBS)} {adv} {pick(DIRECTION_WORDS[o.motion])}"
        return pick(MOTION_TEMPLATES[o.motion]).format(adv=adv)

    def obj(o: ObjectSpec) -> str:
        return f"{_article(pick(COLOUR_WORDS[o.colour]))} {pick(SHAPE_WORDS[o.shape])} {motion_phrase(o)}"

    bgs = pick(COLOUR_WORDS[spec.background]) + (
        " gradient" if spec.background_style == "gradient" else ""
    )
    template = pick(ONE_OBJECT if len(spec.objects) == 1 else TWO_OBJECTS)
    objs = {f"o{k + 1}": obj(o) for k, o in enumerate(spec.objects)}
    return template.format(bg=_article(bgs), bgs=bgs, **objs)


def _alternation(table: dict[str, tuple[str, ...]]) -> str:
    words = sorted((w for ws in table.values() for w in ws), key=len, reverse=True)
    return "|".join(re.escape(w) for w in words)


def _lookup(table: dict[str, tuple[str, ...]], word: str) -> str:
    return next(k for k, ws in table.items() if word in ws)


_COLOUR = _alternation(COLOUR_WORDS)
_OBJECT_RE = re.compile(rf"\b({_COLOUR})\s+({_alternation(SHAPE_WORDS)})\b")
_READ_DIRECTIONS = {k: v + READ_ONLY_DIRECTIONS.get(k, ()) for k, v in DIRECTION_WORDS.items()}
_BACKGROUND_RES = (
    re.compile(rf"\b({_COLOUR})(\s+gradient)?\s+(?:background|backdrop)\b"),
    re.compile(rf"^on\s+({_COLOUR})(\s+gradient)?\s*,"),
    # a bare "on black" (no "background"), as long as no shape follows the colour
    re.compile(
        rf"\bon\s+(?:an?\s+)?({_COLOUR})(\s+gradient)?\b(?!\s+(?:{_alternation(SHAPE_WORDS)})\b)"
    ),
)
_DIRECTION_RE = re.compile(rf"(?<![\w-])({_alternation(_READ_DIRECTIONS)})(?![\w-])")
_SPEED_RE = re.compile(rf"\b({_alternation(SPEED_WORDS)})\b")


def parse_caption(text: str) -> PromptAttributes:
    """Recover the attributes a prompt asks for (the inverse of `caption` for every template).

    Objects are "<colour> <shape>" phrases; each object's motion and speed are read from the words
    between it and the next object. Attributes a prompt does not state come back as None.
    """
    s = " ".join(text.lower().replace(";", ",").split())
    background = style = None
    for pattern in _BACKGROUND_RES:
        if m := pattern.search(s):
            background, style = (
                _lookup(COLOUR_WORDS, m.group(1)),
                "gradient" if m.group(2) else "solid",
            )
            s = s[: m.start()] + " " + s[m.end() :]
            break
    found = list(_OBJECT_RE.finditer(s))
    if not found:
        raise MvditError(
            f"cannot read the prompt '{text}': it names no '<colour> <shape>' object "
            f"(colours: {', '.join(COLOURS)}; shapes: {', '.join(SHAPES)})"
        )
    objects = []
    for k, m in enumerate(found):
        rest = s[m.end() : found[k + 1].start() if k + 1 < len(found) else len(s)]
        motion = None
        if d := _DIRECTION_RE.search(rest):
            motion = _lookup(_READ_DIRECTIONS, d.group(1))
        else:
            motion = next(
                (
                    mo
                    for mo, cues in MOTION_CUES.items()
                    if any(re.search(rf"\b{c}\b", rest) for c in cues)
                ),
                None,
            )
        sp = _SPEED_RE.search(rest)
        speed = _lookup(SPEED_WORDS, sp.group(1)) if sp and motion not in (None, "still") else None
        objects.append(
            ObjectAttributes(
                _lookup(COLOUR_WORDS, m.group(1)), _lookup(SHAPE_WORDS, m.group(2)), motion, speed
            )
        )
    return PromptAttributes(tuple(objects), background, style)


# ---------------------------------------------------------------------------------------------
# Held-out combinations and the dataset


def parse_holdout(items: Sequence[str]) -> tuple[ObjectAttributes, ...]:
    """Read "colour shape motion" combinations (any non-empty subset, in any order)."""
    combos = []
    for item in items:
        found: dict[str, str] = {}
        for word in item.lower().split():
            kind = (
                "colour"
                if word in COLOURS
                else "shape"
                if word in SHAPES
                else "motion"
                if word in MOTIONS
                else None
            )
            if kind is None:
                raise MvditError(
                    f"holdout '{item}': unknown word '{word}'; use colours ({', '.join(COLOURS)}), "
                    f"shapes ({', '.join(SHAPES)}) or motions ({', '.join(MOTIONS)})"
                )
            if kind in found:
                raise MvditError(
                    f"holdout '{item}' names two {kind}s ('{found[kind]}', '{word}'); give at most one of each"
                )
            found[kind] = word
        if not found:
            raise MvditError("holdout has an empty combination; write e.g. 'red circle left'")
        if found.get("shape") == "circle" and found.get("motion") == "rotating":
            raise MvditError(
                f"holdout '{item}': a rotating circle looks still, so the dataset never draws one"
            )
        combos.append(
            ObjectAttributes(found.get("colour"), found.get("shape"), found.get("motion"))
        )
    return tuple(combos)


def matches(o: ObjectSpec, combo: ObjectAttributes) -> bool:
    return all(
        want is None or want == got
        for want, got in (
            (combo.colour, o.colour),
            (combo.shape, o.shape),
            (combo.motion, o.motion),
        )
    )


class ShapesDataset(torch.utils.data.Dataset):
    """Captioned procedural clips; item i is a pure function of (seed, split, i, clip size).

    split="train" never shows an object matching a `holdout` combination, split="holdout" shows
    only clips whose first object matches one, and split="val" is the training distribution drawn
    from a disjoint seed stream. `colours`, `shapes`, `motions`, ... restrict the vocabulary.
    """

    def __init__(
        self,
        size: int = 100_000,
        frames: int = 8,
        height: int = 32,
        width: int = 32,
        fps: float = 8.0,
        seed: int = 0,
        split: str = "train",
        holdout: Sequence[str] = (),
        paraphrase: bool = True,
        max_objects: int = 2,
        colours: Sequence[str] | None = None,
        shapes: Sequence[str] | None = None,
        motions: Sequence[str] | None = None,
        speeds: Sequence[str] | None = None,
        backgrounds: Sequence[str] | None = None,
        background_styles: Sequence[str] | None = None,
        upright: bool = False,
        object_size: Sequence[float] | None = None,
    ):
        if split not in SPLITS:
            raise MvditError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
        if size < 1:
            raise MvditError(f"dataset size must be positive, got {size}")
        if max_objects not in (1, 2):
            raise MvditError(f"max_objects must be 1 or 2, got {max_objects}")
        if frames < 1 or height < 8 or width < 8 or fps <= 0:
            raise MvditError(
                f"clip must be at least 1x8x8 at a positive fps, got {frames}x{height}x{width} at {fps} fps"
            )
        self.vocab = Vocabulary.make(
            colours=colours,
            shapes=shapes,
            motions=motions,
            speeds=speeds,
            backgrounds=backgrounds,
            background_styles=background_styles,
            upright=upright,
            object_size=object_size,
        )
        self.holdout = parse_holdout(holdout)
        for combo in self.holdout:
            for kind, value in (
                ("colours", combo.colour),
                ("shapes", combo.shape),
                ("motions", combo.motion),
            ):
                if value is not None and value not in getattr(self.vocab, kind):
                    raise MvditError(
                        f"holdout word '{value}' is not among the dataset's {kind} ({', '.join(getattr(self.vocab, kind))})"
                    )
        if split == "holdout" and not self.holdout:
            raise MvditError(
                "split='holdout' needs holdout combinations, e.g. holdout=['red circle left']"
            )
        self.size, self.frames, self.height, self.width, self.fps = size, frames, height, width, fps
        self.seed, self.split, self.paraphrase, self.max_objects = (
            seed,
            split,
            paraphrase,
            max_objects,
        )

    def __len__(self) -> int:
        return self.size

    def spec(self, i: int) -> tuple[ClipSpec, np.random.Generator]:
        """The clip spec of item i, and the generator that then draws its caption."""
        if not 0 <= i < self.size:
            raise IndexError(f"index {i} out of range for a dataset of {self.size}")
        rng = np.random.default_rng([self.seed, SPLITS.index(self.split), i])
        aspect = self.width / self.height
        if self.split == "holdout":
            pin = self.holdout[int(rng.integers(len(self.holdout)))]
            return sample_spec(rng, self.vocab, self.max_objects, pin, aspect), rng
        for _ in range(1000):  # rejection keeps every held-out combination out of train and val
            spec = sample_spec(rng, self.vocab, self.max_objects, aspect=aspect)
            if not any(matches(o, c) for o in spec.objects for c in self.holdout):
                return spec, rng
        raise MvditError(
            f"the holdout {[' '.join(filter(None, vars(c).values())) for c in self.holdout]} leaves almost nothing to train on"
        )

    def __getitem__(self, i: int) -> dict:
        spec, rng = self.spec(int(i))
        video, truth = render(spec, self.frames, self.height, self.width, self.fps)
        x = torch.from_numpy(video).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)
        return {
            "video": x,
            "caption": caption(spec, rng, self.paraphrase),
            "spec": spec,
            "truth": truth,
        }


def write_examples(
    out_dir: str | Path,
    *,
    n: int = 8,
    frames: int = 8,
    height: int = 32,
    width: int = 32,
    fps: float = 8.0,
    seed: int = 0,
    scale: int | None = None,
    **dataset_kw,
) -> list[Path]:
    """Write n example clips as mp4 plus contact_sheet.png and captions.json; returns the paths."""
    if n < 1:
        raise MvditError(f"number of examples must be positive, got {n}")
    ds = ShapesDataset(
        size=n, frames=frames, height=height, width=width, fps=fps, seed=seed, **dataset_kw
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    videos, captions, paths = [], [], []
    for i in range(n):
        spec, rng = ds.spec(i)
        video, _ = render(spec, frames, height, width, fps)
        text = caption(spec, rng, ds.paraphrase)
        path = out / f"shapes_{i:03d}.mp4"
        write_mp4(path, video, fps, scale=scale)
        videos.append(video)
        captions.append(text)
        paths.append(path)
    save_png(out / "contact_sheet.png", contact_sheet(videos, captions))
    write_json(
        out / "captions.json",
        [{"file": p.name, "caption": c} for p, c in zip(paths, captions, strict=True)],
    )
    return [*paths, out / "contact_sheet.png", out / "captions.json"]

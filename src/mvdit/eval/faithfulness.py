"""Prompt faithfulness: does a clip show the objects, colours, shapes and motions its prompt asks for?

A GenEval-style check for the `shapes` domain (GenEval: Ghosh et al., 2023): the prompt is parsed
into attributes (mvdit.data.shapes.parse_caption), the clip is read by the shapes detector
(mvdit.data.shapes_detector), and each stated attribute is compared. It is this project's own
metric, not part of VBench.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mvdit import MvditError
from mvdit.data.shapes import PromptAttributes, parse_caption
from mvdit.data.shapes_detector import detect

ATTRIBUTES = ("count", "colour", "shape", "motion", "speed", "background")


def score_clip(video: np.ndarray | torch.Tensor, prompt: PromptAttributes | str) -> dict:
    """Check one clip against what its prompt asks for.

    video: uint8 (T, H, W, 3), or float in [-1, 1] as (T, H, W, 3) or (3, T, H, W).
    prompt: the attributes (mvdit.data.shapes.parse_caption) or the prompt text itself.
    Returns one bool per attribute in ATTRIBUTES (None where the prompt does not state it),
    "overall" (every stated attribute right) and "detected" (what the detector saw).
    """
    want = parse_caption(prompt) if isinstance(prompt, str) else prompt
    seen = detect(video)
    found = list(seen["objects"])
    # Pair each asked-for object with the detected one that agrees most (colour first, then shape).
    pairs = []
    for o in want.objects:
        if not found:
            pairs.append((o, None))
            continue
        best = max(
            found,
            key=lambda d: (
                2 * (d["colour"] == o.colour) + (d["shape"] == o.shape) + (d["motion"] == o.motion)
            ),
        )
        found.remove(best)
        pairs.append((o, best))

    def check(key: str) -> bool | None:
        stated = [(getattr(o, key), d) for o, d in pairs if getattr(o, key) is not None]
        if not stated:
            return None
        return all(d is not None and d[key] == value for value, d in stated)

    result: dict = {
        "count": len(seen["objects"]) == len(want.objects),
        "colour": check("colour"),
        "shape": check("shape"),
        "motion": check("motion"),
        # A speed is only right when the motion it qualifies is.
        "speed": None
        if all(o.speed is None for o in want.objects)
        else all(
            d is not None and d["motion"] == o.motion and d["speed"] == o.speed
            for o, d in pairs
            if o.speed is not None
        ),
        "background": None
        if want.background is None
        else seen["background"] == want.background
        and (want.background_style in (None, seen["background_style"])),
    }
    result["overall"] = all(v for v in result.values() if v is not None)
    result["detected"] = seen
    return result


def summarize(scores: Sequence[dict]) -> dict:
    """Accuracy per attribute (over the clips whose prompt states it) and overall, in [0, 1]."""
    if not scores:
        raise MvditError("summarize needs at least one scored clip")
    out: dict = {"clips": len(scores), "overall": float(np.mean([s["overall"] for s in scores]))}
    for key in ATTRIBUTES:
        vals = [s[key] for s in scores if s.get(key) is not None]
        out[key] = float(np.mean(vals)) if vals else None
    return out

"""The prompt-faithfulness detector: right on real clips, near chance on noise and wrong prompts."""

from __future__ import annotations

import numpy as np
import pytest

from mvdit import MvditError
from mvdit.data.shapes import (
    MOTIONS,
    ClipSpec,
    ObjectSpec,
    ShapesDataset,
    Vocabulary,
    render,
    sample_object,
)
from mvdit.eval.faithfulness import ATTRIBUTES, score_clip, summarize


def real_clips(n: int, frames: int, height: int, width: int, seed: int = 7):
    ds = ShapesDataset(size=n, frames=frames, height=height, width=width, seed=seed, split="val")
    specs = [ds.spec(i)[0] for i in range(n)]
    return [render(s, frames, height, width, 8.0)[0] for s in specs], [
        s.attributes() for s in specs
    ]


@pytest.mark.parametrize("size", [(9, 32, 32), (16, 64, 64)])
def test_real_clips_score_near_perfect(size):
    videos, prompts = real_clips(32 if size[1] == 32 else 16, *size)
    summary = summarize([score_clip(v, p) for v, p in zip(videos, prompts, strict=True)])
    assert summary["overall"] >= 0.98, summary
    assert all(summary[k] >= 0.98 for k in ATTRIBUTES), summary


def test_noise_model_and_wrong_prompts_score_near_chance():
    videos, prompts = real_clips(24, 9, 32, 32)
    rng = np.random.default_rng(0)
    noise = summarize(
        [
            score_clip(rng.integers(0, 256, v.shape, dtype=np.uint8), p)
            for v, p in zip(videos, prompts, strict=True)
        ]
    )
    shuffled = summarize(
        [score_clip(v, p) for v, p in zip(videos, prompts[1:] + prompts[:1], strict=True)]
    )
    for s in (noise, shuffled):
        # Chance: 1 in 11 colours, 1 in 13 motions; "overall" needs every attribute at once.
        assert s["overall"] <= 0.05 and s["colour"] <= 0.25 and s["motion"] <= 0.25, s


def one_object(
    motion: str, speed: str, seed: int, shape: str = "triangle"
) -> tuple[np.ndarray, ClipSpec]:
    rng = np.random.default_rng(seed)
    o = sample_object(rng, Vocabulary(speeds=(speed,)), colour="yellow", shape=shape, motion=motion)
    spec = ClipSpec((o,), "purple", "gradient", 30.0)
    return render(spec, 9, 32, 32, 8.0)[0], spec


@pytest.mark.parametrize("motion", MOTIONS)
def test_each_motion_and_speed_is_recognised(motion):
    for seed, speed in enumerate(("slow", "fast")):
        video, spec = one_object(motion, speed, seed)
        s = score_clip(video, spec.attributes())
        seen = s["detected"]["objects"][0]
        assert s["overall"], (motion, speed, seen)
        assert (
            seen["motion"] == motion and seen["shape"] == "triangle" and seen["colour"] == "yellow"
        )


def test_wrong_motion_fails_only_motion():
    video, spec = one_object("left", "fast", 0)
    s = score_clip(
        video, "a yellow triangle moves quickly to the right on a purple gradient background"
    )
    assert s["motion"] is False and s["speed"] is False and s["overall"] is False
    assert s["colour"] and s["shape"] and s["count"] and s["background"]
    reversed_clip = score_clip(
        video[::-1], "a yellow triangle moves quickly to the right on a purple gradient background"
    )
    assert reversed_clip["overall"]


def test_touching_objects_are_two():
    def still(colour: str, x: float) -> ObjectSpec:
        return ObjectSpec("square", colour, "still", "slow", x, 0.5, 0.0, 0.0, 0.3, 0.0)

    # Two squares side by side with no gap: one blob of pixels, two colours.
    spec = ClipSpec((still("red", 0.35), still("white", 0.65)), "black", "solid")
    video, truth = render(spec, 3, 32, 32, 8.0)
    assert (
        truth["centre"][0, 1, 0] - truth["centre"][0, 0, 0] < truth["size"][0, 0] / np.sqrt(2) + 0.5
    )
    s = score_clip(video, spec.attributes())
    assert s["overall"], s["detected"]


def test_inputs_and_prompt_forms_agree():
    item = ShapesDataset(size=3, frames=9, seed=2)[2]
    video_u8 = ((item["video"].permute(1, 2, 3, 0).numpy() + 1) * 127.5).round().astype(np.uint8)
    a = score_clip(item["video"], item["caption"])  # float (3, T, H, W) in [-1, 1] and prompt text
    b = score_clip(video_u8, item["spec"].attributes())
    assert a["overall"] and b["overall"]
    assert a["detected"]["objects"] == b["detected"]["objects"]
    with pytest.raises(MvditError, match="shape"):
        score_clip(np.zeros((9, 32, 32), np.uint8), item["caption"])
    with pytest.raises(MvditError, match="colour"):
        score_clip(video_u8, "a beautiful sunset")


def test_grainy_clips_still_read():
    videos, prompts = real_clips(16, 9, 32, 32, seed=11)
    rng = np.random.default_rng(1)
    grainy = [np.clip(v + rng.normal(0, 15, v.shape), 0, 255).astype(np.uint8) for v in videos]
    summary = summarize([score_clip(v, p) for v, p in zip(grainy, prompts, strict=True)])
    assert summary["overall"] >= 0.9, summary


def test_summarize():
    scores = [
        {
            "overall": True,
            "count": True,
            "colour": True,
            "shape": True,
            "motion": None,
            "speed": None,
            "background": None,
        },
        {
            "overall": False,
            "count": True,
            "colour": False,
            "shape": True,
            "motion": True,
            "speed": None,
            "background": None,
        },
    ]
    s = summarize(scores)
    assert s == {
        "clips": 2,
        "overall": 0.5,
        "count": 1.0,
        "colour": 0.5,
        "shape": 1.0,
        "motion": 1.0,
        "speed": None,
        "background": None,
    }
    with pytest.raises(MvditError):
        summarize([])


def test_bootstrap_intervals_over_prompts():
    from mvdit.eval.evaluate import CI_ATTRS, bootstrap_ci, paired_difference, prompt_clusters

    rows = [{"split": "eval", "prompt": f"p{i // 2}"} for i in range(96)]  # 48 prompts x 2 seeds
    prompt_of = prompt_clusters(rows)
    assert prompt_of[:4] == [0, 0, 1, 1] and max(prompt_of) == 47

    def clips(fn):
        return [{a: fn(i, a) for a in CI_ATTRS} for i in range(96)]

    half = clips(
        lambda i, a: (i // 2) % 2 == 0 if a != "speed" else None
    )  # right on every other prompt
    ci = bootstrap_ci(half, prompt_of)
    assert ci["speed"] is None
    lo, hi = ci["colour"]
    assert lo < 0.5 < hi and 0.15 < hi - lo < 0.45  # about 2 x 1.96 x sqrt(.25 / 48)

    f = lambda c: {"per_clip_scores": c, "prompt_of_clip": prompt_of}  # noqa: E731
    same = paired_difference(f(half), f(half))
    assert same["colour"]["diff"] == 0 and same["colour"]["ci95"] == [0.0, 0.0]
    right = clips(lambda i, a: True)
    d = paired_difference(f(right), f(half))["colour"]
    assert d["diff"] == 0.5 and d["ci95"][0] > 0.3 and d["ci95"][1] < 0.7
    with pytest.raises(MvditError, match="same prompts"):
        paired_difference(f(right), {"per_clip_scores": right, "prompt_of_clip": prompt_of[::-1]})

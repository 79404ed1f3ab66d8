"""The causal video VAE: frame rules, causality, tiling, normalisation, save/load, training,
and diffusers' VAEs behind the same interface. Tiny random models; each test takes seconds."""

import json

import pytest
import torch
from conftest import run_cli

from mvdit import MvditError
from mvdit.build import load_autoencoder
from mvdit.config import default_train_config
from mvdit.eval.evaluate import shapes_prompt_sets
from mvdit.models.vae import CausalVideoVAE, Tiling, latent_stats, shipped_vae_path, vae_preset


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny convolutions run 10-50x slower on 2 OpenMP threads when the cores are shared
    # (measured on the 2-core CI machine under load); one thread keeps this file fast.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


RATIOS = {"4x8x8": (4, 8), "4x16x16": (4, 16), "8x16x16": (8, 16), "8x32x32": (8, 32)}


def tiny_vae(ratio: str = "4x8x8", channels: int = 4, seed: int = 0) -> CausalVideoVAE:
    """A tiny VAE whose every weight is random (the zero-initialised residual branches too), so
    tests see a network that mixes information the way a trained one does."""
    n = len(vae_preset(ratio).widths)
    torch.manual_seed(seed)
    vae = CausalVideoVAE(vae_preset(ratio, latent_channels=channels, widths=[8] + [16] * (n - 1)))
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return vae.eval()


def video(t: int, h: int, w: int, b: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, t, h, w, generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("ratio", list(RATIOS))
def test_every_ratio_has_its_shapes_and_frame_rule(ratio):
    tf, sf = RATIOS[ratio]
    vae = tiny_vae(ratio)
    assert (vae.temporal_factor, vae.spatial_factor, vae.causal) == (tf, sf, True)
    frames, size = 1 + 2 * tf, 2 * sf
    assert vae.latent_shape(frames, size, size) == (4, 3, 2, 2)
    with torch.no_grad():
        z = vae.encode(video(frames, size, size))
        assert tuple(z.shape[1:]) == vae.latent_shape(frames, size, size)
        assert vae.decode(z).shape == (1, 3, frames, size, size)
    with pytest.raises(MvditError, match=f"1 \\+ {tf}k frames"):
        vae.check_clip(frames + 1, size, size)
    with pytest.raises(MvditError, match=f"multiples of {sf}"):
        vae.check_clip(frames, size + 4, size)


def test_first_frame_alone_is_one_latent_step():
    vae = tiny_vae("8x16x16")
    with torch.no_grad():
        assert vae.encode(video(1, 16, 16)).shape == (1, 4, 1, 1, 1)
        assert vae.decode(torch.randn(1, 4, 1, 1, 1)).shape == (1, 3, 1, 16, 16)


@pytest.mark.parametrize("ratio", ["4x8x8", "8x16x16"])
def test_encoder_is_causal(ratio):
    """Changing frame k changes latent steps j with j * tf >= k and no earlier one."""
    vae = tiny_vae(ratio)
    tf = vae.temporal_factor
    x = video(1 + 2 * tf, 32, 32)
    with torch.no_grad():
        z = vae.encode(x)
        for k in (0, 1, tf, tf + 1, 2 * tf):
            x2 = x.clone()
            x2[:, :, k] += 0.5
            changed = (vae.encode(x2) - z).abs().amax(dim=(0, 1, 3, 4)) > 0
            first = -(-k // tf)  # the latent step that covers frame k
            assert changed.tolist() == [j >= first for j in range(3)], k


def test_decoder_is_causal():
    """Changing latent step j changes frames from (j - 1) * tf + 1 on, and no earlier one."""
    vae = tiny_vae("4x8x8")
    z = torch.randn(1, 4, 3, 2, 2)
    with torch.no_grad():
        y = vae.decode(z)
        for j in range(3):
            z2 = z.clone()
            z2[:, :, j] += 1.0
            changed = (vae.decode(z2) - y).abs().amax(dim=(0, 1, 3, 4)) > 0
            first = max(0, (j - 1) * 4 + 1)
            assert changed.tolist() == [f >= first for f in range(9)], j


def test_posterior_mean_and_sample():
    vae = tiny_vae()
    x = video(5, 16, 16)
    with torch.no_grad():
        mean, logvar = vae.encode_dist(x)
        assert mean.shape == logvar.shape == (1, 4, 2, 2, 2)
        assert torch.equal(vae.encode(x), mean)  # no stats yet: encode is the raw mean
        g = torch.Generator().manual_seed(0)
        assert not torch.equal(vae.encode(x, sample=True, generator=g), mean)


def test_latent_normalisation_is_stored_and_applied(tmp_path):
    vae = tiny_vae()
    clips = [video(5, 16, 16, b=4, seed=s) for s in range(2)]
    mean, std = latent_stats(vae, clips)
    vae.set_latent_stats(mean, std)
    assert vae.config.latent_mean == mean and vae.config.latent_std == std
    with torch.no_grad():
        z = torch.cat([vae.encode(c) for c in clips])  # normalised on the data it was measured on
        per_channel = z.transpose(0, 1).flatten(1)
        assert per_channel.mean(1).abs().max() < 1e-4
        assert (per_channel.std(1) - 1).abs().max() < 1e-3
        # decode undoes the normalisation before the decoder sees the latent
        raw = vae.encode_dist(clips[0])[0]
        assert torch.allclose(
            vae.decode(vae.encode(clips[0])), vae.decode_raw(raw).clamp(-1, 1), atol=1e-5
        )
    vae.save_pretrained(tmp_path / "vae")
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert config["kind"] == "causal_vae" and config["latent_std"] == std


def test_save_load_round_trip(tmp_path):
    vae = tiny_vae("8x16x16")
    vae.set_latent_stats([0.1, -0.2, 0.3, 0.0], [1.0, 2.0, 0.5, 1.5])
    vae.save_pretrained(tmp_path / "vae")
    loaded = load_autoencoder(tmp_path / "vae")
    assert isinstance(loaded, CausalVideoVAE) and loaded.config == vae.config
    x = video(9, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.encode(x), vae.encode(x))
        assert torch.equal(loaded.decode(vae.encode(x)), vae.decode(vae.encode(x)))


def test_load_rejects_other_architecture(tmp_path):
    tiny_vae("4x8x8").save_pretrained(tmp_path / "vae")
    config = json.loads((tmp_path / "vae" / "config.json").read_text())
    config["latent_channels"] = 8
    (tmp_path / "vae" / "config.json").write_text(json.dumps(config))
    with pytest.raises(MvditError, match="shape"):
        load_autoencoder(tmp_path / "vae")


def test_bad_arch_is_a_one_line_error():
    with pytest.raises(MvditError, match="fold"):
        vae_preset("4x8x8", widths=[8, 12, 16])
    with pytest.raises(MvditError, match="unknown VAE preset"):
        vae_preset("2x2x2")


@torch.no_grad()
@pytest.mark.parametrize("ratio", ["4x8x8", "8x16x16"])
def test_time_chunks_decode_exactly(ratio):
    """Chunked decoding streams the causal convs' last frames into the next chunk: exact."""
    vae = tiny_vae(ratio)
    z = torch.randn(2, 4, 5, 2, 2, generator=torch.Generator().manual_seed(0))
    full = vae.decode(z)
    for frames in (1, 2, 3):
        assert torch.allclose(vae.decode(z, tiling=Tiling(frames=frames)), full, atol=1e-5)
    assert torch.allclose(vae.decode(z, tiling=Tiling(frames=2), batch_slice=1), full, atol=1e-5)
    # one whole tile
    assert torch.equal(vae.decode(z, tiling=Tiling(frames=5, height=2, width=2)), full)


@torch.no_grad()
def test_spatial_tiles_blend_to_the_untiled_decode():
    """The shipped (trained) VAE: overlapping spatial tiles, blended, match one pass closely."""
    from mvdit.data.shapes import ShapesDataset
    from mvdit.eval.metrics import psnr
    from mvdit.models.vae import default_vae_path

    vae = CausalVideoVAE.from_pretrained(default_vae_path())
    # the shipped VAE's own data (the CPU preset's vocabulary), at 3x the preset's frame size
    vocab = dict(
        max_objects=1,
        colours=["red", "green", "blue", "yellow", "white"],
        backgrounds=["black", "gray"],
        background_styles=["solid"],
    )
    x = ShapesDataset(size=1, frames=9, height=96, width=96, split="val", seed=1, **vocab)[0][
        "video"
    ][None]
    z = vae.encode(x)  # 3x12x12 latent: small enough to decode in one piece too
    full = vae.decode(z)
    tiled = vae.decode(z, tiling=Tiling(frames=1, height=8, width=8, overlap=4))
    assert tiled.shape == full.shape
    assert psnr(tiled, full) > 40.0


@torch.no_grad()
def test_memory_cap_picks_tiles_that_fit():
    vae = tiny_vae("4x8x8")
    need = vae.decode_bytes((5, 8, 8))
    assert vae.tiling_for_budget((5, 8, 8), need) is None
    chunked = vae.tiling_for_budget((5, 8, 8), need // 2)  # time chunks come first: they are exact
    assert chunked is not None and chunked.frames < 5 and chunked.height is None
    tiled = vae.tiling_for_budget((5, 8, 8), need // 12)
    assert tiled.frames == 1 and tiled.height < 8
    assert vae.decode_bytes((1, tiled.height, tiled.width or 8)) <= need // 12
    z = torch.randn(1, 4, 5, 8, 8)
    assert vae.decode(z, max_tile_bytes=need // 12).shape == (1, 3, 17, 64, 64)
    with pytest.raises(MvditError, match="max_tile_bytes"):
        vae.tiling_for_budget((5, 8, 8), 10)


# ---------------------------------------------------------------------------------------------
# diffusers VAEs behind the interface


@pytest.fixture(scope="module")
def diffusers_dirs(tmp_path_factory):
    diffusers = pytest.importorskip("diffusers")
    root = tmp_path_factory.mktemp("diffusers")
    torch.manual_seed(0)
    ltx = diffusers.AutoencoderKLLTXVideo(
        latent_channels=8,
        block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4,
        upsample_factor=(1,) * 4,
        patch_size=1,
        scaling_factor=0.5,
    )
    ltx.latents_mean.fill_(0.25)
    ltx.save_pretrained(root / "ltx")
    wan = diffusers.AutoencoderKLWan(
        base_dim=4,
        z_dim=4,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.1] * 4,
        latents_std=[2.0] * 4,
    )
    wan.save_pretrained(root / "wan")
    return root


@pytest.mark.parametrize(
    "name,kind,tf,sf,ch", [("ltx", "diffusers_ltx", 4, 4, 8), ("wan", "diffusers_wan", 4, 8, 4)]
)
def test_diffusers_vaes_behind_the_interface(diffusers_dirs, tmp_path, name, kind, tf, sf, ch):
    from mvdit.models.diffusers_vae import DiffusersVideoVAE

    vae = load_autoencoder(diffusers_dirs / name)  # a bare diffusers directory
    assert isinstance(vae, DiffusersVideoVAE)
    assert (vae.kind, vae.temporal_factor, vae.spatial_factor, vae.latent_channels, vae.causal) == (
        kind,
        tf,
        sf,
        ch,
        True,
    )
    x = video(9, 16, 16)
    z = vae.encode(x)
    assert tuple(z.shape[1:]) == vae.latent_shape(9, 16, 16)
    # normalised the way the model's own pipeline does it
    raw = vae.vae.encode(x).latent_dist.mode()
    expected = (raw - 0.25) * 0.5 if name == "ltx" else (raw - 0.1) / 2.0
    assert torch.allclose(z, expected, atol=1e-5)
    assert vae.decode(z).shape == (1, 3, 9, 16, 16)
    with pytest.raises(MvditError, match="1 \\+ 4k"):
        vae.check_clip(8, 16, 16)
    # a wrapper directory pointing at the weights loads the same model
    vae.save_pretrained(tmp_path / "wrapper")
    assert json.loads((tmp_path / "wrapper" / "config.json").read_text())["kind"] == kind
    assert torch.equal(load_autoencoder(tmp_path / "wrapper").encode(x), z)


def test_diffusers_wrapper_pointing_nowhere_is_an_error(tmp_path):
    pytest.importorskip("diffusers")
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "config.json").write_text(
        json.dumps({"kind": "diffusers_wan", "path": str(tmp_path / "missing")})
    )
    with pytest.raises(MvditError, match="no config.json"):
        load_autoencoder(tmp_path / "w")


# ---------------------------------------------------------------------------------------------
# training through the shared loop


TINY_CONFIG = """
[data]
kind = "shapes"
frames = 5
height = 16
width = 16
[model]
preset = "4x8x8"
latent_channels = 4
widths = [8, 16, 16]
[loss]
adv = 0.1
adv_start = 2
disc_width = 4
[optim]
lr = 1e-3
batch_size = 2
steps = 3
warmup_steps = 1
[run]
threads = 1
checkpoint_every = 2
log_every = 1
[eval]
clips = 2
stats_clips = 4
batch_size = 2
"""


def test_train_vae_runs_exports_and_resumes(tmp_path, capsys):
    cfg = tmp_path / "vae.toml"
    cfg.write_text(TINY_CONFIG)
    out = tmp_path / "run"
    code, stdout, err = run_cli(["train-vae", cfg, "--set", f"run.out_dir={out}"], capsys)
    assert code == 0, err
    assert "held-out reconstruction" in stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert "loss_disc" not in rows[1] and "loss_disc" in rows[2]  # the GAN term starts at step 2
    vae = load_autoencoder(out / "model")
    assert vae.config.latent_mean is not None and len(vae.config.latent_std) == 4
    assert set(json.loads((out / "eval.json").read_text())) == {
        "psnr",
        "ssim",
        "edge_f1",
        "clips",
        "faithfulness",
    }
    assert "prompt faithfulness of the reconstructions" in stdout
    held = [json.loads(line) for line in (out / "held_out.jsonl").read_text().splitlines()]
    assert [r["step"] for r in held] == [2, 3]  # every checkpoint, the last included
    assert {"psnr", "edge_f1", "shape", "colour", "motion"} <= set(held[0])
    assert (out / "held_out.png").stat().st_size > 0
    code, stdout, err = run_cli(
        ["eval-vae", out / "model", "--config", cfg, "--clips", 2, "--json", tmp_path / "e.json"],
        capsys,
    )
    assert code == 0, err
    clean = json.loads((tmp_path / "e.json").read_text())
    assert clean["clip"] == "5x16x16" and clean["latent_noise"] == 0
    noisy_args = ["eval-vae", out / "model", "--config", cfg, "--clips", 2, "--latent-noise", 1.0]
    code, stdout, err = run_cli([*noisy_args, "--json", tmp_path / "n.json"], capsys)
    assert code == 0, err
    assert "(latent noise 1)" in stdout
    assert json.loads((tmp_path / "n.json").read_text())["psnr"] != clean["psnr"]
    code, _, err = run_cli([*noisy_args[:-1], -0.5], capsys)
    assert code != 0 and "--latent-noise must be 0 or more" in err

    code, stdout, err = run_cli(
        ["train-vae", cfg, "--set", f"run.out_dir={out}", "--set", "optim.steps=5", "--resume"],
        capsys,
    )
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    held = [json.loads(line) for line in (out / "held_out.jsonl").read_text().splitlines()]
    assert [r["step"] for r in held] == [2, 3, 4, 5]  # resumed from 3: its row rewritten once


def test_train_vae_rejects_bad_clip_and_keys(tmp_path, capsys):
    cfg = tmp_path / "vae.toml"
    cfg.write_text(TINY_CONFIG)
    code, _, err = run_cli(
        ["train-vae", cfg, "--set", "data.frames=6", "--set", f"run.out_dir={tmp_path / 'r'}"],
        capsys,
    )
    assert code == 2 and "1 + 4k frames" in err and "Traceback" not in err
    code, _, err = run_cli(["train-vae", cfg, "--set", "loss.lpips=1"], capsys)
    assert code == 2 and "loss.lpips" in err


# ---------------------------------------------------------------------------------------------
# the trade-off study and the decode bench


def test_study_writes_one_table_and_resumes(tmp_path):
    from mvdit.studies.vae_ratios import run_vae_study

    kw = dict(
        ratios=["4x8x8", "8x32x32"],
        clip=(9, 32, 32),
        steps=2,
        batch_size=2,
        width=8,
        eval_clips=2,
        timing_repeats=1,
        progress=False,
    )
    rows = run_vae_study(
        tmp_path,
        generation_quality=lambda vae_dir, row: {"gen_shape": float(row["latent_channels"])},
        generate=["8x32x32"],
        **kw,
    )
    assert [r["ratio"] for r in rows] == ["4x8x8", "8x32x32"]
    assert [r["tokens_49x384x512"] for r in rows] == [13 * 48 * 64, 7 * 12 * 16]
    assert [r["tokens_9x32x32"] for r in rows] == [3 * 4 * 4, 2 * 1 * 1]
    assert rows[0]["dit_tflops_per_step"] > 10 * rows[1]["dit_tflops_per_step"]  # ~30x the tokens
    # the hook fills its columns for the ratios asked for, and only those
    assert [r["gen_shape"] for r in rows] == [None, 128.0]
    assert "| 8x32x32 |" in (tmp_path / "study.md").read_text()
    for name in ("study.md", "study.csv", "study.json", "study.png"):
        assert (tmp_path / name).is_file()
    assert len((tmp_path / "study.csv").read_text().splitlines()) == 3
    weights = tmp_path / "4x8x8" / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    again = run_vae_study(tmp_path, **kw)  # finished ratios are read back, not retrained
    assert weights.stat().st_mtime_ns == stamp
    assert [r["psnr"] for r in again] == [r["psnr"] for r in rows]
    assert again[1]["gen_shape"] is None  # no hook, no generation column


def test_study_generation_column_trains_and_scores_a_dit(tmp_path, capsys):
    # the real hook through the CLI: a VAE, then the default's DiT on its latents, scored by the
    # detector; a rerun reads the DiT and its scores back
    args = ["study", "vae", "--quick", "-o", str(tmp_path), "--ratio", "8x16x16"]
    args += ["--generate", "8x16x16"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    row = json.loads((tmp_path / "study.json").read_text())["rows"][0]
    assert row["dit_tokens"] == 2 * 2 * 2 and row["dit_steps"] == 2 and row["dit_s_per_step"] > 0
    assert 0 <= row["gen_overall"] <= 1 and "generated: overall" in out
    # scored on prompts of the vocabulary the DiT trained on (the embedded default's)
    written = (tmp_path / "8x16x16" / "dit" / "prompts" / "shapes-eval.txt").read_text()
    wanted = shapes_prompt_sets(default_train_config().data, n=1)["shapes-eval"]
    assert [ln for ln in written.splitlines() if not ln.startswith("#")] == wanted
    scores = tmp_path / "8x16x16" / "dit" / "eval" / "eval.json"
    stamp = scores.stat().st_mtime_ns
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert scores.stat().st_mtime_ns == stamp
    code, _, err = run_cli(
        ["study", "vae", "--quick", "-o", str(tmp_path), "--generate", "9x9"], capsys
    )
    assert code == 2 and "--generate '9x9' is not in the study" in err


def test_bench_times_decode_beside_dit_steps(tmp_path):
    from mvdit.bench.vae_decode import bench_cpu_default

    vae = tiny_vae("4x8x8", channels=16)
    vae.save_pretrained(tmp_path / "vae")
    r = bench_cpu_default(tmp_path / "vae", repeats=2)
    assert r["latent"] == "16x3x4x4" and "48 tokens" in r["dit"]
    assert r["decode_ms_median"] > 0 and r["dit_4_steps_ms_median"] > 0
    assert r["decode_reference_kernel_ms_median"] > 0  # PyTorch's own kernel, timed beside it
    assert r["decode_faster"] == (r["decode_ms_median"] < r["dit_4_steps_ms_median"])


def test_peak_rss_sees_an_allocation():
    from mvdit.bench.measure import PeakMemory

    with PeakMemory() as mem:
        x = torch.ones(50_000_000)  # 200 MB, touched
        del x
    assert mem.peak - mem.start > 150e6


@pytest.mark.slow
def test_paper_vae_decodes_49x384x512_under_a_cap():
    from mvdit.bench.vae_decode import bench_paper_decode

    r = bench_paper_decode(max_tile_bytes=1 << 30)
    assert r["video"] == "3x49x384x512" and r["latent"] == "128x7x12x16"
    assert r["peak_rss_above_weights_gb"] < 2.0


def test_reconstruction_faithfulness_is_the_detectors_ceiling():
    from mvdit.data.shapes import ShapesDataset
    from mvdit.models.autoencoder import PatchifyAutoencoder
    from mvdit.stages.train_vae import evaluate_reconstruction

    data = ShapesDataset(frames=9, height=32, width=32, max_objects=1, split="val")
    lossless = PatchifyAutoencoder(1, 4)
    scores = evaluate_reconstruction(lossless, data, 12, batch_size=5)["faithfulness"]
    assert scores["clips"] == 12 and scores["overall"] == 1.0

    class Frozen(PatchifyAutoencoder):  # keeps the first frame only: every motion is lost
        def decode(self, z):
            x = super().decode(z)
            return x[:, :, :1].expand_as(x)

    frozen = evaluate_reconstruction(Frozen(1, 4), data, 12)["faithfulness"]
    moving = sum(data[i]["spec"].objects[0].motion != "still" for i in range(12))
    assert moving >= 6 and frozen["motion"] <= 1 - moving / 12 + 1e-6
    assert frozen["colour"] == 1.0


def test_ltx_timestep_decode_noises_the_latent_like_ltx_pipeline(tmp_path):
    """LTXPipeline decodes (1 - s) z + s n with the decode timestep (s = decode_noise_scale,
    defaulting to decode_timestep); the adapter must too. Tiling set for one decode is undone."""
    diffusers = pytest.importorskip("diffusers")
    from mvdit.models.diffusers_vae import DiffusersVideoVAE

    torch.manual_seed(0)
    ltx = diffusers.AutoencoderKLLTXVideo(
        latent_channels=8, block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
        layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1, 1),
        spatio_temporal_scaling=(True, True, False, False),
        decoder_spatio_temporal_scaling=(True, True, False, False),
        decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4, upsample_factor=(1,) * 4,
        patch_size=1, timestep_conditioning=True,
    ).eval()  # fmt: skip
    vae = DiffusersVideoVAE(ltx, "diffusers_ltx", decode_timestep=0.05)
    z = torch.randn(1, 8, 3, 4, 4)
    ours = vae.decode(z, generator=torch.Generator().manual_seed(7))
    raw = z / vae.latent_scale + vae.latent_mean  # what LTXPipeline hands the VAE
    noise = torch.randn(raw.shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        ref = ltx.decode(0.95 * raw + 0.05 * noise, torch.tensor([0.05])).sample.clamp(-1, 1)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)
    with torch.no_grad():
        unnoised = ltx.decode(raw, torch.tensor([0.05])).sample.clamp(-1, 1)
    assert (ours - unnoised).abs().max() > 1e-4  # the noising step matters
    vae.decode(z, max_tile_bytes=1)
    assert ltx.use_tiling is False  # a tiled decode leaves later encodes untiled


def test_perceptual_loss_sees_a_blurred_outline():
    from scipy import ndimage

    from mvdit.data.shapes import ShapesDataset
    from mvdit.stages.train_vae import PerceptualLoss

    ds = ShapesDataset(size=2, frames=1, height=32, width=32, seed=0, max_objects=1)
    x = torch.stack([ds[i]["video"] for i in range(2)])
    blur = torch.from_numpy(ndimage.gaussian_filter(x.numpy(), (0, 0, 0, 1.5, 1.5)))
    loss = PerceptualLoss(64)
    y = blur.clone().requires_grad_()
    d = loss(y, x)
    d.backward()
    assert loss(x, x).item() == 0.0 and d.item() > 0.05
    assert y.grad.abs().sum() > 0  # it trains the decoder through the frozen network
    assert all(not p.requires_grad for p in loss.net.parameters())


def test_adaptive_gan_weight_balances_the_gradients():
    from mvdit.stages.train_vae import PatchDiscriminator3D, VAELossConfig, make_vae_loss

    torch.manual_seed(0)
    vae = CausalVideoVAE(vae_preset("4x8x8", latent_channels=4, widths=[8, 16, 16]))
    torch.nn.init.normal_(vae.decoder.conv_out.conv.weight, std=0.05)
    disc = PatchDiscriminator3D(4)
    cfg = VAELossConfig(adv=1.0, adv_start=0, adv_adaptive=True)
    x = video(5, 16, 16)

    def weight() -> float:
        fn = make_vae_loss(vae, disc, cfg)
        return fn(0, {"video": x}, torch.Generator().manual_seed(0))[1]["adv_weight"]

    w = weight()
    with torch.no_grad():
        disc.net[-1].weight.mul_(10)  # a 10x louder discriminator gets a 10x smaller weight
        disc.net[-1].bias.mul_(10)
    assert 0 < w and weight() == pytest.approx(w / 10, rel=1e-2)  # up to the 1e-4 guard


def test_edge_weight_counts_the_outline_not_the_background():
    from mvdit.stages.train_vae import VAELossConfig, edge_map, make_vae_loss

    x = torch.full((1, 3, 5, 16, 16), -1.0)
    x[..., 4:12, 4:12] = 1.0  # a white square on black
    e = edge_map(x[:, :, :1], 0.2)
    assert e.shape == (1, 1, 1, 16, 16)
    assert e[0, 0, 0, 4, 8] == 1 and e[0, 0, 0, 3, 8] == 1  # both sides of the outline
    assert e[0, 0, 0, 8, 8] == 0 and e[0, 0, 0, 0, 0] == 0  # inside and far outside
    torch.manual_seed(0)
    vae = CausalVideoVAE(vae_preset("4x8x8", latent_channels=4, widths=[8, 16, 16]))
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = make_vae_loss(vae, None, VAELossConfig(sample_posterior=False))(0, {"video": x}, gen())
    edged = make_vae_loss(vae, None, VAELossConfig(sample_posterior=False, edge_weight=10))(
        0, {"video": x}, gen()
    )
    assert edged[1]["l1"] != pytest.approx(plain[1]["l1"])  # the weighted mean differs
    assert edged[1]["psnr"] == plain[1]["psnr"]  # and the reconstruction is the same


def test_latent_noise_is_relative_to_each_channel_and_varies_per_clip():
    from mvdit.stages.train_vae import VAELossConfig, latent_noise, make_vae_loss

    mean = torch.randn(64, 2, 1, 4, 4) * torch.tensor([1.0, 100.0]).view(1, 2, 1, 1, 1)
    noise = latent_noise(mean, 0.5, torch.Generator().manual_seed(0))
    ratio = noise.std(dim=(0, 2, 3, 4)) / mean.std(dim=(0, 2, 3, 4))
    assert float(ratio[0]) == pytest.approx(
        float(ratio[1]), rel=0.2
    )  # a larger latent gets larger noise
    assert 0.2 < float(ratio[0]) < 0.4  # E[s^2] = 0.5^2 / 3 for s ~ U[0, 0.5]
    per_clip = noise.flatten(1).std(dim=1)
    assert per_clip.min() < 0.3 * per_clip.max()  # levels drawn per clip, from about zero up
    torch.manual_seed(0)
    vae = CausalVideoVAE(vae_preset("4x8x8", latent_channels=4, widths=[8, 16, 16]))
    x = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    clean = make_vae_loss(vae, None, VAELossConfig(sample_posterior=False))(0, {"video": x}, gen())
    noisy = make_vae_loss(vae, None, VAELossConfig(sample_posterior=False, latent_noise=1.0))(
        0, {"video": x}, gen()
    )
    assert noisy[1]["psnr"] != clean[1]["psnr"]  # the decoder saw another latent


def test_shipped_vaes_load_by_name():
    """ "default" is the 4x8x8 VAE the earlier default DiT read at patch 1
    (configs/tiny-4x8x8.toml); "cpu-4x4x4" and "cpu-4x4x4-32" the ones that keep shape, read at
    patch 2 (the embedded default and configs/tiny-4x4x4.toml); another name is a one-line
    error."""
    from mvdit.build import build_autoencoder
    from mvdit.config import VAEConfig, default_train_config, load_train_config

    old = build_autoencoder(VAEConfig(kind="pretrained", path="default"))
    new = build_autoencoder(VAEConfig(kind="pretrained", path="cpu-4x4x4"))
    assert old.latent_shape(9, 32, 32) == (16, 3, 4, 4)
    assert new.latent_shape(9, 32, 32) == (8, 3, 8, 8)
    wide = build_autoencoder(VAEConfig(kind="pretrained", path="cpu-4x4x4-32"))
    assert wide.latent_shape(9, 32, 32) == (32, 3, 8, 8)
    default = default_train_config()
    assert default.vae.path == "cpu-4x4x4" and default.model.patch_size == 2  # 48 tokens
    assert load_train_config("configs/tiny-4x8x8.toml").model.patch_size is None  # 48 tokens
    cfg = load_train_config("configs/tiny-4x4x4.toml")
    assert cfg.vae.path == "cpu-4x4x4" and cfg.model.patch_size == 2  # 3x4x4 = 48 tokens
    # docs/vae.md's teacher on the 32-channel VAE: the same config with vae.path overridden
    cfg = load_train_config("configs/tiny-4x4x4.toml", ["vae.path=cpu-4x4x4-32"])
    assert build_autoencoder(cfg.vae).latent_shape(9, 32, 32) == (32, 3, 8, 8)
    # the teacher that draws single objects on it reads it at patch 1: 192 tokens
    cfg = load_train_config("configs/tiny-4x4x4-32.toml")
    assert cfg.vae.path == "cpu-4x4x4-32" and cfg.model.patch_size == 1 and cfg.flow.shift == 2
    with pytest.raises(MvditError, match="cpu-4x4x4"):
        build_autoencoder(VAEConfig(kind="pretrained", path="vae-cpu-9"))


def test_inference_decode_runs_onednn_and_equals_the_reference_kernel():
    # at batch 1 PyTorch routes these small 3-D convolutions to its slow reference kernel; the
    # VAE's inference path goes through oneDNN instead, with the same numbers as training's path
    vae = load_autoencoder(shipped_vae_path("default"))
    z = torch.randn(1, *vae.latent_shape(9, 32, 32), generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), torch.profiler.profile() as prof:
        fast = vae.decode(z)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::mkldnn_convolution" in ops and "aten::slow_conv3d_forward" not in ops
    with torch.enable_grad():
        reference = vae.decode(z).detach()  # grad mode: plain F.conv3d
    assert (fast - reference).abs().max().item() < 1e-5


def test_folds_equal_the_one_permute_form_in_at_most_six_dimensions():
    # the folds run in steps of <= 6 dimensions (XNNPACK loads no 8-D tensor); they must stay the
    # one 8-D permute they replace, bit for bit
    from mvdit.models.vae import depth_to_space, space_to_depth

    def s2d_8d(x, ft, fs):
        if ft > 1:
            x = torch.cat([x[:, :, :1].expand(-1, -1, ft - 1, -1, -1), x], dim=2)
        b, c, t, h, w = x.shape
        x = x.reshape(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, c * ft * fs * fs, t // ft, h // fs, w // fs)

    def d2s_8d(x, ft, fs, first):
        b, c, t, h, w = x.shape
        c //= ft * fs * fs
        x = x.reshape(b, c, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, c, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1 :] if first and ft > 1 else x

    g = torch.Generator().manual_seed(0)
    for ft, fs in [(1, 1), (1, 2), (2, 1), (2, 2), (2, 4)]:
        x = torch.randn(2, 3, 5 if ft > 1 else 3, 8, 8, generator=g)
        assert torch.equal(space_to_depth(x, ft, fs), s2d_8d(x, ft, fs))
        z = torch.randn(2, 3 * ft * fs * fs, 3, 4, 4, generator=g)
        for first in (True, False):
            assert torch.equal(depth_to_space(z, ft, fs, first), d2s_8d(z, ft, fs, first))

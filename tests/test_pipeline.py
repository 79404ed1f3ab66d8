"""The pipeline owns its sampler: pipeline.json records it, and every command reads it."""

import json

import pytest
import torch
from conftest import run_cli, save_tiny_pipeline

from mvdit import MvditError
from mvdit.bench import dit as bench
from mvdit.pipeline import FORMAT, Pipeline, SamplerConfig

STUDENT = [1.0, 0.9, 0.6, 0.3, 0.0]  # a 4-step schedule


def test_a_four_step_pipeline_saves_reloads_and_reports_four_evaluations(tmp_path, capsys):
    save_tiny_pipeline(tmp_path / "student", schedule=STUDENT, guidance=1.0)
    raw = json.loads((tmp_path / "student" / "pipeline.json").read_text())
    assert raw["format"] == FORMAT
    assert raw["sampler"] == {
        "kind": "euler", "steps": 4, "schedule": STUDENT, "guidance": 1.0, "shift": None, "nfe": 4,
    }  # fmt: skip
    pipe = Pipeline.from_pretrained(tmp_path / "student")
    s = pipe.sampling()
    assert s.schedule == STUDENT and s.nfe == 4
    assert pipe.generate(["a red circle moves to the left on a black background"]).nfe == 4

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moves to the left on a black background\n")
    code, out, err = run_cli(
        ["eval", "-m", tmp_path / "student", "-p", prompts, "-o", tmp_path / "ev", "--seeds", 1,
         "--feature-size", 32],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert (ev["sampler"]["steps"], ev["sampler"]["nfe"]) == (4, 4)
    assert "4 steps" in (tmp_path / "ev" / "eval.md").read_text()

    r = bench.run_bench(
        bench.BenchConfig(targets=[str(tmp_path / "student")], out=str(tmp_path / "b"), threads=1,
                          reps=1, ltx=False, gemm_n=128)
    )  # fmt: skip
    assert r["targets"][0]["sampler"] == {"steps": 4, "guidance": 1.0, "nfe": 4}


def test_steps_on_a_fixed_schedule_model_is_an_error_that_says_why(tmp_path, capsys):
    save_tiny_pipeline(tmp_path / "student", schedule=STUDENT)
    with pytest.raises(MvditError, match=r"fixed 4-step schedule.*drop --steps"):
        Pipeline.from_pretrained(tmp_path / "student").generate(["a red circle"], steps=2)
    code, _, err = run_cli(
        ["generate", "a red circle", "-m", tmp_path / "student", "--steps", 2, "-o", tmp_path / "o.mp4"],
        capsys,
    )  # fmt: skip
    assert code == 2 and "drop --steps" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.mp4").exists()


def test_a_teacher_pipeline_counts_guided_evaluations(tmp_path):
    save_tiny_pipeline(tmp_path / "t", guidance=4.0)
    pipe = Pipeline.from_pretrained(tmp_path / "t")
    assert pipe.sampling().nfe == 4  # 2 steps x 2 (guidance)
    assert pipe.sampling(steps=5).nfe == 10 and pipe.sampling(steps=5, guidance=1.0).nfe == 5


def test_a_format_1_pipeline_json_is_read(tmp_path):
    save_tiny_pipeline(tmp_path / "old", guidance=3.0)
    path = tmp_path / "old" / "pipeline.json"
    raw = json.loads(path.read_text())
    s = raw.pop("sampler")
    del raw["format"]
    raw |= {"steps": 7, "cfg": s["guidance"], "shift": 2.0, "schedule": None}
    path.write_text(json.dumps(raw))
    sampler = Pipeline.from_pretrained(tmp_path / "old").config.sampler
    assert (sampler.steps, sampler.guidance, sampler.shift, sampler.nfe) == (7, 3.0, 2.0, 14)


def test_a_wrong_nfe_in_pipeline_json_is_named(tmp_path):
    save_tiny_pipeline(tmp_path / "m")
    path = tmp_path / "m" / "pipeline.json"
    raw = json.loads(path.read_text())
    raw["sampler"]["nfe"] = 99
    path.write_text(json.dumps(raw))
    with pytest.raises(MvditError, match=r"pipeline.json: sampler: .*nfe is 99"):
        Pipeline.from_pretrained(tmp_path / "m")


def test_sampler_config_derives_steps_from_a_schedule():
    s = SamplerConfig(schedule=[1.0, 0.5, 0.0], guidance=1.0)
    assert (s.steps, s.nfe, s.fixed) == (2, 2, True)
    with pytest.raises(MvditError, match="strictly decrease"):
        SamplerConfig(schedule=[1.0, 1.0, 0.0])


def test_sampling_with_a_precomputed_text_context_is_unchanged(tmp_path):
    save_tiny_pipeline(tmp_path / "m", guidance=3.0)
    pipe = Pipeline.from_pretrained(tmp_path / "m")
    prompt = ["a red circle moves to the left on a black background"]
    a = pipe.generate(prompt, seed=1).latents
    # the same sampler without the once-per-clip text context
    from mvdit.flow import euler_sample

    text, mask = pipe.text_encoder.encode(prompt)
    ntext, nmask = pipe.text_encoder.encode([""])
    noise = torch.randn(1, *pipe.latent_shape, generator=torch.Generator().manual_seed(1))
    b, _ = euler_sample(
        pipe.dit, noise, pipe.sampling().schedule, {"text": text, "text_mask": mask},
        {"text": ntext, "text_mask": nmask}, 3.0,
    )  # fmt: skip
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_sampling_from_given_latents(tmp_path):
    """`start` replaces the seed's noise: the seed's own noise gives the seed's clip, and a
    schedule that starts below 1 completes latents from there (what shape_from_noise.py does)."""
    from mvdit.pipeline import start_noise

    save_tiny_pipeline(tmp_path / "m", guidance=3.0)
    pipe = Pipeline.from_pretrained(tmp_path / "m")
    prompt = ["a red circle moves to the left on a black background"]
    a = pipe.generate(prompt, seed=1, decode=False).latents
    b = pipe.generate(prompt, start=start_noise(1, pipe.latent_shape, 1), decode=False).latents
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    x = torch.randn(1, *pipe.latent_shape)
    part = pipe.generate(prompt, schedule=[0.5, 0.25, 0.0], start=x, decode=False)
    assert part.nfe == 4 and not torch.equal(part.latents, x)
    with pytest.raises(MvditError, match="one latent per prompt"):
        pipe.generate(prompt * 2, start=x)


def test_a_pipeline_saved_in_fp16_with_a_shipped_vae_reference_reloads(tmp_path):
    """What a shipped model is: fp16 DiT weights, and vae/ naming the package's VAE."""
    from mvdit.build import load_autoencoder
    from mvdit.models.dit import DiTConfig, VideoDiT
    from mvdit.models.text import TextConfig, load_text_encoder
    from mvdit.models.vae import shipped_vae_path
    from mvdit.pipeline import PipelineConfig

    torch.manual_seed(0)
    vae = load_autoencoder(shipped_vae_path("default"))
    text = load_text_encoder(TextConfig(max_length=8))
    dit = VideoDiT(
        DiTConfig.uniform(
            depth=1,
            heads=2,
            ffn_dim=32,
            hidden_size=32,
            head_dim=16,
            in_channels=vae.latent_channels,
            text_dim=text.dim,
        )  # fmt: skip
    )
    torch.nn.init.normal_(dit.out.weight, std=0.1)
    pipe = Pipeline(dit, vae, text, PipelineConfig(frames=9, height=32, width=32, fps=8))
    pipe.save_pretrained(tmp_path / "p", dit_dtype=torch.float16, shipped_vae="default")
    assert json.loads((tmp_path / "p" / "vae" / "config.json").read_text()) == {
        "kind": "shipped", "name": "default",
    }  # fmt: skip
    assert not (tmp_path / "p" / "vae" / "model.safetensors").exists()
    back = Pipeline.from_pretrained(tmp_path / "p")
    for k, v in dit.state_dict().items():
        got = back.dit.state_dict()[k]
        assert got.dtype == torch.float32 and torch.equal(got, v.half().float())
    assert back.vae.latent_channels == vae.latent_channels
    with pytest.raises(MvditError, match="not the shipped VAE"):
        Pipeline(
            dit, load_autoencoder(shipped_vae_path("cpu-4x4x4")), text, pipe.config
        ).save_pretrained(tmp_path / "q", shipped_vae="default")
    assert not (tmp_path / "q").exists()


def test_a_model_directory_holds_its_text_encoder(tmp_path, monkeypatch):
    """A user's text encoder, given by a path relative to the working directory, is held inside
    the model directory and recorded relative to it: the directory moves whole and loads from any
    working directory."""
    import json
    import shutil

    from conftest import save_tiny_bert, save_tiny_pipeline

    from mvdit.pipeline import Pipeline

    monkeypatch.chdir(tmp_path)
    save_tiny_bert(tmp_path / "enc")
    save_tiny_pipeline(tmp_path / "models" / "m", text_path="enc")
    text = json.loads((tmp_path / "models" / "m" / "pipeline.json").read_text())["text"]
    assert text["path"] == "text_encoder"
    assert (tmp_path / "models" / "m" / "text_encoder" / "model.safetensors").is_file()
    shutil.move(tmp_path / "models", tmp_path / "moved")
    shutil.rmtree(tmp_path / "enc")
    monkeypatch.chdir("/")
    pipe = Pipeline.from_pretrained(tmp_path / "moved" / "m")
    assert pipe.config.text.path == str((tmp_path / "moved" / "m" / "text_encoder").resolve())
    assert pipe.generate(["a red circle"], decode=False).latents.isfinite().all()

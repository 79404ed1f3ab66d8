"""A user's diffusers pipeline directory (WanPipeline / LTXPipeline `save_pretrained`, tiny random
components, nothing downloaded) through every stage of the recipe by the same commands as
mvdit's own DiT: generate, sensitivity, prune, kd, synth, distill, convert, export, run-exported,
eval and bench."""

import json
import shutil

import pytest
import torch
from conftest import run_cli, save_tiny_diffusers_pipeline

pytest.importorskip("diffusers")
import diffusers  # noqa: E402

from mvdit.pipeline import Pipeline  # noqa: E402

FAMILIES = ("wan", "ltx")
PROMPT = "a red circle moves to the left on a black background"


@pytest.fixture(scope="module", params=FAMILIES)
def teacher(request, tmp_path_factory):
    return save_tiny_diffusers_pipeline(
        tmp_path_factory.mktemp(request.param) / "teacher", request.param
    )


def _prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(f"{PROMPT}\na green square moves up on a gray background\n")
    return path


def _ok(args, capsys) -> str:
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    return out


@pytest.mark.slow  # every stage on each family: ~1 min each; its own step in .ci/run
def test_the_recipe_runs_on_a_diffusers_pipeline(teacher, tmp_path, capsys):
    prompts = _prompts(tmp_path)
    _ok(["generate", PROMPT, "-m", teacher, "-o", tmp_path / "t.mp4"], capsys)
    assert (tmp_path / "t.mp4").stat().st_size > 0

    pruned = tmp_path / "pruned"
    _ok(["prune", "-m", teacher, "--budget", "params=0.6", "-o", pruned, "--prompts", prompts,
         "--n-prompts", 2, "--seeds", 1], capsys)  # fmt: skip
    # a diffusers pipeline directory again: the teacher's components, the pruned transformer
    # (per-block widths as a custom component stock diffusers loads with trust_remote_code)
    index = json.loads((pruned / "model_index.json").read_text())
    source = json.loads((teacher / "model_index.json").read_text())
    assert {k: v for k, v in index.items() if k != "transformer"} == {
        k: v for k, v in source.items() if k != "transformer"
    }
    assert index["transformer"] in (source["transformer"], *REMOTE.values())
    assert (pruned / "transformer" / "mvdit_prune.json").is_file()
    big, small = Pipeline.from_pretrained(teacher), Pipeline.from_pretrained(pruned)
    tokens = big.dit.config.tokens(big.latent_shape)
    kept = small.dit.cost(None, tokens, 16)["params"] / big.dit.cost(None, tokens, 16)["params"]
    assert kept <= 0.6

    cfg = tmp_path / "kd.toml"
    cfg.write_text(
        f'[kd]\nstudent = "{pruned}"\n[data]\nkind = "shapes"\nframes = 9\nheight = 32\nwidth = 32\n'
        f"[optim]\nsteps = 4\nbatch_size = 2\nwarmup_steps = 0\n"
        f'[run]\nout_dir = "{tmp_path / "kd"}"\ncheckpoint_every = 2\nlog_every = 1\n'
    )
    _ok(["kd", cfg], capsys)
    kd = tmp_path / "kd" / "model"
    assert (kd / "model_index.json").is_file()

    _ok(["synth", "-m", teacher, "-p", prompts, "-o", tmp_path / "synth", "--seeds", 1,
         "--steps", 2], capsys)  # fmt: skip
    _ok(["distill", "configs/distill-smoke.toml", "--set", f"distill.student='{kd}'",
         "--set", f"distill.teacher='{teacher}'", "--set", f"distill.synthetic='{tmp_path / 'synth'}'",
         "--set", f"run.out_dir='{tmp_path / 'distill'}'"], capsys)  # fmt: skip
    student = tmp_path / "distill" / "model"
    s = Pipeline.from_pretrained(student)
    assert s.config.sampler.fixed and s.sampling().nfe == 4
    assert (student / "transformer" / "mvdit_prune.json").is_file()

    small_dir = tmp_path / "fp16"
    _ok(["convert", "-m", student, "-o", small_dir, "--frames", 5], capsys)
    assert json.loads((small_dir / "mvdit.json").read_text())["frames"] == 5

    export = tmp_path / "export"
    _ok(["export", "-m", student, "--format", "onnx", "-o", export], capsys)
    manifest = json.loads((export / "manifest.json").read_text())
    assert manifest["sampler"]["nfe"] == 4 and (export / manifest["text"]["tokenizer"]).is_file()
    out = _ok(["run-exported", export, PROMPT, "-o", tmp_path / "x.mp4"], capsys)
    assert "largest frame difference against eager" in out and (tmp_path / "x.mp4").is_file()

    _ok(["eval", "-m", student, "-p", prompts, "--seeds", 1, "-o", tmp_path / "eval"], capsys)
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())
    _ok(["bench", student, "-o", tmp_path / "bench", "--reps", 1], capsys)
    assert json.loads((tmp_path / "bench" / "bench.json").read_text())


def test_sensitivity_scores_a_pipeline_on_its_own_samples(teacher, tmp_path, capsys):
    out = tmp_path / "sens"
    _ok(["sensitivity", "-m", teacher, "-o", out, "--prompts", _prompts(tmp_path),
         "--n-prompts", 2, "--seeds", 1, "--faith-prompts", 0], capsys)  # fmt: skip
    result = json.loads((out / "sensitivity.json").read_text())
    assert result["calibration"]["prompts"] and "latent" not in result["calibration"]
    assert {u["level"] for u in result["units"]} >= {"block", "head", "ffn"}


@pytest.mark.parametrize("family", FAMILIES)
def test_text_reaches_the_model_as_its_own_pipeline_gives_it(family, tmp_path):
    """Wan: UMT5 states of the prompt, zero-padded to max_sequence_length, no mask (WanPipeline);
    LTX: T5 states and their mask (LTXPipeline)."""
    path = save_tiny_diffusers_pipeline(tmp_path / family, family)
    pipe = Pipeline.from_pretrained(path)
    text, mask = pipe.text_encoder.encode([PROMPT])
    cond = pipe.dit.prepare_conditioning(text, mask)
    stock = diffusers.DiffusionPipeline.from_pretrained(path)
    with torch.no_grad():
        if family == "wan":
            ref, _ = stock.encode_prompt(PROMPT, do_classifier_free_guidance=False,
                                         max_sequence_length=16)  # fmt: skip
            assert cond["text_mask"] is None
            torch.testing.assert_close(cond["text"], ref, atol=1e-5, rtol=1e-5)
        else:
            ref, ref_mask, _, _ = stock.encode_prompt(PROMPT, do_classifier_free_guidance=False,
                                                      max_sequence_length=16)  # fmt: skip
            assert torch.equal(cond["text_mask"].bool(), ref_mask.bool())
            keep = ref_mask.bool()
            torch.testing.assert_close(cond["text"][keep], ref[keep], atol=1e-5, rtol=1e-5)


def test_a_broken_pipeline_directory_is_one_line(tmp_path, capsys):
    path = save_tiny_diffusers_pipeline(tmp_path / "wan", "wan")
    shutil.rmtree(path / "vae")
    code, _, err = run_cli(["generate", PROMPT, "-m", path, "-o", tmp_path / "a.mp4"], capsys)
    assert code == 2 and "without vae/" in err and "Traceback" not in err
    index = json.loads((path / "model_index.json").read_text())
    (path / "model_index.json").write_text(json.dumps(index | {"_class_name": "FluxPipeline"}))
    code, _, err = run_cli(["prune", "-m", path, "-o", tmp_path / "p"], capsys)
    assert code == 2 and "FluxPipeline" in err and not (tmp_path / "p").exists()


def test_model_architecture_keys_are_checked():
    from mvdit import MvditError
    from mvdit.build import build_model
    from mvdit.config import ModelConfig

    wan = build_model(ModelConfig(architecture="wan", diffusers={"num_layers": 2,
                      "num_attention_heads": 2, "attention_head_dim": 8}), 8, 24)  # fmt: skip
    assert len(wan.blocks) == 2 and wan.config.in_channels == 8 and wan.config.text_dim == 24
    for cfg, words in [
        (ModelConfig(architecture="wan", hidden_size=64), "model.hidden_size is a key of mvdit"),
        (ModelConfig(diffusers={"num_layers": 2}), 'model.architecture = "wan"'),
        (ModelConfig(architecture="ltx", diffusers={"in_channels": 4}), "follows them"),
        (ModelConfig(architecture="ltx", diffusers={"depth": 4}), "depth"),
    ]:
        with pytest.raises(MvditError, match=words):
            build_model(cfg, 8, 24)


@pytest.mark.slow  # three ExecuTorch lowerings per family: ~1 min each; its own step in .ci/run
@pytest.mark.parametrize("family", FAMILIES)
def test_a_diffusers_pipeline_exports_to_executorch_and_runs_there(family, tmp_path, capsys):
    """The T5/UMT5 text encoder, the DiT step and the family's VAE decoder (its 3-D convolutions
    through 2-D ones) lowered for ExecuTorch, and a clip generated by its runtime alone."""
    path = save_tiny_diffusers_pipeline(tmp_path / family, family)
    export = tmp_path / "pte"
    _ok(["export", "-m", path, "--format", "executorch", "-o", export], capsys)
    manifest = json.loads((export / "manifest.json").read_text())
    for name, art in manifest["artefacts"].items():
        assert art["max_abs_error_vs_eager"] is not None, name
    out = _ok(["run-exported", export, PROMPT, "-o", tmp_path / "x.mp4"], capsys)
    assert "ExecuTorch" in out and "largest frame difference against eager" in out


STOCK_LOAD = """
import sys, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
out = pipe(prompt="a red circle moves left", num_frames=9, height=32, width=32,
           num_inference_steps=4, guidance_scale=1.0, output_type="latent", max_sequence_length=16)
x, t, text = torch.load(sys.argv[2])
with torch.no_grad():
    if sys.argv[4] == "wan":
        v = pipe.transformer(x, t * 1000, text, return_dict=False)[0]
    else:  # LTX takes packed tokens and the grid
        b, c, f, h, w = x.shape
        mask = torch.ones(b, text.shape[1])
        v = pipe.transformer(x.flatten(2).transpose(1, 2), text, t * 1000, mask, f, h, w,
                             return_dict=False)[0].transpose(1, 2).reshape(x.shape)
torch.save({"latents": out.frames, "v": v,
            "mvdit": [m for m in sys.modules if m.split(".")[0] == "mvdit"],
            "class": type(pipe.transformer).__name__}, sys.argv[3])
"""

REMOTE = {"wan": ["mvdit_wan", "MvditWanTransformer3DModel"],
          "ltx": ["mvdit_ltx", "MvditLTXVideoTransformer3DModel"]}  # fmt: skip


@pytest.mark.slow  # a second Python process per family; its own step in .ci/run
@pytest.mark.parametrize("family", FAMILIES)
def test_a_pruned_pipeline_loads_in_stock_diffusers(family, tmp_path, capsys):
    """Per-block widths (heads, FFN) that the stock config cannot express: the pruned pipeline
    carries them in a custom component, which stock diffusers loads with trust_remote_code in a
    process that never imports mvdit, and generates with; its transformer computes what mvdit's
    adapter computes."""
    import subprocess
    import sys

    teacher = save_tiny_diffusers_pipeline(tmp_path / family, family)
    pruned = tmp_path / "pruned"
    _ok(["prune", "-m", teacher, "--budget", "params=0.6", "-o", pruned, "--prompts",
         _prompts(tmp_path), "--n-prompts", 2, "--seeds", 1], capsys)  # fmt: skip
    index = json.loads((pruned / "model_index.json").read_text())
    assert index["transformer"] == REMOTE[family]
    small = Pipeline.from_pretrained(pruned)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, *small.latent_shape, generator=g)
    t, text = torch.tensor([0.6]), torch.randn(1, 16, 16, generator=g)
    torch.save((x, t, text), tmp_path / "in.pt")
    script = tmp_path / "stock.py"
    script.write_text(STOCK_LOAD)
    proc = subprocess.run([sys.executable, script, pruned, tmp_path / "in.pt", tmp_path / "out.pt",
                           family], capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.load(tmp_path / "out.pt")
    assert got["mvdit"] == [] and got["class"] == REMOTE[family][1]
    assert torch.isfinite(got["latents"]).all()
    with torch.no_grad():
        ours = small.dit(x, t, text)
    torch.testing.assert_close(got["v"], ours, atol=1e-5, rtol=1e-5)


STOCK_STUDENT = """
import sys, torch
from diffusers import DiffusionPipeline
pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
noise = torch.load(sys.argv[2])
out = pipe(prompt="a red circle moves left", num_frames=9, height=32, width=32, latents=noise,
           num_inference_steps=4, guidance_scale=1.0, output_type="latent", max_sequence_length=16)
pipe.scheduler.set_timesteps(4)
torch.save({"latents": out.frames, "sigmas": pipe.scheduler.sigmas.tolist()}, sys.argv[3])
"""


@pytest.mark.slow  # prune, distil and a second process; its own step in .ci/run
def test_stock_wan_pipeline_samples_the_distilled_student_as_mvdit_does(tmp_path, capsys):
    """A Wan student is distilled on the schedule stock WanPipeline runs with the scheduler it is
    saved with at num_inference_steps=4, guidance 1: in a process without mvdit that pipeline
    samples the same final latent as `mvdit generate` from the same noise."""
    import subprocess
    import sys

    teacher = save_tiny_diffusers_pipeline(tmp_path / "wan", "wan")
    pruned, out = tmp_path / "pruned", tmp_path / "distill"
    _ok(["prune", "-m", teacher, "--budget", "params=0.6", "-o", pruned, "--prompts",
         _prompts(tmp_path), "--n-prompts", 2, "--seeds", 1], capsys)  # fmt: skip
    _ok(["distill", "configs/distill-smoke.toml", "--set", f"distill.student='{pruned}'",
         "--set", f"distill.teacher='{teacher}'", "--set", f"run.out_dir='{out}'"], capsys)  # fmt: skip
    student = Pipeline.from_pretrained(out / "model")
    noise = torch.randn(1, *student.latent_shape, generator=torch.Generator().manual_seed(3))
    torch.save(noise, tmp_path / "noise.pt")
    script = tmp_path / "stock.py"
    script.write_text(STOCK_STUDENT)
    proc = subprocess.run([sys.executable, script, out / "model", tmp_path / "noise.pt",
                           tmp_path / "out.pt"], capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.load(tmp_path / "out.pt")
    assert got["sigmas"] == pytest.approx(student.config.sampler.schedule, abs=1e-6)
    ours = student.generate(["a red circle moves left"], start=noise, decode=False).latents
    torch.testing.assert_close(got["latents"], ours, atol=1e-4, rtol=1e-4)

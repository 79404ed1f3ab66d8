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
    save_tiny_pipeline(tmp_path / "student", schedule=STUDENT, cfg=1.0)
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
        [str(tmp_path / "student")], tmp_path / "b", threads=1, reps=1, ltx=False, gemm_n=128
    )
    assert r["targets"][0]["sampler"] == {"steps": 4, "cfg": 1.0, "nfe": 4}


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
    save_tiny_pipeline(tmp_path / "t", cfg=4.0)
    pipe = Pipeline.from_pretrained(tmp_path / "t")
    assert pipe.sampling().nfe == 4  # 2 steps x 2 (guidance)
    assert pipe.sampling(steps=5).nfe == 10 and pipe.sampling(steps=5, cfg=1.0).nfe == 5


def test_a_format_1_pipeline_json_is_read(tmp_path):
    save_tiny_pipeline(tmp_path / "old", cfg=3.0)
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
    save_tiny_pipeline(tmp_path / "m", cfg=3.0)
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

"""The shipped default: a small fp16 4-step student that `mvdit generate` runs with no --model,
and that still draws what its model card says it draws."""

import json
from pathlib import Path

from conftest import run_cli
from safetensors import safe_open

from mvdit.eval.evaluate import read_prompts
from mvdit.eval.faithfulness import score_clip
from mvdit.pipeline import Pipeline, shipped_model_path, shipped_teacher_path

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_default_is_a_small_fp16_four_step_student():
    path = shipped_model_path()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size < 3 * 2**20  # fp16 DiT, the VAE a reference to the shipped one
    with safe_open(str(path / "dit" / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    assert json.loads((path / "vae" / "config.json").read_text()) == {
        "kind": "shipped",
        "name": "cpu-4x4x4",
    }
    pipe = Pipeline.from_pretrained(path)
    s = pipe.sampling()
    assert (s.steps, s.guidance, s.nfe) == (4, 1.0, 4)
    assert all(
        p.dtype.is_floating_point and str(p.dtype) == "torch.float32" for p in pipe.dit.parameters()
    )
    card = (path / "MODEL_CARD.md").read_text()
    check = json.loads((path / "check.json").read_text())
    for attr, n in check["at_least"].items():
        assert f"{attr} ≥ {n}" in card, attr  # the card states the level the test checks


def test_shipped_default_draws_what_its_model_card_says():
    path = shipped_model_path()
    check = json.loads((path / "check.json").read_text())
    prompts = [r["prompt"] for r in read_prompts(ROOT / check["prompts"])]
    videos = Pipeline.from_pretrained(path).generate(prompts, seed=check["seed"]).videos
    scores = [score_clip(v, p) for v, p in zip(videos, prompts, strict=True)]
    right = {a: sum(bool(s[a]) for s in scores) for a in check["at_least"]}
    assert len(scores) == check["measured"]["clips"]
    assert all(right[a] >= n for a, n in check["at_least"].items()), right


def test_generate_without_a_model_runs_the_shipped_default(tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    code, stdout, err = run_cli(
        [
            "generate",
            "a yellow star moves down on a gray background",
            "-o",
            out,
            "--timings",
            tmp_path / "t.json",
        ],  # fmt: skip
        capsys,
    )
    assert code == 0, err
    assert out.stat().st_size > 0 and "4 network evaluations" in stdout
    t = json.loads((tmp_path / "t.json").read_text())
    assert t["nfe"] == 4 and {"load", "text", "dit", "decode", "write"} <= set(t)


def test_the_shipped_teacher_is_fp16_at_80_nfe_and_draws_what_its_card_says():
    path = shipped_teacher_path()
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size < 4 * 2**20  # 1.8M parameters in fp16, the VAE a reference
    with safe_open(str(path / "dit" / "model.safetensors"), "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.float16"}
    pipe = Pipeline.from_pretrained(path)
    s = pipe.sampling()
    assert (s.steps, s.guidance, s.nfe) == (40, 4.0, 80)
    check = json.loads((path / "check.json").read_text())
    prompts = [r["prompt"] for r in read_prompts(ROOT / check["prompts"])]
    videos = pipe.generate(prompts, seed=check["seed"]).videos
    scores = [score_clip(v, p) for v, p in zip(videos, prompts, strict=True)]
    right = {a: sum(bool(s[a]) for s in scores) for a in check["at_least"]}
    assert all(right[a] >= n for a, n in check["at_least"].items()), right

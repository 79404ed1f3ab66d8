"""The command line as a user meets it: success paths write files, mistakes give one line and exit 2."""

import json

import pytest
import torch
from conftest import run_cli, save_tiny_pipeline


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random tiny pipeline on disk: DiT + 2x2 patchify (non-causal, even frames) + MiniLM."""
    path = tmp_path_factory.mktemp("model") / "tiny"
    return save_tiny_pipeline(
        path, frames=4, size=16, temporal_factor=2, spatial_factor=4, guidance=4.0
    )


def test_generate_writes_mp4_and_sheet(tiny_model, tmp_path, capsys):
    out, sheet = tmp_path / "v.mp4", tmp_path / "v.png"
    code, stdout, err = run_cli(
        [
            "generate",
            "a red circle moves left",
            "--model",
            tiny_model,
            "-o",
            out,
            "--sheet",
            sheet,
            "--seed",
            3,
        ],
        capsys,
    )
    assert code == 0, err
    assert (
        "text encoder" in stdout
        and "DiT" in stdout
        and "decode" in stdout
        and "2 network evaluations" not in stdout
    )
    from mvdit.video import read_video

    frames, fps = read_video(out)
    assert frames.shape[0] == 4 and fps == pytest.approx(8)
    assert sheet.stat().st_size > 0


def test_generate_is_deterministic_per_seed(tiny_model):
    from mvdit.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(tiny_model)
    a = pipe.generate(["a blue star"], seed=1).videos
    b = pipe.generate(["a blue star"], seed=1).videos
    c = pipe.generate(["a blue star"], seed=2).videos
    assert torch.equal(a, b) and not torch.equal(a, c)
    g = pipe.generate(["a blue star"], steps=3, guidance=2.0)
    assert g.nfe == 6 and g.videos.shape == (1, 4, 16, 16, 3) and g.videos.dtype == torch.uint8


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "   "], "prompt is empty"),
        (["generate", "a cat", "--model", "/nonexistent/dir"], "does not exist"),
        (["generate", "a cat", "--steps", "0"], "--steps must be in 1…1,000, got 0"),
        (["generate", "a cat", "-o", "clip.gif"], "must end in .mp4"),
        (["info", "--preset", "huge"], "unknown preset 'huge'"),
        (["info", "--frames", "50"], "--frames must be 1 + 8k"),
        (["train", "/nonexistent.toml"], "not found"),
    ],
)
def test_user_mistakes_get_one_line(args, message, capsys):
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_impossible_frame_count(tiny_model, tmp_path, capsys):
    code, _, err = run_cli(
        ["generate", "a cat", "--model", tiny_model, "--frames", "5", "-o", tmp_path / "x.mp4"],
        capsys,
    )
    assert code == 2 and "multiple of 2 frames" in err and not (tmp_path / "x.mp4").exists()


def test_checkpoint_of_another_architecture(tiny_model, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    cfg = json.loads((bad / "dit" / "config.json").read_text())
    cfg["blocks"][0]["ffn_dim"] = 48
    (bad / "dit" / "config.json").write_text(json.dumps(cfg))
    code, _, err = run_cli(["generate", "a cat", "--model", bad, "-o", tmp_path / "x.mp4"], capsys)
    assert (
        code == 2 and "blocks.0.ffn.fc1.weight" in err and "(32, 32)" in err and "(48, 32)" in err
    )
    assert not (tmp_path / "x.mp4").exists()


def test_not_a_model_directory(tmp_path, capsys):
    code, _, err = run_cli(["generate", "a cat", "--model", tmp_path], capsys)
    assert code == 2 and "neither pipeline.json" in err


def test_train_rejects_unknown_key(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[model]\npreset = 'tiny'\nwidth = 3\n")
    code, _, err = run_cli(["train", cfg], capsys)
    assert code == 2 and "unknown key 'model.width'" in err


def test_info_reports_paper_numbers(capsys):
    code, out, _ = run_cli(
        [
            "info",
            "--preset",
            "paper-teacher",
            "--frames",
            "49",
            "--height",
            "384",
            "--width",
            "512",
        ],
        capsys,
    )
    assert code == 0
    assert "tokens: 1,344" in out and "latent 128x7x12x16" in out
    total = float(out.split("parameters: ")[1].split("B")[0])
    assert abs(total - 2.0) / 2.0 <= 0.07
    code, out, _ = run_cli(["info", "--preset", "paper-student"], capsys)
    total = float(out.split("parameters: ")[1].split("B")[0])
    assert abs(total - 0.9) / 0.9 <= 0.07 and "20 blocks" in out


def test_train_then_generate_on_shapes(tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = run_cli(
        [
            "train",
            "--set",
            f"run.out_dir='{run}'",
            "--set",
            "optim.steps=3",
            "--set",
            "optim.batch_size=2",
            "--set",
            "run.checkpoint_every=2",
            "--set",
            "optim.warmup_steps=1",
            "--set",
            "data.cache_clips=6",
        ],
        capsys,
    )
    assert code == 0, err
    assert (run / "model" / "pipeline.json").is_file() and (run / "loss.png").is_file()
    # the default encodes its training clips once into a latent cache in the run directory
    index = json.loads((run / "latents" / "index.json").read_text())
    assert index["complete"] and index["dataset"]["items"] == 6
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]
    code, _, err = run_cli(
        [
            "generate",
            "a red circle moves to the left",
            "--model",
            run / "model",
            "--steps",
            "2",
            "-o",
            tmp_path / "o.mp4",
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "o.mp4").stat().st_size > 0
    # a second `train` into the same directory refuses instead of overwriting
    code, _, err = run_cli(
        ["train", "--set", f"run.out_dir='{run}'", "--set", "optim.steps=3"], capsys
    )
    assert code == 2 and "--resume" in err

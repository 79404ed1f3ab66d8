"""`mvdit eval-curve`: prompt faithfulness of every kept checkpoint of a run."""

import json

import pytest
from conftest import run_cli

from mvdit.eval.evaluate import faithfulness
from mvdit.pipeline import Pipeline

PROMPTS = "a red circle moves to the left on a black background\na green square stays still on a gray background\n"


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    from typer.testing import CliRunner

    from mvdit.cli import app

    run = tmp_path_factory.mktemp("curve") / "run"
    sets = [
        "optim.steps=3",
        "optim.batch_size=2",
        "optim.warmup_steps=1",
        "run.checkpoint_every=1",
        "run.keep_checkpoints=5",
        "data.cache_clips=4",
    ]
    res = CliRunner().invoke(
        app, ["train", "--set", f"run.out_dir='{run}'"] + [a for s in sets for a in ("--set", s)]
    )
    assert res.exit_code == 0, res.output
    return run


def test_curve_scores_every_checkpoint_and_ends_at_the_export(short_run, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS)
    out = tmp_path / "curve"
    code, stdout, err = run_cli(
        ["eval-curve", short_run, "-p", prompts, "-o", out, "--steps", 2], capsys
    )
    assert code == 0, err
    r = json.loads((out / "curve.json").read_text())
    assert [p["step"] for p in r["points"]] == [1, 2, 3]
    assert all(p["p"]["clips"] == 2 for p in r["points"])
    assert (out / "curve.png").stat().st_size > 0 and "| 3 |" in (out / "curve.md").read_text()
    assert "step       3" in stdout

    # the last checkpoint's EMA weights are what the run exported: the same clips, the same scores
    pipe = Pipeline.from_pretrained(short_run / "model")
    rows = [{"prompt": p, "split": "p"} for p in PROMPTS.splitlines()]
    videos = [pipe.generate([r["prompt"]], steps=2, seed=0).videos.numpy()[0] for r in rows]
    want = faithfulness(videos, rows)["all"]
    assert {k: r["points"][-1]["all"][k] for k in want if k != "clips"} == {
        k: v for k, v in want.items() if k != "clips"
    }

    # a rerun with the same settings reuses the finished points instead of regenerating them
    (short_run / "checkpoints" / "step_0000002" / "ema.safetensors").rename(
        tmp_path / "moved.safetensors"
    )
    try:
        code, _, err = run_cli(
            ["eval-curve", short_run, "-p", prompts, "-o", out, "--steps", 2], capsys
        )
        assert code == 0, err
        assert json.loads((out / "curve.json").read_text())["points"] == r["points"]
        # another checkpoint at the same step (a retrained run) is scored again
        state = short_run / "checkpoints" / "step_0000002" / "state.json"
        saved = state.read_bytes()
        state.write_bytes(saved + b" ")
        try:
            code, _, err = run_cli(
                ["eval-curve", short_run, "-p", prompts, "-o", out, "--steps", 2], capsys
            )
            assert code == 2 and "step_0000002/ema.safetensors not found" in err
        finally:
            state.write_bytes(saved)
        # other settings recompute, and then the missing file is named
        code, _, err = run_cli(
            ["eval-curve", short_run, "-p", prompts, "-o", out, "--steps", 3], capsys
        )
        assert code == 2 and "step_0000002/ema.safetensors not found" in err
    finally:
        (tmp_path / "moved.safetensors").rename(
            short_run / "checkpoints" / "step_0000002" / "ema.safetensors"
        )


def test_curve_rejects_bad_input(short_run, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPTS)
    free = tmp_path / "free.txt"
    free.write_text("a cat playing the piano\n")
    cases = [
        (["eval-curve", tmp_path, "-p", prompts], "no exported model/"),
        (["eval-curve", short_run, "-p", free], "shapes captions only"),
        (["eval-curve", short_run, "-p", prompts, "--seeds", 0], "--seeds"),
        (["eval-curve", short_run, "-p", prompts, "--weights", "best"], "--weights"),
    ]
    for args, msg in cases:
        code, _, err = run_cli(args + ["-o", tmp_path / "o"], capsys)
        assert code == 2 and msg in err and "Traceback" not in err, (args, err)
    (tmp_path / "empty" / "model").mkdir(parents=True)
    code, _, err = run_cli(["eval-curve", tmp_path / "empty", "-p", prompts], capsys)
    assert code == 2 and "holds no checkpoints" in err

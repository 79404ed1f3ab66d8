"""`mvdit recipe`: the whole chain in one resumable command with one report."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import run_cli, save_tiny_pipeline
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


def test_the_smoke_recipe_runs_whole_and_a_rerun_skips_it(tmp_path, capsys):
    out = tmp_path / "r"
    t0 = time.perf_counter()
    code, stdout, err = run_cli(["recipe", ROOT / "configs" / "recipe-smoke.toml", "-o", out],
                                capsys)  # fmt: skip
    first = time.perf_counter() - t0
    assert code == 0, err
    report = (out / "report.md").read_text()
    for row in ("| teacher |", "| student |", "| distill |", "| export |"):
        assert row in report, row
    assert (out / "export" / "manifest.json").is_file() and (out / "report.png").is_file()
    state = json.loads((out / "recipe.json").read_text())
    assert all(s["done"] for s in state["stages"].values()) and len(state["stages"]) == 9
    t0 = time.perf_counter()
    code, stdout, err = run_cli(["recipe", ROOT / "configs" / "recipe-smoke.toml", "-o", out],
                                capsys)  # fmt: skip
    assert code == 0, err
    assert time.perf_counter() - t0 < first / 4 and stdout.count("skipped") == 9
    # a changed stage reruns with everything after it, and nothing before it
    code, stdout, err = run_cli(["recipe", ROOT / "configs" / "recipe-smoke.toml", "-o", out,
                                 "--set", "convert.dtype='fp32'", "--until", "export"], capsys)  # fmt: skip
    assert code == 0, err
    assert "[distill] unchanged" in stdout and "[convert] running" in stdout
    assert "[export] running" in stdout


def _config(tmp_path: Path, teacher: Path, steps: int) -> Path:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle moves to the left\na blue square on black\n")
    cfg = tmp_path / "recipe.toml"
    cfg.write_text(
        f'[teacher]\nfrom = "{teacher}"\n'
        f'[prune]\nbudget = "params=0.95"\n[prune.calibration]\nprompts = "{prompts}"\n'
        "n_prompts = 2\nseeds = 1\ntimesteps = [0.5]\n"
        f'[synth]\nprompts = "{prompts}"\nseeds = 1\nsteps = 2\n'
        f'[distill]\nconfig = "{ROOT / "configs" / "distill-smoke.toml"}"\n'
        f'set = ["optim.steps={steps}", "run.checkpoint_every=2", "data.frames=4", '
        '"data.height=16", "data.width=16"]\n'
    )
    return cfg


def test_a_killed_recipe_resumes_to_the_same_student(tmp_path, capsys):
    """kill -9 in the middle of the distillation, run the recipe again: it skips what finished,
    resumes the distillation from its checkpoint, and the student equals an uninterrupted run's."""
    teacher = save_tiny_pipeline(tmp_path / "teacher", frames=4, size=16, temporal_factor=4,
                                 ffn_dim=64, guidance=4.0)  # fmt: skip
    cfg = _config(tmp_path, teacher, steps=12)
    whole = tmp_path / "whole"
    code, _, err = run_cli(["recipe", cfg, "-o", whole, "--until", "distill"], capsys)
    assert code == 0, err

    cut = tmp_path / "cut"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mvdit.cli", "recipe", str(cfg), "-o", str(cut), "--until",
         "distill"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    ckpt = cut / "distill" / "checkpoints" / "step_0000004"
    deadline = time.time() + 300
    while not ckpt.is_dir() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the recipe ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not json.loads((cut / "recipe.json").read_text())["stages"]["distill"]["done"]
    code, stdout, err = run_cli(["recipe", cfg, "-o", cut, "--until", "distill"], capsys)
    assert code == 0, err
    assert "[prune] unchanged" in stdout and "[distill] resuming" in stdout
    a = load_file(whole / "distill" / "model" / "dit" / "model.safetensors")
    b = load_file(cut / "distill" / "model" / "dit" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-6


@pytest.mark.parametrize(
    "args,words",
    [
        (["--from", "nowhere"], "--from nowhere: not a stage"),
        (["--from", "bench", "--until", "teacher"], "comes after"),
        (["--set", "prune.budget='params=2'"], "params takes the fraction to keep"),
    ],
)
def test_recipe_mistakes_are_one_line(tmp_path, capsys, args, words):
    code, _, err = run_cli(["recipe", ROOT / "configs" / "recipe-smoke.toml", "-o",
                            tmp_path / "r", *args], capsys)  # fmt: skip
    assert code == 2 and words in err and "Traceback" not in err

"""Every training command under torchrun (gloo, 2 CPU processes), DDP and FSDP2: the weights after
N steps equal one process's with the same global batch (2 ranks x grad_accum 1 against one
process with grad_accum 2), and a checkpoint from 2 processes resumes in 1 with the same losses.

Tolerance: 1e-5 on weights and moments (measured: DDP bit-equal, FSDP2 <= 5e-7; FSDP2 sums the
two ranks' gradients in another order), 1e-5 relative on logged losses.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_cli, save_tiny_pipeline
from safetensors.torch import load_file

from mvdit import MvditError
from mvdit.distributed import setup

pytestmark = pytest.mark.distributed  # its own step in .ci/run: -m distributed
ROOT = Path(__file__).resolve().parents[1]
TEACHER_SETS = ["optim.steps=6", "optim.batch_size=2", "optim.warmup_steps=1",
                "run.checkpoint_every=2", "run.log_every=1", "run.threads=1",
                "data.cache_clips=8"]  # fmt: skip
ENV = dict(os.environ, OMP_NUM_THREADS="1")


def _mvdit(args: list, world: int, timeout: int = 300) -> subprocess.CompletedProcess:
    """`mvdit ARGS` in a fresh process, or in `world` processes under torchrun."""
    run = [sys.executable, "-m", "mvdit.cli"]
    if world > 1:
        run = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={world}", "-m", "mvdit.cli"]  # fmt: skip
    proc = subprocess.run(
        [*run, *map(str, args)], env=ENV, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


def _rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _same_run(a: Path, b: Path, step: int, files: tuple[str, ...]) -> None:
    for f in files:
        x = load_file(a / "checkpoints" / f"step_{step:07d}" / f)
        y = load_file(b / "checkpoints" / f"step_{step:07d}" / f)
        assert x.keys() == y.keys(), f
        worst = max(float((x[k].float() - y[k].float()).abs().max()) for k in x)
        assert worst <= 1e-5, (f, worst)
    ra, rb = _rows(a), _rows(b)
    assert [r["step"] for r in ra] == [r["step"] for r in rb]
    for key in [k for k in ra[0] if k.startswith("loss")]:
        assert [r[key] for r in rb] == pytest.approx([r[key] for r in ra], rel=1e-5), key


@pytest.fixture(scope="module")
def one_process_teacher(tmp_path_factory):
    """The default teacher config, 6 steps, one process, 2 micro-batches of 2 per step."""
    out = tmp_path_factory.mktemp("one") / "run"
    _mvdit(["train", *_sets([*TEACHER_SETS, "optim.grad_accum=2", f"run.out_dir={out}"])], 1)
    return out


WEIGHTS = ("model.safetensors", "optim_model.safetensors", "ema.safetensors")


@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_two_ranks_train_the_teacher_as_one_process_does(tmp_path, one_process_teacher, kind):
    out = tmp_path / kind
    proc = _mvdit(["train", *_sets([*TEACHER_SETS, f"run.parallel={kind}",
                                    f"run.out_dir={out}"])], 2)  # fmt: skip
    _same_run(one_process_teacher, out, 6, WEIGHTS)
    assert proc.stdout.count("trained 6 steps") == 1  # rank 0 alone reports
    assert (
        json.loads((out / "checkpoints" / "step_0000006" / "state.json").read_text())["world"] == 2
    )
    assert (out / "model" / "pipeline.json").is_file() and (out / "loss.png").is_file()
    if kind == "fsdp":  # a checkpoint from 2 processes resumes in 1 with the same next losses
        cut = tmp_path / "cut"
        shutil.copytree(out, cut)
        shutil.rmtree(cut / "checkpoints" / "step_0000006")
        (cut / "checkpoints" / "latest").write_text("step_0000004\n")
        _mvdit(["train", "--resume",
                *_sets([*TEACHER_SETS, "optim.grad_accum=2", f"run.out_dir={cut}"])], 1)  # fmt: skip
        _same_run(one_process_teacher, cut, 6, WEIGHTS)


def test_two_ranks_distil_with_both_players_as_one_process_does(tmp_path):
    # the GAN step: two losses through one forward, routed to their own modules, under FSDP2;
    # the R1 penalty's double backward is refused under torchrun with one line
    teacher = save_tiny_pipeline(tmp_path / "teacher", guidance=4.0)
    smoke = ROOT / "configs" / "distill-smoke.toml"
    sets = [f"distill.student={teacher}", f"distill.teacher={teacher}", "optim.batch_size=2",
            "run.threads=1"]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    # 2 micro-batches per rank: the discriminator's gradient must add up over both (the
    # generator loss's share set aside each time), as in one process with 4
    _mvdit(["distill", smoke, *_sets([*sets, "optim.grad_accum=4", f"run.out_dir={one}"])], 1)
    _mvdit(["distill", smoke, *_sets([*sets, "optim.grad_accum=2", "run.parallel=fsdp",
                                      f"run.out_dir={two}"])], 2)  # fmt: skip
    files = ("model.safetensors", "disc.safetensors", "optim_disc.safetensors", "ema.safetensors")
    _same_run(one, two, 4, files)
    assert (two / "samples" / "latest.png").is_file()
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "mvdit.cli", "distill", smoke, *_sets([*sets, "run.parallel=ddp", "disc.r1=1",
           f"run.out_dir={tmp_path / 'r1'}"])]  # fmt: skip
    proc = subprocess.run(list(map(str, run)), env=ENV, capture_output=True, text=True)
    assert proc.returncode != 0 and "error: disc.r1 > 0 differentiates" in proc.stderr


def test_two_ranks_recover_a_pruned_model_and_train_a_vae_as_one_process_does(tmp_path, capsys):
    teacher = save_tiny_pipeline(tmp_path / "teacher", frames=4, size=16, temporal_factor=4,
                                 ffn_dim=64)  # fmt: skip
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving left\na blue circle on black\n")
    pruned = tmp_path / "pruned"
    code, _, err = run_cli(["prune", "-m", teacher, "-o", pruned, "--budget", "params=0.9",
                            "--prompts", prompts, "--n-prompts", 2, "--seeds", 1,
                            "--timesteps", "0.5"], capsys)  # fmt: skip
    assert code == 0, err
    kd = tmp_path / "kd.toml"
    kd.write_text(
        f'[kd]\nstudent = "{pruned}"\n[data]\nkind = "shapes"\nframes = 4\nheight = 16\n'
        "width = 16\n[optim]\nsteps = 4\nbatch_size = 2\nwarmup_steps = 1\n"
        "[run]\ncheckpoint_every = 2\nlog_every = 1\nthreads = 1\n"
    )
    one, two = tmp_path / "kd-one", tmp_path / "kd-two"
    _mvdit(["kd", kd, *_sets(["optim.grad_accum=2", f"run.out_dir={one}"])], 1)
    _mvdit(["kd", kd, *_sets(["run.parallel=ddp", f"run.out_dir={two}"])], 2)
    _same_run(one, two, 4, WEIGHTS)

    vae = ["optim.steps=4", "optim.batch_size=2", "optim.warmup_steps=1", "run.threads=1",
           "run.checkpoint_every=2", "run.log_every=1", "eval.clips=4", "eval.stats_clips=4",
           "data.frames=5", "loss.perceptual=false"]  # fmt: skip
    config = ROOT / "configs" / "vae-cpu.toml"
    one, two = tmp_path / "vae-one", tmp_path / "vae-two"
    _mvdit(["train-vae", config, *_sets([*vae, "optim.grad_accum=2", f"run.out_dir={one}"])], 1)
    proc = _mvdit(["train-vae", config, *_sets([*vae, "run.parallel=fsdp",
                                                f"run.out_dir={two}"])], 2)  # fmt: skip
    _same_run(one, two, 4, WEIGHTS)
    assert proc.stdout.count("held-out reconstruction") == 1 and (two / "eval.json").is_file()


def test_many_processes_need_a_parallel_kind(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(MvditError, match="run.parallel = 'none'.*run.parallel=ddp"):
        setup("none", "cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert setup("fsdp", "cpu")[0].world == 1  # one process ignores it


# configs/tiny-wan.toml made small: 2 blocks of 2 heads x 16 channels, FFN 64
WAN = ["model.diffusers.num_layers=2", "model.diffusers.num_attention_heads=2",
       "model.diffusers.attention_head_dim=16", "model.diffusers.ffn_dim=64"]  # fmt: skip


def test_a_wan_teacher_its_kd_and_its_distillation_run_as_one_process_does(tmp_path, capsys):
    """A diffusers Wan-architecture DiT through the same training code: its teacher run under
    FSDP2, its pruned student's KD under DDP and its distillation under FSDP2, each equal to one
    process with the same global batch."""
    pytest.importorskip("diffusers")
    base = [*TEACHER_SETS, "optim.steps=4", *WAN]
    config = ROOT / "configs" / "tiny-wan.toml"
    one, two = tmp_path / "t-one", tmp_path / "t-two"
    _mvdit(["train", config, *_sets([*base, "optim.grad_accum=2", f"run.out_dir={one}"])], 1)
    _mvdit(["train", config, *_sets([*base, "run.parallel=fsdp", f"run.out_dir={two}"])], 2)
    _same_run(one, two, 4, WEIGHTS)
    teacher = one / "model"

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square moving left\na blue circle on black\n")
    pruned = tmp_path / "pruned"
    code, _, err = run_cli(["prune", "-m", teacher, "-o", pruned, "--budget", "params=0.9",
                            "--prompts", prompts, "--n-prompts", 2, "--seeds", 1], capsys)  # fmt: skip
    assert code == 0, err
    kd = tmp_path / "kd.toml"
    kd.write_text(
        f'[kd]\nstudent = "{pruned}"\n[data]\nkind = "shapes"\nframes = 9\nheight = 32\nwidth = 32\n'
        "[optim]\nsteps = 4\nbatch_size = 2\nwarmup_steps = 1\n"
        "[run]\ncheckpoint_every = 2\nlog_every = 1\nthreads = 1\n"
    )
    one, two = tmp_path / "kd-one", tmp_path / "kd-two"
    _mvdit(["kd", kd, *_sets(["optim.grad_accum=2", f"run.out_dir={one}"])], 1)
    _mvdit(["kd", kd, *_sets(["run.parallel=ddp", f"run.out_dir={two}"])], 2)
    _same_run(one, two, 4, WEIGHTS)

    smoke = ROOT / "configs" / "distill-smoke.toml"
    sets = [f"distill.student={one / 'model'}", f"distill.teacher={teacher}",
            "optim.batch_size=2", "run.threads=1"]  # fmt: skip
    one, two = tmp_path / "d-one", tmp_path / "d-two"
    _mvdit(["distill", smoke, *_sets([*sets, "optim.grad_accum=4", f"run.out_dir={one}"])], 1)
    _mvdit(["distill", smoke, *_sets([*sets, "optim.grad_accum=2", "run.parallel=fsdp",
                                      f"run.out_dir={two}"])], 2)  # fmt: skip
    _same_run(one, two, 4, ("model.safetensors", "disc.safetensors", "ema.safetensors"))

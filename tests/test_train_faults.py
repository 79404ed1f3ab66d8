"""The loop under a GAN and a frozen teacher: non-finite steps are skipped per module, frozen
helpers stay frozen, each module has its own schedule, and the teacher stage stays on its device."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from test_train import RandomClips, flow_stage

from mvdit import MvditError
from mvdit.config import OptimConfig, RunConfig, default_train_config
from mvdit.models.dit import VideoDiT
from mvdit.stages.teacher import build_teacher
from mvdit.train import _to_device, make_batch_fn, train_loop


def _rows(out_dir):
    return [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]


def _run(out_dir, cfg, steps=6, nan_at=(), crash_at=None, resume=False, limit=3):
    torch.manual_seed(0)
    model = VideoDiT(cfg)
    stage = flow_stage(model)

    def loss_fn(step, batch, gen):
        if step == crash_at:
            raise KeyboardInterrupt
        losses, extra = stage(step, batch, gen)
        if step in nan_at:
            losses = {"model": losses["model"] * float("nan")}
        return losses, extra

    optim = OptimConfig(
        lr=2e-3, warmup_steps=2, steps=steps, batch_size=3, ema_decay=0.9, max_nonfinite_steps=limit
    )
    run = RunConfig(checkpoint_every=2, log_every=1, seed=3)
    batch_fn = make_batch_fn(RandomClips(), optim.batch_size, 1, run.seed)
    snapshots = []

    def watch(step, batch, gen):  # the weights each step starts from
        snapshots.append({k: v.clone() for k, v in model.state_dict().items()})
        return loss_fn(step, batch, gen)

    train_loop(
        {"model": model}, watch, batch_fn, optim, run, out_dir, resume=resume, progress=False
    )
    return snapshots


def test_an_injected_nan_is_skipped_and_training_continues(tmp_path, tiny_dit_config):
    snaps = _run(tmp_path / "r", tiny_dit_config, steps=5, nan_at={2})
    rows = _rows(tmp_path / "r")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert "skipped" in rows[2] and "model" in rows[2]["skipped"] and "loss" not in rows[2]
    assert all(
        "skipped" not in r and math.isfinite(r["loss"]) for i, r in enumerate(rows) if i != 2
    )
    # step 2 (0-based) did not move the weights; the steps around it did
    assert all(torch.equal(snaps[2][k], snaps[3][k]) for k in snaps[2])
    assert not all(torch.equal(snaps[1][k], snaps[2][k]) for k in snaps[1])
    ema = load_file(str(tmp_path / "r" / "checkpoints" / "step_0000005" / "ema.safetensors"))
    assert all(torch.isfinite(v).all() for v in ema.values())


def test_k_nonfinite_steps_in_a_row_stop_the_run(tmp_path, tiny_dit_config):
    with pytest.raises(MvditError, match=r"step 4: 3 steps in a row with non-finite values"):
        _run(tmp_path / "r", tiny_dit_config, steps=8, nan_at={1, 2, 3}, limit=3)
    # two in a row stay below the limit
    _run(tmp_path / "ok", tiny_dit_config, steps=6, nan_at={1, 2}, limit=3)


def test_resume_after_a_skipped_step_is_exact(tmp_path, tiny_dit_config):
    _run(tmp_path / "full", tiny_dit_config, steps=7, nan_at={2})
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", tiny_dit_config, steps=7, nan_at={2}, crash_at=5)
    _run(tmp_path / "cut", tiny_dit_config, steps=7, nan_at={2}, resume=True)
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "full")


def test_nonfinite_gradients_skip_that_module_only(tmp_path):
    torch.manual_seed(0)
    gen_net, disc = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    d0 = disc.weight.detach().clone()

    def loss_fn(step, batch, gen):
        x = torch.ones(2, 3)
        g_loss = gen_net(x).pow(2).mean()
        # finite loss (0), non-finite gradient (d sqrt(u)/du at u = 0)
        d_loss = torch.sqrt(disc(x).mean() * 0)
        return {"model": g_loss, "disc": d_loss}, {"psnr": float("inf")}  # a metric, not a loss

    optim = OptimConfig(lr=0.1, warmup_steps=0, steps=2, ema_decay=0.0, max_nonfinite_steps=5)
    w0 = gen_net.weight.detach().clone()
    train_loop(
        {"model": gen_net, "disc": disc}, loss_fn, lambda s, m: {}, optim,
        RunConfig(checkpoint_every=100), tmp_path / "r", progress=False,
    )  # fmt: skip
    assert torch.equal(disc.weight, d0) and not torch.equal(gen_net.weight, w0)
    rows = _rows(tmp_path / "r")
    assert all("grad norm of 'disc'" in r["skipped"]["disc"] for r in rows)
    assert all("model" not in r["skipped"] for r in rows)


def test_frozen_helper_and_two_learning_rate_schedules(tmp_path):
    torch.manual_seed(0)
    student, disc, teacher = torch.nn.Linear(3, 3), torch.nn.Linear(3, 1), torch.nn.Linear(3, 3)
    teacher.train()
    t0 = {k: v.clone() for k, v in teacher.state_dict().items()}
    seen = []

    def loss_fn(step, batch, gen):
        x = torch.randn(4, 3, generator=gen)
        seen.append(teacher.training)
        with torch.no_grad():
            target = teacher(x)
        y = student(x)
        return {
            "model": (y - target).pow(2).mean() - disc(y).mean(),
            "disc": disc(y.detach()).mean(),
        }, {}

    optim = OptimConfig(lr=0.1, warmup_steps=2, steps=6, schedule="cosine", ema_decay=0.0)
    train_loop(
        {"model": student, "disc": disc}, loss_fn, lambda s, m: {}, optim,
        RunConfig(checkpoint_every=3, keep_checkpoints=5), tmp_path / "r", progress=False,
        optim_overrides={"disc": {"lr": 0.01, "warmup_steps": 0, "schedule": "constant", "grad_clip": 0.5}},
        frozen={"teacher": teacher},
    )  # fmt: skip
    assert seen and not any(seen)  # kept in eval mode
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in t0.items())
    assert all(not p.requires_grad for p in teacher.parameters())
    state = json.loads((tmp_path / "r" / "checkpoints" / "step_0000006" / "state.json").read_text())
    assert state["param_groups_disc"][0]["lr"] == pytest.approx(0.01)  # constant, no warm-up
    assert state["param_groups_model"][0]["lr"] != pytest.approx(0.1)  # cosine after warm-up
    files = {p.name for p in (tmp_path / "r" / "checkpoints" / "step_0000003").iterdir()}
    assert not any("teacher" in f for f in files)  # a frozen helper has no optimizer, no checkpoint
    rows = _rows(tmp_path / "r")
    assert all(r["grad_norm_disc"] > 0 for r in rows)


def test_a_frozen_helper_may_not_share_trained_parameters(tmp_path):
    net = torch.nn.Linear(2, 2)
    with pytest.raises(MvditError, match="frozen module 'teacher' shares parameters"):
        train_loop(
            {"model": net}, lambda s, b, g: ({}, {}), lambda s, m: {}, OptimConfig(steps=1),
            RunConfig(), tmp_path / "r", progress=False, frozen={"teacher": net},
        )  # fmt: skip


def test_teacher_stage_loss_runs_on_the_run_device(monkeypatch):
    """Every module and tensor the teacher's loss touches must sit on run.device. CPU is the only
    real device here, so the check moves the stage to PyTorch's meta device: any tensor left on
    the CPU meets a meta tensor in some op and raises, and every op's tensors are recorded."""
    cfg = default_train_config().model_copy(deep=True)
    cfg.optim.batch_size = 2
    cfg.data.cache_clips = None  # the clips go through the VAE in the loss
    parts = build_teacher(cfg)
    meta = torch.device("meta")
    for m in (parts.dit, parts.vae, parts.text):
        m.to(meta)
    parts.text.encode_cached = lambda prompts: (  # the tokenizer's output feeds a meta model
        torch.zeros(len(prompts), cfg.text.max_length, parts.text.dim, device=meta),
        torch.ones(len(prompts), cfg.text.max_length, dtype=torch.bool, device=meta),
    )
    batch = _to_device(make_batch_fn(parts.dataset, 2)(0, 0), meta)
    mixed, ops = [], []

    class Record(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kinds = {
                a.device.type
                for a in [*args, *(kwargs or {}).values()]
                if isinstance(a, torch.Tensor) and a.dim() > 0
            }
            ops.append(kinds)
            # random draws come from the step's CPU generator and are moved with .to(): the one
            # op allowed to see both devices
            if len(kinds) > 1 and getattr(func, "__name__", "") != "to":
                mixed.append(func)
            return func(*args, **(kwargs or {}))

    latent = torch.zeros(2, *parts.vae.latent_shape(9, 32, 32), device=meta)
    cached = {  # a latent-cache batch: latents and text states read from disk
        "latent": latent,
        "text": torch.zeros(2, cfg.text.max_length, parts.text.dim, device=meta),
        "text_mask": torch.ones(2, cfg.text.max_length, dtype=torch.bool, device=meta),
        "caption": ["a red circle", "a blue square"],
    }
    with Record():
        for b in (batch, cached):
            losses, _ = parts.loss_fn(0, b, torch.Generator().manual_seed(0))
            assert losses["model"].device == meta
    assert len(ops) > 100 and mixed == []


# ---------------------------------------------------------------------------------------------
# faults on disk: a corrupt or missing checkpoint, a full disk


def _losses(out_dir):
    return [r["loss"] for r in _rows(out_dir)]


@pytest.mark.parametrize(
    "damage",
    ["truncated weights", "corrupt state.json", "latest names a missing directory"],
)
def test_resume_falls_back_past_a_broken_checkpoint(tmp_path, tiny_dit_config, capsys, damage):
    # keep_checkpoints = 2: steps 4 and 6 are on disk; step 6 is damaged, resume starts at 4
    # and the loss sequence equals an uninterrupted run's
    ref = tmp_path / "ref"
    _run(ref, tiny_dit_config, steps=8)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):  # killed during step 7, after the step-6 checkpoint
        _run(run, tiny_dit_config, steps=8, crash_at=7)
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == [
        "step_0000004",
        "step_0000006",
    ]
    last = run / "checkpoints" / "step_0000006"
    if damage == "truncated weights":
        f = last / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif damage == "corrupt state.json":
        (last / "state.json").write_text('{"step": 6, "param_groups_')
    else:
        (run / "checkpoints" / "latest").write_text("step_0000099\n")
    capsys.readouterr()
    _run(run, tiny_dit_config, steps=8, resume=True)
    said = capsys.readouterr()
    text = said.out + said.err
    if damage == "latest names a missing directory":
        assert "step_0000099 does not exist" in text and "(step 6)" in text
    else:
        assert "cannot resume from step_0000006" in text and "(step 4)" in text
        broken = "model.safetensors" if damage == "truncated weights" else "state.json"
        assert broken in text
    assert _losses(run) == pytest.approx(_losses(ref), abs=1e-6)


def test_no_readable_checkpoint_is_a_clear_error(tmp_path, tiny_dit_config):
    run = tmp_path / "run"
    _run(run, tiny_dit_config, steps=4)
    for d in (run / "checkpoints").glob("step_*"):
        (d / "state.json").write_text("not json")
    with pytest.raises(MvditError, match="no readable checkpoint.*state.json is not valid JSON"):
        _run(run, tiny_dit_config, steps=6, resume=True)


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, tiny_dit_config, monkeypatch):
    import errno

    from mvdit import checkpoint as train_mod

    real = train_mod.save_tensors
    calls = {"n": 0}

    def save(path, tensors):
        # the second checkpoint (step 4) runs out of space halfway through its files
        if "step_0000004" in str(path.parent.name) or ".step_0000004" in str(path.parent):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(path, tensors)

    monkeypatch.setattr(train_mod, "save_tensors", save)
    run = tmp_path / "run"
    with pytest.raises(MvditError, match="disk is full.*step_0000002 is intact.*--resume"):
        _run(run, tiny_dit_config, steps=6)
    root = run / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_0000002"]  # no debris
    assert (root / "latest").read_text().strip() == "step_0000002"
    load_file(str(root / "step_0000002" / "model.safetensors"))  # intact


def test_kill_9_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path):
    # a real process killed with SIGKILL (no exception, no cleanup) while training through the
    # CLI; --resume continues from the last complete checkpoint and the losses equal a straight run
    import os
    import signal
    import subprocess
    import sys
    import time

    sets = ["optim.steps=24", "optim.batch_size=2", "optim.warmup_steps=2",
            "run.checkpoint_every=4", "run.log_every=1", "run.threads=1",
            "data.cache_clips=8"]  # fmt: skip

    def cmd(out, *extra):
        args = [a for s in [*sets, f"run.out_dir={out}"] for a in ("--set", s)]
        return [sys.executable, "-c", "from mvdit.cli import main; main()", "train", *args, *extra]

    env = dict(os.environ, OMP_NUM_THREADS="1")
    ref = tmp_path / "ref"
    assert subprocess.run(cmd(ref), env=env, capture_output=True).returncode == 0
    run = tmp_path / "run"
    proc = subprocess.Popen(cmd(run), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step_0000008").is_dir() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert len(_losses(run)) < 24  # it died before the end
    done = subprocess.run(cmd(run, "--resume"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "resuming from" in done.stdout + done.stderr
    assert _losses(run) == _losses(ref) and len(_losses(ref)) == 24

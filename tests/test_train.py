import json

import pytest
import torch

from mvdit import MvditError
from mvdit.checkpoint import latest_checkpoint
from mvdit.config import OptimConfig, RunConfig, TrainConfig, check_device, load_train_config
from mvdit.flow import flow_loss
from mvdit.models.dit import VideoDiT
from mvdit.train import make_batch_fn, train_loop


class RandomClips(torch.utils.data.Dataset):
    def __init__(self, n=40):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return {
            "latent": torch.randn(12, 2, 3, 3, generator=g),
            "text": torch.randn(5, 24, generator=g),
        }


def flow_stage(model):
    def loss_fn(step, batch, gen):
        x0 = batch["latent"]
        t = torch.rand(x0.shape[0], generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        return {"model": flow_loss(model, x0, t, noise, text=batch["text"])}, {}

    return loss_fn


def losses(out_dir):
    rows = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows], [r["loss"] for r in rows]


def test_tiny_model_overfits_one_batch(tmp_path, tiny_dit_config):
    torch.manual_seed(0)
    model = VideoDiT(tiny_dit_config)
    batch = RandomClips(4).__getitem__
    fixed = {
        "latent": torch.stack([batch(i)["latent"] for i in range(4)]),
        "text": torch.stack([batch(i)["text"] for i in range(4)]),
    }
    t = torch.tensor([0.2, 0.4, 0.6, 0.8])
    noise = torch.randn(fixed["latent"].shape, generator=torch.Generator().manual_seed(1))

    def loss_fn(step, b, gen):
        return {"model": flow_loss(model, b["latent"], t, noise, text=b["text"])}, {}

    optim = OptimConfig(lr=3e-3, warmup_steps=10, steps=300, schedule="constant", ema_decay=0.0)
    run = RunConfig(checkpoint_every=1000, log_every=50)
    train_loop(
        {"model": model}, loss_fn, lambda s, m: fixed, optim, run, tmp_path / "run", progress=False
    )
    _, ls = losses(tmp_path / "run")
    assert ls[-1] < ls[0] / 10, f"loss {ls[0]:.4f} -> {ls[-1]:.4f}"
    assert (tmp_path / "run" / "loss.png").stat().st_size > 1000


def _run(out_dir, cfg, steps=6, crash_at=None, resume=False, accum=2, model=None, **run_options):
    torch.manual_seed(0)
    model = model or VideoDiT(cfg)
    stage = flow_stage(model)

    def loss_fn(step, batch, gen):
        if step == crash_at:
            raise KeyboardInterrupt  # simulates a run killed mid-way
        return stage(step, batch, gen)

    optim = OptimConfig(
        lr=2e-3, warmup_steps=2, steps=steps, batch_size=3, grad_accum=accum, ema_decay=0.9
    )
    run = RunConfig(checkpoint_every=2, log_every=1, seed=3, **run_options)
    batch_fn = make_batch_fn(RandomClips(), optim.batch_size, optim.grad_accum, run.seed)
    return train_loop(
        {"model": model}, loss_fn, batch_fn, optim, run, out_dir, resume=resume, progress=False
    )


def test_resume_continues_exactly(tmp_path, tiny_dit_config):
    _run(tmp_path / "full", tiny_dit_config, steps=7)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path / "cut", tiny_dit_config, steps=7, crash_at=5)
    assert latest_checkpoint(tmp_path / "cut").name == "step_0000004"
    summary = _run(tmp_path / "cut", tiny_dit_config, steps=7, resume=True)
    assert summary["resumed_from"] == 4
    steps_full, full = losses(tmp_path / "full")
    steps_cut, cut = losses(tmp_path / "cut")
    assert steps_cut == steps_full == list(range(1, 8))  # no repeated or missing log rows
    assert cut == full  # bit-for-bit, not approximately
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "checkpoints" / "step_0000007" / "ema.safetensors"))
    b = load_file(str(tmp_path / "cut" / "checkpoints" / "step_0000007" / "ema.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_existing_run_is_not_overwritten_without_resume(tmp_path, tiny_dit_config):
    _run(tmp_path / "r", tiny_dit_config, steps=2, accum=1)
    with pytest.raises(MvditError, match="--resume"):
        _run(tmp_path / "r", tiny_dit_config, steps=2, accum=1)


def test_checkpoints_are_pruned_and_complete(tmp_path, tiny_dit_config):
    _run(tmp_path / "r", tiny_dit_config, steps=6, accum=1)
    ckpts = sorted(p.name for p in (tmp_path / "r" / "checkpoints").iterdir() if p.is_dir())
    assert ckpts == ["step_0000004", "step_0000006"]  # keep_checkpoints = 2, no temp dirs left
    files = {p.name for p in (tmp_path / "r" / "checkpoints" / "step_0000006").iterdir()}
    assert files == {
        "model.safetensors",
        "optim_model.safetensors",
        "ema.safetensors",
        "state.json",
    }


def test_gradients_go_only_to_their_module(tmp_path):
    a, b = torch.nn.Linear(3, 1), torch.nn.Linear(3, 1)
    b0 = b.weight.detach().clone()

    def loss_fn(step, batch, gen):
        x = torch.ones(2, 3)
        # "disc" gets no loss of its own this step: it must not move even though a's loss uses it
        return {"model": (a(x) + b(x)).pow(2).mean()}, {}

    optim = OptimConfig(lr=0.1, warmup_steps=0, steps=3, ema_decay=0.0)
    train_loop(
        {"model": a, "disc": b},
        loss_fn,
        lambda s, m: {},
        optim,
        RunConfig(checkpoint_every=100),
        tmp_path / "r",
        progress=False,
    )
    assert torch.equal(b.weight, b0)


def test_batches_are_a_function_of_the_step():
    ds = RandomClips(10)
    f1, f2 = make_batch_fn(ds, 4, 1, seed=5), make_batch_fn(ds, 4, 1, seed=5)
    assert torch.equal(f1(7, 0)["latent"], f2(7, 0)["latent"])
    # one epoch visits every item once
    seen = torch.cat([make_batch_fn(ds, 5, 1, seed=1)(s, 0)["text"][:, 0, 0] for s in range(2)])
    assert len(set(seen.tolist())) == 10


def test_config_rejects_unknown_key_by_name(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text("[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(MvditError, match=r"unknown key 'optim.learning_rate'"):
        load_train_config(p)
    p.write_text("[optim]\nsteps = 'many'\n")
    with pytest.raises(MvditError, match=r"optim.steps"):
        load_train_config(p)
    # the config and the CLI's --device share one check and one message
    with pytest.raises(
        MvditError, match=r"run.device.*'gpu' is not a device: use cpu, cuda or cuda:N"
    ):
        load_train_config(None, ["run.device=gpu"])
    with pytest.raises(
        MvditError, match=r"--device 'gpu' is not a device: use cpu, cuda or cuda:N"
    ):
        check_device("gpu", "--device")
    with pytest.raises(MvditError, match=r"run.parallel"):
        load_train_config(None, ["run.parallel=horovod"])
    assert load_train_config(None, ["run.device=cuda:1"]).run.device == check_device("cuda:1")


def test_config_overrides_and_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  steps: 12\nrun:\n  out_dir: somewhere\n")
    cfg = load_train_config(p, ["optim.lr=0.5", "data.holdout=['red circle left']"])
    assert cfg.optim.steps == 12 and cfg.optim.lr == 0.5 and cfg.run.out_dir == "somewhere"
    assert cfg.data.holdout == ["red circle left"]
    assert isinstance(TrainConfig().optim, OptimConfig)


@pytest.mark.parametrize(
    "option",
    [
        {"activation_checkpointing": True},
        {"attention": "math"},
        {"attention": "flash"},
        pytest.param({"compile": True}, marks=pytest.mark.slow),  # ~1 min of inductor on CPU
    ],
    ids=["activation-checkpointing", "math-attention", "flash-attention", "compile"],
)
def test_gpu_path_options_train_the_same_model(tmp_path, tiny_dit_config, option):
    """run.activation_checkpointing recomputes each block in the backward (its forward runs twice
    per micro-batch) and run.attention forces an SDPA kernel; neither changes what is learned."""
    from safetensors.torch import load_file

    _run(tmp_path / "plain", tiny_dit_config, steps=3)
    torch.manual_seed(0)
    model = VideoDiT(tiny_dit_config)
    calls = []
    model.blocks[0].register_forward_pre_hook(lambda *_: calls.append(1))  # recompute stops early
    _run(tmp_path / "option", tiny_dit_config, steps=3, model=model, **option)
    recompute = option.get("activation_checkpointing", False)
    assert len(calls) == 3 * 2 * (2 if recompute else 1)  # steps x micro-batches (x recompute)
    assert losses(tmp_path / "option")[1] == pytest.approx(losses(tmp_path / "plain")[1], rel=1e-5)
    a = load_file(tmp_path / "plain" / "checkpoints" / "step_0000003" / "model.safetensors")
    b = load_file(tmp_path / "option" / "checkpoints" / "step_0000003" / "model.safetensors")
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-5

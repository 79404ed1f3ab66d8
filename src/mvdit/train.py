"""The one training loop. Every stage (teacher, VAE, KD, adversarial) supplies a loss, not a loop.

A stage hands over:
- `modules`: the trainable networks by name ("model" first; a GAN stage adds "disc"). Each gets
  its own AdamW, and each loss the stage returns is routed only to the module of the same name.
- `loss_fn(step, batch, generator) -> ({module name: loss}, {metric: float})`.
- `batch_fn(step, micro) -> batch`, a pure function of its arguments.

Because data order and every random draw (`generator` is seeded from (seed, step, micro)) are
functions of the step, and the learning rate is computed from the step, a checkpoint only has to
hold weights, EMA and optimizer moments for `--resume` to continue bit-for-bit (tests prove it).

Under torchrun (mvdit.distributed) a step's global batch is grad_accum x world micro-batches;
rank r computes micro-batches r*grad_accum ... r*grad_accum + grad_accum - 1, each drawn and
seeded by its global index, so N ranks with grad_accum A run the same step as one process with
grad_accum N*A. Checkpoints hold whole tensors in the one-process layout, written by rank 0, so a
checkpoint from any world size resumes at any other.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mvdit import MvditError, distributed
from mvdit.checkpoint import (
    check_fresh_run,
    checkpoints_newest_first,
    gather_training_state,
    latest_checkpoint,
    read_checkpoint,
    release_run_dir,
    save_checkpoint,
)
from mvdit.config import OptimConfig, RunConfig
from mvdit.io import (
    atomic_write_text,
    save_figure,
    validate,
    write_json,
)

LossFn = Callable[[int, dict, torch.Generator], tuple[dict[str, torch.Tensor], dict[str, float]]]
BatchFn = Callable[[int, int], dict]


# ---------------------------------------------------------------------------------------------
# data order and randomness as pure functions of the step


def step_seed(seed: int, step: int, micro: int) -> int:
    return (seed * 1_000_003 + step * 4_099 + micro * 7 + 17) % (2**63 - 1)


def default_collate(items: Sequence[dict]) -> dict:
    """Stack tensors; keep everything else (captions, specs) as lists."""
    out = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        out[key] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


def make_batch_fn(
    dataset, batch_size: int, grad_accum: int = 1, seed: int = 0, collate=default_collate
) -> BatchFn:
    """Batches drawn from per-epoch permutations seeded by (seed, epoch): batch (step, micro) is
    always the same, whether the run started at step 0 or resumed at step 1000. `micro` is the
    global micro-batch index, 0 <= micro < grad_accum x world size (rank r draws its own slice)."""
    n = len(dataset)
    if n == 0:
        raise MvditError("the training dataset is empty")

    @lru_cache(maxsize=4)
    def perm(epoch: int) -> torch.Tensor:
        return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + epoch))

    def batch_fn(step: int, micro: int) -> dict:
        start = (step * grad_accum * distributed.world_size() + micro) * batch_size
        idx = [int(perm(p // n)[p % n]) for p in range(start, start + batch_size)]
        return collate([dataset[i] for i in idx])

    return batch_fn


def lr_factor(step: int, optim: OptimConfig) -> float:
    if optim.warmup_steps and step < optim.warmup_steps:
        return (step + 1) / optim.warmup_steps
    if optim.schedule == "constant":
        return 1.0
    span = max(1, optim.steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / span)
    return optim.min_lr_ratio + (1 - optim.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


# ---------------------------------------------------------------------------------------------
# the loop


class EMA:
    """Exponential moving average of a module's floating-point state, with the usual warm-up
    (decay ramps from ~0 so the average does not remember the random initialisation)."""

    def __init__(self, module: nn.Module, decay: float):
        self.decay = decay
        self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.state[k].lerp_(v, 1 - d)
            else:
                self.state[k].copy_(v)


def plot_losses(
    metrics_path: Path, png_path: Path, prefixes: tuple[str, ...] = ("loss",), log: bool = True
) -> None:
    """Render every metric of metrics.jsonl whose name starts with one of `prefixes` (default:
    the losses; raw, light; moving average, dark) to one PNG, one panel each; `log`: a log scale
    for metrics that stay positive."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    keys = sorted({k for r in rows for k in r if k.startswith(prefixes)})
    if not rows or not keys:
        return
    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.4), squeeze=False)
    for ax, key in zip(axes[0], keys, strict=True):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        steps, vals = zip(*pts, strict=True)
        w = max(1, len(vals) // 50)
        smooth = [
            sum(vals[max(0, i - w + 1) : i + 1]) / len(vals[max(0, i - w + 1) : i + 1])
            for i in range(len(vals))
        ]
        ax.plot(steps, vals, color="tab:blue", alpha=0.25, lw=0.8)
        ax.plot(steps, smooth, color="tab:blue", lw=1.6)
        ax.set_yscale("log" if log and min(vals) > 0 else "linear")
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    save_figure(fig, png_path, dpi=110)


def module_optim(optim: OptimConfig, overrides: dict[str, Any] | None, name: str) -> OptimConfig:
    """A module's own optimizer settings: the run's, with the module's overrides (e.g. a
    discriminator's lr, betas, warm-up, schedule or grad_clip)."""
    if not overrides:
        return optim
    return validate(OptimConfig, {**optim.model_dump(), **overrides}, f"optimizer of '{name}'")


def _finite(x: torch.Tensor | float) -> bool:
    return math.isfinite(float(x.detach() if isinstance(x, torch.Tensor) else x))


@dataclass
class _Run:
    """What the phases of one training run share: the modules, their optimizers and settings,
    the EMA, where this rank runs and what it writes."""

    modules: dict[str, nn.Module]
    params: dict[str, list[nn.Parameter]]
    settings: dict[str, OptimConfig]
    optimizers: dict[str, torch.optim.Optimizer]
    ema: EMA | None
    ema_module: str | None
    optim: OptimConfig
    run: RunConfig
    par: distributed.Parallel
    device: torch.device
    out_dir: Path
    say: Callable[[str], None]
    config_dump: dict | None
    on_export: Callable[[Path, dict[str, torch.Tensor], int], None] | None


def train_loop(
    modules: dict[str, nn.Module],
    loss_fn: LossFn,
    batch_fn: BatchFn,
    optim: OptimConfig,
    run: RunConfig,
    out_dir: str | Path,
    resume: bool = False,
    config_dump: dict | None = None,
    ema_module: str | None = "model",
    optim_overrides: dict[str, dict[str, Any]] | None = None,
    on_export: Callable[[Path, dict[str, torch.Tensor], int], None] | None = None,
    progress: bool = True,
    frozen: dict[str, nn.Module] | None = None,
) -> dict:
    """Train `modules` for `optim.steps` steps; returns a summary (steps, seconds, final losses).

    `frozen`: helpers the loss uses but never trains (a teacher, an autoencoder, a text encoder, a
    frozen discriminator backbone): moved to run.device, kept in eval mode, given no optimizer and
    not checkpointed. `optim_overrides[name]`: that module's own optimizer settings (any
    OptimConfig field: lr, betas, warm-up, schedule, grad_clip). `on_export(path, state, step)`:
    called after each checkpoint with OUT/model and the EMA (or raw) weights of "model".

    A step whose loss or gradients are not finite for a module is skipped for that module (no
    optimizer step, no EMA update) and logged; `optim.max_nonfinite_steps` such steps in a row stop
    the run. Logged metrics (anything not a loss) are never checked.
    """
    r = _setup(modules, optim, run, Path(out_dir), ema_module, optim_overrides, frozen)
    r.config_dump, r.on_export = config_dump, on_export
    start = _resume(r, resume)
    metrics_path = r.out_dir / "metrics.jsonl"
    if r.par.main:
        r.out_dir.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, start)
        if config_dump is not None:
            write_json(r.out_dir / "config.json", config_dump)
    distributed.barrier()

    bar = tqdm(total=optim.steps, initial=start, disable=not (progress and r.par.main),
               dynamic_ncols=True, desc=r.out_dir.name)  # fmt: skip
    t0, streak = time.perf_counter(), 0
    # a run resumed at its last step reports the losses it ended with
    last = (
        {} if start == 0 or not metrics_path.exists() else (read_metrics(metrics_path) or [{}])[-1]
    )
    last = {k: v for k, v in last.items() if isinstance(v, float)}
    # the bar as a context: an error ends its line before the one-line message is printed
    with bar, open(metrics_path if r.par.main else os.devnull, "a") as log:
        for step in range(start, optim.steps):
            sums, skipped = _train_step(r, step, loss_fn, batch_fn)
            streak = streak + 1 if skipped else 0
            log.write(json.dumps(_log_row(r, step, sums, skipped)) + "\n")
            if streak >= optim.max_nonfinite_steps:
                log.flush()
                raise MvditError(
                    f"step {step + 1}: {streak} steps in a row with non-finite values "
                    f"({_why(skipped)}); lower optim.lr, check the data, or resume from the last "
                    f"checkpoint in {r.out_dir / 'checkpoints'}"
                )
            last = sums
            bar.update(1)
            if (step + 1) % run.log_every == 0 or step + 1 == optim.steps:
                log.flush()
                bar.set_postfix({k: f"{v:.4f}" for k, v in sums.items() if k.startswith("loss")})
            if (step + 1) % run.checkpoint_every == 0 and step + 1 < optim.steps:
                log.flush()
                _checkpoint(r, step + 1)
        log.flush()
    if start < optim.steps or latest_checkpoint(r.out_dir) is None:
        _checkpoint(r, optim.steps)
    summary = {"steps": optim.steps, "resumed_from": start,
               "seconds": round(time.perf_counter() - t0, 2), "final": last, "world": r.par.world}  # fmt: skip
    if r.par.main:
        write_json(r.out_dir / "summary.json", summary)
    distributed.barrier()
    release_run_dir(r.out_dir)
    return summary


def _setup(modules, optim, run, out_dir, ema_module, optim_overrides, frozen) -> _Run:
    """Put the modules on this rank's device (wrapped for DDP/FSDP under torchrun), freeze the
    helpers, and give each trained module its AdamW and settings."""
    if run.threads:
        torch.set_num_threads(run.threads)
    par, device = distributed.setup(run.parallel, run.device)
    for m in modules.values():
        m.to(device).train()
    trainable = {id(p) for m in modules.values() for p in m.parameters()}
    for name, m in (frozen or {}).items():
        if any(id(p) in trainable for p in m.parameters()):
            raise MvditError(f"frozen module '{name}' shares parameters with a trained module")
        m.to(device).eval().requires_grad_(False)
    apply_gpu_options(modules, run)
    for m in modules.values():
        distributed.wrap(m, par, device)
    params = {k: [p for p in m.parameters() if p.requires_grad] for k, m in modules.items()}
    settings = {k: module_optim(optim, (optim_overrides or {}).get(k), k) for k in modules}
    optimizers: dict[str, torch.optim.Optimizer] = {
        k: torch.optim.AdamW(params[k], lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        for k, o in settings.items()
    }
    ema = EMA(modules[ema_module], optim.ema_decay) if ema_module and optim.ema_decay > 0 else None
    say = tqdm.write if par.main else (lambda _msg: None)
    return _Run(modules, params, settings, optimizers, ema, ema_module, optim, run, par, device,
                out_dir, say, None, None)  # fmt: skip


def _resume(r: _Run, resume: bool) -> int:
    """The step to start from: 0, or (with resume) the newest checkpoint that reads, loaded into
    the run's objects; a damaged one is named and the previous one tried."""
    check_fresh_run(r.out_dir, resume)
    problems, start = [], 0
    for ckpt in checkpoints_newest_first(r.out_dir) if resume else []:
        try:
            state = read_checkpoint(ckpt, r.modules, r.optimizers, r.ema, r.device)
        except MvditError as e:
            problems.append(str(e))
            r.say(f"cannot resume from {ckpt.name}: {e}; trying the previous checkpoint")
            continue
        start = state["step"]
        r.say(f"resuming from {ckpt} (step {start})")
        saved = ((state.get("config") or {}).get("optim") or {}).get("grad_accum")
        was = state.get("micro_batches", saved or r.optim.grad_accum)
        now = r.optim.grad_accum * r.par.world
        if was != now:
            r.say(
                f"the checkpoint's steps had {was} micro-batches of {r.optim.batch_size}; these "
                f"have {r.optim.grad_accum} x {r.par.world} ranks = {now}: set "
                f"optim.grad_accum = {was / r.par.world:g} to continue the same run"
            )
        break
    else:
        if problems:
            raise MvditError(
                f"no readable checkpoint in {r.out_dir / 'checkpoints'}: {'; '.join(problems)}"
            )
        if resume:
            r.say(f"no checkpoint in {r.out_dir}; starting from step 0")
    if start > r.optim.steps:
        raise MvditError(
            f"{r.out_dir}: the checkpoint is at step {start}, past optim.steps = {r.optim.steps}: "
            "raise optim.steps to train on, or use the run's model as it is"
        )
    return start


def _train_step(r: _Run, step: int, loss_fn: LossFn, batch_fn: BatchFn) -> tuple[dict, dict]:
    """One optimizer step of every module: each micro-batch's losses routed to their modules, a
    module whose loss or gradient norm is not finite skipped (on every rank alike), then the EMA.
    Returns the step's metrics (mean over micro-batches and ranks) and the skipped modules."""
    optim, par = r.optim, r.par
    for k, opt in r.optimizers.items():
        for g in opt.param_groups:
            g["lr"] = r.settings[k].lr * lr_factor(step, r.settings[k])
    autocast = torch.autocast(
        r.device.type, dtype=torch.bfloat16, enabled=r.run.precision == "bf16"
    )
    sums: dict[str, float] = {}
    skipped: dict[str, str] = {}  # module -> why its update was skipped
    for local in range(optim.grad_accum):
        micro = par.rank * optim.grad_accum + local  # the global micro-batch index
        batch = _to_device(batch_fn(step, micro), r.device)
        gen = torch.Generator().manual_seed(step_seed(r.run.seed, step, micro))
        with autocast, attention_backend(r.run.attention):
            losses, extra = loss_fn(step, batch, gen)
        finite = distributed.all_agree([_finite(losses[k]) for k in losses], r.device)
        for (k, v), ok in zip(losses.items(), finite, strict=True):
            if not ok:
                here = float(v.detach())
                why = f"{_loss_key(k)} = {here}" if not math.isfinite(here) else None
                skipped.setdefault(k, why or f"{_loss_key(k)} not finite on another rank")
        active = [k for k, v in losses.items() if v.requires_grad and k not in skipped]
        routed = _backward_routed if par.active else _grad_routed
        routed(losses, active, r.params, optim.grad_accum)
        for k, v in [*((_loss_key(k), v) for k, v in losses.items()), *extra.items()]:
            value = float(v.detach() if isinstance(v, torch.Tensor) else v)
            sums[k] = sums.get(k, 0.0) + value / optim.grad_accum
    sums = distributed.mean_over_ranks(sums, r.device)
    stepped = set()
    for k, opt in r.optimizers.items():
        grads = [p for p in r.params[k] if p.grad is not None]
        if not grads:
            continue
        if k not in skipped:
            clip = r.settings[k].grad_clip if r.settings[k].grad_clip > 0 else math.inf
            norm = _total(torch.nn.utils.clip_grad_norm_(grads, clip))
            if math.isfinite(norm):
                sums[f"grad_norm_{k}"] = norm
                opt.step()
                stepped.add(k)
            else:
                skipped[k] = f"grad norm of '{k}' = {norm}"
        opt.zero_grad(set_to_none=True)
    if r.ema is not None and r.ema_module in stepped:
        r.ema.update(r.modules[r.ema_module], step)
    return sums, skipped


def _log_row(r: _Run, step: int, sums: dict, skipped: dict) -> dict:
    """The step's row of metrics.jsonl (non-finite values left out, skipped modules named)."""
    row = {
        "step": step + 1,
        "lr": r.optimizers[next(iter(r.optimizers))].param_groups[0]["lr"],
        **{k: v for k, v in sums.items() if math.isfinite(v)},
    }
    if skipped:
        row["skipped"] = skipped
        r.say(f"step {step + 1}: skipped the update of {_why(skipped)}")
    return row


def _checkpoint(r: _Run, step: int) -> None:
    """Gather the whole state (a collective), write it on rank 0, export the model and replot
    the losses; any rank's failure reaches every rank as the same error."""
    states, optims, ema_state = gather_training_state(r.modules, r.optimizers, r.ema, r.par.main)
    error = None
    if r.par.main:
        extra = {"config": r.config_dump, "world": r.par.world}
        extra["micro_batches"] = r.optim.grad_accum * r.par.world
        try:
            save_checkpoint(r.out_dir, step, states, optims, ema_state, extra,
                            r.run.keep_checkpoints)  # fmt: skip
            if r.on_export is not None:
                state = ema_state if r.ema is not None else states["model"]
                r.on_export(r.out_dir / "model", state, step)
            plot_losses(r.out_dir / "metrics.jsonl", r.out_dir / "loss.png")
        except MvditError as e:
            error = str(e)
        except Exception as e:  # noqa: BLE001 - under torchrun the other ranks must hear of it
            if not r.par.active:
                raise
            error = f"rank 0 failed while checkpointing step {step}: {type(e).__name__}: {e}"
    distributed.agree(error)


def _grad_routed(losses, active: list[str], params, grad_accum: int) -> None:
    """One process: each module's loss differentiated only with respect to its own parameters
    (a GAN's generator loss never moves the discriminator, nor the other way round)."""
    for i, k in enumerate(active):
        grads = torch.autograd.grad(
            losses[k] / grad_accum,
            params[k],
            retain_graph=i < len(active) - 1,
            allow_unused=True,
        )
        for p, g in zip(params[k], grads, strict=True):
            if g is not None:
                p.grad = g if p.grad is None else p.grad.add_(g)


def _backward_routed(losses, active: list[str], params, grad_accum: int) -> None:
    """Under torchrun: the same routing through backward(), whose hooks are where FSDP2 and
    replicate reduce gradients over ranks (sharded parameters are not leaves of the graph, so
    autograd.grad cannot reach them). While one module's loss goes back, the other modules'
    gradients are set aside and restored after, dropping what that loss gave them. `params` are
    the optimizers' (sharded) parameters, where FSDP2 accumulates: after a forward a module may
    still show its unsharded ones, whose .grad is not the gradient so far."""
    for i, k in enumerate(active):
        others = {o: [p.grad for p in ps] for o, ps in params.items() if o != k}
        for o in others:
            for p in params[o]:
                p.grad = None
        (losses[k] / grad_accum).backward(retain_graph=i < len(active) - 1)
        for o, saved in others.items():
            for p, g in zip(params[o], saved, strict=True):
                p.grad = g


def _total(norm: torch.Tensor) -> float:
    """clip_grad_norm_'s total norm as a float (a DTensor under FSDP2: the norm over all shards)."""
    full = getattr(norm, "full_tensor", None)
    return float(full() if full is not None else norm)


def attention_backend(kind: str):
    """run.attention: which scaled-dot-product attention kernel PyTorch may use ("auto": its own
    choice; "flash", "efficient", "cudnn" or "math" force one, e.g. flash attention on a GPU)."""
    if kind == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {
        "flash": SDPBackend.FLASH_ATTENTION,
        "efficient": SDPBackend.EFFICIENT_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION,
        "math": SDPBackend.MATH,
    }[kind]
    return sdpa_kernel(backend)


def apply_gpu_options(modules: dict[str, nn.Module], run: RunConfig) -> None:
    """run.activation_checkpointing: recompute each DiT block in the backward instead of keeping
    its activations; run.compile: torch.compile each DiT block in place (the trained DiT, and a
    discriminator's trainable DiT blocks)."""
    for m in modules.values():
        for sub in m.modules():
            if hasattr(sub, "checkpoint_blocks"):
                sub.checkpoint_blocks = run.activation_checkpointing
                if run.compile:
                    for block in sub.blocks:
                        if any(p.requires_grad for p in block.parameters()):
                            block.compile()


def _loss_key(module: str) -> str:
    return "loss" if module == "model" else f"loss_{module}"


def _why(skipped: dict[str, str]) -> str:
    return ", ".join(f"'{k}' ({why})" for k, why in skipped.items())


def read_metrics(path: Path, note=None) -> list[dict]:
    """The rows of a metrics.jsonl. A torn last line (a run killed mid-write) is dropped, with a
    note; a bad line elsewhere is an error naming it."""
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or "step" not in row:
                raise ValueError("not a row of metrics")
        except ValueError:
            if i == len(lines) - 1:
                if note is not None:
                    note(f"note: dropped the torn last line of {path} (a run stopped mid-write)")
                break
            raise MvditError(f"{path}: line {i + 1} is not a JSON row of metrics") from None
        rows.append(row)
    return rows


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log rows written after the checkpoint we resume from, so the log has no repeats."""
    if not path.exists():
        return
    keep = [row for row in read_metrics(path, note=tqdm.write) if row["step"] <= step]
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in keep))


def _to_device(batch: dict, device: torch.device) -> dict:
    if device.type == "cpu":
        return batch
    return {
        k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
        for k, v in batch.items()
    }

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

import atexit
import contextlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from mvdit import MvditError, distributed
from mvdit.config import OptimConfig, RunConfig
from mvdit.io import (
    DiskFullError,
    RunLock,
    atomic_dir,
    atomic_write_text,
    is_disk_full,
    load_tensors,
    read_json,
    save_figure,
    save_tensors,
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
# checkpoints: safetensors + JSON, written to a temporary directory and renamed into place


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    sd = opt.state_dict()
    tensors = {f"{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items()}
    return tensors, sd["param_groups"]


def _unflatten_optimizer(
    opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        i, k = key.split(".", 1)
        state.setdefault(int(i), {})[k] = v
    opt.load_state_dict({"state": state, "param_groups": groups})


def latest_checkpoint(out_dir: Path) -> Path | None:
    pointer = out_dir / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    ckpt = out_dir / "checkpoints" / pointer.read_text().strip()
    return ckpt if (ckpt / "state.json").is_file() else None


def checkpoints_newest_first(out_dir: Path) -> list[Path]:
    """Every complete-looking checkpoint directory, the one `latest` names first, then by step."""
    root = out_dir / "checkpoints"
    found = sorted((p for p in root.glob("step_*") if p.is_dir()), reverse=True)
    pointer = root / "latest"
    if pointer.is_file():
        named = root / pointer.read_text().strip()
        found = [named] + [p for p in found if p != named]
    return found


def read_checkpoint(ckpt: Path, modules, optimizers, ema, device: torch.device) -> dict:
    """Load one checkpoint into the run's objects; MvditError naming the file that is unreadable.
    Every file is read before any object is changed; a checkpoint that then does not fit may
    leave the objects half-loaded, for the next checkpoint tried to overwrite."""
    if not ckpt.is_dir():
        raise MvditError(f"{ckpt} does not exist")
    files = [ckpt / "state.json", *(ckpt / f"{k}.safetensors" for k in modules)]
    files += [ckpt / f"optim_{k}.safetensors" for k in optimizers]
    files += [ckpt / "ema.safetensors"] if ema is not None else []
    loaded: dict[str, Any] = {}
    for f in files:
        try:
            loaded[f.name] = read_json(f) if f.suffix == ".json" else load_tensors(f)
        except MvditError:
            raise  # it names the file already
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error type
            why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise MvditError(f"{f} is unreadable ({why})") from None
    state = loaded["state.json"]
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise MvditError(f"{ckpt / 'state.json'} has no step")
    try:
        for k, m in modules.items():
            m.load_state_dict(distributed.like(loaded[f"{k}.safetensors"], m.state_dict(), device))
        for k, opt in optimizers.items():
            tensors = _optimizer_layout(opt, loaded[f"optim_{k}.safetensors"], device)
            _unflatten_optimizer(opt, tensors, state[f"param_groups_{k}"])
    except (KeyError, RuntimeError, ValueError) as e:
        raise MvditError(f"{ckpt} does not fit this run ({str(e).splitlines()[0][:160]})") from None
    if ema is not None:
        ema.state = distributed.like(loaded["ema.safetensors"], ema.state, device)
    return state


def _optimizer_layout(opt: torch.optim.Optimizer, tensors: dict, device) -> dict:
    """Whole optimizer moments from a checkpoint, each laid out like its parameter (sharded
    under FSDP); the step counters stay as they are."""
    params = [p for g in opt.param_groups for p in g["params"]]
    out = {}
    for key, v in tensors.items():
        i = int(key.split(".", 1)[0])
        p = params[i] if i < len(params) else None
        same = p is not None and tuple(v.shape) == tuple(p.shape) and v.dim() > 0
        out[key] = distributed.like({key: v}, {key: p if same else v}, device)[key]
    return out


def gather_training_state(
    modules, optimizers, ema, keep: bool = True
) -> tuple[dict, dict, dict | None]:
    """Whole tensors of every module, optimizer and the EMA, in the one-process layout (a
    collective under torchrun: every rank calls it; rank 0, keep=True, writes what it returns,
    the others keep nothing)."""
    states = {k: distributed.full_tensors(m.state_dict(), keep) for k, m in modules.items()}
    optims = {}
    for k, opt in optimizers.items():
        tensors, groups = _flatten_optimizer(opt)
        optims[k] = (distributed.full_tensors(tensors, keep), groups)
    full_ema = distributed.full_tensors(ema.state, keep) if ema is not None else None
    return states, optims, full_ema


def save_checkpoint(
    out_dir: Path, step: int, states: dict, optims: dict, ema: dict | None, extra: dict, keep: int
) -> Path:
    """Write a checkpoint (from gather_training_state) atomically. A full disk stops the run with
    a message; the half-written directory is removed and the previous checkpoints, and `latest`,
    stay as they were."""
    root = out_dir / "checkpoints"
    name = f"step_{step:07d}"
    try:
        return _save_checkpoint(root, name, step, states, optims, ema, extra, keep)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own type for a full disk
        if not is_disk_full(e):
            raise
        prev = latest_checkpoint(out_dir)
        raise DiskFullError(
            f"the disk is full: checkpoint {name} could not be written to {root}; "
            + (f"{prev.name} is intact" if prev else "no earlier checkpoint exists")
            + "; free space and rerun with --resume"
        ) from None


def _save_checkpoint(root: Path, name: str, step: int, states, optims, ema, extra, keep) -> Path:
    with atomic_dir(root / name) as tmp:
        for k, sd in states.items():
            save_tensors(tmp / f"{k}.safetensors", sd)
        for k, (tensors, groups) in optims.items():
            save_tensors(tmp / f"optim_{k}.safetensors", tensors)
            extra = {**extra, f"param_groups_{k}": groups}
        if ema is not None:
            save_tensors(tmp / "ema.safetensors", ema)
        write_json(tmp / "state.json", {"step": step, **extra})
    atomic_write_text(root / "latest", name + "\n")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return root / name


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


def check_fresh_run(out_dir: str | Path, resume: bool) -> None:
    """Take run.out_dir for this run (claim_run_dir) and refuse to start over a run that has
    checkpoints unless resuming (a stage calls this before its expensive set-up, the loop again
    before training)."""
    claim_run_dir(out_dir)
    if not resume and latest_checkpoint(Path(out_dir)) is not None:
        raise MvditError(
            f"{out_dir} already holds checkpoints: pass --resume to continue, or choose another out_dir"
        )


_RUN_LOCKS: dict[Path, RunLock] = {}


def claim_run_dir(out_dir: str | Path) -> None:
    """Lock run.out_dir for this process until it exits (or the loop ends): a second run on the
    same directory stops with one line naming the holder. Under torchrun rank 0 holds the lock
    for the whole launch; the other ranks are part of that run."""
    where = Path(out_dir).resolve()
    if distributed.rank() != 0 or where in _RUN_LOCKS:
        return
    lock = RunLock(where, note=tqdm.write).acquire()
    _RUN_LOCKS[where] = lock
    atexit.register(lock.release)


def release_run_dir(out_dir: str | Path) -> None:
    lock = _RUN_LOCKS.pop(Path(out_dir).resolve(), None)
    if lock is not None:
        lock.release()


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
    out_dir = Path(out_dir)
    if run.threads:
        torch.set_num_threads(run.threads)
    par, device = distributed.setup(run.parallel, run.device)
    say = tqdm.write if par.main else (lambda _msg: None)
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
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=run.precision == "bf16")

    params = {k: [p for p in m.parameters() if p.requires_grad] for k, m in modules.items()}
    settings = {k: module_optim(optim, (optim_overrides or {}).get(k), k) for k in modules}
    optimizers: dict[str, torch.optim.Optimizer] = {
        k: torch.optim.AdamW(params[k], lr=o.lr, betas=o.betas, weight_decay=o.weight_decay)
        for k, o in settings.items()
    }
    ema = EMA(modules[ema_module], optim.ema_decay) if ema_module and optim.ema_decay > 0 else None

    start = 0
    check_fresh_run(out_dir, resume)
    candidates = checkpoints_newest_first(out_dir) if resume else []
    problems = []
    for ckpt in candidates:
        try:
            state = read_checkpoint(ckpt, modules, optimizers, ema, device)
        except MvditError as e:
            problems.append(str(e))
            say(f"cannot resume from {ckpt.name}: {e}; trying the previous checkpoint")
            continue
        start = state["step"]
        say(f"resuming from {ckpt} (step {start})")
        saved = ((state.get("config") or {}).get("optim") or {}).get("grad_accum")
        was = state.get("micro_batches", saved or optim.grad_accum)
        if was != optim.grad_accum * par.world:
            say(
                f"the checkpoint's steps had {was} micro-batches of {optim.batch_size}; these have "
                f"{optim.grad_accum} x {par.world} ranks = {optim.grad_accum * par.world}: set "
                f"optim.grad_accum = {was / par.world:g} to continue the same run"
            )
        break
    else:
        if problems:
            raise MvditError(
                f"no readable checkpoint in {out_dir / 'checkpoints'}: {'; '.join(problems)}"
            )
        if resume:
            say(f"no checkpoint in {out_dir}; starting from step 0")

    if start > optim.steps:
        raise MvditError(
            f"{out_dir}: the checkpoint is at step {start}, past optim.steps = {optim.steps}: "
            "raise optim.steps to train on, or use the run's model as it is"
        )
    metrics_path = out_dir / "metrics.jsonl"
    if par.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        _truncate_metrics(metrics_path, start)
        if config_dump is not None:
            write_json(out_dir / "config.json", config_dump)
    distributed.barrier()

    def checkpoint(step: int) -> None:
        states, optims, ema_state = gather_training_state(modules, optimizers, ema, par.main)
        error = None
        if par.main:
            extra = {"config": config_dump, "world": par.world}
            extra["micro_batches"] = optim.grad_accum * par.world
            try:
                save_checkpoint(
                    out_dir, step, states, optims, ema_state, extra, run.keep_checkpoints
                )
                if on_export is not None:
                    state = ema_state if ema is not None else states["model"]
                    on_export(out_dir / "model", state, step)
                plot_losses(metrics_path, out_dir / "loss.png")
            except MvditError as e:
                error = str(e)
            except Exception as e:  # noqa: BLE001 - under torchrun the other ranks must hear of it
                if not par.active:
                    raise
                error = f"rank 0 failed while checkpointing step {step}: {type(e).__name__}: {e}"
        distributed.agree(error)

    bar = tqdm(
        total=optim.steps,
        initial=start,
        disable=not (progress and par.main),
        dynamic_ncols=True,
        desc=out_dir.name,
    )
    t0, streak = time.perf_counter(), 0
    # a run resumed at its last step reports the losses it ended with
    last = (
        {} if start == 0 or not metrics_path.exists() else (read_metrics(metrics_path) or [{}])[-1]
    )
    last = {k: v for k, v in last.items() if isinstance(v, float)}
    # the bar as a context: an error ends its line before the one-line message is printed
    with bar, open(metrics_path if par.main else os.devnull, "a") as log:
        for step in range(start, optim.steps):
            for k, opt in optimizers.items():
                for g in opt.param_groups:
                    g["lr"] = settings[k].lr * lr_factor(step, settings[k])
            sums: dict[str, float] = {}
            skipped: dict[str, str] = {}  # module -> why its update was skipped
            for local in range(optim.grad_accum):
                micro = par.rank * optim.grad_accum + local  # the global micro-batch index
                batch = _to_device(batch_fn(step, micro), device)
                gen = torch.Generator().manual_seed(step_seed(run.seed, step, micro))
                with autocast, attention_backend(run.attention):
                    losses, extra = loss_fn(step, batch, gen)
                finite = distributed.all_agree([_finite(losses[k]) for k in losses], device)
                for (k, v), ok in zip(losses.items(), finite, strict=True):
                    if not ok:
                        here = float(v.detach())
                        why = f"{_loss_key(k)} = {here}" if not math.isfinite(here) else None
                        skipped.setdefault(k, why or f"{_loss_key(k)} not finite on another rank")
                active = [k for k, v in losses.items() if v.requires_grad and k not in skipped]
                if par.active:
                    _backward_routed(losses, active, params, optim.grad_accum)
                else:
                    _grad_routed(losses, active, params, optim.grad_accum)
                for k, v in [*((_loss_key(k), v) for k, v in losses.items()), *extra.items()]:
                    sums[k] = (
                        sums.get(k, 0.0)
                        + float(v.detach() if isinstance(v, torch.Tensor) else v) / optim.grad_accum
                    )
            sums = distributed.mean_over_ranks(sums, device)
            stepped = set()
            for k, opt in optimizers.items():
                grads = [p for p in params[k] if p.grad is not None]
                if not grads:
                    continue
                if k not in skipped:
                    clip = settings[k].grad_clip if settings[k].grad_clip > 0 else math.inf
                    norm = _total(torch.nn.utils.clip_grad_norm_(grads, clip))
                    if math.isfinite(norm):
                        sums[f"grad_norm_{k}"] = norm
                        opt.step()
                        stepped.add(k)
                    else:
                        skipped[k] = f"grad norm of '{k}' = {norm}"
                opt.zero_grad(set_to_none=True)
            if ema is not None and ema_module in stepped:
                ema.update(modules[ema_module], step)
            row = {
                "step": step + 1,
                "lr": optimizers[next(iter(optimizers))].param_groups[0]["lr"],
                **{k: v for k, v in sums.items() if math.isfinite(v)},
            }
            if skipped:
                row["skipped"] = skipped
                streak += 1
                say(f"step {step + 1}: skipped the update of {_why(skipped)}")
            else:
                streak = 0
            log.write(json.dumps(row) + "\n")
            if streak >= optim.max_nonfinite_steps:
                log.flush()
                bar.close()
                raise MvditError(
                    f"step {step + 1}: {streak} steps in a row with non-finite values "
                    f"({_why(skipped)}); lower optim.lr, check the data, or resume from the last "
                    f"checkpoint in {out_dir / 'checkpoints'}"
                )
            last = sums
            bar.update(1)
            if (step + 1) % run.log_every == 0 or step + 1 == optim.steps:
                log.flush()
                bar.set_postfix({k: f"{v:.4f}" for k, v in sums.items() if k.startswith("loss")})
            if (step + 1) % run.checkpoint_every == 0 and step + 1 < optim.steps:
                log.flush()
                checkpoint(step + 1)
        log.flush()
    bar.close()
    if start < optim.steps or latest_checkpoint(out_dir) is None:
        checkpoint(optim.steps)
    seconds = time.perf_counter() - t0
    summary = {
        "steps": optim.steps,
        "resumed_from": start,
        "seconds": round(seconds, 2),
        "final": last,
        "world": par.world,
    }
    if par.main:
        write_json(out_dir / "summary.json", summary)
    distributed.barrier()
    release_run_dir(out_dir)
    return summary


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

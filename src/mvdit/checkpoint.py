"""The checkpointer: a run directory's checkpoints and its lock, apart from the loop.

A checkpoint is `run.out_dir/checkpoints/step_NNNNNNN/`: every trained module's weights, its
optimizer's moments and the EMA as safetensors, and state.json (the step, the config, the optimizer
param groups); `checkpoints/latest` names the newest. It is written into a temporary directory,
fsynced and renamed into place (mvdit.io.atomic_dir), so a kill at any moment leaves the previous
one whole, and read back file by file, so a damaged one names the file and the next is tried.
Tensors are whole, in the one-process layout (gathered from every rank under torchrun), so any
world size resumes any other.
"""

from __future__ import annotations

import atexit
import shutil
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mvdit import MvditError, distributed
from mvdit.io import (
    DiskFullError,
    RunLock,
    atomic_dir,
    atomic_write_text,
    is_disk_full,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)

# ---------------------------------------------------------------------------------------------
# a run directory is one run's


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

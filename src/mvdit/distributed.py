"""Data-parallel training under `torchrun`: PyTorch's own engine, no launcher of ours.

`torchrun --nproc_per_node=N mvdit train CONFIG` starts N copies of the same command; each reads
RANK / WORLD_SIZE / LOCAL_RANK from its environment, and `setup` joins them into one process
group (gloo on CPU, NCCL on GPU). `run.parallel` chooses how the trained modules are spread:

- "ddp": every rank holds the whole module and its optimizer; gradients are averaged over ranks.
  This is PyTorch's replicate on the FSDP2 engine (`torch.distributed._composable.replicate_with_fsdp`)
  rather than the classic `DistributedDataParallel` wrapper: a GAN step's two losses share one
  forward and go back through it separately, which the classic reducer refuses (it lets each
  parameter be reduced once per forward) and the FSDP2 engine supports.
- "fsdp": FSDP2 (`torch.distributed.fsdp.fully_shard`): each DiT block, then the whole module, is
  sharded over the ranks; parameters, gradients and optimizer moments live in shards.

Frozen helpers (a teacher, the autoencoder, the text encoder) are replicated as they are: no
optimizer and no gradient, so nothing to synchronise. A single process (no torchrun, or one rank)
never touches torch.distributed.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import nn

from mvdit import MvditError

ParallelKind = Literal["none", "ddp", "fsdp"]  # run.parallel's values (config.RunConfig)
PARALLEL_KINDS = get_args(ParallelKind)


@dataclass(frozen=True)
class Parallel:
    """Where this process sits: its rank, the world size, how trained modules are spread."""

    rank: int = 0
    world: int = 1
    kind: str = "none"

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def launched_world() -> int:
    """The world size torchrun announced (1 when not launched by torchrun)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise MvditError(f"WORLD_SIZE = {os.environ['WORLD_SIZE']!r} is not a number") from None


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def is_main() -> bool:
    """True on rank 0 (and in a single process): the one that writes files and prints."""
    return rank() == 0


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def setup(parallel: str, device: str) -> tuple[Parallel, torch.device]:
    """Join the process group torchrun prepared (idempotent) and return this rank's place and
    device (`cuda` becomes `cuda:LOCAL_RANK`). One process: Parallel() and the device as given."""
    if parallel not in PARALLEL_KINDS:
        raise MvditError(f"run.parallel = {parallel!r}: choose one of {', '.join(PARALLEL_KINDS)}")
    world = launched_world()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MvditError(f"run.device = '{device}' but no CUDA GPU is visible; use 'cpu'")
    if world <= 1:
        return Parallel(), dev
    if parallel == "none":
        raise MvditError(
            f"torchrun started {world} processes but run.parallel = 'none': "
            "set run.parallel = 'ddp' or 'fsdp' (e.g. --set run.parallel=ddp)"
        )
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not torch.distributed.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)
        atexit.register(_teardown)
    return Parallel(torch.distributed.get_rank(), torch.distributed.get_world_size(), parallel), dev


def _teardown() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def barrier() -> None:
    if world_size() > 1:
        torch.distributed.barrier()


@contextmanager
def main_first() -> Iterator[None]:
    """Rank 0 runs the body first (building a cache, writing a file); the other ranks run it
    after, when what rank 0 wrote is there to be read."""
    if not is_main():
        barrier()
    yield
    if is_main():
        barrier()


def agree(error: str | None) -> None:
    """Raise the same MvditError on every rank when any rank hit one (rank 0 wrote a checkpoint
    and the disk was full): no rank is left waiting in a collective."""
    if world_size() <= 1:
        if error:
            raise MvditError(error)
        return
    errors: list[str | None] = [None] * world_size()
    torch.distributed.all_gather_object(errors, error)
    first = next((e for e in errors if e), None)
    if first:
        raise MvditError(first)


def all_agree(flags: list[bool], device: torch.device) -> list[bool]:
    """Element-wise AND of per-rank flags (is this module's loss finite here?)."""
    if world_size() <= 1 or not flags:
        return flags
    t = torch.tensor([1.0 if f else 0.0 for f in flags], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MIN)
    return [bool(v > 0) for v in t.tolist()]


def mean_over_ranks(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """The mean over ranks of each logged number, so rank 0 logs the global batch's metrics."""
    if world_size() <= 1 or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return {k: float(v) / world_size() for k, v in zip(keys, t.tolist(), strict=True)}


def wrap(module: nn.Module, par: Parallel, device: torch.device) -> nn.Module:
    """Spread a trained module over the ranks in place (the stage's own reference to it stays
    valid: its forward now gathers and its backward reduces). One process: unchanged.

    Units: under "fsdp" each trainable DiT block (and its cross-attention, whose keys and values
    are computed before the blocks run) is gathered on its own; a DiT inside a wrapper (KD's
    student, the discriminator's backbone) and the module itself are units, and their other entry
    points (`entry_points`: a DiT's `features`, a VAE's `encode_dist`...) gather like forward."""
    if not par.active:
        return module
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

    if par.kind == "ddp":
        from torch.distributed._composable.replicate_with_fsdp import replicate

        mesh = init_device_mesh(device.type, (par.world,), mesh_dim_names=("replicate",))

        def unit(m: nn.Module) -> None:
            replicate(m, mesh=mesh)
    else:
        mesh = init_device_mesh(device.type, (par.world,), mesh_dim_names=("shard",))

        def unit(m: nn.Module) -> None:
            fully_shard(m, mesh=mesh)

    def blocks_of(m: nn.Module) -> None:
        blocks = getattr(m, "blocks", None)
        if par.kind != "fsdp" or not isinstance(blocks, nn.ModuleList):
            return
        for block in blocks:
            if not any(p.requires_grad for p in block.parameters()):
                continue
            cross = getattr(block, "cross_attn", None)
            if cross is not None:
                unit(cross)
                register_fsdp_forward_method(cross, "keys_values")
            unit(block)

    def entry_points(m: nn.Module) -> None:
        for name in getattr(m, "entry_points", ()):
            register_fsdp_forward_method(m, name)

    for sub in list(module.modules())[1:]:
        if getattr(sub, "entry_points", ()):
            blocks_of(sub)
            unit(sub)
            entry_points(sub)
    blocks_of(module)
    unit(module)
    entry_points(module)
    return module


def full_tensors(state: dict[str, torch.Tensor], keep: bool = True) -> dict[str, torch.Tensor]:
    """A state dict with every sharded or replicated tensor gathered whole, on the CPU (a
    collective: every rank calls it). keep=False (the ranks that write nothing): each tensor is
    gathered and dropped at once, so only rank 0 holds a whole copy."""
    from torch.distributed.tensor import DTensor

    out = {}
    for k, v in state.items():
        whole = v.full_tensor() if isinstance(v, DTensor) else v
        if keep:
            out[k] = whole.detach().cpu()
    return out


def like(full: dict[str, torch.Tensor], current: dict[str, torch.Tensor], device) -> dict:
    """Whole tensors read from a checkpoint, laid out as `current` is (sharded or replicated
    where it is): the inverse of full_tensors."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    out = {}
    for k, v in full.items():
        cur = current.get(k)
        if isinstance(cur, DTensor):
            out[k] = distribute_tensor(v.to(device), cur.device_mesh, cur.placements)
        else:
            out[k] = v.to(device)
    return out

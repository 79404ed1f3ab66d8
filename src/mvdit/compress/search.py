"""Greedy tri-level pruning under a budget, and pruning to a fixed shape.

`greedy_prune` removes, one at a time, the unit (block, self- or cross-attention head, FFN group;
mvdit.compress.importance) with the smallest score per unit of cost saved, re-scoring the units
left every `rescore_every` removals because removals interact, until the budget holds:
- params=F / flops=F: the pruned DiT keeps at most the fraction F of the parameters / FLOPs per
  step of the original (closed forms, exact);
- latency=F: the sliced model's forward, measured on this machine, takes at most F of the
  original's (the search orders by FLOPs saved and measures every `rescore_every` removals);
- memory=B: parameter bytes plus the measured activation peak of one forward stay under B bytes.

`prune_to_shape` keeps the best `blocks` blocks and, in each, the best `heads` self- and
cross-attention heads and `ffn` FFN channels: the paper's 28 -> 20 blocks, 32 -> 20 heads,
8192 -> 6144 FFN surgery.

Either returns a binary UnitMask; the model's `slice` turns it into the smaller model
(mvdit's DiT, or a diffusers transformer through mvdit.compress.diffusers_dit).
"""

from __future__ import annotations

import re
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from mvdit import MvditError
from mvdit.bench.measure import PeakMemory, timed
from mvdit.compress.importance import (
    LEVELS,
    Calibration,
    Unit,
    criterion_scores,
    enumerate_units,
    ffn_groups,
    keeps_a_block,
    remove,
)
from mvdit.models.dit import UnitMask, VideoDiT

BUDGET_KINDS = ("params", "flops", "latency", "memory")
_SUFFIX = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}


class BudgetUnreachable(MvditError):
    """Every unit the allowed levels may remove is gone and the budget is still not met (e.g.
    head-only pruning cannot take away the FFNs' parameters)."""


@dataclass(frozen=True)
class Budget:
    kind: str  # one of BUDGET_KINDS
    value: float  # the fraction kept (params, flops, latency) or bytes (memory)

    def __str__(self) -> str:
        return f"{self.kind}={self.value:g}"


def parse_budget(text: str) -> Budget:
    """'params=0.55', 'flops=0.5', 'latency=0.6' or 'memory=1.5G' (bytes; k/M/G suffixes)."""
    kind, sep, value = text.partition("=")
    kind = kind.strip().lower()
    if not sep or kind not in BUDGET_KINDS:
        raise MvditError(
            f"--budget {text!r}: write KIND=VALUE with KIND one of {', '.join(BUDGET_KINDS)}, "
            "e.g. params=0.55 (keep 55% of the DiT's parameters) or memory=2G"
        )
    if kind == "memory":
        m = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kKmMgG]?)i?[bB]?\s*", value)
        if not m:
            raise MvditError(f"--budget {text!r}: memory takes bytes, e.g. memory=2G or memory=5e8")
        return Budget(kind, float(m.group(1)) * _SUFFIX[m.group(2).lower()])
    try:
        frac = float(value)
    except ValueError:
        frac = -1.0
    if not 0 < frac < 1:
        raise MvditError(f"--budget {text!r}: {kind} takes the fraction to keep, in (0, 1)")
    return Budget(kind, frac)


@dataclass
class PruneResult:
    mask: UnitMask
    history: list[dict] = field(default_factory=list)  # one row per removal
    base: dict = field(default_factory=dict)  # the original's costs
    final: dict = field(default_factory=dict)  # the pruned model's costs
    rescored: int = 0  # how many times the remaining units were scored


def measured_cost(
    model: VideoDiT, mask: UnitMask, calib: Calibration, kind: str, reps: int = 5
) -> float:
    """Seconds of one forward (batch 1) of the sliced model, or its parameter bytes plus the
    activation peak of that forward, measured on the model's device."""
    small = model.slice(mask).eval()
    dev = next(small.parameters()).device
    args = calib.inputs(slice(0, 1), dev)
    with torch.no_grad():
        if kind == "latency":
            return statistics.median(timed(lambda: small(*args), dev, reps=reps))
        small(*args)  # warm-up: the allocator's first growth is not this model's need
        with PeakMemory(dev) as pm:
            small(*args)
    weights = sum(p.numel() * p.element_size() for p in small.parameters())
    return weights + max(0, pm.peak - pm.start)


def greedy_prune(
    model: VideoDiT,
    calib: Calibration,
    budget: Budget,
    levels: Sequence[str] = LEVELS,
    criterion: str = "kd",
    group: int = 64,
    rescore_every: int = 8,
    batch: int = 32,
    tokens: int | None = None,
    text_len: int | None = None,
    progress: Callable[[dict], None] | None = None,
) -> PruneResult:
    """Remove units until `budget` holds (see the module docstring); returns the mask and a row
    per removal (unit, its score, the cost saved, and the costs left)."""
    cfg = model.config
    tokens = tokens or cfg.tokens(calib.x_t.shape[-3:])
    text_len = text_len or calib.text.shape[1]
    dev = next(model.parameters()).device
    mask = UnitMask.full(cfg, dev)
    proxy = "flops" if budget.kind in ("flops", "latency") else "params"
    base = model.cost(mask, tokens, text_len)
    if budget.kind in ("latency", "memory"):
        base[budget.kind] = measured_cost(model, mask, calib, budget.kind)
    limit = budget.value if budget.kind == "memory" else budget.value * base[budget.kind]
    result = PruneResult(mask, base=dict(base))

    def now(m: UnitMask, measure: bool) -> dict:
        c = model.cost(m, tokens, text_len)
        if measure and budget.kind in ("latency", "memory"):
            c[budget.kind] = measured_cost(model, m, calib, budget.kind)
        return c

    def met(c: dict) -> bool:
        return budget.kind in c and c[budget.kind] <= limit

    scores: dict[str, float] = {}
    since = rescore_every  # score before the first removal
    current = dict(base)
    while not met(current):
        # a DiT keeps at least one block with something in it
        units = [
            u
            for u in enumerate_units(cfg, group, levels, mask)
            if keeps_a_block(remove(mask, u, group))
        ]
        if since >= rescore_every or any(u.key not in scores for u in units):
            scores = criterion_scores(criterion, model, calib, units, group, mask, batch)
            result.rescored += 1
            since = 0
        here = model.cost(mask, tokens, text_len)[proxy]
        best, best_value, best_saved = None, float("inf"), 0
        for u in units:
            saved = here - model.cost(remove(mask, u, group), tokens, text_len)[proxy]
            if saved <= 0:
                continue
            value = scores[u.key] / saved
            if value < best_value:
                best, best_value, best_saved = u, value, saved
        if best is None:
            raise BudgetUnreachable(
                f"the budget {budget} cannot be met at levels {', '.join(levels)}: nothing left to remove"
            )
        mask = remove(mask, best, group)
        score = scores.pop(best.key)
        since += 1
        # a measured budget is checked when the units are re-scored (and at the end)
        current = now(mask, measure=since >= rescore_every)
        row = {"unit": best.key, "score": score, "saved_" + proxy: best_saved, **current}
        result.history.append(row)
        if progress is not None:
            progress(row)
    result.mask = mask
    result.final = now(mask, measure=True)
    return result


def prune_to_shape(
    model: VideoDiT,
    scores: dict[str, float],
    blocks: int,
    heads: int,
    ffn: int,
    group: int,
) -> UnitMask:
    """Keep the `blocks` best-scored blocks and, in each, the `heads` best self- and
    cross-attention heads and the best FFN groups up to `ffn` channels (a multiple of `group`)."""
    cfg = model.config
    if not 1 <= blocks <= len(cfg.blocks):
        raise MvditError(f"blocks must be in 1..{len(cfg.blocks)}, got {blocks}")
    if ffn % group:
        raise MvditError(f"ffn={ffn} must be a multiple of the FFN group size {group}")
    mask = UnitMask.full(cfg, next(model.parameters()).device)
    ranked = sorted(range(len(cfg.blocks)), key=lambda b: scores[Unit("block", b).key])
    for b in ranked[: len(cfg.blocks) - blocks]:
        mask.blocks[b] = 0
    for b, spec in enumerate(cfg.blocks):
        for level, n in (("head", spec.heads), ("cross_head", spec.cross_heads)):
            if heads > n:
                raise MvditError(
                    f"block {b} has {n} {level.replace('_', ' ')}s; cannot keep {heads}"
                )
            order = sorted(range(n), key=lambda i: scores[Unit(level, b, i).key])
            mask.level(level)[b][order[: n - heads]] = 0
        if ffn > spec.ffn_dim:
            raise MvditError(f"block {b} has {spec.ffn_dim} FFN channels; cannot keep {ffn}")
        groups = ffn_groups(spec.ffn_dim, group)
        order = sorted(range(len(groups)), key=lambda i: scores[Unit("ffn", b, i).key])
        for i in order[: len(groups) - ffn // group]:
            mask.ffn[b][groups[i]] = 0
    return mask

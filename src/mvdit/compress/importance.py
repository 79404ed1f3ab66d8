"""What each prunable unit of a DiT is worth: KD sensitivity and the cheap criteria.

A unit is one self-attention head, one cross-attention head, one group of FFN channels or one
whole block (`Unit`). Its KD sensitivity is what the model loses when that unit alone is masked
away (mvdit.models.dit.UnitMask): the MSE between the reference model's predicted velocity and
the masked model's (the classifier-free-guided velocity at the model's own guidance scale, the
quantity its sampler integrates), and the same for the last block's output tokens, averaged over a fixed
calibration set (`Calibration`: prompts x noise seeds x timesteps on the flow path). Masking
equals slicing (`slice` of the model: mvdit.models.interface), so the score is exactly the damage of the removal.

The cheap criteria, for comparison and for models whose KD score means nothing (random weights):
- magnitude: the L2 norm of the unit's weights;
- taylor: |m * dL/dm| of the flow-matching loss with respect to the unit's mask value m = 1
  (first-order estimate of the loss change when the unit goes);
- activation: the mean L2 norm of the unit's output (a head's output before the projection, an
  FFN group's activations, a block's residual update).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from mvdit import MvditError
from mvdit.flow import interpolate, velocity_target
from mvdit.models.dit import (
    LEVELS,
    PER_BLOCK_LEVELS,
    DiTConfig,
    UnitMask,
    VideoDiT,
    ffn_groups,
)

# the flow times a calibration set noises each clip at (one definition for every stage and study)
CALIBRATION_TIMESTEPS = (0.1, 0.3, 0.5, 0.7, 0.9)
CRITERIA = ("kd", "magnitude", "taylor", "activation")


@dataclass(frozen=True)
class Unit:
    """One prunable unit: `level` in LEVELS, its block, and (below block level) its index: a head
    number, or an FFN group number covering channels [index * group, (index + 1) * group)."""

    level: str
    block: int
    index: int | None = None

    @property
    def key(self) -> str:
        return f"{self.level}:{self.block}" + ("" if self.index is None else f":{self.index}")

    @classmethod
    def parse(cls, key: str) -> Unit:
        parts = key.split(":")
        return cls(parts[0], int(parts[1]), int(parts[2]) if len(parts) > 2 else None)


def default_group(config: DiTConfig) -> int:
    """FFN channels per group: the largest power of two giving every block at least 8 groups."""
    widths = [b.ffn_dim for b in config.blocks if b.ffn_dim]
    if not widths:
        return 1
    g = 2 ** int(math.log2(max(1, min(widths) // 8)))
    return max(1, g)


def enumerate_units(
    config: DiTConfig, group: int, levels: Iterable[str] = LEVELS, mask: UnitMask | None = None
) -> list[Unit]:
    """Every unit at the given levels that `mask` (default: the full model) still keeps."""
    levels = set(levels)
    bad = levels - set(LEVELS)
    if bad:
        raise MvditError(f"unknown level(s) {sorted(bad)}; choose from {', '.join(LEVELS)}")
    out: list[Unit] = []
    for b, spec in enumerate(config.blocks):
        if mask is not None and mask.blocks[b] == 0:
            continue
        if "block" in levels:
            out.append(Unit("block", b))
        for level, n in (("head", spec.heads), ("cross_head", spec.cross_heads)):
            if level in levels:
                m = mask.level(level)[b] if mask is not None else None
                out += [Unit(level, b, i) for i in range(n) if m is None or m[i] != 0]
        if "ffn" in levels:
            for i, chans in enumerate(ffn_groups(spec.ffn_dim, group)):
                if mask is None or bool((mask.ffn[b][chans] != 0).any()):
                    out.append(Unit("ffn", b, i))
    return out


def remove(mask: UnitMask, unit: Unit, group: int) -> UnitMask:
    """A copy of `mask` without `unit`."""
    if unit.level == "block":
        return mask.without("block", unit.block)
    if unit.level == "ffn":
        width = mask.ffn[unit.block].numel()
        return mask.without("ffn", unit.block, ffn_groups(width, group)[unit.index])
    return mask.without(unit.level, unit.block, [unit.index])


# ---------------------------------------------------------------------------------------------
# what a mask leaves: the config, parameters and FLOPs of the model it slices to


def keeps_a_block(mask: UnitMask) -> bool:
    """Whether some block keeps at least one unit (a DiT cannot lose them all)."""
    return any(
        bool(mask.blocks[b] != 0) and any(bool((m != 0).any()) for m in mask.block(b))
        for b in range(mask.blocks.numel())
    )


# ---------------------------------------------------------------------------------------------
# the calibration set


@dataclass
class Calibration:
    """Fixed inputs on which units are scored: for every (prompt, noise seed) a clean latent x0
    (the teacher's own sample, so no training data is needed), and for every timestep the point
    x_t = (1 - t) x0 + t noise on the straight flow path with its target velocity noise - x0."""

    x_t: torch.Tensor  # (N, C, T, H, W)
    t: torch.Tensor  # (N,)
    target: torch.Tensor  # (N, C, T, H, W): the flow-matching target (Taylor criterion)
    text: torch.Tensor  # (N, L, text_dim)
    text_mask: torch.Tensor  # (N, L)
    record: dict  # prompts, seeds, timesteps, sampler: what the set was built from
    # the model's guidance scale and the empty prompt's encoding (1, L, D): with guidance != 1 the
    # KD discrepancy compares guided velocities, v_u + g (v_c - v_u), the quantity sampling uses,
    # so the damage to the text conditioning counts g times, not once
    guidance: float = 1.0
    null_text: torch.Tensor | None = None
    null_mask: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.x_t.shape[0]

    def batches(self, size: int) -> list[slice]:
        return [slice(s, min(s + size, len(self))) for s in range(0, len(self), size)]

    def inputs(self, s: slice, device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """(x_t, t, text, text_mask) of the items in `s`, on `device`: a DiT forward's arguments."""
        return tuple(v[s].to(device) for v in (self.x_t, self.t, self.text, self.text_mask))


@torch.no_grad()
def build_calibration(
    pipe,
    prompts: Sequence[str],
    seeds: Sequence[int] = (0, 1),
    timesteps: Sequence[float] = CALIBRATION_TIMESTEPS,
    steps: int | None = None,
) -> Calibration:
    """The calibration set of a pipeline (mvdit.pipeline.Pipeline): its samples of `prompts`
    under each noise seed, noised again to each of `timesteps` with noise of a second seed."""
    if not prompts:
        raise MvditError("the calibration set needs at least one prompt")
    if not seeds or not timesteps:
        raise MvditError("the calibration set needs at least one seed and one timestep")
    if any(not 0 < t < 1 for t in timesteps):
        raise MvditError(f"calibration timesteps must lie in (0, 1), got {list(timesteps)}")
    text, mask = pipe.text_encoder.encode(list(prompts))
    xs, ts, targets, texts, masks = [], [], [], [], []
    for seed in seeds:
        x0 = pipe.generate(list(prompts), steps=steps, seed=seed).latents
        gen = torch.Generator().manual_seed(10_000 + seed)
        for t in timesteps:
            noise = torch.randn(x0.shape, generator=gen)
            tt = torch.full((len(prompts),), float(t))
            xs.append(interpolate(x0, noise, tt))
            targets.append(velocity_target(x0, noise))
            ts.append(tt)
            texts.append(text)
            masks.append(mask)
    sampling = pipe.sampling(steps)
    record = {
        "prompts": list(prompts),
        "seeds": list(seeds),
        "timesteps": [float(t) for t in timesteps],
        "sampler": sampling.summary(),
        "items": len(prompts) * len(seeds) * len(timesteps),
        "kd_on": "guided velocity" if sampling.guidance != 1 else "velocity",
    }
    null_text, null_mask = pipe.text_encoder.encode([""])
    cat = torch.cat
    return Calibration(
        cat(xs), cat(ts), cat(targets), cat(texts), cat(masks), record,
        sampling.guidance, null_text, null_mask,
    )  # fmt: skip


def random_calibration(
    config: DiTConfig, latent: Sequence[int], n: int = 8, text_len: int = 16, seed: int = 0
) -> Calibration:
    """Gaussian inputs for a model without a pipeline (random weights, a bare DiT)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, config.in_channels, *latent, generator=g)
    text = torch.randn(n, text_len, config.text_dim, generator=g)
    t = torch.rand(n, generator=g) * 0.8 + 0.1
    record = {"kind": "random", "items": n, "latent": list(latent), "text_len": text_len}
    return Calibration(
        x,
        t,
        torch.randn(x.shape, generator=g),
        text,
        torch.ones(n, text_len, dtype=torch.bool),
        record,
    )


# ---------------------------------------------------------------------------------------------
# scores


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _outputs(
    model: VideoDiT, calib: Calibration, s: slice, mask: UnitMask | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(velocity, guided when calib.guidance != 1; last block's tokens of the conditional pass)
    of one calibration batch, the conditional and unconditional passes in one forward."""
    dev = _device(model)
    x, t, text, tmask = calib.inputs(s, dev)
    n = x.shape[0]
    guided = calib.guidance != 1 and calib.null_text is not None
    if guided:
        x, t = torch.cat([x, x]), torch.cat([t, t])
        text = torch.cat([text, calib.null_text.to(dev).expand(n, -1, -1)])
        tmask = torch.cat([tmask, calib.null_mask.to(dev).expand(n, -1)])
    f = model.features(x, t, text, tmask, blocks=[-1], unit_mask=mask)
    v, h = f.velocity, f.tokens[len(model.blocks) - 1][:n]
    if guided:
        v = v[n:] + calib.guidance * (v[:n] - v[n:])
    return v, h


@torch.no_grad()
def reference_outputs(
    model: VideoDiT, calib: Calibration, mask: UnitMask | None, batch: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(velocity, last block's tokens) of the reference model per calibration batch."""
    return [_outputs(model, calib, s, mask) for s in calib.batches(batch)]


@torch.no_grad()
def kd_discrepancy(
    model: VideoDiT,
    calib: Calibration,
    mask: UnitMask,
    reference: list[tuple[torch.Tensor, torch.Tensor]],
    batch: int,
) -> tuple[float, float]:
    """(velocity MSE, last-block token MSE) of the model under `mask` against `reference`."""
    v_err = f_err = 0.0
    for s, (v_ref, f_ref) in zip(calib.batches(batch), reference, strict=True):
        v, h = _outputs(model, calib, s, mask)
        n = s.stop - s.start
        v_err += float((v - v_ref).pow(2).mean()) * n
        f_err += float((h - f_ref).pow(2).mean()) * n
    return v_err / len(calib), f_err / len(calib)


def kd_scores(
    model: VideoDiT,
    calib: Calibration,
    units: Sequence[Unit],
    group: int,
    mask: UnitMask | None = None,
    batch: int = 32,
    reference: list | None = None,
    on_unit: Callable[[Unit, dict], None] | None = None,
) -> dict[str, dict]:
    """KD sensitivity of each unit: the discrepancy when it alone is removed from `mask`."""
    mask = mask if mask is not None else UnitMask.full(model.config, _device(model))
    reference = reference if reference is not None else reference_outputs(model, calib, mask, batch)
    out = {}
    for u in units:
        v, f = kd_discrepancy(model, calib, remove(mask, u, group), reference, batch)
        out[u.key] = {"kd": v, "kd_features": f}
        if on_unit is not None:
            on_unit(u, out[u.key])
    return out


def _unit_value(
    u: Unit, per_level: dict[str, list[torch.Tensor] | torch.Tensor], group: int
) -> float:
    """Sum of a per-unit-vector quantity (gradient, activation norm) over the unit's entries."""
    if u.level == "block":
        return float(per_level["block"][u.block])
    v = per_level[u.level][u.block]
    if u.level == "ffn":
        return float(v[ffn_groups(v.numel(), group)[u.index]].sum())
    return float(v[u.index])


def taylor_scores(
    model: VideoDiT,
    calib: Calibration,
    units: Sequence[Unit],
    group: int,
    mask: UnitMask | None = None,
    batch: int = 32,
) -> dict[str, float]:
    """|m * dL/dm| per unit, L the flow-matching loss on the calibration set, summed over batches."""
    dev = _device(model)
    base = mask if mask is not None else UnitMask.full(model.config, dev)
    acc: dict[str, list[torch.Tensor] | torch.Tensor] = {
        "block": torch.zeros_like(base.blocks),
        **{lv: [torch.zeros_like(m) for m in base.level(lv)] for lv in PER_BLOCK_LEVELS},
    }
    model.requires_grad_(False)
    try:
        for s in calib.batches(batch):
            m = base.clone()
            leaves = [m.blocks] + [t for lv in PER_BLOCK_LEVELS for t in m.level(lv)]
            for t in leaves:
                t.requires_grad_(True)
            v = model(*calib.inputs(s, dev), unit_mask=m)
            loss = (v - calib.target[s].to(dev)).pow(2).mean()
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
            it = iter(grads)
            g = next(it)
            if g is not None:
                acc["block"] += (g * base.blocks).abs()
            for lv in PER_BLOCK_LEVELS:
                for i, ref in enumerate(base.level(lv)):
                    g = next(it)
                    if g is not None:
                        acc[lv][i] += (g * ref).abs()
    finally:
        model.requires_grad_(True)
    return {u.key: _unit_value(u, acc, group) for u in units}


@torch.no_grad()
def activation_scores(
    model: VideoDiT,
    calib: Calibration,
    units: Sequence[Unit],
    group: int,
    mask: UnitMask | None = None,
    batch: int = 32,
) -> dict[str, float]:
    """Mean L2 norm (over tokens and calibration items) of each unit's output."""
    dev = _device(model)
    hd = model.config.head_dim
    acc: dict[str, list | torch.Tensor] = {
        "block": torch.zeros(len(model.blocks)),
        "head": [torch.zeros(b.heads) for b in model.config.blocks],
        "cross_head": [torch.zeros(b.cross_heads) for b in model.config.blocks],
        "ffn": [torch.zeros(b.ffn_dim) for b in model.config.blocks],
    }
    hooks = []

    def per_head(level: str, b: int):
        def hook(_mod, args):
            y = args[0].detach().float()  # (B, N, heads * hd)
            y = y.unflatten(-1, (-1, hd)).norm(dim=-1)  # (B, N, heads)
            acc[level][b] += y.mean(1).sum(0).cpu()

        return hook

    def per_channel(b: int):
        def hook(_mod, args):
            acc["ffn"][b] += args[0].detach().float().abs().mean(1).sum(0).cpu()

        return hook

    def per_block(b: int):
        def hook(_mod, args, out):
            acc["block"][b] += (out - args[0]).detach().float().norm(dim=-1).mean(1).sum().cpu()

        return hook

    for b, blk in enumerate(model.blocks):
        if blk.attn is not None:
            hooks.append(blk.attn.out.register_forward_pre_hook(per_head("head", b)))
        if blk.cross_attn is not None:
            hooks.append(blk.cross_attn.out.register_forward_pre_hook(per_head("cross_head", b)))
        if blk.ffn is not None:
            hooks.append(blk.ffn.fc2.register_forward_pre_hook(per_channel(b)))
        hooks.append(blk.register_forward_hook(per_block(b)))
    try:
        for s in calib.batches(batch):
            model(*calib.inputs(s, dev), unit_mask=mask)
    finally:
        for h in hooks:
            h.remove()
    n = len(calib)
    scaled = {
        "block": acc["block"] / n,
        **{lv: [v / n for v in acc[lv]] for lv in PER_BLOCK_LEVELS},
    }
    return {u.key: _unit_value(u, scaled, group) for u in units}


ADAPTER_CRITERIA = ("kd", "magnitude")  # what an adapted third-party DiT can be scored with


def check_criterion(criterion: str, allowed: Sequence[str] = CRITERIA) -> None:
    """Raise MvditError unless `criterion` is one a model can be scored with (`model.criteria`:
    every criterion for mvdit's DiT, ADAPTER_CRITERIA for an adapted third-party DiT)."""
    if criterion not in CRITERIA:
        raise MvditError(f"unknown criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")
    if criterion not in allowed:
        raise MvditError(
            f"criterion '{criterion}' needs mvdit's DiT (gradients through its unit mask, hooks "
            f"on its layers); this model is scored with {' or '.join(allowed)}"
        )


def criterion_scores(
    criterion: str,
    model: VideoDiT,
    calib: Calibration,
    units: Sequence[Unit],
    group: int,
    mask: UnitMask | None = None,
    batch: int = 32,
) -> dict[str, float]:
    """One number per unit under `criterion` (CRITERIA); larger means more important."""
    check_criterion(criterion, model.criteria)
    if criterion == "kd":
        return {k: v["kd"] for k, v in kd_scores(model, calib, units, group, mask, batch).items()}
    if criterion == "magnitude":
        return model.magnitude_scores(units, group)
    if criterion == "taylor":
        return taylor_scores(model, calib, units, group, mask, batch)
    if criterion == "activation":
        return activation_scores(model, calib, units, group, mask, batch)
    raise MvditError(f"unknown criterion '{criterion}'; choose one of {', '.join(CRITERIA)}")


def rank_correlation(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation (None with fewer than 3 units or a constant side)."""
    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    from scipy.stats import spearmanr  # deferred: seconds of import that generating does not need

    return float(spearmanr(a, b).statistic)

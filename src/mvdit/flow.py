"""Rectified flow: the interpolant, timestep sampling and shift, the loss, and the Euler sampler.

Convention (SD3 / minRF): x_t = (1 - t) * x0 + t * noise, t in [0, 1], t = 1 is pure noise;
the network predicts the velocity v = noise - x0, and sampling integrates dx/dt = v from t = 1
down to t = 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from mvdit import MvditError


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def shift_time(t: torch.Tensor | float, shift: float):
    """SD3's time shift: t' = s t / (1 + (s - 1) t). s > 1 spends more time at high noise."""
    return shift * t / (1 + (shift - 1) * t)


def shift_for_tokens(
    tokens: int,
    base_tokens: int = 256,
    max_tokens: int = 4096,
    base_shift: float = 1.0,
    max_shift: float = 3.0,
) -> float:
    """Resolution-dependent shift: more tokens carry more redundant signal, so they need more
    noise to be destroyed (SD3 §5.3.2). log(shift) is linear in the token count between two anchors."""
    a = (math.log(max_shift) - math.log(base_shift)) / (max_tokens - base_tokens)
    mu = math.log(base_shift) + a * (tokens - base_tokens)
    return float(math.exp(min(max(mu, math.log(base_shift)), math.log(max_shift))))


def sample_timesteps(
    n: int, generator: torch.Generator, mean: float = 0.0, std: float = 1.0, shift: float = 1.0
) -> torch.Tensor:
    """Logit-normal t (SD3): sigmoid of a normal, concentrating training on the middle of the path."""
    t = torch.sigmoid(mean + std * torch.randn(n, generator=generator))
    return shift_time(t, shift)


def flow_loss(
    model: Callable[..., torch.Tensor],
    x0: torch.Tensor,
    t: torch.Tensor,
    noise: torch.Tensor,
    **cond,
) -> torch.Tensor:
    """Mean squared error between predicted and true velocity."""
    v = model(interpolate(x0, noise, t), t, **cond)
    return (v.float() - velocity_target(x0, noise).float()).pow(2).mean()


def timestep_schedule(steps: int, shift: float = 1.0) -> list[float]:
    """steps + 1 times from 1 to 0, uniform in t and then shifted."""
    if steps < 1:
        raise MvditError(f"steps must be at least 1, got {steps}")
    return [float(shift_time(1 - i / steps, shift)) for i in range(steps + 1)]


def check_schedule(schedule: Sequence[float]) -> list[float]:
    s = [float(x) for x in schedule]
    if len(s) < 2:
        raise MvditError("a timestep schedule needs at least two times (start and end)")
    if any(b >= a for a, b in zip(s, s[1:], strict=False)):
        raise MvditError(f"timestep schedule must strictly decrease, got {s}")
    if not (0.0 <= s[-1] < s[0] <= 1.0):
        raise MvditError(f"timestep schedule must lie in [0, 1], got {s}")
    return s


def network_evaluations(steps: int, guidance: float) -> int:
    """Network evaluations per clip of an Euler sampler: one per step, two with guidance."""
    return steps * (2 if guidance != 1.0 else 1)


@torch.no_grad()
def euler_sample(
    model: Callable[..., torch.Tensor],
    noise: torch.Tensor,
    schedule: Sequence[float],
    cond: dict,
    uncond: dict | None = None,
    guidance: float = 1.0,
    progress: Callable[[int], None] | None = None,
    prepare: Callable[..., dict] | None = None,
    watch: Callable[[int, torch.Tensor], None] | None = None,
) -> tuple[torch.Tensor, int]:
    """Integrate from schedule[0] to schedule[-1]. Returns (x, number of network evaluations).

    With guidance != 1 the conditional and unconditional passes run as one batch of 2B:
    v = v_u + s (v_c - v_u) (classifier-free guidance), 2 evaluations per step. The two
    conditionings are joined once, before the first step; `prepare(**conditioning)` then turns
    them into the model's keyword arguments once per clip (VideoDiT.prepare_conditioning projects
    the text and computes every cross-attention key/value there instead of at every step).
    `watch(i, x)` sees the latents after step i (Pipeline.generate checks them for NaN/inf).
    """
    schedule = check_schedule(schedule)
    guided = guidance != 1.0 and uncond is not None
    kwargs = {k: torch.cat([cond[k], uncond[k]]) for k in cond} if guided else dict(cond)
    if prepare is not None:
        kwargs = prepare(**kwargs)
    x, nfe = noise, 0
    b = noise.shape[0]
    for i, (t, t_next) in enumerate(zip(schedule[:-1], schedule[1:], strict=True)):
        tt = torch.full((b,), t, device=noise.device, dtype=noise.dtype)
        if guided:
            v_c, v_u = model(torch.cat([x, x]), torch.cat([tt, tt]), **kwargs).chunk(2)
            v = v_u + guidance * (v_c - v_u)
            nfe += 2
        else:
            v = model(x, tt, **kwargs)
            nfe += 1
        x = x + (t_next - t) * v
        if watch:
            watch(i, x)
        if progress:
            progress(i)
    return x, nfe

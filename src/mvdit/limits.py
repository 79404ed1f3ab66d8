"""The bounds of every number a user gives mvdit, defined once.

Config sections take their field bounds from here (`Field(le=LIMITS...)` through `bounded`), the
command line checks its flags with `check_bound` before anything is allocated, and any page that
takes user input uses the same table. docs/reliability.md lists them (a test keeps that table
equal to this one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mvdit import MvditError


@dataclass(frozen=True)
class Bound:
    low: float
    high: float
    why: str  # what the upper bound protects against, shown with the error

    def problem(self, name: str, value: float) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return f"{name} must be a finite number, got {value}"
        if not self.low <= value <= self.high:
            return f"{name} must be in {_fmt(self.low)}…{_fmt(self.high)}, got {_fmt(value)} ({self.why})"
        return None


def _fmt(x: float) -> str:
    if abs(x) >= 1e15 and x != 2**64 - 1:
        return f"{float(x):.3g}"
    if isinstance(x, int) or float(x).is_integer():
        x = int(x)
        return "2**64-1" if x == 2**64 - 1 else f"{x:,}"
    return f"{x:g}"


LIMITS: dict[str, Bound] = {
    # a seed is an unsigned 64-bit integer: torch.Generator.manual_seed takes no more
    "seed": Bound(0, 2**64 - 1, "seeds are unsigned 64-bit integers"),
    "steps": Bound(1, 1000, "sampling steps; a distilled model samples 4, a teacher 20-50"),
    "guidance": Bound(0.0, 100.0, "classifier-free guidance scale; 1 turns it off, 3-8 is usual"),
    "frames": Bound(1, 257, "frames a clip; the paper generates 49"),
    "side": Bound(1, 2048, "height or width in pixels; the paper generates 384x512"),
    "batch": Bound(1, 4096, "clips at once; memory grows with it"),
    "scale": Bound(1, 32, "nearest upscale of a written video; 32x of 32 px is 1024 px"),
    "prompt_chars": Bound(
        1, 2000, "characters of a prompt; the text encoder reads its first tokens"
    ),
    "clips": Bound(1, 10_000_000, "clips in a cache or an evaluation"),
    "train_steps": Bound(1, 100_000_000, "optimizer steps of a run"),
    "threads": Bound(1, 1024, "CPU threads"),
}


# the help of the sampler options many commands share (defined once)
STEPS_HELP = "sampling steps (default: the model's)"
GUIDANCE_HELP = "classifier-free guidance scale; 1 turns it off (default: the model's)"


def bounded(key: str, default: Any, **kw: Any) -> Any:
    """A pydantic Field whose bounds are LIMITS[key] (and finite, for a float)."""
    from pydantic import Field

    b = LIMITS[key]
    if isinstance(default, float):
        kw.setdefault("allow_inf_nan", False)
    return Field(default=default, ge=b.low, le=b.high, **kw)


def check_bound(key: str, value: float, name: str | None = None) -> float:
    """`value` if it is within LIMITS[key]; otherwise one MvditError naming `name` (a flag or a
    config key) and the bound."""
    if (problem := LIMITS[key].problem(name or key, value)) is not None:
        raise MvditError(problem)
    return value


def prompt_problem(prompt: str) -> str | None:
    """Why a prompt cannot be sampled (empty, too long), or None."""
    if not prompt.strip():
        return "the prompt is empty: give a text description of the video"
    high = int(LIMITS["prompt_chars"].high)
    if len(prompt) > high:
        return f"the prompt is {len(prompt):,} characters; at most {high:,} are read (shorten it)"
    return None


def limits_markdown() -> str:
    """The table docs/reliability.md shows."""
    rows = ["| bound | low | high | why |", "|---|---:|---:|---|"]
    for key, b in LIMITS.items():
        rows.append(f"| `{key}` | {_fmt(b.low)} | {_fmt(b.high)} | {b.why} |")
    return "\n".join(rows) + "\n"

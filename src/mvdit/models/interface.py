"""The video DiT the recipe works on: one interface for mvdit's DiT and adapted third-party DiTs.

Importance scoring, the pruning search, slicing and feature KD are written once against this
protocol: `VideoDiT` implements it itself, a diffusers Wan 2.1 or LTX-Video transformer through
`mvdit.compress.diffusers_dit.DiffusersDiT`. docs/interface.md describes each member and what a new
adapter must satisfy; tests/test_dit_contract.py checks every implementation against it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from mvdit.models.dit import DiTFeatures, UnitMask


@runtime_checkable
class PrunableDiT(Protocol):
    """A velocity-predicting video DiT whose units (blocks, self- and cross-attention heads, FFN
    channels) can be masked, scored, costed and cut.

    `config.blocks` lists each block's widths (`BlockSpec`: heads, cross_heads, ffn_dim, source);
    `config.head_dim` is the width of one head. Inputs are latents x (B, C, T, H, W), flow time
    t in [0, 1] (B,), text states (B, L, D) and a text mask (B, L) or None; the output is the
    flow velocity (noise - x0) of x's shape. How the model itself wants text and time (diffusers'
    timestep = 1000 t, packed tokens, a mask or none) is the implementation's business.
    """

    config: Any
    criteria: tuple[str, ...]  # the unit scores it supports (compress.importance.CRITERIA)
    blocks: torch.nn.ModuleList  # the transformer blocks, in order

    def __call__(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        unit_mask: UnitMask | None = None,
    ) -> torch.Tensor:
        """The velocity of the model without the units `unit_mask` zeroes (None: all kept)."""
        ...

    def features(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        blocks: Sequence[int] = (),
        stop_after: int | None = None,
        unit_mask: UnitMask | None = None,
    ) -> DiTFeatures:
        """The forward, handing out the output tokens of `blocks`; with `stop_after` = N only the
        first N blocks run and the velocity is None (a discriminator's backbone)."""
        ...

    def prepare_conditioning(
        self, text: torch.Tensor, text_mask: torch.Tensor | None = None
    ) -> dict[str, Any]:
        """The forward's text keyword arguments, computed once per clip for a sampler's steps
        (flow.euler_sample's `prepare`): the text as the model's own pipeline conditions it."""
        ...

    def save_pretrained(self, path: Any, state: dict[str, torch.Tensor] | None = None) -> None:
        """The model's directory (its config and weights; `state`: weights to write instead of
        its own, e.g. an EMA). The class's `from_pretrained(path, device)` reads it back."""
        ...

    def slice(self, mask: UnitMask) -> PrunableDiT:
        """The physically smaller model that computes what this one computes under `mask`, with
        its own copy of the kept weights."""
        ...

    def cost(self, mask: UnitMask | None, tokens: int, text_len: int) -> dict[str, int]:
        """{"params", "flops"} of one forward at `tokens` latent tokens and `text_len` text
        tokens, of the model `mask` slices this one to (None: this model)."""
        ...

    def magnitude_scores(self, units: Sequence[Any], group: int) -> dict[str, float]:
        """The L2 norm of each unit's weights, keyed by `unit.key` (FFN units are `group`
        channels)."""
        ...

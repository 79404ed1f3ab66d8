"""Cut a DiT exactly: remove the units a UnitMask zeroes, and get the model the mask computed.

Pruning scores a unit by masking it (mvdit.models.dit.UnitMask, applied in the forward) and then
removes it physically; the two agree to float rounding at every level: single heads, all heads of
a sub-layer (the sub-layer goes, output bias included), FFN channels, whole blocks. The sliced
model is an ordinary VideoDiT whose config records each block's widths and `source` (its index
in the model it was cut from), so save_pretrained / from_pretrained rebuild it with no extra code.
"""

from __future__ import annotations

import torch
from torch import nn

from mvdit import MvditError
from mvdit.models.dit import LEVELS, Attention, BlockSpec, FeedForward, UnitMask, VideoDiT


def keep_sets(mask: UnitMask) -> dict:
    """The kept indices at every level of a binary mask (JSON-ready): blocks, and per kept block
    its self-attention heads, cross-attention heads and FFN channels."""
    for level in LEVELS:
        vals = [mask.blocks] if level == "block" else mask.level(level)
        if any(bool(((v != 0) & (v != 1)).any()) for v in vals):
            raise MvditError(
                f"slicing needs a binary mask; '{level}' has values other than 0 and 1"
            )
    idx = lambda m: [int(i) for i in torch.nonzero(m).flatten()]  # noqa: E731
    blocks = []
    for b in idx(mask.blocks):
        heads, cross, ffn = (idx(m) for m in mask.block(b))
        if heads or cross or ffn:  # a block with nothing left is a removed block
            blocks.append({"block": b, "heads": heads, "cross_heads": cross, "ffn": ffn})
    return {"blocks": blocks}


def _rows(linear: nn.Linear, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return linear.weight[rows], linear.bias[rows]


def _slice_attention(src: Attention, dst: Attention, heads: list[int]) -> None:
    hd = src.head_dim
    rows = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in heads])
    for name in ("q", "k", "v"):
        w, b = _rows(getattr(src, name), rows)
        getattr(dst, name).weight.copy_(w)
        getattr(dst, name).bias.copy_(b)
    dst.out.weight.copy_(src.out.weight[:, rows])
    dst.out.bias.copy_(src.out.bias)
    dst.q_norm.load_state_dict(src.q_norm.state_dict())
    dst.k_norm.load_state_dict(src.k_norm.state_dict())


def _slice_ffn(src: FeedForward, dst: FeedForward, channels: list[int]) -> None:
    rows = torch.tensor(channels, dtype=torch.long)
    dst.fc1.weight.copy_(src.fc1.weight[rows])
    dst.fc1.bias.copy_(src.fc1.bias[rows])
    dst.fc2.weight.copy_(src.fc2.weight[:, rows])
    dst.fc2.bias.copy_(src.fc2.bias)


@torch.no_grad()
def slice_dit(model: VideoDiT, mask: UnitMask) -> VideoDiT:
    """A new, smaller VideoDiT holding only the units `mask` keeps (1) and none it removes (0).

    Its forward equals `model(..., unit_mask=mask)` to float rounding (tests: ≤ 1e-5 in fp32).
    Blocks left with no sub-layer are dropped; each kept block's `source` names where it came from.
    """
    mask.check(model.config)
    keep = keep_sets(mask)["blocks"]
    if not keep:
        raise MvditError("the mask removes every block; keep at least one")
    old = model.config.blocks
    specs = [
        BlockSpec(
            heads=len(k["heads"]),
            cross_heads=len(k["cross_heads"]),
            ffn_dim=len(k["ffn"]),
            source=old[k["block"]].source if old[k["block"]].source is not None else k["block"],
        )
        for k in keep
    ]
    config = model.config.model_copy(update={"blocks": specs})
    with torch.device("meta"):
        new = VideoDiT(config)
    device = next(model.parameters()).device
    new = new.to_empty(device=device).to(next(model.parameters()).dtype)
    # everything outside the blocks is shared unchanged
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("blocks.")}
    new.load_state_dict(own, strict=False)
    for dst, k in zip(new.blocks, keep, strict=True):
        src = model.blocks[k["block"]]
        dst.scale_shift_table.copy_(src.scale_shift_table)
        if dst.attn is not None:
            _slice_attention(src.attn, dst.attn, k["heads"])
        if dst.cross_attn is not None:
            dst.norm2.load_state_dict(src.norm2.state_dict())
            _slice_attention(src.cross_attn, dst.cross_attn, k["cross_heads"])
        if dst.ffn is not None:
            _slice_ffn(src.ffn, dst.ffn, k["ffn"])
    return new.train(model.training)


def slice_model(model, mask: UnitMask):
    """slice_dit for mvdit's DiT; an adapted third-party DiT (mvdit.compress.diffusers_dit)
    slices itself."""
    return slice_dit(model, mask) if isinstance(model, VideoDiT) else model.slice(mask)

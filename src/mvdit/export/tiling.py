"""Tiled GEMM for the FFN (the paper's fourth step): Y = sum_i X_i W_i + b.

The input features are cut into k partitions, X = [X_1 ... X_k] and W = [W_1; ...; W_k], and each
partial product X_i W_i is one GEMM whose weight tile is 1/k of the layer's, so on a phone it stays
within on-chip memory. The weights stay one tensor: `TiledLinear` holds the original `weight` and
`bias` (same names, same state dict as `nn.Linear`) and slices them in its forward, so tiling is a
view applied at load or export time, never a different checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from mvdit import MvditError
from mvdit.models.dit import FeedForward


def tile_bounds(features: int, k: int) -> list[tuple[int, int]]:
    """k contiguous, near-equal [start, end) ranges covering `features`."""
    if not 1 <= k <= features:
        raise MvditError(
            f"a layer with {features} input features takes 1..{features} tiles, not {k}"
        )
    edges = [round(i * features / k) for i in range(k + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


class TiledLinear(nn.Module):
    """`nn.Linear` computed as a sum of k partial GEMMs over slices of the input features (bias
    added once). Equal to the linear it wraps up to fp32 summation order."""

    def __init__(self, linear: nn.Linear, k: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight  # shared, not copied: (out, in), sliced along `in`
        self.bias = linear.bias
        self.k = k
        self.bounds = tile_bounds(self.in_features, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # narrow, not x[..., a:b]: a full slice of the other dims exports as an alias op, which
        # coremltools cannot convert
        (a, b), *rest = self.bounds
        y = F.linear(x.narrow(-1, a, b - a), self.weight.narrow(1, a, b - a), self.bias)
        for a, b in rest:
            y = y + F.linear(x.narrow(-1, a, b - a), self.weight.narrow(1, a, b - a))
        return y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, k={self.k}"


def tiles_for_bytes(linear: nn.Linear, tile_bytes: int, dtype_bytes: int = 2) -> int:
    """The fewest tiles whose weight slice (in/k x out elements of `dtype_bytes`; fp16 on the
    phone by default) fits in `tile_bytes`."""
    if tile_bytes < 1:
        raise MvditError(f"the tile size must be a positive number of bytes, got {tile_bytes}")
    whole = linear.in_features * linear.out_features * dtype_bytes
    return min(linear.in_features, max(1, math.ceil(whole / tile_bytes)))


def tile_ffn(
    model: nn.Module,
    k: int | dict[str, int] | None = None,
    tile_bytes: int | None = None,
    dtype_bytes: int = 2,
) -> dict[str, int]:
    """Replace the two linears of every FFN in `model` by TiledLinear, in place.

    k: one tile count for every layer, or {layer name: k} (names as in named_modules, e.g.
    "blocks.0.ffn.fc1"); or tile_bytes: each layer's k from the size of its weight tile.
    Layers a dict does not name stay as they are. Returns {layer name: k} of the tiled layers."""
    if (k is None) == (tile_bytes is None):
        raise MvditError("tile the FFN with either a tile count k or a tile size in bytes")
    chosen: dict[str, int] = {}
    ffns = [(name, m) for name, m in model.named_modules() if isinstance(m, FeedForward)]
    if not ffns:
        raise MvditError("the model has no FFN layers to tile")
    for name, ffn in ffns:
        for attr in ("fc1", "fc2"):
            layer = getattr(ffn, attr)
            full = f"{name}.{attr}"
            base = layer if isinstance(layer, nn.Linear) else _untiled(layer)
            if isinstance(k, dict):
                if full not in k:
                    continue
                n = k[full]
            else:
                n = k if k is not None else tiles_for_bytes(base, tile_bytes, dtype_bytes)
            setattr(ffn, attr, TiledLinear(base, n))
            chosen[full] = n
    if isinstance(k, dict) and (unknown := sorted(set(k) - set(chosen))):
        raise MvditError(
            f"no FFN layer is called {unknown[0]!r} (names look like blocks.0.ffn.fc1)"
        )
    return chosen


def untile_ffn(model: nn.Module) -> None:
    """Undo tile_ffn in place: every TiledLinear back to the nn.Linear it shares weights with."""
    for m in model.modules():
        if isinstance(m, FeedForward):
            for attr in ("fc1", "fc2"):
                layer = getattr(m, attr)
                if isinstance(layer, TiledLinear):
                    setattr(m, attr, _untiled(layer))


def _untiled(layer: TiledLinear) -> nn.Linear:
    out = nn.Linear(
        layer.in_features, layer.out_features, bias=layer.bias is not None, device="meta"
    )
    out.weight, out.bias = layer.weight, layer.bias
    return out

"""The video diffusion transformer (PixArt-α style), in one file.

A linear in-projection turns each `patch_size` x `patch_size` square of latent voxels into a token
(1: one voxel, the VAE already did the patchify; 2: PixArt-α's and SD's patchify over a VAE that
compresses space less), a 3D rotary embedding tells tokens where they are in (t, h, w),
and every block runs self-attention over all spatio-temporal tokens, cross-attention to the text
tokens and a GELU FFN. Time enters through adaLN-single: one shared MLP maps t to six modulation
vectors and each block adds its own learned table (PixArt-α; saves ~27% of a DiT's parameters
against per-block adaLN).

Every block carries its own number of self- and cross-attention heads and its own FFN width,
and either may be 0 (the sub-layer is gone): tri-level pruning makes the model non-uniform and
the JSON config records the exact shape so `from_pretrained` rebuilds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from mvdit import MvditError
from mvdit.io import load_state_strict, load_tensors, read_json, save_tensors, validate, write_json


class BlockSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    heads: int  # self-attention heads (0: self-attention removed)
    cross_heads: int  # cross-attention heads (0: cross-attention removed)
    ffn_dim: int  # FFN hidden width (0: FFN removed)
    source: int | None = None  # index of this block in the model it was pruned from


class DiTConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    in_channels: int
    out_channels: int | None = None
    hidden_size: int
    head_dim: int
    text_dim: int  # width of the text encoder's hidden states
    caption_dim: int | None = None  # width text tokens are projected to (default: hidden_size)
    patch_size: int = 1  # latent voxels per token along height and width (time: always 1)
    blocks: list[BlockSpec]
    qk_norm: bool = True
    rope_theta: float = 10000.0
    freq_dim: int = 256
    # what the output layer predicts. "velocity": v = noise - x0 directly. "sample": the clean
    # latent x0, turned into v = (x_t - x0) / max(t, SAMPLE_T_FLOOR) inside forward, so the loss,
    # the samplers, KD, distillation and export all still see a velocity. Li & He 2025 ("Back to
    # Basics: Let Denoising Generative Models Denoise") find it is what lets a network whose
    # tokens carry about as many numbers as its width work at all; on the tiny preset at patch 2
    # over the 32-channel CPU latent it did not repair generation (docs/vae.md)
    prediction: Literal["velocity", "sample"] = "velocity"
    # also condition every block's adaLN modulation on the caption: the mean of the text states,
    # through an MLP, added to the time embedding (the pooled-text vector of SD3 and Flux). PixArt-α
    # modulates by time alone and reaches the caption only through cross-attention; in the DiT
    # paper's ablation, conditioning through adaLN beat cross-attention. The MLP's last layer
    # starts at zero, so an untrained pooled path leaves the model as it was. On the tiny preset
    # over the 8-channel CPU latent it did not change which shapes it draws (docs/vae.md)
    pooled_text: bool = False

    @model_validator(mode="after")
    def _check(self) -> DiTConfig:
        if self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {self.patch_size}")
        if self.prediction == "sample" and self.out_ch != self.in_channels:
            raise ValueError("prediction 'sample' needs out_channels equal to in_channels")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for the rotary embedding, got {self.head_dim}")
        for i, b in enumerate(self.blocks):
            if min(b.heads, b.cross_heads, b.ffn_dim) < 0:
                raise ValueError(f"block {i}: heads, cross_heads and ffn_dim must be >= 0")
            if max(b.heads, b.cross_heads, b.ffn_dim) == 0:
                raise ValueError(
                    f"block {i} has no self-attention, cross-attention or FFN left: remove the block instead"
                )
        return self

    @classmethod
    def uniform(cls, depth: int, heads: int, ffn_dim: int, **kw) -> DiTConfig:
        blocks = [
            BlockSpec(heads=heads, cross_heads=heads, ffn_dim=ffn_dim, source=i)
            for i in range(depth)
        ]
        return cls(blocks=blocks, **kw)

    @property
    def out_ch(self) -> int:
        return self.out_channels or self.in_channels

    @property
    def cap_dim(self) -> int:
        return self.caption_dim or self.hidden_size

    def token_grid(self, latent: Sequence[int]) -> tuple[int, int, int]:
        """(T, H, W) of the tokens of a latent grid (T, H, W): the patchify folds space only."""
        t, h, w = latent[-3:]
        p = self.patch_size
        if h % p or w % p:
            raise MvditError(
                f"a {h}x{w} latent does not split into {p}x{p} patches: the DiT's patch_size "
                f"{p} needs latent height and width divisible by {p}"
            )
        return t, h // p, w // p

    def tokens(self, latent: Sequence[int]) -> int:
        """Sequence length of a latent grid (T, H, W)."""
        return math.prod(self.token_grid(latent))

    def linear_shapes(self, tokens: int, text_len: int) -> list[tuple[int, int, int]]:
        """The distinct (rows, in, out) of the linear layers at a token count: the GEMMs one
        network evaluation is made of (time-embedding MLPs, one row each, left out)."""
        hd, d = self.head_dim, self.hidden_size
        shapes = {(text_len, self.text_dim, self.cap_dim), (text_len, self.cap_dim, self.cap_dim)}
        shapes |= {(tokens, self.in_channels, d), (tokens, d, self.out_ch)}
        for b in self.blocks:
            if b.heads:
                shapes |= {(tokens, d, b.heads * hd), (tokens, b.heads * hd, d)}
            if b.cross_heads:
                shapes |= {(tokens, d, b.cross_heads * hd), (tokens, b.cross_heads * hd, d)}
                shapes.add((text_len, self.cap_dim, b.cross_heads * hd))
            if b.ffn_dim:
                shapes |= {(tokens, d, b.ffn_dim), (tokens, b.ffn_dim, d)}
        return sorted(shapes)


# the smallest t a "sample" prediction divides by: below it the velocity (x_t - x0) / t would
# amplify the network's error without bound (the last Euler step from t to 0 still lands on x0)
SAMPLE_T_FLOOR = 0.05


# ---------------------------------------------------------------------------------------------
# positions and time


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Split a head's channels over (t, h, w); each part even. Space gets the larger share."""
    hw = (head_dim // 6) * 2
    return head_dim - 2 * hw, hw, hw


def rope_3d(
    grid: tuple[int, int, int], head_dim: int, theta: float, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (T*H*W, head_dim/2) for tokens laid out t-major, then h, then w.

    The angles are computed in float64 with numpy and handed to torch as fp32 constants: a traced
    or exported forward then holds two fp32 tables and no float64 op (which Core ML and XNNPACK
    cannot take), and the values are those of a float64 torch computation to the last bit."""
    t, h, w = grid
    parts = []
    for n, dim in zip((t, h, w), rope_axes(head_dim), strict=True):
        freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
        parts.append(np.outer(np.arange(n, dtype=np.float64), freqs))
    ft, fh, fw = parts
    angles = np.concatenate(
        [
            np.broadcast_to(ft[:, None, None, :], (t, h, w, ft.shape[1])),
            np.broadcast_to(fh[None, :, None, :], (t, h, w, fh.shape[1])),
            np.broadcast_to(fw[None, None, :, :], (t, h, w, fw.shape[1])),
        ],
        axis=-1,
    ).reshape(t * h * w, -1)
    cos, sin = (torch.from_numpy(f(angles).astype(np.float32)) for f in (np.cos, np.sin))
    return cos.to(device), sin.to(device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (2i, 2i+1) of x (B, heads, N, D) by the per-token angles."""
    x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)
    return out.type_as(x)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of flow time t in [0, 1] (scaled to [0, 1000] like DiT's integer steps)."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# ---------------------------------------------------------------------------------------------
# masks: which units take part in the forward


# The pruning levels, one vocabulary everywhere (search, scores, masks, tables): each level, the
# UnitMask field that holds its units, and the name a table or a plot shows.
LEVELS = ("block", "head", "cross_head", "ffn")
MASK_FIELD = {"block": "blocks", "head": "heads", "cross_head": "cross_heads", "ffn": "ffn"}
LEVEL_NAMES = {
    "block": "blocks",
    "head": "self-attention heads",
    "cross_head": "cross-attention heads",
    "ffn": "FFN groups",
}
PER_BLOCK_LEVELS = LEVELS[1:]  # the levels whose units live inside a block


@dataclass
class UnitMask:
    """A mask over the DiT's prunable units at every level, applied in the forward (no weights are
    copied). 1 keeps a unit, 0 removes it; values in between scale it (for gradient-based scores).

    - `heads[b]` (heads,): a self-attention head's output, before the output projection;
    - `cross_heads[b]` (cross_heads,): the same for cross-attention;
    - `ffn[b]` (ffn_dim,): an FFN channel's activation, after the GELU;
    - `blocks` (depth,): a block's whole residual update (0: the block passes its input through).

    A sub-layer whose units are all 0 is absent, output bias included (for self-attention and the
    FFN that bias is gated by time): that is what removing it leaves, so masking a unit and
    slicing it away (`VideoDiT.slice`) give the same model, at every level.
    """

    blocks: torch.Tensor
    heads: list[torch.Tensor]
    cross_heads: list[torch.Tensor]
    ffn: list[torch.Tensor]

    @classmethod
    def full(cls, config: DiTConfig, device: torch.device | str | None = None) -> UnitMask:
        ones = lambda n: torch.ones(n, device=device)  # noqa: E731
        b = config.blocks
        return cls(
            ones(len(b)),
            [ones(s.heads) for s in b],
            [ones(s.cross_heads) for s in b],
            [ones(s.ffn_dim) for s in b],
        )

    def clone(self) -> UnitMask:
        return UnitMask(
            self.blocks.clone(),
            [m.clone() for m in self.heads],
            [m.clone() for m in self.cross_heads],
            [m.clone() for m in self.ffn],
        )

    def without(self, level: str, block: int, units: Sequence[int] | None = None) -> UnitMask:
        """A copy with some units of one block removed (all of that level's units when None);
        `level` is one of LEVELS."""
        if level not in LEVELS:
            raise MvditError(f"unknown pruning level '{level}'; choose one of {', '.join(LEVELS)}")
        out = self.clone()
        if level == "block":
            out.blocks[block] = 0
        else:
            m = self.level(level, out)[block]
            m[list(units) if units is not None else slice(None)] = 0
        return out

    def level(self, level: str, mask: UnitMask | None = None) -> list[torch.Tensor]:
        """The per-block masks of one of PER_BLOCK_LEVELS (of `mask`, default this one)."""
        return getattr(mask or self, MASK_FIELD[level])

    def sizes(self) -> dict[str, list[int]]:
        return {
            "block": [self.blocks.numel()],
            **{lv: [m.numel() for m in self.level(lv)] for lv in PER_BLOCK_LEVELS},
        }

    def check(self, config: DiTConfig) -> None:
        """Raise MvditError naming the level whose sizes do not fit the model's blocks."""
        want, got = UnitMask.full(config, "meta").sizes(), self.sizes()
        for level in LEVELS:
            if want[level] != got[level]:
                raise MvditError(
                    f"unit mask '{level}' has sizes {got[level]} but the model has {want[level]}"
                )

    def block(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.heads[i], self.cross_heads[i], self.ffn[i]


def _present(mask: torch.Tensor | None, module: nn.Module | None) -> bool:
    """Whether a sub-layer takes part: it exists and, under a mask, keeps at least one unit."""
    return module is not None and (mask is None or bool((mask != 0).any()))


# ---------------------------------------------------------------------------------------------
# layers


def explicit_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v as two matmuls and a softmax: the form for backends that do not
    take a fused SDPA op. `mask` (bool, True = attend) broadcasts over the score matrix."""
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    return scores.softmax(-1) @ v


class Attention(nn.Module):
    """Multi-head attention whose head count is a free per-layer choice (pruning removes heads).

    `fused = False` computes it as explicit_attention (an export form, numerically the same)."""

    fused = True

    def __init__(self, dim: int, kv_dim: int, heads: int, head_dim: int, qk_norm: bool):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        inner = heads * head_dim
        self.q = nn.Linear(dim, inner)
        self.k = nn.Linear(kv_dim, inner)
        self.v = nn.Linear(kv_dim, inner)
        self.out = nn.Linear(inner, dim)
        self.q_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(head_dim, eps=1e-6) if qk_norm else nn.Identity()

    def keys_values(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values (B, heads, L, head_dim) of a context, before any rotary embedding."""
        b, n, _ = context.shape
        k = self.k_norm(self.k(context).view(b, n, self.heads, self.head_dim)).transpose(1, 2)
        v = self.v(context).view(b, n, self.heads, self.head_dim).transpose(1, 2)
        return k, v

    def forward(self, x, context=None, rope=None, mask=None, kv=None, head_mask=None):
        """x (B, N, dim). `kv`: precomputed keys_values(context). `head_mask` (heads,) scales
        each head's output before the output projection."""
        b, n, _ = x.shape
        q = self.q_norm(self.q(x).view(b, n, self.heads, self.head_dim)).transpose(1, 2)
        k, v = kv if kv is not None else self.keys_values(x if context is None else context)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if mask is not None:
            mask = mask[:, None, None, :]
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = explicit_attention(q, k, v, mask)
        if head_mask is not None:
            y = y * head_mask.to(y.dtype)[None, :, None, None]
        return self.out(y.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x, channel_mask=None):
        h = F.gelu(self.fc1(x), approximate="tanh")
        if channel_mask is not None:  # gelu(0) = 0: a masked channel is a removed channel
            h = h * channel_mask.to(h.dtype)
        return self.fc2(h)


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig, spec: BlockSpec, init: bool = True):
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, d, spec.heads, cfg.head_dim, cfg.qk_norm) if spec.heads else None
        self.norm2 = nn.LayerNorm(d, eps=1e-6) if spec.cross_heads else None
        self.cross_attn = (
            Attention(d, cfg.cap_dim, spec.cross_heads, cfg.head_dim, cfg.qk_norm)
            if spec.cross_heads
            else None
        )
        self.norm3 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ffn = FeedForward(d, spec.ffn_dim) if spec.ffn_dim else None
        # adaLN-single: this block's learned offset to the shared time modulation
        table = torch.randn(6, d) / d**0.5 if init else torch.empty(6, d)
        self.scale_shift_table = nn.Parameter(table)

    def forward(self, x, text, text_mask, t_mod, rope, kv=None, mask=None):
        """`kv`: this block's cross-attention keys/values (TextContext); `mask`: (heads,
        cross_heads, ffn) masks of UnitMask.block."""
        heads_m, cross_m, ffn_m = mask if mask is not None else (None, None, None)
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (
            self.scale_shift_table[None] + t_mod
        ).unbind(1)
        if _present(heads_m, self.attn):
            h = self.norm1(x) * (1 + scale_a[:, None]) + shift_a[:, None]
            x = x + gate_a[:, None] * self.attn(h, rope=rope, head_mask=heads_m)
        if _present(cross_m, self.cross_attn):
            x = x + self.cross_attn(
                self.norm2(x), context=text, mask=text_mask, kv=kv, head_mask=cross_m
            )
        if _present(ffn_m, self.ffn):
            h = self.norm3(x) * (1 + scale_f[:, None]) + shift_f[:, None]
            x = x + gate_f[:, None] * self.ffn(h, channel_mask=ffn_m)
        return x


# ---------------------------------------------------------------------------------------------
# what the forward can hand out


def masked_mean(states: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean over a caption's tokens (B, L, D) -> (B, D), padding (mask False) left out."""
    if mask is None:
        return states.mean(1)
    m = mask.to(states.dtype)[..., None]
    return (states * m).sum(1) / m.sum(1).clamp_min(1.0)


@dataclass
class TextContext:
    """The text side of a forward, computed once per clip (`VideoDiT.text_context`) instead of
    once per sampling step: the projected text tokens and every block's cross-attention keys and
    values. Pass it as `text` to the forward."""

    text: torch.Tensor  # (B, L, caption width)
    mask: torch.Tensor | None  # (B, L) bool
    kv: list[tuple[torch.Tensor, torch.Tensor] | None]  # per block; None without cross-attention
    pooled: torch.Tensor | None = None  # (B, hidden): added to the time embedding (pooled_text)


@dataclass
class DiTFeatures:
    """What `VideoDiT.features` returns: token features of chosen blocks and what conditions them."""

    tokens: dict[int, torch.Tensor]  # block index -> that block's output tokens (B, N, hidden)
    t_emb: torch.Tensor  # (B, hidden): the time embedding (adaLN-single's input)
    text: torch.Tensor  # (B, L, caption width): the projected text tokens
    text_mask: torch.Tensor | None
    grid: tuple[int, int, int]  # (T, H, W) of the tokens; laid out t, then h, then w
    velocity: torch.Tensor | None  # the prediction, or None when the forward stopped early


# ---------------------------------------------------------------------------------------------
# the model


class VideoDiT(nn.Module):
    """mvdit's video DiT; it implements the recipe's interface itself (models.interface)."""

    criteria = ("kd", "magnitude", "taylor", "activation")  # the unit scores it can be pruned by
    # methods besides forward that run the network (FSDP gathers the weights for them)
    entry_points = ("features",)

    def __init__(self, config: DiTConfig, init: bool = True):
        """`init=False` leaves the weights uninitialised, for loading a checkpoint into: on the
        meta device random init would go through torch's Python reference ops, whose first use
        imports torch._dynamo (seconds at every `mvdit generate`)."""
        super().__init__()
        self.config = config
        d = config.hidden_size
        p2 = config.patch_size**2
        self.x_embed = nn.Linear(config.in_channels * p2, d)
        self.t_embed = nn.Sequential(nn.Linear(config.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.caption_proj = nn.Sequential(
            nn.Linear(config.text_dim, config.cap_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.cap_dim, config.cap_dim),
        )
        self.pooled_embed = (
            nn.Sequential(nn.Linear(config.text_dim, d), nn.SiLU(), nn.Linear(d, d))
            if config.pooled_text
            else None
        )
        self.blocks = nn.ModuleList([DiTBlock(config, s, init) for s in config.blocks])
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_table = nn.Parameter(torch.randn(2, d) / d**0.5 if init else torch.empty(2, d))
        self.out = nn.Linear(d, config.out_ch * p2)
        # recompute each block in the backward (run.activation_checkpointing) instead of storing
        # its activations
        self.checkpoint_blocks = False
        # rotary tables per (grid, device), built once (rope_3d), not at every forward
        self._rope: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        if init:
            self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.t_embed[0].weight, std=0.02)
        nn.init.normal_(self.t_embed[2].weight, std=0.02)
        # zero output: the untrained model predicts v = 0, a stable start (DiT, PixArt)
        nn.init.zeros_(self.out.weight)
        if self.pooled_embed is not None:  # starts as the model without it
            nn.init.zeros_(self.pooled_embed[2].weight)

    def rope(
        self, grid: tuple[int, int, int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin tables of a latent grid (rope_3d), cached per grid and device."""
        key = (tuple(grid), str(device))
        if key not in self._rope:
            self._rope[key] = rope_3d(grid, self.config.head_dim, self.config.rope_theta, device)
        return self._rope[key]

    def text_context(
        self, text: torch.Tensor, text_mask: torch.Tensor | None = None
    ) -> TextContext:
        """Project the text encoder's states and compute every block's cross-attention keys and
        values: the part of a forward that does not change between sampling steps."""
        ctx = self.caption_proj(text)
        kv = [
            b.cross_attn.keys_values(ctx) if b.cross_attn is not None else None for b in self.blocks
        ]
        pooled = None
        if self.pooled_embed is not None:
            pooled = self.pooled_embed(masked_mean(text, text_mask))
        return TextContext(ctx, text_mask, kv, pooled)

    def prepare_conditioning(
        self, text: torch.Tensor, text_mask: torch.Tensor | None = None
    ) -> dict[str, TextContext]:
        """The forward's keyword arguments with the text side precomputed (flow.euler_sample's
        `prepare`): the sampler then projects the text once per clip, not once per step."""
        return {"text": self.text_context(text, text_mask)}

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor | TextContext,
        text_mask: torch.Tensor | None = None,
        unit_mask: UnitMask | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity. x: (B, C, T, H, W); t: (B,) in [0, 1]; text: the text
        encoder's states (B, L, text_dim) with their mask, or a TextContext of them.
        `unit_mask` removes units (heads, FFN channels, sub-layers, blocks) without copying weights."""
        return self._run(x, t, text, text_mask, unit_mask, keep=(), stop_after=None).velocity

    def features(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor | TextContext,
        text_mask: torch.Tensor | None = None,
        blocks: Sequence[int] = (),
        stop_after: int | None = None,
        unit_mask: UnitMask | None = None,
    ) -> DiTFeatures:
        """The forward, handing out the output tokens of `blocks` (indices; negative count from the
        end) with the time embedding and the projected text. With `stop_after` = N only the first
        N blocks run and no velocity is computed (a discriminator built on the first N blocks)."""
        n = len(self.blocks)
        if stop_after is not None and not 1 <= stop_after <= n:
            raise MvditError(f"stop_after must be in 1..{n}, got {stop_after}")
        keep = sorted({i % n for i in blocks}) if n else []
        if any(not -n <= i < n for i in blocks):
            raise MvditError(f"block indices must be in -{n}..{n - 1}, got {list(blocks)}")
        if stop_after is not None and keep and keep[-1] >= stop_after:
            raise MvditError(f"block {keep[-1]} is not run when stopping after {stop_after} blocks")
        return self._run(x, t, text, text_mask, unit_mask, keep=tuple(keep), stop_after=stop_after)

    def _run(self, x, t, text, text_mask, unit_mask, keep, stop_after) -> DiTFeatures:
        x_in = x
        b, c, T, H, W = x.shape
        if c != self.config.in_channels:
            raise MvditError(f"DiT expects {self.config.in_channels} latent channels, got {c}")
        if unit_mask is not None:
            unit_mask.check(self.config)
        ctx = text if isinstance(text, TextContext) else self.text_context(text, text_mask)
        p = self.config.patch_size
        _, h, w = self.config.token_grid((T, H, W))
        if p > 1:  # (B, C, T, H, W) -> (B, C*p*p, T, H/p, W/p), channels fastest within a patch;
            # time and rows folded into one axis: 6-D at most, as XNNPACK's tensors are
            x = x.reshape(b, c, T * h, p, w, p).permute(0, 3, 5, 1, 2, 4).reshape(b, -1, T, h, w)
        tokens = self.x_embed(x.flatten(2).transpose(1, 2))
        t_emb = self.t_embed(
            timestep_embedding(t.expand(b) if t.dim() == 0 else t, self.config.freq_dim)
        )
        if ctx.pooled is not None:
            t_emb = t_emb + ctx.pooled
        t_mod = self.t_block(t_emb).view(b, 6, -1)
        rope = self.rope((T, h, w), x.device)
        out: dict[int, torch.Tensor] = {}
        last = len(self.blocks) if stop_after is None else stop_after
        recompute = self.checkpoint_blocks and torch.is_grad_enabled()
        if recompute:
            from torch.utils.checkpoint import checkpoint  # not at import: start-up time
        for i, block in enumerate(self.blocks[:last]):
            if unit_mask is None and recompute:
                tokens = checkpoint(
                    block, tokens, ctx.text, ctx.mask, t_mod, rope, ctx.kv[i], use_reentrant=False
                )
            elif unit_mask is None:
                tokens = block(tokens, ctx.text, ctx.mask, t_mod, rope, kv=ctx.kv[i])
            elif (m := unit_mask.blocks[i]) != 0:
                y = block(tokens, ctx.text, ctx.mask, t_mod, rope, ctx.kv[i], unit_mask.block(i))
                # (a mask that needs a gradient always takes the scaled path: Taylor scores)
                keep_path = m != 1 or m.requires_grad
                tokens = tokens + m.to(tokens.dtype) * (y - tokens) if keep_path else y
            if i in keep:
                out[i] = tokens
        velocity = None
        if stop_after is None:
            shift, scale = (self.final_table[None] + t_emb[:, None]).unbind(1)
            tokens = self.final_norm(tokens) * (1 + scale[:, None]) + shift[:, None]
            v = self.out(tokens).transpose(1, 2)  # (B, out*p*p, T*h*w)
            if p > 1:  # the inverse of the patchify above, 6-D at most too
                v = v.reshape(b, p, p, self.config.out_ch, T * h, w).permute(0, 3, 4, 1, 5, 2)
            velocity = v.reshape(b, self.config.out_ch, T, H, W)
            if self.config.prediction == "sample":
                tt = (t.expand(b) if t.dim() == 0 else t).view(b, 1, 1, 1, 1)
                velocity = (x_in - velocity) / tt.clamp_min(SAMPLE_T_FLOOR).to(velocity.dtype)
        return DiTFeatures(out, t_emb, ctx.text, ctx.mask, (T, h, w), velocity)

    # -- accounting ----------------------------------------------------------------------------

    def magnitude_scores(self, units: Sequence, group: int) -> dict[str, float]:
        """L2 norm of each unit's weights (unit_weight_norms)."""
        return unit_weight_norms(self.blocks, units, group, self.config.head_dim, _unit_linears)

    def slice(self, mask: UnitMask) -> VideoDiT:
        """The physically smaller DiT that computes what this one computes under `mask`."""
        return slice_dit(self, mask)

    def cost(self, mask: UnitMask | None, tokens: int, text_len: int) -> dict[str, int]:
        """Parameters and FLOPs per step of this DiT under `mask` (None: the whole model)."""
        return mask_cost(self.config, mask if mask is not None else UnitMask.full(self.config),
                         tokens, text_len)  # fmt: skip

    def param_counts(self) -> dict[str, int]:
        """Parameters per part: embeddings (x, t, caption), blocks, final layer, total."""
        count = lambda mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
        embeds = [self.x_embed, self.t_embed, self.caption_proj, self.pooled_embed]
        parts = {
            "embed": count([m for m in embeds if m is not None]),
            "adaln_single": count([self.t_block]),
            "blocks": count(self.blocks),
            "final": count([self.out]) + self.final_table.numel(),
        }
        parts["total"] = sum(parts.values())
        return parts

    def flops_per_step(self, tokens: int, text_len: int, batch: int = 1) -> int:
        """Forward FLOPs of one network evaluation (2 per multiply-add; matmuls and attention)."""
        return dit_flops(self.config, tokens, text_len, batch)

    # -- save / load -----------------------------------------------------------------------------

    def save_pretrained(
        self, path: str | Path, state: dict[str, torch.Tensor] | None = None
    ) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / "config.json", {"kind": "video_dit", **self.config.model_dump()})
        save_tensors(path / "model.safetensors", state if state is not None else self.state_dict())

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> VideoDiT:
        path = Path(path)
        if not path.is_dir():
            raise MvditError(f"model directory {path} does not exist")
        cfg = read_json(path / "config.json")
        if cfg.pop("kind", "video_dit") != "video_dit":
            raise MvditError(f"{path} does not hold a video DiT")
        config = validate(DiTConfig, cfg, f"{path / 'config.json'}")
        with torch.device("meta"):
            model = cls(config, init=False)
        load_state_strict(model, load_tensors(path / "model.safetensors"), str(path), assign=True)
        return model.to(device)


def dit_flops(cfg: DiTConfig, tokens: int, text_len: int, batch: int = 1) -> int:
    """FLOPs of one forward: every matmul (2 per multiply-add), attention products included."""
    d, hd, n, L = cfg.hidden_size, cfg.head_dim, tokens, text_len
    p2 = cfg.patch_size**2
    f = 2 * n * cfg.in_channels * p2 * d + 2 * L * (cfg.text_dim * cfg.cap_dim + cfg.cap_dim**2)
    f += 2 * (cfg.freq_dim * d + d * d + d * 6 * d)  # t_embed and t_block, once per sample
    if cfg.pooled_text:
        f += 2 * (cfg.text_dim * d + d * d)  # pooled_embed
    for b in cfg.blocks:
        a, ca = b.heads * hd, b.cross_heads * hd
        f += 2 * n * d * a * 4 + 4 * n * n * a  # qkv+out projections; QK^T and AV
        f += 2 * n * d * ca * 2 + 2 * L * cfg.cap_dim * ca * 2 + 4 * n * L * ca
        f += 2 * n * d * b.ffn_dim * 2
    f += 2 * n * d * cfg.out_ch * p2
    return int(f * batch)


# ---------------------------------------------------------------------------------------------
# pruning units: FFN groups, what a mask leaves (config, parameters, FLOPs) and the exact cut
#
# Pruning scores a unit by masking it (UnitMask, applied in the forward) and then removes it
# physically; the two agree to float rounding at every level: single heads, all heads of a
# sub-layer (the sub-layer goes, output bias included), FFN channels, whole blocks. The sliced
# model is an ordinary VideoDiT whose config records each block's widths and `source` (its index
# in the model it was cut from), so save_pretrained / from_pretrained rebuild it with no extra code.


def _unit_linears(blk: DiTBlock, level: str) -> tuple[nn.Linear, ...]:
    if level == "ffn":
        return blk.ffn.fc1, blk.ffn.fc2
    a = blk.attn if level == "head" else blk.cross_attn
    return a.q, a.k, a.v, a.out


@torch.no_grad()
def unit_weight_norms(
    blocks: Sequence[nn.Module],
    units: Sequence,
    group: int,
    head_dim: int,
    linears: Callable[[nn.Module, str], tuple[nn.Linear, ...]],
) -> dict[str, float]:
    """The magnitude score of each unit (.level, .block, .index, .key): the L2 norm of the weights
    that make its output and read it. `linears(block, level)` names a block's (q, k, v, out)
    projections of the attention at a head level, or its FFN's (up, down) at "ffn"; a whole block
    is all its parameters. One implementation for mvdit's DiT and every adapter."""
    out = {}
    for u in units:
        blk = blocks[u.block]
        if u.level == "block":
            sq = sum(float(p.pow(2).sum()) for p in blk.parameters())
        elif u.level == "ffn":
            up, down = linears(blk, "ffn")
            ch = ffn_groups(down.in_features, group)[u.index]
            sq = float(up.weight[ch].pow(2).sum() + down.weight[:, ch].pow(2).sum())
        else:
            *qkv, o = linears(blk, u.level)
            r = slice(u.index * head_dim, (u.index + 1) * head_dim)
            sq = sum(float(lin.weight[r].pow(2).sum()) for lin in qkv)
            sq += float(o.weight[:, r].pow(2).sum())
        out[u.key] = math.sqrt(sq)
    return out


def ffn_groups(width: int, group: int) -> list[list[int]]:
    """Channel lists of a block's FFN groups (the last one takes the remainder)."""
    return [list(range(s, min(s + group, width))) for s in range(0, width, group)]


def masked_config(config: DiTConfig, mask: UnitMask) -> DiTConfig:
    """The config slice_dit would build from `mask` (without building it)."""
    blocks = []
    for b, spec in enumerate(config.blocks):
        if mask.blocks[b] == 0:
            continue
        h, c, f = (int((m != 0).sum()) for m in mask.block(b))
        if h or c or f:
            src = spec.source if spec.source is not None else b
            blocks.append(BlockSpec(heads=h, cross_heads=c, ffn_dim=f, source=src))
    return config.model_copy(update={"blocks": blocks})


def block_params(config: DiTConfig, spec: BlockSpec) -> int:
    """Parameters of one DiT block of this shape (tests check it against the module)."""
    d, hd, cap = config.hidden_size, config.head_dim, config.cap_dim
    norm = 2 * hd if config.qk_norm else 0  # q_norm and k_norm weights
    n = 6 * d  # scale_shift_table
    if spec.heads:
        a = spec.heads * hd
        n += 3 * (d * a + a) + a * d + d + norm
    if spec.cross_heads:
        a = spec.cross_heads * hd
        n += d * a + a + 2 * (cap * a + a) + a * d + d + norm + 2 * d  # norm2 has weight and bias
    if spec.ffn_dim:
        n += d * spec.ffn_dim + spec.ffn_dim + spec.ffn_dim * d + d
    return n


def dit_params(config: DiTConfig) -> int:
    """Parameters of a whole DiT of this config."""
    d, p2 = config.hidden_size, config.patch_size**2
    cap = config.cap_dim
    n = config.in_channels * p2 * d + d  # x_embed
    n += config.freq_dim * d + d + d * d + d  # t_embed
    n += d * 6 * d + 6 * d  # t_block
    n += config.text_dim * cap + cap + cap * cap + cap  # caption_proj
    if config.pooled_text:
        n += config.text_dim * d + d + d * d + d  # pooled_embed
    n += 2 * d + d * config.out_ch * p2 + config.out_ch * p2  # final table and out
    return n + sum(block_params(config, b) for b in config.blocks)


def mask_cost(config: DiTConfig, mask: UnitMask, tokens: int, text_len: int) -> dict[str, int]:
    """Parameters and FLOPs per step of the model `mask` slices `config` to."""
    cfg = masked_config(config, mask)
    return {"params": dit_params(cfg), "flops": dit_flops(cfg, tokens, text_len)}


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

"""The video diffusion transformer (PixArt-α style), in one file.

Latents arrive at patch size 1 (the VAE already did the patchify): a linear in-projection turns
each latent voxel into a token, a 3D rotary embedding tells tokens where they are in (t, h, w),
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
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from mvdit import MvditError
from mvdit.io import load_state_strict, load_tensors, read_json, save_tensors, write_json


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
    blocks: list[BlockSpec]
    qk_norm: bool = True
    rope_theta: float = 10000.0
    freq_dim: int = 256

    @model_validator(mode="after")
    def _check(self) -> DiTConfig:
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for the rotary embedding, got {self.head_dim}")
        for i, b in enumerate(self.blocks):
            if min(b.heads, b.cross_heads, b.ffn_dim) < 0:
                raise ValueError(f"block {i}: heads, cross_heads and ffn_dim must be >= 0")
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


# ---------------------------------------------------------------------------------------------
# positions and time


def rope_axes(head_dim: int) -> tuple[int, int, int]:
    """Split a head's channels over (t, h, w); each part even. Space gets the larger share."""
    hw = (head_dim // 6) * 2
    return head_dim - 2 * hw, hw, hw


def rope_3d(
    grid: tuple[int, int, int], head_dim: int, theta: float, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of shape (T*H*W, head_dim/2) for tokens laid out t-major, then h, then w."""
    t, h, w = grid
    parts = []
    for n, dim in zip((t, h, w), rope_axes(head_dim), strict=True):
        freqs = 1.0 / theta ** (torch.arange(0, dim, 2, device=device, dtype=torch.float64) / dim)
        parts.append(torch.outer(torch.arange(n, device=device, dtype=torch.float64), freqs))
    ft, fh, fw = parts
    angles = torch.cat(
        [
            ft[:, None, None, :].expand(t, h, w, -1),
            fh[None, :, None, :].expand(t, h, w, -1),
            fw[None, None, :, :].expand(t, h, w, -1),
        ],
        dim=-1,
    ).reshape(t * h * w, -1)
    return angles.cos().float(), angles.sin().float()


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
# layers


class Attention(nn.Module):
    """Multi-head attention whose head count is a free per-layer choice (pruning removes heads)."""

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

    def forward(self, x, context=None, rope=None, mask=None):
        context = x if context is None else context
        b, n, _ = x.shape
        q = self.q_norm(self.q(x).view(b, n, self.heads, self.head_dim)).transpose(1, 2)
        k = self.k_norm(
            self.k(context).view(b, context.shape[1], self.heads, self.head_dim)
        ).transpose(1, 2)
        v = self.v(context).view(b, context.shape[1], self.heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if mask is not None:
            mask = mask[:, None, None, :]
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(y.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig, spec: BlockSpec):
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(d, d, spec.heads, cfg.head_dim, cfg.qk_norm) if spec.heads else None
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.cross_attn = (
            Attention(d, cfg.cap_dim, spec.cross_heads, cfg.head_dim, cfg.qk_norm)
            if spec.cross_heads
            else None
        )
        self.norm3 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.ffn = FeedForward(d, spec.ffn_dim) if spec.ffn_dim else None
        # adaLN-single: this block's learned offset to the shared time modulation
        self.scale_shift_table = nn.Parameter(torch.randn(6, d) / d**0.5)

    def forward(self, x, text, text_mask, t_mod, rope):
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (
            self.scale_shift_table[None] + t_mod
        ).unbind(1)
        if self.attn is not None:
            h = self.norm1(x) * (1 + scale_a[:, None]) + shift_a[:, None]
            x = x + gate_a[:, None] * self.attn(h, rope=rope)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm2(x), context=text, mask=text_mask)
        if self.ffn is not None:
            h = self.norm3(x) * (1 + scale_f[:, None]) + shift_f[:, None]
            x = x + gate_f[:, None] * self.ffn(h)
        return x


# ---------------------------------------------------------------------------------------------
# the model


class VideoDiT(nn.Module):
    def __init__(self, config: DiTConfig):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.x_embed = nn.Linear(config.in_channels, d)
        self.t_embed = nn.Sequential(nn.Linear(config.freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))
        self.caption_proj = nn.Sequential(
            nn.Linear(config.text_dim, config.cap_dim),
            nn.GELU(approximate="tanh"),
            nn.Linear(config.cap_dim, config.cap_dim),
        )
        self.blocks = nn.ModuleList([DiTBlock(config, s) for s in config.blocks])
        self.final_norm = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_table = nn.Parameter(torch.randn(2, d) / d**0.5)
        self.out = nn.Linear(d, config.out_ch)
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

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        features: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Predict the flow velocity. x: (B, C, T, H, W); t: (B,) in [0, 1]; text: (B, L, text_dim).

        If `features` is a list, every block's output tokens are appended to it (for KD).
        """
        b, c, T, H, W = x.shape
        if c != self.config.in_channels:
            raise MvditError(f"DiT expects {self.config.in_channels} latent channels, got {c}")
        tokens = self.x_embed(x.flatten(2).transpose(1, 2))
        t_emb = self.t_embed(
            timestep_embedding(t.expand(b) if t.dim() == 0 else t, self.config.freq_dim)
        )
        t_mod = self.t_block(t_emb).view(b, 6, -1)
        ctx = self.caption_proj(text)
        rope = rope_3d((T, H, W), self.config.head_dim, self.config.rope_theta, device=x.device)
        for block in self.blocks:
            tokens = block(tokens, ctx, text_mask, t_mod, rope)
            if features is not None:
                features.append(tokens)
        shift, scale = (self.final_table[None] + t_emb[:, None]).unbind(1)
        tokens = self.final_norm(tokens) * (1 + scale[:, None]) + shift[:, None]
        out = self.out(tokens)
        return out.transpose(1, 2).reshape(b, self.config.out_ch, T, H, W)

    # -- accounting ----------------------------------------------------------------------------

    def param_counts(self) -> dict[str, int]:
        """Parameters per part: embeddings (x, t, caption), blocks, final layer, total."""
        count = lambda mods: sum(p.numel() for m in mods for p in m.parameters())  # noqa: E731
        parts = {
            "embed": count([self.x_embed, self.t_embed, self.caption_proj]),
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
        try:
            config = DiTConfig(**cfg)
        except ValueError as e:
            raise MvditError(
                f"{path}/config.json: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}"
            ) from None  # type: ignore[attr-defined]
        with torch.device("meta"):
            model = cls(config)
        model = model.to_empty(device=device)
        load_state_strict(model, load_tensors(path / "model.safetensors"), str(path))
        return model


def dit_flops(cfg: DiTConfig, tokens: int, text_len: int, batch: int = 1) -> int:
    d, hd, n, L = cfg.hidden_size, cfg.head_dim, tokens, text_len
    f = 2 * n * cfg.in_channels * d + 2 * L * (cfg.text_dim * cfg.cap_dim + cfg.cap_dim**2)
    for b in cfg.blocks:
        a, ca = b.heads * hd, b.cross_heads * hd
        f += 2 * n * d * a * 4 + 4 * n * n * a  # qkv+out projections; QK^T and AV
        f += 2 * n * d * ca * 2 + 2 * L * cfg.cap_dim * ca * 2 + 4 * n * L * ca
        f += 2 * n * d * b.ffn_dim * 2
    f += 2 * n * d * cfg.out_ch
    return int(f * batch)

"""The highly compressed causal video VAE (the paper's first step), in the LTX-Video manner.

The encoder folds pixels into channels first (space-to-depth, `patch_size`), then alternates
residual causal Conv3d blocks with space-to-depth downsampling stages; the decoder mirrors it
with depth-to-space upsampling. Compression is spent in those folds, not in strided
convolutions, so an 8x32x32 model costs little more than a 4x8x8 one at the same width.

Causality: every Conv3d pads time on the front only (with copies of the first frame), and each
temporal 2x fold pairs frames (2j-1, 2j) after doubling frame 0. The first frame therefore gets
a latent step of its own, a clip has 1 + k * temporal_factor frames, and latent step j depends
only on frames <= j * temporal_factor. The decoder is causal in the same way, which is what lets
`decode` stream a long latent through it in time chunks with exactly the one-pass result.

Normalisation is per voxel (RMS over channels, LTX's PixelNorm) rather than GroupNorm: no
statistic crosses time or space, so causality holds exactly and a tile decodes the same pixels
as the whole clip away from its borders.

Latents leave `encode` normalised with a per-channel mean/std measured on training data and
stored in the config (`latent_mean`, `latent_std`), so the DiT reads unit-scale latents.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, model_validator
from torch import nn

from mvdit import MvditError
from mvdit.io import (
    load_state_strict,
    load_tensors,
    read_config_json,
    save_tensors,
    validate,
    write_json,
)
from mvdit.models.autoencoder import VideoAutoencoder

Down = Literal["t", "s", "ts"]


class VAEModelConfig(BaseModel):
    """Architecture of a `CausalVideoVAE`; the JSON config beside the weights is a dump of this."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["causal_vae"] = "causal_vae"
    latent_channels: int = 16
    patch_size: int = 4  # space-to-depth fold at the input (LTX-Video: 4)
    widths: list[int] = [64, 128, 128]  # channels of each resolution stage, finest first
    down: list[Down] = ["ts", "t"]  # fold between stage i and i+1: time, space or both (2x each)
    blocks: int = 1  # residual blocks per encoder stage
    decoder_blocks: int | None = None  # per decoder stage (default: `blocks`)
    # the decoder's fixed shortcuts (channel averages around conv_in/conv_out, channel repeats
    # around each unfold); False leaves every decoder layer a learned map
    decoder_shortcuts: bool = True
    logvar_clamp: tuple[float, float] = (-30.0, 20.0)
    # per-channel statistics of the posterior mean on training data (None: identity)
    latent_mean: list[float] | None = None
    latent_std: list[float] | None = None

    @model_validator(mode="after")
    def _check(self) -> VAEModelConfig:
        if len(self.widths) != len(self.down) + 1:
            raise ValueError(
                f"widths needs one entry more than down, got {len(self.widths)} and {len(self.down)}"
            )
        for i, d in enumerate(self.down):
            f = fold_factor(d)
            cin, cout = self.widths[i], self.widths[i + 1]
            if cout % f or (cin * f) % cout:
                raise ValueError(
                    f"stage {i}: a {d!r} fold ({f}x) from {cin} to {cout} channels needs {cout} % {f} == 0 and ({cin}*{f}) % {cout} == 0"
                )
        for name in ("latent_mean", "latent_std"):
            v = getattr(self, name)
            if v is not None and len(v) != self.latent_channels:
                raise ValueError(
                    f"{name} has {len(v)} entries, expected latent_channels={self.latent_channels}"
                )
        return self

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum("t" in d for d in self.down)

    @property
    def spatial_factor(self) -> int:
        return self.patch_size * 2 ** sum("s" in d for d in self.down)

    @property
    def ratio(self) -> str:
        s = self.spatial_factor
        return f"{self.temporal_factor}x{s}x{s}"


def fold_factor(d: str) -> int:
    return (2 if "t" in d else 1) * (4 if "s" in d else 1)


# The four ratios of the trade-off study at one width, and the two shipped presets.
VAE_PRESETS: dict[str, dict] = {
    # CPU default (9x32x32 clips -> 3x4x4 latents, 48 DiT tokens). Patch 2 and a first stage at
    # 16x16 keep the shape of objects a few pixels wide (+1.6 dB over patch 4, docs/vae.md).
    "cpu": dict(latent_channels=16, patch_size=2, widths=[16, 32, 64, 64], down=["s", "ts", "t"]),
    # 9x32x32 -> 3x8x8 latents of 8 channels, read by a DiT at patch 2 (48 tokens, as "cpu").
    # Objects span 2-3 latent cells instead of 1: shape survives reconstruction (docs/vae.md).
    "cpu-4x4x4": dict(latent_channels=8, patch_size=2, widths=[32, 64, 64], down=["ts", "t"]),
    "4x8x8": dict(patch_size=4, widths=[64, 128, 128], down=["ts", "t"]),
    "4x16x16": dict(patch_size=4, widths=[64, 128, 128], down=["ts", "ts"]),
    "8x16x16": dict(patch_size=4, widths=[64, 128, 128, 128], down=["ts", "ts", "t"]),
    "8x32x32": dict(patch_size=4, widths=[64, 128, 128, 128], down=["ts", "ts", "ts"]),
    # The paper's ratio at LTX-Video's width: 8x32x32, 128 channels, stages of 128/256/512/512.
    "paper": dict(
        latent_channels=128,
        patch_size=4,
        widths=[128, 256, 512, 512],
        down=["ts", "ts", "ts"],
        blocks=3,
    ),
}


def vae_preset(name: str, **overrides) -> VAEModelConfig:
    if name not in VAE_PRESETS:
        raise MvditError(f"unknown VAE preset {name!r}; choose one of: {', '.join(VAE_PRESETS)}")
    return validate(VAEModelConfig, {**VAE_PRESETS[name], **overrides}, f"VAE preset {name!r}")


# ---------------------------------------------------------------------------------------------
# layers


def pixel_norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RMS over channels at each voxel: no statistic crosses time (causal) or space (tileable)."""
    return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + eps)


def conv3d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    padding: tuple[int, int, int] = (0, 0, 0),
) -> torch.Tensor:
    """F.conv3d at stride 1, through oneDNN whenever the CPU runs inference in fp32.

    For one small clip (batch 1 and N*C*T*H under 20,480) PyTorch's heuristic picks its reference
    kernel, slow_conv3d, which decodes the default 9x32x32 clip about 2x slower than oneDNN does
    (`mvdit bench-vae` times both). The arithmetic is the same up to float rounding. Training
    (grad enabled), other devices and dtypes, and graphs being traced for export keep F.conv3d."""
    if (
        x.device.type == "cpu"
        and x.dtype == torch.float32
        and not torch.is_grad_enabled()
        and torch.backends.mkldnn.enabled
        and torch.backends.mkldnn.is_available()
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    ):
        return torch.mkldnn_convolution(x, weight, bias, padding, (1, 1, 1), (1, 1, 1), 1)
    return F.conv3d(x, weight, bias, padding=padding)


class Conv3d(nn.Conv3d):
    """nn.Conv3d (same parameters, same state dict) that convolves through `conv3d`; stride 1,
    one group, zero padding only."""

    def _conv_forward(self, x, weight, bias):
        return conv3d(x, weight, bias, self.padding)


class CausalConv3d(nn.Module):
    """3x3x3 convolution that sees the current and earlier frames only (front padding in time).

    In streaming mode (see `streaming`) it keeps the last frames it saw and pads the next chunk
    with them instead of with copies of its first frame, so chunked decoding is exact.
    """

    def __init__(self, cin: int, cout: int, kernel: int = 3):
        super().__init__()
        self.pad_t = kernel - 1
        self.conv = Conv3d(cin, cout, kernel, padding=(0, kernel // 2, kernel // 2))
        self.stream = False
        self.cache: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_t:
            # copies of frame 0 (not zeros): a still first frame looks like a still video
            front = (
                self.cache
                if self.cache is not None
                else x[:, :, :1].expand(-1, -1, self.pad_t, -1, -1)
            )
            x = torch.cat([front, x], dim=2)
            if self.stream:
                self.cache = x[:, :, -self.pad_t :]
        return self.conv(x)


class ResBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = CausalConv3d(ch, ch)
        self.conv2 = CausalConv3d(ch, ch)
        # zero-init the residual branch: every block starts as the identity, which trains faster
        nn.init.zeros_(self.conv2.conv.weight)
        nn.init.zeros_(self.conv2.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(pixel_norm(x)))
        return x + self.conv2(F.silu(pixel_norm(h)))


def space_to_depth(x: torch.Tensor, ft: int, fs: int) -> torch.Tensor:
    """(B, C, T, H, W) -> (B, C*ft*fs*fs, T/ft, H/fs, W/fs), channels ordered (C, ft, fs, fs). With
    ft = 2 the first frame is doubled first, so (1 + 2k) frames fold to (1 + k) and frame 0 forms a
    latent step of its own. Time and space fold in separate steps so that no tensor has more than
    6 dimensions (XNNPACK's limit: an 8-D permute lowers but does not load)."""
    if ft > 1:
        x = torch.cat([x[:, :, :1].expand(-1, -1, ft - 1, -1, -1), x], dim=2)
    b, c, t, h, w = x.shape
    t, h, w = t // ft, h // fs, w // fs
    x = x.reshape(b, c, t, ft, h * fs, w * fs).permute(0, 1, 3, 2, 4, 5)  # (B, C, ft, T', H, W)
    x = x.reshape(b * c * ft, t, h, fs, w, fs).permute(0, 3, 5, 1, 2, 4)  # (., fs, fs, T', H', W')
    return x.reshape(b, c * ft * fs * fs, t, h, w)


def depth_to_space(x: torch.Tensor, ft: int, fs: int, first: bool = True) -> torch.Tensor:
    """Inverse of `space_to_depth` (in steps of at most 6 dimensions as well), dropping the doubled
    first frame again (when this chunk holds the clip's first latent step)."""
    b, c, t, h, w = x.shape
    c //= ft * fs * fs
    x = x.reshape(b * c * ft, fs, fs, t, h, w).permute(0, 3, 4, 1, 5, 2)  # (., T, H, fs, W, fs)
    x = x.reshape(b, c, ft, t, h * fs, w * fs).permute(0, 1, 3, 2, 4, 5)  # (B, C, T, ft, H, W)
    x = x.reshape(b, c, t * ft, h * fs, w * fs)
    # (ft = 1 drops nothing: no no-op slice, which exporters meet as an alias op)
    return x[:, :, ft - 1 :] if first and ft > 1 else x


class Downsample(nn.Module):
    """Causal conv to cout/f channels, then a 2x fold; the shortcut folds the input and averages
    channel groups (LTX-Video), so the stage starts near a parameter-free rearrangement."""

    def __init__(self, cin: int, cout: int, d: str):
        super().__init__()
        self.ft, self.fs = (2 if "t" in d else 1), (2 if "s" in d else 1)
        self.conv = CausalConv3d(cin, cout // fold_factor(d))
        self.group = cin * fold_factor(d) // cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = space_to_depth(x, self.ft, self.fs)
        skip = skip.unflatten(1, (-1, self.group)).mean(2)
        return space_to_depth(self.conv(x), self.ft, self.fs) + skip


class Upsample(nn.Module):
    """Causal conv to cout*f channels, then a 2x unfold; the shortcut repeats input channels."""

    def __init__(self, cin: int, cout: int, d: str, shortcut: bool = True):
        super().__init__()
        self.shortcut = shortcut
        self.ft, self.fs = (2 if "t" in d else 1), (2 if "s" in d else 1)
        self.conv = CausalConv3d(cin, cout * fold_factor(d))
        self.repeat = cout * fold_factor(d) // cin
        self.stream = False
        self.started = False  # streaming: the first chunk has gone through

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first = not self.started
        self.started = self.stream
        out = depth_to_space(self.conv(x), self.ft, self.fs, first)
        if not self.shortcut:
            return out
        return out + depth_to_space(
            x.repeat_interleave(self.repeat, dim=1), self.ft, self.fs, first
        )


class ChannelShortcut(nn.Module):
    """A fixed linear map to `cout` channels: averages of neighbouring channels (or repeats).

    DC-AE's residual autoencoding: with these around every pixel/latent projection, as with the
    fold shortcuts, the untrained autoencoder already passes a block-averaged video through and
    the convolutions only learn the residual, which trains many times faster than learning the
    identity through random projections (measured in docs/vae.md).
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        eye = torch.eye(cin).unsqueeze(1)  # (cin, 1, cin): pooled row i = where input i goes
        weight = F.adaptive_avg_pool1d(eye, cout)[:, 0].T.contiguous()  # (cout, cin)
        self.register_buffer("weight", weight[:, :, None, None, None], persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return conv3d(x, self.weight)


class Encoder(nn.Module):
    def __init__(self, cfg: VAEModelConfig):
        super().__init__()
        self.p, c = cfg.patch_size, cfg.latent_channels
        self.conv_in = CausalConv3d(3 * self.p**2, cfg.widths[0])
        self.short_in = ChannelShortcut(3 * self.p**2, cfg.widths[0])
        self.stages = nn.ModuleList()
        for i, w in enumerate(cfg.widths):
            layers: list[nn.Module] = [ResBlock(w) for _ in range(cfg.blocks)]
            if i < len(cfg.down):
                layers.append(Downsample(w, cfg.widths[i + 1], cfg.down[i]))
            self.stages.append(nn.Sequential(*layers))
        self.conv_out = CausalConv3d(cfg.widths[-1], 2 * c)
        self.short_out = ChannelShortcut(cfg.widths[-1], c)  # to the posterior mean only
        # Start the posterior nearly deterministic (std ~0.05): at the default init its std is ~1,
        # the decoder sees mostly noise, and the first few hundred steps are wasted.
        nn.init.zeros_(self.conv_out.conv.weight[c:])
        nn.init.constant_(self.conv_out.conv.bias[c:], -6.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = space_to_depth(x, 1, self.p)
        x = self.conv_in(x) + self.short_in(x)
        for stage in self.stages:
            x = stage(x)
        mean, logvar = self.conv_out(F.silu(pixel_norm(x))).chunk(2, dim=1)
        return torch.cat([mean + self.short_out(x), logvar], dim=1)


class Decoder(nn.Module):
    def __init__(self, cfg: VAEModelConfig):
        super().__init__()
        self.p = cfg.patch_size
        n = cfg.decoder_blocks if cfg.decoder_blocks is not None else cfg.blocks
        self.shortcuts = cfg.decoder_shortcuts
        self.conv_in = CausalConv3d(cfg.latent_channels, cfg.widths[-1])
        self.short_in = ChannelShortcut(cfg.latent_channels, cfg.widths[-1])
        self.stages = nn.ModuleList()
        for i in reversed(range(len(cfg.widths))):
            layers: list[nn.Module] = [ResBlock(cfg.widths[i]) for _ in range(n)]
            if i > 0:
                layers.append(
                    Upsample(cfg.widths[i], cfg.widths[i - 1], cfg.down[i - 1], self.shortcuts)
                )
            self.stages.append(nn.Sequential(*layers))
        self.conv_out = CausalConv3d(cfg.widths[0], 3 * self.p**2)
        self.short_out = ChannelShortcut(cfg.widths[0], 3 * self.p**2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z) + (self.short_in(z) if self.shortcuts else 0)
        for stage in self.stages:
            x = stage(x)
        x = self.conv_out(F.silu(pixel_norm(x))) + (self.short_out(x) if self.shortcuts else 0)
        return depth_to_space(x, 1, self.p)


# ---------------------------------------------------------------------------------------------
# tiling


class Tiling(BaseModel):
    """How `decode` splits a latent: chunks of `frames` latent steps in time (exact: streamed with
    causal caches), and spatial tiles of `height` x `width` latent pixels that overlap by
    `overlap` and are blended linearly (approximate near tile borders). None: the whole axis."""

    model_config = ConfigDict(extra="forbid")
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    overlap: int = 2


@contextmanager
def streaming(decoder: nn.Module) -> Iterator[None]:
    """Within this block, successive calls decode successive time chunks of one clip, with
    exactly the output of one call on the whole clip: every causal conv pads a chunk with the
    frames it saw last instead of re-padding, and upsampling drops the doubled frame only once."""
    layers = [m for m in decoder.modules() if isinstance(m, CausalConv3d | Upsample)]
    for m in layers:
        m.stream, m.cache, m.started = True, None, False
    try:
        yield
    finally:
        for m in layers:
            m.stream, m.cache, m.started = False, None, False


def _tile_starts(n: int, size: int, overlap: int) -> list[int]:
    if size >= n:
        return [0]
    stride = size - min(overlap, size - 1)
    return sorted(set(range(0, n - size, stride)) | {n - size})


def _ramp(length: int, lo: int, hi: int) -> torch.Tensor:
    """Blend weights of one tile along one axis: linear ramps over the `lo` pixels it shares with
    the previous tile and the `hi` pixels it shares with the next; 1 elsewhere (never 0)."""
    w = torch.ones(length)
    if lo > 0:
        w[:lo] = torch.arange(1, lo + 1) / (lo + 1)
    if hi > 0:
        w[length - hi :] = torch.minimum(w[length - hi :], torch.arange(hi, 0, -1) / (hi + 1))
    return w


def _axis_plan(
    n: int, size: int | None, overlap: int, scale: int
) -> list[tuple[slice, slice, torch.Tensor]]:
    """Spatial tiles along one axis: (latent slice, pixel slice, blend weights)."""
    size = min(size or n, n)
    starts = _tile_starts(n, size, overlap)
    plan = []
    for i, s in enumerate(starts):
        lo = (starts[i - 1] + size - s) * scale if i > 0 else 0
        hi = (s + size - starts[i + 1]) * scale if i + 1 < len(starts) else 0
        plan.append(
            (slice(s, s + size), slice(s * scale, (s + size) * scale), _ramp(size * scale, lo, hi))
        )
    return plan


# ---------------------------------------------------------------------------------------------
# the model


class CausalVideoVAE(VideoAutoencoder):
    """KL video autoencoder with a causal first frame; see the module docstring for the design."""

    kind = "causal_vae"
    # methods besides forward that run the network (FSDP gathers the weights for them)
    entry_points = ("encode_dist", "encode", "decode_raw", "decode")

    def __init__(self, config: VAEModelConfig):
        super().__init__()
        self.config = config
        self.latent_channels = config.latent_channels
        self.temporal_factor = config.temporal_factor
        self.spatial_factor = config.spatial_factor
        self.causal = True
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.set_latent_stats(config.latent_mean, config.latent_std)

    # -- latent normalisation ------------------------------------------------------------------

    def set_latent_stats(self, mean: list[float] | None, std: list[float] | None) -> None:
        """Store per-channel statistics in the config (saved) and in buffers (applied)."""
        self.config = self.config.model_copy(update={"latent_mean": mean, "latent_std": std})
        c = self.latent_channels
        m = torch.tensor(mean if mean is not None else [0.0] * c).view(1, c, 1, 1, 1)
        s = torch.tensor(std if std is not None else [1.0] * c).view(1, c, 1, 1, 1)
        # non-persistent: the config is their one home, so weights never disagree with it
        self.register_buffer("latent_mean", m, persistent=False)
        self.register_buffer("latent_std", s, persistent=False)

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        return (z - self.latent_mean) / self.latent_std

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.latent_std + self.latent_mean

    # -- encode / decode -----------------------------------------------------------------------

    def encode_dist(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The posterior (mean, logvar), un-normalised: what training and calibration need."""
        if video.dim() != 5 or video.shape[1] != 3:
            raise MvditError(f"expected a video (B, 3, T, H, W), got shape {tuple(video.shape)}")
        self.check_clip(*video.shape[2:])
        mean, logvar = self.encoder(video).chunk(2, dim=1)
        return mean, logvar.clamp(*self.config.logvar_clamp)

    def encode(
        self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Normalised latent (B, C, t, h, w): the posterior mean, or a sample when `sample`."""
        mean, logvar = self.encode_dist(video)
        if sample:
            noise = torch.randn(
                mean.shape, generator=generator, device=mean.device, dtype=mean.dtype
            )
            mean = mean + noise * (0.5 * logvar).exp()
        return self.normalize(mean)

    def decode_raw(self, z: torch.Tensor) -> torch.Tensor:
        """Decode an un-normalised latent in one piece (training uses this)."""
        return self.decoder(z)

    def decode(
        self,
        latent: torch.Tensor,
        tiling: Tiling | None = None,
        max_tile_bytes: int | None = None,
        batch_slice: int | None = None,
    ) -> torch.Tensor:
        """Video (B, 3, T, H, W) from a normalised latent.

        `tiling` decodes overlapping tiles and blends them linearly; `max_tile_bytes` instead picks
        the largest tiles whose estimated activation memory fits the cap; `batch_slice` decodes
        that many clips at a time. Without any of them the clip decodes in one piece.
        """
        if latent.dim() != 5 or latent.shape[1] != self.latent_channels:
            raise MvditError(
                f"expected a latent (B, {self.latent_channels}, t, h, w), got shape {tuple(latent.shape)}"
            )
        z = self.denormalize(latent)
        if max_tile_bytes is not None and tiling is None:
            tiling = self.tiling_for_budget(tuple(z.shape[2:]), max_tile_bytes)
        step = batch_slice or z.shape[0]
        outs = [self._decode_tiled(z[i : i + step], tiling) for i in range(0, z.shape[0], step)]
        return torch.cat(outs).clamp(-1, 1)

    def _decode_tiled(self, z: torch.Tensor, tiling: Tiling | None) -> torch.Tensor:
        if tiling is None:
            return self.decoder(z)
        b, _, t, h, w = z.shape
        sf, chunk = self.spatial_factor, tiling.frames or t
        out = z.new_zeros(b, 3, 1 + (t - 1) * self.temporal_factor, h * sf, w * sf)
        total = z.new_zeros(1, 1, 1, h * sf, w * sf)
        plan_h = _axis_plan(h, tiling.height, tiling.overlap, sf)
        plan_w = _axis_plan(w, tiling.width, tiling.overlap, sf)
        for (lh, ph, wh), (lw, pw, ww) in itertools.product(plan_h, plan_w):
            weight = (wh[:, None] * ww[None, :]).to(z)
            with streaming(self.decoder):
                f0 = 0
                for i in range(0, t, chunk):
                    piece = self.decoder(z[:, :, i : i + chunk, lh, lw])
                    # accumulate in place: no clip-sized temporaries beside the output
                    out[:, :, f0 : f0 + piece.shape[2], ph, pw].addcmul_(piece, weight)
                    f0 += piece.shape[2]
                    del piece
            total[:, :, :, ph, pw] += weight
        return out.div_(total)

    # -- memory planning -----------------------------------------------------------------------

    def decode_bytes(self, latent_thw: tuple[int, int, int], batch: int = 1) -> int:
        """Estimated peak activation bytes (fp32) of decoding one latent chunk or tile.

        At the largest stage about ten tensors of the stage's size are alive at once: an
        upsampling conv's output, its unfolded copy, the unfolded shortcut and their sum, the
        padded conv input, and oneDNN's reordered copies of a conv's input and output (the factor
        is measured by `mvdit bench-vae`, docs/vae.md). Time counts as a middle chunk (tf frames
        per latent step, the most). Not included: the output clip and the weights.
        """
        t, h, w = latent_thw
        sizes = []
        for i in reversed(range(len(self.config.widths))):
            sizes.append(10 * self.config.widths[i] * (t + 2) * h * w)
            if i > 0:
                d = self.config.down[i - 1]
                t = 2 * t if "t" in d else t
                h, w = (2 * h, 2 * w) if "s" in d else (h, w)
        sizes.append(3 * 3 * self.config.patch_size**2 * t * h * w)
        return int(max(sizes) * 4 * batch)

    def tiling_for_budget(
        self, latent_thw: tuple[int, int, int], max_bytes: int, overlap: int = 2
    ) -> Tiling | None:
        """The largest tiles whose estimated decode memory fits `max_bytes`: time chunks shrink
        first (they are exact), then the larger spatial stride halves in turn."""
        t, h, w = latent_thw
        size = [t, h, w]  # chunk length, then the spatial strides between tile starts

        def extent(stride: int, n: int) -> int:  # a tile is its stride plus the shared overlap
            return n if stride >= n else min(n, stride + overlap)

        while self.decode_bytes((size[0], extent(size[1], h), extent(size[2], w))) > max_bytes:
            if size[0] > 1:
                size[0] = (size[0] + 1) // 2
            elif max(size[1], size[2]) > 1:
                ax = 1 if size[1] >= size[2] else 2
                size[ax] = (size[ax] + 1) // 2
            else:
                need = self.decode_bytes((1, extent(1, h), extent(1, w)))
                raise MvditError(
                    f"max_tile_bytes={max_bytes} is below the smallest tile's need (~{need} bytes); raise it"
                )
        if size == [t, h, w]:
            return None
        tile_h, tile_w = extent(size[1], h), extent(size[2], w)
        return Tiling(
            frames=size[0] if size[0] < t else None,
            height=tile_h if tile_h < h else None,
            width=tile_w if tile_w < w else None,
            overlap=overlap,
        )

    # -- save / load ---------------------------------------------------------------------------

    def save_pretrained(
        self, path: str | Path, state: dict[str, torch.Tensor] | None = None
    ) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        write_json(path / "config.json", self.config.model_dump())
        save_tensors(path / "model.safetensors", state if state is not None else self.state_dict())

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str | torch.device = "cpu"
    ) -> CausalVideoVAE:
        path = Path(path)
        if not path.is_dir():
            raise MvditError(f"VAE directory {path} does not exist")
        model = cls(read_config_json(VAEModelConfig, path / "config.json"))
        load_state_strict(model, load_tensors(path / "model.safetensors"), str(path))
        return model.to(device).eval()

    def param_count(self) -> dict[str, int]:
        enc = sum(p.numel() for p in self.encoder.parameters())
        dec = sum(p.numel() for p in self.decoder.parameters())
        return {"encoder": enc, "decoder": dec, "total": enc + dec}


@torch.no_grad()
def latent_stats(
    vae: CausalVideoVAE, videos: list[torch.Tensor]
) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior mean over a set of training clips (B, 3, T, H, W)."""
    zs = [vae.encode_dist(v)[0].transpose(0, 1).flatten(1) for v in videos]
    z = torch.cat(zs, dim=1).double()
    mean, std = z.mean(1), z.std(1).clamp_min(1e-4)
    return [float(x) for x in mean], [float(x) for x in std]


# The VAEs shipped in the package, by the name a config's vae.path may give instead of a directory.
# "default" is the CPU preset's (9x32x32 clips, 4x8x8, 16 channels: 48 tokens at patch 1);
# "cpu-4x4x4" keeps shapes far better in reconstruction (8 channels, read at patch 2), but the
# tiny DiT trained on its latents generates worse clips; "cpu-4x4x4-32" is the same ratio with 32
# channels, 9,000 steps and a decoder trained on noisy latents: shape 0.95 in reconstruction
# (docs/vae.md).
SHIPPED_VAES = {
    "default": ("vae-cpu", "configs/vae-cpu.toml"),
    "cpu-4x4x4": ("vae-cpu-4x4x4", "configs/vae-cpu-4x4x4.toml"),
    "cpu-4x4x4-32": ("vae-cpu-4x4x4-32", "configs/vae-cpu-4x4x4-32.toml"),
}


def shipped_vae_path(name: str = "default") -> Path:
    """The directory of a shipped VAE (SHIPPED_VAES)."""
    if name not in SHIPPED_VAES:
        raise MvditError(
            f"no shipped VAE is called {name!r}; choose one of: {', '.join(SHIPPED_VAES)}"
        )
    folder, recipe = SHIPPED_VAES[name]
    path = Path(str(files("mvdit") / "assets" / folder))
    if not (path / "model.safetensors").is_file():
        raise MvditError(
            f"the shipped VAE is missing from {path}; reinstall mvdit or train one with: mvdit train-vae {recipe}"
        )
    return path


def default_vae_path() -> Path:
    """The VAE shipped for the CPU preset."""
    return shipped_vae_path("default")

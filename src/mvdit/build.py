"""Builders every stage shares: the autoencoder, the dataset and the DiT a config names.

One place turns config sections into objects, so `mvdit train`, `mvdit cache`, `mvdit train-vae`,
evaluation and benchmarks build the same thing from the same config.
"""

from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field
from torch.utils.data import Subset

from mvdit import MvditError
from mvdit.bench.measure import si
from mvdit.compress.diffusers_dit import build_dit
from mvdit.config import (
    PRESETS,
    DataConfig,
    ModelConfig,
    Strict,
    TrainConfig,
    VAEConfig,
    preset_config,
)
from mvdit.data.cache import LatentCacheDataset, build_latent_cache
from mvdit.data.folder import VideoFolderDataset
from mvdit.data.shapes import ShapesDataset
from mvdit.io import read_json
from mvdit.models import diffusers_vae
from mvdit.models.autoencoder import PatchifyAutoencoder, VideoAutoencoder
from mvdit.models.dit import DiTConfig, VideoDiT
from mvdit.models.interface import PrunableDiT
from mvdit.models.text import TextEncoder, load_text_encoder
from mvdit.models.vae import SHIPPED_VAES, CausalVideoVAE, shipped_vae_path

# ---------------------------------------------------------------------------------------------
# autoencoders


def load_autoencoder(path: str | Path) -> VideoAutoencoder:
    """Load any autoencoder saved with `save_pretrained` (its config.json names its kind), or a
    bare diffusers VAE directory (its config.json names its class)."""
    path = Path(path)
    if not path.is_dir():
        raise MvditError(f"autoencoder directory {path} does not exist")
    cfg = read_json(path / "config.json")
    kind = cfg.get("kind", cfg.get("_class_name"))
    if kind == "shipped":  # a reference to a VAE inside the package (a shipped pipeline's vae/)
        return load_autoencoder(shipped_vae_path(cfg["name"]))
    if kind == "patchify":
        return PatchifyAutoencoder(cfg["temporal_factor"], cfg["spatial_factor"])
    if kind == "causal_vae":
        return CausalVideoVAE.from_pretrained(path)
    if kind in diffusers_vae.KINDS:
        return diffusers_vae.DiffusersVideoVAE.from_pretrained(path)
    known = ["patchify", "causal_vae", "shipped", *diffusers_vae.KINDS]
    raise MvditError(f"{path}: unknown autoencoder kind {kind!r}; known: {', '.join(known)}")


def build_autoencoder(cfg: VAEConfig) -> VideoAutoencoder:
    if cfg.kind == "patchify":
        return PatchifyAutoencoder(cfg.temporal_factor, cfg.spatial_factor)
    if cfg.path is None:
        raise MvditError(
            "vae.kind = 'pretrained' needs vae.path (a directory written by save_pretrained, or 'default')"
        )
    if cfg.path in SHIPPED_VAES:
        return load_autoencoder(shipped_vae_path(cfg.path))
    if not Path(cfg.path).is_dir():
        raise MvditError(
            f"vae.path {cfg.path} is neither a directory nor a shipped VAE ({', '.join(SHIPPED_VAES)})"
        )
    return load_autoencoder(cfg.path)


# ---------------------------------------------------------------------------------------------
# datasets

_SHAPES_VOCABULARY = (
    "max_objects",
    "paraphrase",
    "colours",
    "shapes",
    "motions",
    "speeds",
    "backgrounds",
    "background_styles",
    "upright",
    "object_size",
)


def build_dataset(
    cfg: DataConfig,
    split: str = "train",
    autoencoder: VideoAutoencoder | None = None,
    text_encoder: TextEncoder | None = None,
):
    """The dataset a config names. Given the encoders, a latent cache is checked against them."""
    if cfg.kind == "shapes":
        return ShapesDataset(
            frames=cfg.frames,
            height=cfg.height,
            width=cfg.width,
            fps=cfg.fps,
            seed=cfg.seed,
            split=split,
            holdout=cfg.holdout,
            **{k: getattr(cfg, k) for k in _SHAPES_VOCABULARY},
        )
    if cfg.path is None:
        raise MvditError(f"data.kind = '{cfg.kind}' needs data.path")
    if cfg.kind == "folder":
        return VideoFolderDataset(
            cfg.path,
            captions=cfg.captions,
            frames=cfg.frames,
            height=cfg.height,
            width=cfg.width,
            fps=cfg.fps,
            window=cfg.window,
        )
    return LatentCacheDataset(cfg.path, autoencoder=autoencoder, text_encoder=text_encoder)


def build_video_dataset(cfg: DataConfig, split: str = "train"):
    """A dataset of pixels (for the autoencoder): shapes or a video folder, never a latent cache."""
    if cfg.kind == "cache":
        raise MvditError(
            "data.kind = 'cache' holds latents, not videos: train the VAE on 'shapes' or 'folder' data"
        )
    return build_dataset(cfg, split)


def cache_from_config(
    cfg: TrainConfig,
    out_dir: str | Path,
    *,
    limit: int | None = None,
    shard_size: int = 256,
    batch_size: int = 8,
    dtype: torch.dtype | str = torch.float32,
    progress: bool = True,
    vae: VideoAutoencoder | None = None,
    text: TextEncoder | None = None,
) -> LatentCacheDataset:
    """Cache the clips a training config's [data] names, with its [vae] and [text] encoders
    (or the ones given, already built from them)."""
    d = cfg.data
    if isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise MvditError(f"--dtype must be float32, bfloat16 or float16, got {dtype}")
        dtype = getattr(torch, dtype)
    if d.kind == "cache":
        raise MvditError("data.kind is already 'cache': point [data] at the clips to encode")
    if limit is not None and limit < 1:
        raise MvditError(f"limit must be positive, got {limit}")
    vae = (vae or build_autoencoder(cfg.vae)).to(cfg.run.device).eval()
    vae.check_clip(d.frames, d.height, d.width)
    text = (text or load_text_encoder(cfg.text)).to(cfg.run.device)
    dataset = build_dataset(d)
    if limit is not None and limit < len(dataset):
        dataset = Subset(dataset, range(limit))
    build_latent_cache(dataset, vae, text, out_dir, shard_size, batch_size, dtype, progress)
    return LatentCacheDataset(out_dir)


# ---------------------------------------------------------------------------------------------
# the DiT


def build_model(cfg: ModelConfig, in_channels: int, text_dim: int) -> PrunableDiT:
    """A freshly initialised DiT of `[model]`: mvdit's own, or a diffusers Wan / LTX-Video
    transformer through its adapter (`architecture`, its class's keys in `[model.diffusers]`)."""
    if cfg.architecture == "mvdit":
        if cfg.diffusers:
            raise MvditError(
                "model.diffusers sets a diffusers transformer's keys: set model.architecture = "
                '"wan" or "ltx", or drop it'
            )
        return VideoDiT(build_dit_config(cfg, in_channels, text_dim))
    own = {k for k, v in cfg.model_dump().items()
           if k not in ("architecture", "diffusers") and v != ModelConfig.model_fields[k].default}  # fmt: skip
    if own:
        k = sorted(own)[0]
        raise MvditError(
            f"model.{k} is a key of mvdit's DiT, not of a {cfg.architecture} transformer: set it "
            "in model.diffusers with the diffusers class's own name"
        )
    return build_dit(cfg.architecture, cfg.diffusers, in_channels, text_dim)


def build_dit_config(cfg: ModelConfig, in_channels: int, text_dim: int) -> DiTConfig:
    base = preset_config(cfg.preset, in_channels, text_dim, cfg.patch_size)
    if cfg.prediction is not None:
        base = base.model_copy(update={"prediction": cfg.prediction})
    if cfg.pooled_text:
        base = base.model_copy(update={"pooled_text": True})
    over = {
        k: v
        for k, v in cfg.model_dump().items()
        if k not in ("preset", "patch_size", "prediction", "pooled_text") and v is not None
    }
    if not over:
        return base
    b0 = base.blocks[0]
    return DiTConfig.uniform(
        depth=over.get("depth", len(base.blocks)),
        heads=over.get("heads", b0.heads),
        ffn_dim=over.get("ffn_dim", b0.ffn_dim),
        hidden_size=over.get("hidden_size", base.hidden_size),
        head_dim=over.get("head_dim", base.head_dim),
        patch_size=base.patch_size,
        prediction=base.prediction,
        pooled_text=base.pooled_text,
        in_channels=in_channels,
        text_dim=text_dim,
    )


class InfoConfig(Strict):
    """[info]: a DiT preset at a clip size (`mvdit info`)."""

    preset: str = Field(
        default="paper-teacher", description="tiny, small, paper-teacher, paper-student"
    )
    frames: int = Field(default=49, description="clip frames")
    height: int = Field(default=384, description="clip height")
    width: int = Field(default=512, description="clip width")
    temporal: int = Field(default=8, ge=1, description="VAE temporal compression")
    spatial: int = Field(default=32, ge=1, description="VAE spatial compression")
    latent_channels: int | None = Field(
        default=None, ge=1, description="VAE latent channels (default: the preset's)"
    )
    text_len: int = Field(default=77, ge=1, description="text tokens (77 for CLIP)")
    text_dim: int | None = Field(
        default=None, ge=1, description="text encoder width (default: the preset's)"
    )
    patch: int = Field(
        default=1, ge=1, description="DiT patch size over the latent's height and width"
    )


class InfoSections(Strict):
    info: InfoConfig = Field(default_factory=InfoConfig)


def describe_preset(cfg: InfoConfig) -> str:
    """`mvdit info`: a preset's parameters by part, its latent grid and tokens at a clip size, and
    its FLOPs per DiT step (the model built on the meta device: no memory for weights)."""
    preset, frames, height, width = cfg.preset, cfg.frames, cfg.height, cfg.width
    temporal, spatial, patch = cfg.temporal, cfg.spatial, cfg.patch
    latent_channels, text_len, text_dim = cfg.latent_channels, cfg.text_len, cfg.text_dim
    if preset not in PRESETS:
        raise MvditError(f"unknown preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    if frames < 1 or (frames - 1) % temporal:
        raise MvditError(
            f"--frames must be 1 + {temporal}k for a causal {temporal}x VAE, got {frames}"
        )
    if height % spatial or width % spatial or height <= 0 or width <= 0:
        raise MvditError(
            f"--height and --width must be positive multiples of {spatial}, got {height}x{width}"
        )
    if patch < 1 or (height // spatial) % patch or (width // spatial) % patch:
        raise MvditError(
            f"--patch must divide the {height // spatial}x{width // spatial} latent, got {patch}"
        )
    cfg = preset_config(preset, latent_channels, text_dim, patch)
    with torch.device("meta"):
        model = VideoDiT(cfg)
    grid = (1 + (frames - 1) // temporal, height // spatial, width // spatial)
    tokens = cfg.tokens(grid)
    counts = model.param_counts()
    b, total = cfg.blocks, counts["total"]
    lines = [
        f"preset {preset}: d={cfg.hidden_size}, {len(b)} blocks, heads "
        f"{_span([x.heads for x in b])} x {cfg.head_dim}, FFN {_span([x.ffn_dim for x in b])}",
        f"parameters: {total / 1e9:.3f}B ({total:,})"
        if total >= 1e8
        else f"parameters: {total / 1e6:.2f}M ({total:,})",
    ]
    lines += [
        f"  {k:<13} {v:>15,}  ({100 * v / total:.1f}%)" for k, v in counts.items() if k != "total"
    ]
    lines += [
        f"clip {frames}x{height}x{width} -> latent {cfg.in_channels}x{grid[0]}x{grid[1]}x{grid[2]} "
        f"({temporal}x{spatial}x{spatial} VAE, patch {patch})",
        f"tokens: {tokens:,}",
        f"FLOPs per DiT step: {si(model.flops_per_step(tokens, text_len), 'FLOPs')} ({text_len} text "
        "tokens; 2 per multiply-add)",
    ]
    return "\n".join(lines)


def _span(values: list[int]) -> str:
    lo, hi = min(values), max(values)
    return str(lo) if lo == hi else f"{lo}-{hi} (mean {sum(values) / len(values):.0f})"

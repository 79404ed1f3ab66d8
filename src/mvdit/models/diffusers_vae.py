"""diffusers' video VAEs (LTX-Video, Wan) behind mvdit's `VideoAutoencoder` interface.

For users who have real weights on disk: `load_autoencoder(DIR)` accepts either a diffusers VAE
directory itself (its config.json names `_class_name`) or a small mvdit wrapper directory whose
config.json is {"kind": "diffusers_ltx" | "diffusers_wan", "path": DIR}. Nothing is downloaded.

Latents leave `encode` normalised the way each model's own pipeline does it, so the DiT side of
mvdit never needs to know which VAE it holds:
- LTX-Video: (z - latents_mean) * scaling_factor / latents_std (buffers in the checkpoint);
- Wan: (z - latents_mean) / latents_std (lists in the config).

diffusers is an optional dependency (extra "interop"); it is imported only when one of these
classes is used.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from mvdit import MvditError
from mvdit.io import only_safetensors_weights, read_json, write_json
from mvdit.models.autoencoder import VideoAutoencoder

_CLASS_NAMES = {"diffusers_ltx": "AutoencoderKLLTXVideo", "diffusers_wan": "AutoencoderKLWan"}
# what load_autoencoder accepts: our wrapper kinds and a bare diffusers directory's class names
KINDS = (*_CLASS_NAMES, *_CLASS_NAMES.values())


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise MvditError(
            "loading a diffusers VAE needs diffusers: pip install 'mvdit[interop]'"
        ) from None
    return diffusers


def _resolve(path: Path) -> tuple[str, Path, dict]:
    """(kind, diffusers directory, wrapper options) for a wrapper or a diffusers directory."""
    cfg = read_json(path / "config.json")
    kind = cfg.get("kind")
    if kind in _CLASS_NAMES:
        target = Path(cfg["path"])
        target = target if target.is_absolute() else (path / target)
        return kind, target, {k: v for k, v in cfg.items() if k not in ("kind", "path")}
    for kind, cls_name in _CLASS_NAMES.items():
        if cfg.get("_class_name") == cls_name:
            return kind, path, {}
    raise MvditError(
        f"{path}/config.json is neither an mvdit diffusers wrapper nor a diffusers {' or '.join(_CLASS_NAMES.values())} config"
    )


class DiffusersVideoVAE(VideoAutoencoder):
    """Wraps an `AutoencoderKLLTXVideo` or `AutoencoderKLWan` module."""

    def __init__(
        self,
        vae: torch.nn.Module,
        kind: str,
        source: str | None = None,
        decode_timestep: float = 0.0,
        decode_noise_scale: float | None = None,
    ):
        super().__init__()
        if kind not in _CLASS_NAMES:
            raise MvditError(
                f"unknown diffusers VAE kind {kind!r}; choose one of {', '.join(_CLASS_NAMES)}"
            )
        self.vae = vae.eval()
        self.kind = kind
        self.source = source
        self.decode_timestep = decode_timestep
        # LTXPipeline's default: the latent is noised as much as the decoder is told it is
        self.decode_noise_scale = (
            decode_timestep if decode_noise_scale is None else decode_noise_scale
        )
        cfg = vae.config
        self.latent_channels = int(cfg.latent_channels if kind == "diffusers_ltx" else cfg.z_dim)
        if kind == "diffusers_ltx":
            self.temporal_factor = int(vae.temporal_compression_ratio)
            self.spatial_factor = int(vae.spatial_compression_ratio)
            self.causal = bool(cfg.encoder_causal)
            mean, std = vae.latents_mean, vae.latents_std
            scale = float(cfg.scaling_factor)
        else:
            self.temporal_factor = int(
                cfg.scale_factor_temporal or 2 ** sum(cfg.temperal_downsample)
            )
            self.spatial_factor = int(cfg.scale_factor_spatial or 2 ** (len(cfg.dim_mult) - 1))
            self.causal = True  # Wan encodes the first frame alone
            mean, std, scale = torch.tensor(cfg.latents_mean), torch.tensor(cfg.latents_std), 1.0
        c = self.latent_channels
        self.register_buffer(
            "latent_mean", mean.detach().float().view(1, c, 1, 1, 1).clone(), persistent=False
        )
        self.register_buffer(
            "latent_scale",
            (scale / std.detach().float()).view(1, c, 1, 1, 1).clone(),
            persistent=False,
        )

    # -- encode / decode -----------------------------------------------------------------------

    @torch.no_grad()
    def encode(
        self, video: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Normalised latent (B, C, t, h, w): the posterior mean, or a sample when `sample`."""
        if video.dim() != 5 or video.shape[1] != 3:
            raise MvditError(f"expected a video (B, 3, T, H, W), got shape {tuple(video.shape)}")
        self.check_clip(*video.shape[2:])
        dist = self.vae.encode(video.to(self.vae.dtype)).latent_dist
        z = dist.sample(generator) if sample else dist.mode()
        return (z.float() - self.latent_mean) * self.latent_scale

    @torch.no_grad()
    def decode(
        self,
        latent: torch.Tensor,
        tiling: object | None = None,
        max_tile_bytes: int | None = None,
        batch_slice: int | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Video (B, 3, T, H, W) in [-1, 1]. Any tiling argument switches on diffusers' own
        spatial tiling (its default tile sizes) and `batch_slice` its per-clip slicing, for this
        decode only. A timestep-conditioned LTX decoder gets what LTXPipeline gives it: the
        latent noised as (1 - s) z + s n (s = decode_noise_scale, n drawn from `generator`,
        default seed 0) and the decode timestep."""
        if latent.dim() != 5 or latent.shape[1] != self.latent_channels:
            raise MvditError(
                f"expected a latent (B, {self.latent_channels}, t, h, w), got shape {tuple(latent.shape)}"
            )
        z = (latent / self.latent_scale + self.latent_mean).to(self.vae.dtype)
        before = self.vae.use_tiling, self.vae.use_slicing
        self.vae.use_tiling = tiling is not None or max_tile_bytes is not None
        self.vae.use_slicing = batch_slice is not None
        try:
            if self.kind == "diffusers_ltx" and self.vae.config.timestep_conditioning:
                gen = generator or torch.Generator(z.device).manual_seed(0)
                noise = torch.randn(z.shape, generator=gen, device=z.device, dtype=z.dtype)
                s = self.decode_noise_scale
                z = (1 - s) * z + s * noise
                temb = torch.full(
                    (z.shape[0],), self.decode_timestep, device=z.device, dtype=z.dtype
                )
                video = self.vae.decode(z, temb).sample
            else:
                video = self.vae.decode(z).sample
        finally:
            self.vae.use_tiling, self.vae.use_slicing = before
        return video.float().clamp(-1, 1)

    # -- save / load ---------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path) -> None:
        """Write a wrapper directory pointing at the diffusers weights (not copied), by a path
        relative to the wrapper."""
        path = Path(path)
        if self.source is None:
            self.vae.save_pretrained(path / "diffusers")
            target = "diffusers"
        else:  # relative to the wrapper: the two move together and load from anywhere
            target = os.path.relpath(Path(self.source).resolve(), path.resolve())
        path.mkdir(parents=True, exist_ok=True)
        write_json(
            path / "config.json",
            {
                "kind": self.kind,
                "path": target,
                "decode_timestep": self.decode_timestep,
                "decode_noise_scale": self.decode_noise_scale,
            },
        )

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> DiffusersVideoVAE:
        path = Path(path)
        if not path.is_dir():
            raise MvditError(f"VAE directory {path} does not exist")
        kind, target, options = _resolve(path)
        if not (target / "config.json").is_file():
            raise MvditError(f"{path}: the diffusers VAE directory {target} has no config.json")
        model_cls = getattr(_diffusers(), _CLASS_NAMES[kind])
        only_safetensors_weights(target)
        try:
            vae = model_cls.from_pretrained(
                str(target), torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False,
                use_safetensors=True,
            )  # fmt: skip
        except (OSError, ValueError) as e:
            raise MvditError(
                f"cannot load {_CLASS_NAMES[kind]} from {target}: {str(e).splitlines()[0]}"
            ) from None
        return cls(
            vae.to(device),
            kind,
            source=str(target),
            decode_timestep=float(options.get("decode_timestep", 0.0)),
            decode_noise_scale=options.get("decode_noise_scale"),
        )

"""The interface every video autoencoder in mvdit implements, and the pixel-patchify stand-in.

Videos are float tensors (B, 3, T, H, W) in [-1, 1]; latents are (B, C, t, h, w), already
normalised (per-channel mean/std applied) so the DiT reads them as they come out of `encode`.
The pipeline only talks to this interface, so a trained causal VAE, a diffusers VAE or the
space-to-depth stand-in below are interchangeable.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mvdit import MvditError
from mvdit.io import write_json


class VideoAutoencoder(nn.Module):
    """Base class: frame-count rules and shapes, queryable without running the network."""

    kind: str = "base"
    latent_channels: int
    temporal_factor: int
    spatial_factor: int
    causal: bool  # causal: the first frame is encoded on its own, so T = 1 + k * temporal_factor

    def check_clip(self, frames: int, height: int, width: int) -> None:
        """Raise MvditError naming the problem when (frames, height, width) cannot be encoded."""
        tf, sf = self.temporal_factor, self.spatial_factor
        if frames < 1:
            raise MvditError(f"frames must be positive, got {frames}")
        if self.causal and (frames - 1) % tf != 0:
            k = max(0, round((frames - 1) / tf))
            raise MvditError(
                f"this VAE needs 1 + {tf}k frames (causal first frame), got {frames}; try {1 + tf * k} or {1 + tf * (k + 1)}"
            )
        if not self.causal and frames % tf != 0:
            raise MvditError(f"this VAE needs a multiple of {tf} frames, got {frames}")
        if height % sf or width % sf or height <= 0 or width <= 0:
            raise MvditError(
                f"height and width must be positive multiples of {sf}, got {height}x{width}"
            )

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        self.check_clip(frames, height, width)
        tf, sf = self.temporal_factor, self.spatial_factor
        t = 1 + (frames - 1) // tf if self.causal else frames // tf
        return (self.latent_channels, t, height // sf, width // sf)

    def encode(self, video: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def decode(self, latent: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def save_pretrained(self, path: str | Path) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class PatchifyAutoencoder(VideoAutoencoder):
    """Space-to-depth in time and space: lossless, no weights. The stand-in before a trained VAE.

    A (tf, sf, sf) patch of RGB pixels becomes 3*tf*sf*sf latent channels.
    """

    kind = "patchify"

    def __init__(self, temporal_factor: int = 1, spatial_factor: int = 8):
        super().__init__()
        self.temporal_factor = temporal_factor
        self.spatial_factor = spatial_factor
        self.latent_channels = 3 * temporal_factor * spatial_factor**2
        self.causal = False

    def config(self) -> dict:
        return {
            "kind": self.kind,
            "temporal_factor": self.temporal_factor,
            "spatial_factor": self.spatial_factor,
        }

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = video.shape
        self.check_clip(t, h, w)
        tf, sf = self.temporal_factor, self.spatial_factor
        x = video.reshape(b, c, t // tf, tf, h // sf, sf, w // sf, sf)
        x = x.permute(0, 1, 3, 5, 7, 2, 4, 6)
        return x.reshape(b, c * tf * sf * sf, t // tf, h // sf, w // sf)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        b, ch, t, h, w = latent.shape
        tf, sf = self.temporal_factor, self.spatial_factor
        x = latent.reshape(b, 3, tf, sf, sf, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        return x.reshape(b, 3, t * tf, h * sf, w * sf)

    def save_pretrained(self, path: str | Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        write_json(Path(path) / "config.json", self.config())


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] → uint8 (B, T, H, W, 3)."""
    return (
        ((video.clamp(-1, 1) + 1) * 127.5)
        .round()
        .to(torch.uint8)
        .permute(0, 2, 3, 4, 1)
        .contiguous()
    )

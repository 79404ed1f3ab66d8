"""Reconstruction (PSNR, SSIM) and distribution (Fréchet distance) metrics.

PSNR and SSIM take videos as float tensors (B, 3, T, H, W) in [-1, 1], the autoencoder's
convention, and return the mean over the B clips:
- PSNR scores each clip as one signal: 10 log10(range² / MSE over all its frames and pixels),
  capped at PSNR_MAX dB so that an exact reconstruction stays a finite number in a mean. The
  VAE training log and `mvdit eval-vae` both use this one definition.
- SSIM scores every frame as an image (the usual way video VAEs report it) and averages them.
- Edge F1 (edge_f1) scores whether outlines survive: the F1 of the reconstruction's edge pixels
  against the original's, pixel for pixel.

The distribution distance is an FVD/FID analogue: FVD fits Gaussians to I3D clip embeddings,
which cannot be downloaded here, so a clip is embedded with the shipped EfficientNet-Lite0
(eval/features.py): the mean of its frames' features (appearance) joined with the mean
absolute change of features between adjacent frames (motion). Values are comparable between
our models at one clip size, never with published FVD numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from mvdit import MvditError
from mvdit.eval.features import frame_features

# ---------------------------------------------------------------------------------------------
# reconstruction


PSNR_MAX = 100.0  # dB; an exact clip scores this instead of infinity


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB of each clip, averaged over clips ([-1, 1]: range 2)."""
    if x.shape != y.shape:
        raise MvditError(f"PSNR needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1)
    db = 10 * torch.log10(data_range**2 / mse.clamp_min(data_range**2 / 10 ** (PSNR_MAX / 10)))
    return float(db.mean())


def _frames(v: torch.Tensor) -> torch.Tensor:
    """(B, C, T, H, W) → (B*T, C, H, W)."""
    if v.dim() != 5:
        raise MvditError(f"expected a video batch (B, C, T, H, W), got shape {tuple(v.shape)}")
    return v.transpose(1, 2).flatten(0, 1)


def ssim(
    x: torch.Tensor, y: torch.Tensor, data_range: float = 2.0, window: int = 11, sigma: float = 1.5
) -> float:
    """Structural similarity (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03),
    per frame and channel, averaged. Frames smaller than the window use a window of their size."""
    if x.shape != y.shape:
        raise MvditError(f"SSIM needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    a, b = _frames(x).double(), _frames(y).double()
    window = min(window, a.shape[-1], a.shape[-2])
    g = torch.exp(
        -((torch.arange(window, dtype=torch.float64) - (window - 1) / 2) ** 2) / (2 * sigma**2)
    )
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(a.shape[1], 1, window, window)
    blur = lambda z: F.conv2d(z, k, groups=a.shape[1])  # noqa: E731 - valid conv, as skimage/pytorch-msssim
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return float(s.mean())


EDGE_THRESHOLD = (
    0.15  # gradient per pixel on the [-1, 1] scale; shapes objects keep >= 0.55 contrast
)


def edge_map(v: torch.Tensor, threshold: float = EDGE_THRESHOLD) -> torch.Tensor:
    """Boolean edges (B*T, H, W) of videos (B, 3, T, H, W): where the largest per-channel central
    difference in x or y exceeds `threshold` per pixel."""
    f = _frames(v).float()
    dx = (f[..., :, 2:] - f[..., :, :-2]).abs() / 2
    dy = (f[..., 2:, :] - f[..., :-2, :]).abs() / 2
    g = torch.zeros(f.shape[0], f.shape[2], f.shape[3], device=f.device)
    g[:, :, 1:-1] = dx.amax(1)
    g[:, 1:-1, :] = torch.maximum(g[:, 1:-1, :], dy.amax(1))
    return g > threshold


def edge_f1(x: torch.Tensor, y: torch.Tensor, tolerance: int = 0) -> float:
    """How well a reconstruction x keeps the edges of a video y: the F1 score of x's edge pixels
    against y's, an edge counting as found within `tolerance` pixels, per clip, mean over clips.
    PSNR is dominated by flat background; this number falls as soon as outlines blur or bend
    (9x32x32 shapes clips: a Gaussian blur of 0.75 px scores 0.92, of 1.5 px 0.65)."""
    if x.shape != y.shape:
        raise MvditError(f"edge F1 needs equal shapes, got {tuple(x.shape)} and {tuple(y.shape)}")
    b, t = x.shape[0], x.shape[2]
    ex, ey = edge_map(x), edge_map(y)
    k = 2 * tolerance + 1
    near = lambda e: F.max_pool2d(e[:, None].float(), k, 1, tolerance)[:, 0] > 0  # noqa: E731
    hit_x = (ex & near(ey)).view(b, t, -1).sum((1, 2)).float()  # predicted edges near a true one
    hit_y = (ey & near(ex)).view(b, t, -1).sum((1, 2)).float()  # true edges near a predicted one
    nx, ny = ex.view(b, -1).sum(1).float(), ey.view(b, -1).sum(1).float()
    precision = torch.where(nx > 0, hit_x / nx.clamp_min(1), (ny == 0).float())
    recall = torch.where(ny > 0, hit_y / ny.clamp_min(1), (nx == 0).float())
    f1 = 2 * precision * recall / (precision + recall).clamp_min(1e-12)
    return float(f1.mean())


# ---------------------------------------------------------------------------------------------
# distribution distance


def frechet_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two sets of features (N, D) and (M, D):
    |mu_a - mu_b|^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^1/2).

    With centred features A, B, S_a S_b = A^T (A B^T B) / c, whose non-zero eigenvalues are
    those of (A B^T)(A B^T)^T: tr((S_a S_b)^1/2) is the sum of the singular values of A B^T
    divided by sqrt(c). That is exact, needs no D x D matrix square root, and stays finite when
    there are fewer clips than feature dimensions (the usual case here).
    """
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise MvditError(
            f"Fréchet distance needs two (N, D) feature sets of equal D, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if len(a) < 2 or len(b) < 2:
        raise MvditError("Fréchet distance needs at least 2 samples in each set")
    ca, cb = a - a.mean(0), b - b.mean(0)
    na, nb = len(a) - 1, len(b) - 1
    cross = torch.linalg.svdvals(ca @ cb.T).sum() / (na * nb) ** 0.5
    mean_term = (a.mean(0) - b.mean(0)).pow(2).sum()
    fd = mean_term + ca.pow(2).sum() / na + cb.pow(2).sum() / nb - 2 * cross
    return float(fd.clamp(min=0))


def kernel_distance(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    """KID: the unbiased estimate of the squared MMD between two feature sets (N, D) and (M, D)
    under the cubic polynomial kernel k(x, y) = (x . y / D + 1)^3. Unlike the Fréchet distance
    its expectation does not depend on the sample size, so small sets can be compared (it can
    come out slightly below 0 when the two sets are drawn from one distribution)."""
    a = torch.as_tensor(np.asarray(a), dtype=torch.float64)
    b = torch.as_tensor(np.asarray(b), dtype=torch.float64)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise MvditError(
            f"KID needs two (N, D) feature sets of equal D, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    m, n = len(a), len(b)
    if m < 2 or n < 2:
        raise MvditError("KID needs at least 2 samples in each set")
    k = lambda x, y: (x @ y.T / a.shape[1] + 1) ** 3  # noqa: E731
    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    within_a = (kaa.sum() - kaa.diagonal().sum()) / (m * (m - 1))
    within_b = (kbb.sum() - kbb.diagonal().sum()) / (n * (n - 1))
    return float(within_a + within_b - 2 * kab.mean())


def clip_embedding(video, size: int = 224) -> torch.Tensor:
    """One vector per clip: mean frame feature ++ mean |feature change| between adjacent frames."""
    f = frame_features(video, size=size)["global"]
    motion = (f[1:] - f[:-1]).abs().mean(0) if len(f) > 1 else torch.zeros_like(f[0])
    return torch.cat([f.mean(0), motion])


def distribution_distance(generated: Sequence, real: Sequence, size: int = 224) -> dict:
    """The FVD analogue between two sets of clips (uint8 (T, H, W, 3) or float (3, T, H, W))."""
    gen = torch.stack([clip_embedding(v, size) for v in generated])
    ref = torch.stack([clip_embedding(v, size) for v in real])
    return {
        "value": frechet_distance(gen, ref),
        "kid": kernel_distance(gen, ref),
        "label": "substitute",
        "note": "FVD analogue: Fréchet distance of EfficientNet-Lite0 clip embeddings (appearance + motion), not I3D; kid: the unbiased kernel distance on the same embeddings",
        "n_generated": len(gen),
        "n_real": len(ref),
    }

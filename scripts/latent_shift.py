"""Which time shift puts a DiT's training on a new latent at the noise levels of a reference one?

    mvdit cache configs/tiny.toml --limit 4096 --out runs/cache-4x8x8
    mvdit cache configs/tiny-4x4x4-32.toml --limit 4096 --out runs/cache-4x4x4-32
    python scripts/latent_shift.py runs/cache-4x8x8 runs/cache-4x4x4-32 --plot shift.png

Along the rectified-flow path x_t = (1 - t) x0 + t noise, a DiT learns to create what x_t no
longer shows. Two measures of how much x_t still shows, each compared between the two latents:

- **linear**: for Gaussian latents with covariance eigenvalues lambda_i (principal components over
  whole clips) the best linear denoiser leaves the fraction
  f(t) = sum_i lambda_i t^2 / ((1 - t)^2 lambda_i + t^2) / sum_i lambda_i of the variance
  unexplained. It sees only second moments.
- **where the object is**: in the first latent frame, the cell of largest energy above the
  background (the per-position mean over clips) is where the object sits. The script adds noise at
  time t and looks for the object the same way in x_t; the share of clips where it is found
  within 6 pixels is a(t). A sparse latent (the object's few cells carry large values) keeps it
  findable to larger t, so a DiT trained at the reference's times rarely has to place the object
  itself.

For each measure, t' on the new latent where it equals the reference's value at t gives the SD3
shift mapping one onto the other, s = t' (1 - t) / (t (1 - t')).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from mvdit.data.cache import LatentCacheDataset

CELL_PX = 6.0  # "found": within this many pixels of the true cell's centre


def load_latents(cache: Path, limit: int) -> tuple[np.ndarray, int]:
    """Latents (N, C, T, h, w) of a cache and its spatial factor (pixels per latent cell)."""
    ds = LatentCacheDataset(cache)
    x = torch.stack([ds[i]["latent"] for i in range(min(limit, len(ds)))]).double().numpy()
    return x, int(ds.index["dataset"]["height"]) // x.shape[-2]


def unexplained(lam: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = t[:, None]
    return (lam * t**2 / ((1 - t) ** 2 * lam + t**2)).sum(1) / lam.sum()


def linear_curve(x: np.ndarray, grid: np.ndarray) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    flat = flat - flat.mean(0)
    lam = np.clip(np.linalg.eigvalsh(flat.T @ flat / (len(flat) - 1)), 0.0, None)
    return unexplained(lam, grid)


def found_curve(x: np.ndarray, factor: int, grid: np.ndarray, seed: int = 0) -> np.ndarray:
    first = x[:, :, 0]  # (N, C, h, w): the first frame has a latent step of its own
    n, _, h, w = first.shape
    bg = first.mean(0, keepdims=True)
    centre = lambda i: np.stack([i // w, i % w], 1) * factor + factor / 2  # noqa: E731
    true = centre(((first - bg) ** 2).sum(1).reshape(n, -1).argmax(1))
    rng = np.random.default_rng(seed)
    out = []
    for t in grid:
        xt = (1 - t) * first + t * rng.standard_normal(first.shape)
        seen = centre(((xt - (1 - t) * bg) ** 2).sum(1).reshape(n, -1).argmax(1))
        out.append(float((np.linalg.norm(seen - true, axis=1) <= CELL_PX).mean()))
    return np.array(out)


def matched_shift(ref: np.ndarray, new: np.ndarray, grid: np.ndarray, t: float) -> dict:
    """t' where the new curve reaches the reference's value at t (both monotone in t)."""
    value = float(np.interp(t, grid, ref))
    order = np.argsort(new)
    t_new = float(np.interp(value, new[order], grid[order]))
    return {
        "t_ref": t,
        "value": round(value, 4),
        "t_new": round(t_new, 4),
        "shift": round(t_new * (1 - t) / (t * (1 - t_new)), 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reference", type=Path, help="latent cache of the latent whose schedule works")
    p.add_argument("new", type=Path, help="latent cache of the latent to match")
    p.add_argument("--clips", type=int, default=4096)
    p.add_argument("--plot", type=Path, default=None, help="write both measures as a PNG")
    a = p.parse_args()

    (xr, fr), (xn, fn) = load_latents(a.reference, a.clips), load_latents(a.new, a.clips)
    fine = np.linspace(1e-4, 1 - 1e-4, 2001)
    lin_r, lin_n = linear_curve(xr, fine), linear_curve(xn, fine)
    coarse = np.linspace(0.3, 0.995, 140)
    loc_r, loc_n = found_curve(xr, fr, coarse), found_curve(xn, fn, coarse)
    out = {
        "reference": {"cache": str(a.reference), "latent": list(xr.shape[1:])},
        "new": {"cache": str(a.new), "latent": list(xn.shape[1:])},
        "linear": [matched_shift(lin_r, lin_n, fine, t) for t in (0.3, 0.5, 0.7, 0.9)],
        "object_found": [matched_shift(-loc_r, -loc_n, coarse, t) for t in (0.6, 0.7, 0.8)],
    }
    for row in out["object_found"]:
        row["value"] = -row["value"]
    print(json.dumps(out, indent=1))
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, (cr, cn, g), title in (
            (left, (lin_r, lin_n, fine), "variance a linear denoiser cannot recover"),
            (right, (loc_r, loc_n, coarse), f"object found within {CELL_PX:g} px"),
        ):
            ax.plot(g, cr, label=f"{a.reference.name} {tuple(xr.shape[1:])}")
            ax.plot(g, cn, label=f"{a.new.name} {tuple(xn.shape[1:])}")
            ax.set_xlabel("t (1 = noise)")
            ax.set_title(title, fontsize=9)
            ax.grid(alpha=0.3)
        left.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)


if __name__ == "__main__":
    main()

"""Which time shift puts a DiT's training on a new latent at the noise levels of a reference one?

    mvdit cache configs/tiny.toml --limit 4096 --out runs/cache-4x8x8
    mvdit cache configs/tiny.toml --set vae.path=cpu-4x4x4-32 --limit 4096 --out runs/cache-4x4x4-32
    python scripts/latent_shift.py runs/cache-4x8x8 runs/cache-4x4x4-32

Along the rectified-flow path x_t = (1 - t) x0 + t noise, what is left to be decided at time t
is what the best denoiser cannot yet recover from x_t. For Gaussian latents with covariance
eigenvalues lambda_i (the latent's principal components over whole clips), the linear MMSE
leaves the fraction

    f(t) = sum_i lambda_i t^2 / ((1 - t)^2 lambda_i + t^2) / sum_i lambda_i

of the latent's variance unexplained. A latent with more redundant dimensions (more channels,
a finer grid) keeps f(t) small up to larger t: the same t destroys less of it. For each t on the
reference's path, the script finds t' where the new latent is equally hidden, f_new(t') =
f_ref(t), and the SD3 shift that maps one onto the other, s = t' (1 - t) / (t (1 - t')). Both
shifts are reported over the middle of the path, where training spends most of its steps.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file


def load_latents(cache: Path, limit: int) -> np.ndarray:
    rows, n = [], 0
    for shard in sorted(cache.glob("shard_*.safetensors")):
        x = load_file(str(shard))["latents"].astype(np.float64)
        rows.append(x.reshape(len(x), -1))
        n += len(x)
        if n >= limit:
            break
    if not rows:
        raise SystemExit(f"{cache}: no shard_*.safetensors; build it with `mvdit cache`")
    return np.concatenate(rows)[:limit]


def spectrum(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0)
    lam = np.linalg.eigvalsh(x.T @ x / (len(x) - 1))
    return np.clip(lam, 0.0, None)


def unexplained(lam: np.ndarray, t: np.ndarray) -> np.ndarray:
    t = t[:, None]
    return (lam * t**2 / ((1 - t) ** 2 * lam + t**2)).sum(1) / lam.sum()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("reference", type=Path, help="latent cache of the latent whose schedule works")
    p.add_argument("new", type=Path, help="latent cache of the latent to match")
    p.add_argument("--clips", type=int, default=4096)
    p.add_argument("--plot", type=Path, default=None, help="write f(t) of both as a PNG")
    a = p.parse_args()

    lam_ref = spectrum(load_latents(a.reference, a.clips))
    lam_new = spectrum(load_latents(a.new, a.clips))
    grid = np.linspace(1e-4, 1 - 1e-4, 20001)
    f_ref, f_new = unexplained(lam_ref, grid), unexplained(lam_new, grid)
    rows = []
    for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9):
        target = unexplained(lam_ref, np.array([t]))[0]
        t_new = float(np.interp(target, f_new, grid))  # f is increasing in t
        rows.append(
            {
                "t_ref": t,
                "unexplained": round(float(target), 4),
                "t_new": round(t_new, 4),
                "shift": round(t_new * (1 - t) / (t * (1 - t_new)), 3),
            }
        )
    mid = [r["shift"] for r in rows if 0.3 <= r["t_ref"] <= 0.7]

    def dims(lam):
        top = np.sort(lam)[::-1]
        return int(np.searchsorted(np.cumsum(top) / top.sum(), 0.99) + 1)

    out = {
        "reference": {"cache": str(a.reference), "dims": len(lam_ref), "dims_99pct": dims(lam_ref)},
        "new": {"cache": str(a.new), "dims": len(lam_new), "dims_99pct": dims(lam_new)},
        "rows": rows,
        "shift_mid_path": round(float(np.median(mid)), 2),
    }
    print(json.dumps(out, indent=1))
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot(grid, f_ref, label=f"{a.reference.name} ({len(lam_ref)} dims)")
        ax.plot(grid, f_new, label=f"{a.new.name} ({len(lam_new)} dims)")
        ax.set_xlabel("t (1 = noise)")
        ax.set_ylabel("variance a linear denoiser cannot recover")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)


if __name__ == "__main__":
    main()

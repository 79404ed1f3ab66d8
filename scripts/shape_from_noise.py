"""At which noise level does a teacher lose an object's shape? (SDEdit on held-out clips.)

    python scripts/shape_from_noise.py runs/tiny-4x4x4-32/model configs/tiny-4x4x4-32.toml \
        --clips 96 --times 0,0.2,0.4,0.6,0.8,1 --plot shape_from_noise.png

Held-out `shapes` clips (the config's vocabulary, its `val` split) are encoded by the model's VAE,
noised along the rectified-flow path to x_t = (1 - t) x0 + t noise, and integrated back to t = 0
by the model's own sampler (its step sizes and guidance, only the steps below t), conditioned on
each clip's caption; the shapes detector then scores the decoded clip against that caption.
t = 0 is the VAE's reconstruction (the ceiling), t = 1 is generation from pure noise. Where the
shape score falls tells whether the DiT cannot keep a shape it is given (it falls already at
small t) or cannot choose one (it holds at small t and falls where the noise hides the outline).
"""

import argparse
import json
from pathlib import Path

import torch

from mvdit import MvditError
from mvdit.build import build_video_dataset
from mvdit.config import load_train_config
from mvdit.eval.faithfulness import score_clip, summarize
from mvdit.flow import interpolate
from mvdit.models.autoencoder import to_uint8
from mvdit.pipeline import Pipeline


@torch.no_grad()
def shape_from_noise(
    model: Path, config: Path, clips: int, times: list[float], batch: int, seed: int
) -> dict:
    pipe = Pipeline.from_pretrained(model)
    data = load_train_config(config).data
    dataset = build_video_dataset(data, "val")
    items = [dataset[i] for i in range(clips)]
    full = pipe.sampling().schedule
    batches = []  # (captions, x0, noise) of each batch, encoded once for every t
    for s in range(0, clips, batch):
        part = items[s : s + batch]
        x0 = pipe.vae.encode(torch.stack([it["video"] for it in part]))
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed + s))
        batches.append(([it["caption"] for it in part], x0, noise))
    rows = []
    for t in times:
        scores = []
        for captions, x0, noise in batches:
            if t > 0:
                # the model's own steps below t, entered at t itself
                x = interpolate(x0, noise, torch.full((len(captions),), t))
                schedule = [t] + [u for u in full if u < t]
                videos = pipe.generate(captions, schedule=schedule, start=x).videos
            else:
                videos = to_uint8(pipe.vae.decode(x0).float())
            scores += [score_clip(v.numpy(), c) for v, c in zip(videos, captions, strict=True)]
        row = {"t": t, "steps": sum(u < t for u in full)} | summarize(scores)
        rows.append(row)
        print(
            f"t {t:.2f} ({row['steps']:>2} steps): count {row['count']:.2f}  colour "
            f"{row['colour']:.2f}  shape {row['shape']:.2f}  motion {row['motion']:.2f}",
            flush=True,
        )
    return {"model": str(model), "config": str(config), "clips": clips, "rows": rows}


def plot(result: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in result["rows"]]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key in ("count", "colour", "shape", "motion"):
        ax.plot(t, [r[key] for r in result["rows"]], marker="o", label=key)
    ax.set_xlabel("t the sampler starts from (0: the VAE's reconstruction, 1: pure noise)")
    ax.set_ylabel("detector accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{Path(result['model']).parent.name}: {result['clips']} held-out clips")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path, help="a pipeline directory (pipeline.json + dit/ + vae/)")
    ap.add_argument("config", type=Path, help="the training config whose vocabulary to draw")
    ap.add_argument("--clips", type=int, default=96)
    ap.add_argument("--times", default="0,0.2,0.4,0.6,0.8,1")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the rows here")
    ap.add_argument("--plot", type=Path, help="write the curves here (PNG)")
    a = ap.parse_args()
    times = [float(x) for x in a.times.split(",")]
    if any(not 0 <= x <= 1 for x in times):
        raise SystemExit(f"--times must lie in [0, 1], got {a.times}")
    if a.clips < 1 or a.batch < 1:
        raise SystemExit(f"--clips and --batch must be at least 1, got {a.clips} and {a.batch}")
    try:
        r = shape_from_noise(a.model, a.config, a.clips, times, a.batch, a.seed)
    except MvditError as e:
        raise SystemExit(f"error: {e}") from None
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))
    if a.plot:
        plot(r, a.plot)


if __name__ == "__main__":
    main()

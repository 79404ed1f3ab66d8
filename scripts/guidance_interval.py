"""Does guidance applied only where the shape is decided help a teacher draw it?

    python scripts/guidance_interval.py runs/tiny-4x4x4/model -p prompts/shapes-eval.txt \
        -p prompts/shapes-holdout.txt -p prompts/shapes-paraphrase.txt --interval 0.6,0.9

Classifier-free guidance in a limited interval (Kynkäänniemi et al. 2024) guides only the steps
whose start time t lies in [low, high] and samples the others with the conditional velocity
alone. scripts/shape_from_noise.py finds the tiny teachers lose the shape between t = 0.6 and 0.9.
For each prompt and seed the script samples the same starting noise three ways with the model's
own schedule (guidance at every step, at no step, and in the interval only) and scores the clips
with the shapes detector, so the rows differ in the guidance alone.
"""

import argparse
import json
from pathlib import Path

import torch

from mvdit import MvditError
from mvdit.eval.evaluate import read_prompts
from mvdit.eval.faithfulness import score_clip, summarize
from mvdit.models.autoencoder import to_uint8
from mvdit.pipeline import Pipeline, start_noise


def segments(schedule: list[float], cfg: float, low: float, high: float):
    """The schedule cut into runs of consecutive steps with one guidance scale each: `cfg` for a
    step starting at t in [low, high], 1 otherwise. Consecutive runs share their boundary time."""
    out: list[tuple[list[float], float]] = []
    for t, t_next in zip(schedule[:-1], schedule[1:], strict=True):
        scale = cfg if low <= t <= high else 1.0
        if out and out[-1][1] == scale:
            out[-1][0].append(t_next)
        else:
            out.append(([t, t_next], scale))
    return out


@torch.no_grad()
def compare(model: Path, prompt_files: list[Path], seeds: int, low: float, high: float, batch: int):
    pipe = Pipeline.from_pretrained(model)
    prompts = [row["prompt"] for f in prompt_files for row in read_prompts(f)]
    sampling = pipe.sampling()
    full, cfg = sampling.schedule, sampling.guidance
    ways = {
        f"guidance {cfg:g} at every step": [(full, cfg)],
        "no guidance": [(full, 1.0)],
        f"guidance {cfg:g} for t in [{low:g}, {high:g}]": segments(full, cfg, low, high),
    }
    scores: dict[str, list[dict]] = {name: [] for name in ways}
    for seed in range(seeds):
        for s in range(0, len(prompts), batch):
            part = prompts[s : s + batch]
            noise = start_noise(len(part), pipe.latent_shape, seed * 100_003 + s)
            for name, plan in ways.items():
                x = noise
                for sched, scale in plan:
                    x = pipe.generate(part, guidance=scale, schedule=sched, start=x, decode=False)
                    x = x.latents
                videos = to_uint8(pipe.vae.decode(x).float())
                scores[name] += [
                    score_clip(v.numpy(), p) for v, p in zip(videos, part, strict=True)
                ]
    rows = [{"guidance": name, "clips": len(sc)} | summarize(sc) for name, sc in scores.items()]
    return {"model": str(model), "prompts": [str(f) for f in prompt_files], "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", type=Path, help="a pipeline directory (pipeline.json + dit/ + vae/)")
    ap.add_argument("-p", "--prompts", type=Path, action="append", required=True)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--interval", default="0.6,0.9", help="low,high: the t range guided")
    ap.add_argument("--batch", type=int, default=24)
    ap.add_argument("--json", type=Path, help="write the rows here")
    a = ap.parse_args()
    try:
        low, high = (float(x) for x in a.interval.split(","))
    except ValueError:
        raise SystemExit(f"--interval takes two times low,high, got {a.interval!r}") from None
    if not 0 <= low < high <= 1:
        raise SystemExit(f"--interval needs 0 <= low < high <= 1, got {a.interval}")
    if a.seeds < 1 or a.batch < 1:
        raise SystemExit(f"--seeds and --batch must be at least 1, got {a.seeds} and {a.batch}")
    try:
        r = compare(a.model, a.prompts, a.seeds, low, high, a.batch)
    except MvditError as e:
        raise SystemExit(f"error: {e}") from None
    keys = ("count", "colour", "shape", "motion")
    print("| guidance | clips | " + " | ".join(keys) + " |")
    print("|---|---:|" + "---:|" * len(keys))
    for row in r["rows"]:
        vals = " | ".join(f"{row[k]:.2f}" for k in keys)
        print(f"| {row['guidance']} | {row['clips']} | {vals} |")
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))


if __name__ == "__main__":
    main()

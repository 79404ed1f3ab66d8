"""The compression trade-off study (`mvdit study vae`): what each VAE ratio costs and saves.

Every ratio is trained on the same `shapes` clips with the same budget (steps, batch, width),
then scored on held-out clips and timed on this machine. The table puts reconstruction quality
beside what the ratio buys the DiT: tokens at the paper's 49x384x512 clip and at the CPU
preset's 9x32x32 clip, and FLOPs per step of the paper's 0.9B student at that token count.

Latent channels follow the published VAE at each ratio (Wan 2.1: 4x8x8 with 16; Wan 2.2:
4x16x16 with 48; 8x16x16 with 64; LTX-Video: 8x32x32 with 128), so the study compares real
design points rather than one channel count stretched over every ratio.

Generation quality of a DiT trained on each latent space is the column `gen_quality`: pass
`generation_quality(vae_dir, row) -> float` to `run_vae_study` (the evaluation stage does), and
it is filled in; without it the column reads "n/a".
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import torch

from mvdit.bench.measure import timed
from mvdit.config import preset_config
from mvdit.io import atomic_write_text, read_json, save_figure, write_json
from mvdit.models.dit import dit_flops
from mvdit.models.vae import CausalVideoVAE, vae_preset
from mvdit.stages.vae import (
    VAEArchConfig,
    VAEDataConfig,
    VAEEvalConfig,
    VAEOptimConfig,
    VAERunConfig,
    VAETrainConfig,
    train_vae,
)

STUDY_CHANNELS: dict[str, int] = {"4x8x8": 16, "4x16x16": 48, "8x16x16": 64, "8x32x32": 128}
PAPER_CLIP = (49, 384, 512)
CPU_CLIP = (9, 32, 32)
TEXT_TOKENS = 77  # CLIP's context, the paper's text encoder

GenerationQuality = Callable[[Path, dict], float]


def tokens(ratio_cfg, clip: tuple[int, int, int]) -> int:
    """DiT tokens (patch size 1) of a clip through a VAE config: (1 + (T-1)/tf) * H/sf * W/sf."""
    t, h, w = clip
    tf, sf = ratio_cfg.temporal_factor, ratio_cfg.spatial_factor
    return (1 + (t - 1) // tf) * max(1, h // sf) * max(1, w // sf)


def study_train_config(
    ratio: str,
    out_dir: Path,
    clip: tuple[int, int, int],
    steps: int,
    batch_size: int,
    width: int,
    lr: float,
    eval_clips: int,
    threads: int | None,
):
    stages = len(vae_preset(ratio).widths)
    frames, height, width_px = clip
    return VAETrainConfig(
        data=VAEDataConfig(frames=frames, height=height, width=width_px, seed=1),
        model=VAEArchConfig(
            preset=ratio,
            latent_channels=STUDY_CHANNELS[ratio],
            widths=[width] + [2 * width] * (stages - 1),
        ),
        optim=VAEOptimConfig(
            lr=lr,
            batch_size=batch_size,
            steps=steps,
            warmup_steps=max(1, min(100, steps // 10)),
            ema_decay=0.99,
        ),
        run=VAERunConfig(
            out_dir=str(out_dir / ratio),
            threads=threads,
            checkpoint_every=max(1, steps // 4),
            log_every=10,
        ),
        eval=VAEEvalConfig(
            clips=eval_clips, stats_clips=max(eval_clips, 64 if steps > 10 else 2), batch_size=4
        ),
    )


def run_vae_study(
    out_dir: str | Path,
    ratios: list[str] | None = None,
    clip: tuple[int, int, int] = (17, 64, 64),
    steps: int = 300,
    batch_size: int = 4,
    width: int = 32,
    lr: float = 3e-4,
    eval_clips: int = 32,
    timing_repeats: int = 20,
    threads: int | None = 1,
    generation_quality: GenerationQuality | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train, score and time one VAE per ratio; write study.{md,csv,json,png}. Resumable: a
    ratio whose run finished is read back, an interrupted one continues from its checkpoint."""
    out_dir = Path(out_dir)
    ratios = ratios or list(STUDY_CHANNELS)
    if threads:
        torch.set_num_threads(threads)
    rows = []
    for ratio in ratios:
        cfg = study_train_config(
            ratio, out_dir, clip, steps, batch_size, width, lr, eval_clips, threads
        )
        run_dir = Path(cfg.run.out_dir)
        done = (run_dir / "eval.json").is_file() and read_json(run_dir / "summary.json").get(
            "steps"
        ) == steps
        if not done:
            train_vae(cfg, resume=True, progress=progress)
        scores = read_json(run_dir / "eval.json")
        seconds = read_json(run_dir / "summary.json")["seconds"]
        vae = CausalVideoVAE.from_pretrained(run_dir / "model")
        x = torch.rand(1, 3, *clip) * 2 - 1
        with torch.no_grad():
            z = vae.encode(x)
            enc_ms = 1000 * min(timed(lambda: vae.encode(x), reps=timing_repeats))  # noqa: B023 - timed now, not later
            dec_ms = 1000 * min(timed(lambda: vae.decode(z), reps=timing_repeats))  # noqa: B023
        arch = vae.config
        paper_tokens = tokens(arch, PAPER_CLIP)
        student = preset_config("paper-student", in_channels=arch.latent_channels)
        row = {
            "ratio": ratio,
            "latent_channels": arch.latent_channels,
            "latent_shape": "x".join(map(str, vae.latent_shape(*clip))),
            "tokens_49x384x512": paper_tokens,
            "tokens_9x32x32": tokens(arch, CPU_CLIP),
            "psnr": scores["psnr"],
            "ssim": scores["ssim"],
            "edge_f1": scores.get("edge_f1"),
            # the shapes detector on the reconstructions: what a DiT on this latent can draw
            "shape": (scores.get("faithfulness") or {}).get("shape"),
            "encode_ms": round(enc_ms, 2),
            "decode_ms": round(dec_ms, 2),
            "dit_tflops_per_step": round(dit_flops(student, paper_tokens, TEXT_TOKENS) / 1e12, 3),
            "vae_params_m": round(vae.param_count()["total"] / 1e6, 2),
            "train_seconds": seconds,
            "gen_quality": None,
        }
        if generation_quality is not None:
            row["gen_quality"] = generation_quality(run_dir / "model", row)
        rows.append(row)
    meta = {
        "clip": "x".join(map(str, clip)),
        "steps": steps,
        "batch_size": batch_size,
        "width": width,
        "lr": lr,
        "eval_clips": eval_clips,
        "threads": threads,
        "timing_repeats": timing_repeats,
    }
    write_study(out_dir, rows, meta)
    return rows


def write_study(out_dir: Path, rows: list[dict], meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "study.json", {"meta": meta, "rows": rows})
    with (out_dir / ".study.csv.tmp").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out_dir / ".study.csv.tmp").replace(out_dir / "study.csv")
    atomic_write_text(out_dir / "study.md", study_markdown(rows, meta))
    plot_study(rows, out_dir / "study.png")


def _cell(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def study_markdown(rows: list[dict], meta: dict) -> str:
    head = (
        "| ratio | latent ch | DiT tokens 49x384x512 | DiT tokens 9x32x32 | PSNR (dB) | SSIM | edge F1 | shape | encode ms | decode ms "
        "| DiT TFLOPs/step (0.9B student) | gen. quality |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    body = "".join(
        f"| {r['ratio']} | {r['latent_channels']} | {r['tokens_49x384x512']:,} | {r['tokens_9x32x32']} | {r['psnr']:.2f} | {r['ssim']:.4f} "
        f"| {_cell(r.get('edge_f1'))} | {_cell(r.get('shape'))} | {r['encode_ms']:.1f} | {r['decode_ms']:.1f} | {r['dit_tflops_per_step']:.2f} | {'n/a' if r['gen_quality'] is None else r['gen_quality']} |\n"
        for r in rows
    )
    note = (
        f"\nClips {meta['clip']} (shapes, held-out 'val' split, {meta['eval_clips']} clips); every ratio trained "
        f"{meta['steps']} steps, batch {meta['batch_size']}, base width {meta['width']}, lr {meta['lr']}; "
        f"encode/decode: best of {meta['timing_repeats']} per clip, {meta['threads']} thread(s), this machine. "
        f"DiT TFLOPs: paper-student config, {TEXT_TOKENS} text tokens.\n"
    )
    return head + body + note


def plot_study(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    x = [r["tokens_49x384x512"] for r in rows]
    a.plot(x, [r["psnr"] for r in rows], "o-", color="tab:blue")
    for r in rows:
        a.annotate(
            f"{r['ratio']} ({r['latent_channels']}ch)",
            (r["tokens_49x384x512"], r["psnr"]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=8,
        )
    a.set_xscale("log")
    a.set_xticks(x, [f"{v:,}" for v in x], fontsize=8)
    a.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    a.set_xlim(min(x) / 1.6, max(x) * 2.5)  # room for the labels
    a.set_xlabel("DiT tokens at 49x384x512")
    a.set_ylabel("held-out PSNR (dB)")
    a.set_title("reconstruction vs. DiT sequence length")
    a.grid(alpha=0.3)
    names = [r["ratio"] for r in rows]
    b.bar(names, [r["dit_tflops_per_step"] for r in rows], color="tab:orange")
    b.set_yscale("log")
    b.set_ylabel("DiT TFLOPs per step (0.9B student)")
    b2 = b.twinx()
    b2.plot(names, [r["decode_ms"] for r in rows], "s-", color="tab:green")
    b2.set_ylabel("VAE decode ms per clip", color="tab:green")
    b2.set_ylim(bottom=0)
    b.set_title("what each ratio costs")
    save_figure(fig, path, dpi=110)

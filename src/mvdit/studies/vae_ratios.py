"""The compression trade-off study (`mvdit study vae`): what each VAE ratio costs and saves.

Every ratio is trained on the same `shapes` clips with the same budget (steps, batch, width),
then scored on held-out clips and timed on this machine. The table puts reconstruction quality
beside what the ratio buys the DiT: tokens at the paper's 49x384x512 clip and at the CPU
preset's 9x32x32 clip, and FLOPs per step of the paper's 0.9B student at that token count.

Latent channels follow the published VAE at each ratio (Wan 2.1: 4x8x8 with 16; Wan 2.2:
4x16x16 with 48; 8x16x16 with 64; LTX-Video: 8x32x32 with 128), so the study compares real
design points rather than one channel count stretched over every ratio.

Generation quality is what a DiT trained on each latent space draws: `DiTGenerationQuality`
trains the embedded default's DiT (the tiny preset, its vocabulary) on one ratio's latents of the
study's clips and scores its samples with the shapes detector; `run_vae_study(...,
generation_quality=..., generate=[ratios])` fills the `gen_*` columns of those ratios (the
others read "n/a"), with the DiT's seconds per training step beside them.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field

from mvdit import MvditError
from mvdit.bench.measure import timed
from mvdit.config import Strict, default_config_path, default_train_config, preset_config
from mvdit.eval.evaluate import EvalConfig, evaluate, write_prompt_files
from mvdit.io import atomic_write_text, read_json, save_figure, write_json
from mvdit.limits import bounded
from mvdit.models.dit import dit_flops
from mvdit.models.vae import CausalVideoVAE, vae_preset
from mvdit.results import Result
from mvdit.stages.teacher import train_teacher
from mvdit.stages.train_vae import (
    VAEArchConfig,
    VAEDataConfig,
    VAEEvalConfig,
    VAELossConfig,
    VAEOptimConfig,
    VAERunConfig,
    VAETrainConfig,
    train_vae,
)
from mvdit.studies import claim_study_dir

STUDY_CHANNELS: dict[str, int] = {"4x8x8": 16, "4x16x16": 48, "8x16x16": 64, "8x32x32": 128}
PAPER_CLIP = (49, 384, 512)
CPU_CLIP = (9, 32, 32)
TEXT_TOKENS = 77  # CLIP's context, the paper's text encoder
EDGE_WEIGHT = 10.0  # configs/vae-cpu-4x4x4.toml's loss.edge_weight
STUDY_LR = 1e-3  # and its learning rate

GenerationQuality = Callable[[Path, dict], dict]
GEN_KEYS = ("overall", "colour", "shape", "motion")  # the detector's columns of generated clips


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
        # the recipe that keeps shape (docs/vae.md, "The fix"): L1/MSE 11x on the outlines
        loss=VAELossConfig(edge_weight=EDGE_WEIGHT),
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
    *,
    ratios: list[str] | None = None,
    clip: tuple[int, int, int] = (17, 64, 64),
    steps: int = 300,
    batch_size: int = 4,
    width: int = 32,
    lr: float = STUDY_LR,
    eval_clips: int = 64,
    timing_repeats: int = 20,
    threads: int | None = 1,
    generation_quality: GenerationQuality | None = None,
    generate: list[str] | None = None,
    progress: bool = True,
) -> list[dict]:
    """Train, score and time one VAE per ratio; write study.{md,csv,json,png}. Resumable: a
    ratio whose run finished is read back, an interrupted one continues from its checkpoint.
    `generation_quality` is called for the ratios in `generate` (default: every ratio)."""
    out_dir = claim_study_dir(out_dir, "study vae")
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
        faith = scores.get("faithfulness") or {}
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
            "shape": faith.get("shape"),
            "colour": faith.get("colour"),
            "motion": faith.get("motion"),
            "encode_ms": round(enc_ms, 2),
            "decode_ms": round(dec_ms, 2),
            "dit_tflops_per_step": round(dit_flops(student, paper_tokens, TEXT_TOKENS) / 1e12, 3),
            "vae_params_m": round(vae.param_count()["total"] / 1e6, 2),
            "train_seconds": seconds,
            **dict.fromkeys(GEN_COLUMNS),
        }
        if generation_quality is not None and (generate is None or ratio in generate):
            row |= generation_quality(run_dir / "model", row)
        rows.append(row)
    meta = {
        "clip": "x".join(map(str, clip)),
        "steps": steps,
        "batch_size": batch_size,
        "width": width,
        "lr": lr,
        "edge_weight": EDGE_WEIGHT,
        "eval_clips": eval_clips,
        "threads": threads,
        "timing_repeats": timing_repeats,
        "dit": getattr(generation_quality, "note", None) if generation_quality else None,
    }
    write_study(out_dir, rows, meta)
    return rows


GEN_COLUMNS = (*(f"gen_{k}" for k in GEN_KEYS), "dit_tokens", "dit_s_per_step", "dit_steps")


@dataclass(frozen=True)
class DiTGenerationQuality:
    """`generation_quality` for `run_vae_study`: train the embedded default's DiT config (tiny
    preset, its one-object vocabulary, batch 32, 20-step CFG sampling) for `steps` on a VAE's
    latents of `cache_clips` clips of size `clip` (encoded once), at patch 1 unless that gives
    more than 96 tokens (then patch 2), and score it with the shapes detector on the vocabulary's
    three prompt sets (`prompts` per set, `seeds` clips per prompt). Resumable: a finished DiT and
    its scores are read back."""

    clip: tuple[int, int, int]
    steps: int = 1500
    cache_clips: int = 4000
    prompts: int = 24
    seeds: int = 2
    progress: bool = True

    @property
    def note(self) -> str:
        base = default_train_config()
        return (
            f"{self.steps} steps of batch {base.optim.batch_size} on {self.cache_clips:,} cached "
            f"clips; {3 * self.prompts} prompts x {self.seeds} seeds, {base.sample.steps} steps, "
            f"CFG {base.sample.guidance:g}"
        )

    def __call__(self, vae_dir: Path, row: dict) -> dict:
        latent = [int(v) for v in row["latent_shape"].split("x")]  # C x T x H x W
        cells = latent[1] * latent[2] * latent[3]
        patch = 1 if cells <= 96 else 2
        frames, height, width = self.clip
        base = default_train_config()
        cfg = base.model_copy(
            update={
                "data": base.data.model_copy(
                    update={
                        "frames": frames,
                        "height": height,
                        "width": width,
                        "cache_clips": self.cache_clips,
                    }
                ),
                "vae": base.vae.model_copy(update={"path": str(vae_dir)}),
                "model": base.model.model_copy(update={"patch_size": patch}),
                # the shift the study measured with, whatever the base config sets (each
                # ratio's latent may want its own: scripts/latent_shift.py)
                "flow": base.flow.model_copy(update={"shift": "auto"}),
                "optim": base.optim.model_copy(
                    update={
                        "steps": self.steps,
                        "warmup_steps": min(base.optim.warmup_steps, self.steps),
                    }
                ),
                "run": base.run.model_copy(
                    update={
                        "out_dir": str(Path(vae_dir).parent / "dit"),
                        "checkpoint_every": max(1, self.steps // 4),
                    }
                ),
            }
        )
        run = Path(cfg.run.out_dir)
        summary = run / "summary.json"
        if not (summary.is_file() and read_json(summary)["steps"] == self.steps):
            train_teacher(cfg, resume=True, progress=self.progress)
        done = read_json(summary)
        trained = done["steps"] - (done.get("resumed_from") or 0)
        result = run / "eval" / "eval.json"
        if not result.is_file():
            files = write_prompt_files(default_config_path(), run / "prompts", n=self.prompts)
            evaluate(EvalConfig(model=str(run / "model"), prompts=[str(f) for f in files],
                                out=str(run / "eval"), seeds=self.seeds))  # fmt: skip
        f = read_json(result)["faithfulness"]["all"]
        return {
            **{f"gen_{k}": f.get(k) for k in GEN_KEYS},
            "dit_tokens": cells // patch**2,
            "dit_s_per_step": round(done["seconds"] / max(1, trained), 3),
            "dit_steps": self.steps,
        }


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
    return "n/a" if x is None else f"{x:.2f}"


STUDY_COLUMNS = (  # header, row -> cell
    ("ratio", lambda r: r["ratio"]),
    ("latent ch", lambda r: str(r["latent_channels"])),
    ("DiT tokens 49x384x512", lambda r: f"{r['tokens_49x384x512']:,}"),
    ("PSNR (dB)", lambda r: f"{r['psnr']:.2f}"),
    ("SSIM", lambda r: f"{r['ssim']:.4f}"),
    ("edge F1", lambda r: _cell(r.get("edge_f1"))),
    ("recon. shape", lambda r: _cell(r.get("shape"))),
    ("recon. colour", lambda r: _cell(r.get("colour"))),
    ("recon. motion", lambda r: _cell(r.get("motion"))),
    ("encode ms", lambda r: f"{r['encode_ms']:.1f}"),
    ("decode ms", lambda r: f"{r['decode_ms']:.1f}"),
    ("DiT TFLOPs/step (0.9B student)", lambda r: f"{r['dit_tflops_per_step']:.2f}"),
    ("tiny DiT tokens", lambda r: str(r.get("dit_tokens") or "n/a")),
    ("tiny DiT s/step", lambda r: _cell(r.get("dit_s_per_step"))),
    *((f"gen. {k}", lambda r, k=k: _cell(r.get(f"gen_{k}"))) for k in GEN_KEYS),
)


def study_markdown(rows: list[dict], meta: dict) -> str:
    head = (
        "| "
        + " | ".join(h for h, _ in STUDY_COLUMNS)
        + " |\n"
        + "|---" * len(STUDY_COLUMNS)
        + "|\n"
    )
    body = "".join("| " + " | ".join(cell(r) for _, cell in STUDY_COLUMNS) + " |\n" for r in rows)
    note = (
        f"\nClips {meta['clip']} (shapes, held-out 'val' split, {meta['eval_clips']} clips); every ratio trained "
        f"{meta['steps']} steps, batch {meta['batch_size']}, base width {meta['width']}, lr {meta['lr']}, "
        f"edge weight {meta.get('edge_weight', 0)}; encode/decode: best of {meta['timing_repeats']} per clip, "
        f"{meta['threads']} thread(s), this machine. DiT TFLOPs: paper-student config, {TEXT_TOKENS} text tokens. "
        "gen.: the shapes detector on clips of the embedded default's DiT trained on that ratio's latents "
        f"({meta.get('dit') or 'not run'}).\n"
    )
    return head + body + note


def plot_study(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 3.8))
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
    # what survives the latent: edges and the detector on reconstructions, and on what a DiT
    # trained on the latent draws (where the study trained one)
    bars = [
        ("edge F1", lambda r: r.get("edge_f1")),
        ("recon. colour", lambda r: r.get("colour")),
        ("recon. shape", lambda r: r.get("shape")),
        ("gen. colour", lambda r: r.get("gen_colour")),
        ("gen. shape", lambda r: r.get("gen_shape")),
    ]
    width = 0.8 / len(bars)
    for i, (label, get) in enumerate(bars):
        xs = [j + (i - (len(bars) - 1) / 2) * width for j in range(len(rows))]
        c.bar(xs, [get(r) or 0 for r in rows], width, label=label)
    c.set_xticks(range(len(rows)), names)
    c.set_ylim(0, 1)
    c.set_ylabel("score (gen.: 0 where not trained)")
    c.set_title("what the latent keeps")
    c.legend(fontsize=7, ncol=2)
    save_figure(fig, path, dpi=110)


def quick_study(generate: bool) -> dict:
    """`mvdit study vae --quick`: every part of the study at the smallest size that runs it (9x32x32
    clips, 2 training steps, width 8, 2 evaluation clips), to check the study end to end in
    seconds; its numbers mean nothing."""
    quality = DiTGenerationQuality(
        (9, 32, 32), steps=2, cache_clips=4, prompts=1, seeds=1, progress=False
    )
    return dict(clip=(9, 32, 32), steps=2, batch_size=2, width=8, eval_clips=2,
                timing_repeats=1, generation_quality=quality if generate else None,
                progress=False)  # fmt: skip


class StudyVAEConfig(Strict):
    """[study_vae]: `mvdit study vae`"""

    out: str = Field(
        default="runs/study-vae",
        description="study directory (one run per ratio + study.md/csv/json/png); rerun to resume",
    )
    quick: bool = Field(
        default=False, description="a seconds-long smoke run: tiny models, 2 steps, 9x32x32 clips"
    )
    steps: int = Field(
        default=300, ge=1, description="training steps per ratio (the same budget for all)"
    )
    frames: int = Field(
        default=17, ge=1, description="clip frames (1 + 8k, so every ratio applies)"
    )
    size: int = Field(default=64, ge=32, description="clip height and width (a multiple of 32)")
    width: int = Field(
        default=32, ge=1, description="VAE base width (channels of the finest stage)"
    )
    threads: int = bounded(
        "threads", 1, description="CPU threads (1 is steadiest on a shared machine)"
    )
    ratio: list[str] = Field(
        default_factory=lambda: list(STUDY_CHANNELS),
        description="only these ratios (repeatable); two processes can each take some, and a last "
        "run with all tabulates them",
    )
    generate: list[str] = Field(
        default_factory=list,
        description="train the default's tiny DiT on these ratios' latents and score what it draws "
        "(repeatable; the gen. columns, and the DiT's seconds per step)",
    )
    dit_steps: int = Field(default=1500, ge=1, description="--generate: DiT training steps")
    dit_clips: int = Field(
        default=4000, ge=1, description="--generate: clips encoded once for the DiT to train on"
    )


class StudyVAESections(Strict):
    study_vae: StudyVAEConfig = Field(default_factory=StudyVAEConfig)


def study_vae(cfg: StudyVAEConfig) -> Result:
    for flag, names in (("--ratio", cfg.ratio), ("--generate", cfg.generate)):
        if unknown := [r for r in names if r not in STUDY_CHANNELS]:
            raise MvditError(
                f"{flag} {unknown[0]!r} is not in the study: use one of {', '.join(STUDY_CHANNELS)}"
            )
    generate = cfg.generate or None
    if cfg.quick:
        kw = quick_study(bool(generate))
    else:
        if (cfg.frames - 1) % 8 or cfg.size % 32:
            raise MvditError(
                f"--frames must be 1 + 8k and --size a multiple of 32 so every ratio applies, got "
                f"{cfg.frames} and {cfg.size}"
            )
        clip = (cfg.frames, cfg.size, cfg.size)
        quality = DiTGenerationQuality(clip, steps=cfg.dit_steps, cache_clips=cfg.dit_clips)
        kw = dict(clip=clip, steps=cfg.steps, width=cfg.width,
                  generation_quality=quality if generate else None)  # fmt: skip
    rows = run_vae_study(cfg.out, ratios=cfg.ratio, threads=cfg.threads, generate=generate, **kw)
    return Result({"rows": rows}, lambda r: _study_lines(r["rows"], Path(cfg.out)), Path(cfg.out))


def _study_lines(rows: list[dict], out: Path) -> str:
    lines = [
        f"{r['ratio']:>8} {r['latent_channels']:>4}ch  tokens {r['tokens_49x384x512']:>6,}  PSNR "
        f"{r['psnr']:6.2f}  SSIM {r['ssim']:.4f}  decode {r['decode_ms']:.1f} ms"
        + ("" if r["gen_overall"] is None
           else f"  generated: overall {r['gen_overall']:.2f} shape {r['gen_shape']:.2f}")
        for r in rows
    ]  # fmt: skip
    return "\n".join([*lines, f"wrote {out / 'study.md'}, study.csv, study.json, study.png"])

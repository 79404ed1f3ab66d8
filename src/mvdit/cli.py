"""The `mvdit` command line: one typer app, each subcommand a thin call into a module.

User mistakes (MvditError) print one line and exit with status 2; nothing half-written is left.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import torch
import typer

from mvdit import MvditError, distributed
from mvdit.bench.dit import run_bench
from mvdit.bench.measure import si
from mvdit.bench.tiled_gemm import run_tiling_bench, tiling_markdown
from mvdit.bench.vae_decode import bench_markdown, run_vae_bench
from mvdit.build import build_video_dataset, cache_from_config, describe_preset, load_autoencoder
from mvdit.compress.importance import CRITERIA
from mvdit.config import (
    default_config_path,
    load_config,
    load_train_config,
    require_device,
    updated,
)
from mvdit.data.shapes import write_examples
from mvdit.demo import launch as launch_demo
from mvdit.demo import models_available
from mvdit.eval.curve import checkpoint_curve
from mvdit.eval.evaluate import EVAL_PROMPTS, difference_markdown, evaluate, paired_difference
from mvdit.eval.report import write_report
from mvdit.export.compare import eval_exported, run_side_by_side
from mvdit.export.pipeline import export_dit_preset, export_pipeline
from mvdit.io import (
    atomic_write_text,
    check_output_file,
    claim_output_dir,
    disk_full_message,
    is_disk_full,
    read_json,
    tree_bytes,
    write_json,
)
from mvdit.limits import check_bound, prompt_problem
from mvdit.models.vae import SHIPPED_VAES, shipped_vae_path
from mvdit.pipeline import Pipeline, shipped_model_path
from mvdit.stages import distill as distill_stage
from mvdit.stages import kd as kd_stage
from mvdit.stages import prune as prune_stage
from mvdit.stages import train_vae as vae_stage
from mvdit.stages.teacher import train_teacher
from mvdit.studies.distill_ablation import ROWS as DISTILL_ROWS
from mvdit.studies.distill_ablation import run_distill_study
from mvdit.studies.distill_ablation import study_markdown as study_distill_markdown
from mvdit.studies.prune_ablation import VARIANTS, run_prune_study
from mvdit.studies.vae_ratios import (
    STUDY_CHANNELS,
    DiTGenerationQuality,
    quick_study,
    run_vae_study,
)
from mvdit.video import contact_sheet, save_png, write_mp4

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="mvdit: small, fast text-to-video diffusion transformers.",
)


# the options every config-driven command shares
ConfigArg = Annotated[
    Path | None, typer.Argument(help="TOML/YAML file with the command's section (optional)")
]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="override a key, e.g. --set optim.steps=200")
]
GuidanceOpt = Annotated[
    float | None,
    typer.Option(
        "--cfg",
        "--guidance",
        help="classifier-free guidance scale; 1 turns it off (default: the model's)",
    ),
]
ResumeOpt = Annotated[bool, typer.Option(help="continue from the latest checkpoint in run.out_dir")]


def fail(msg: str) -> None:
    typer.echo(f"error: {_one_line(msg)}", err=True)
    raise typer.Exit(2)


def _report_run(summary: dict, out_dir: str | Path) -> None:
    """What a training command prints at the end: steps, time, final loss, where things are (under
    torchrun: rank 0 alone)."""
    if not distributed.is_main():
        return
    out = Path(out_dir)
    typer.echo(
        f"trained {summary['steps']} steps in {summary['seconds']:.0f}s; final loss {summary['final'].get('loss', float('nan')):.4f}"
    )
    typer.echo(
        f"model: {out / 'model'}   loss curve: {out / 'loss.png'}   log: {out / 'metrics.jsonl'}"
    )


@app.command()
def train(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="TOML/YAML training config; omit for the embedded default (configs/tiny.toml)"
        ),
    ] = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Train a text-to-video DiT teacher with rectified flow."""

    cfg = load_train_config(config or default_config_path(), set_)
    _report_run(train_teacher(cfg, resume=resume), cfg.run.out_dir)


@app.command()
def kd(
    config: Annotated[Path, typer.Argument(help="TOML/YAML KD config, e.g. configs/kd-tiny.toml")],
    set_: SetOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Recover a pruned DiT by distillation from the model it was pruned from."""

    cfg = kd_stage.load_kd_config(config, set_)
    _report_run(kd_stage.train_kd(cfg, resume=resume), cfg.run.out_dir)


@app.command()
def synth(
    config: ConfigArg = None,
    model: Annotated[
        str | None, typer.Option("--model", "-m", help="teacher pipeline directory")
    ] = None,
    prompts: Annotated[
        str | None, typer.Option("--prompts", "-p", help="prompt file, one per line")
    ] = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="latent cache directory (resumable)")
    ] = None,
    seeds: Annotated[int | None, typer.Option(help="samples per prompt")] = None,
    steps: Annotated[int | None, typer.Option(help="teacher sampling steps")] = None,
    guidance: GuidanceOpt = None,
    batch: Annotated[int | None, typer.Option(help="clips sampled at once")] = None,
    set_: SetOpt = None,
) -> None:
    """Teacher samples of a prompt list as a latent cache (distill.synthetic, or data.kind =
    "cache"). Every option is a key of the [synth] section."""
    cfg = load_config(distill_stage.SynthSections, config, set_).synth
    cfg = updated(cfg, _flags(model=model, prompts=prompts, out=out, seeds=seeds, steps=steps,
                              guidance=guidance, batch=batch))  # fmt: skip
    path = distill_stage.run_synth(cfg)
    typer.echo(f"wrote {path} (index.json records the prompts, seeds and sampler)")


@app.command()
def distill(
    config: Annotated[
        Path, typer.Argument(help="TOML/YAML distillation config, e.g. configs/distill-tiny.toml")
    ],
    set_: SetOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Adversarial step distillation: a guidance-free N-step student with a DiT discriminator."""

    cfg = distill_stage.load_distill_config(config, set_)
    summary = distill_stage.train_distill(cfg, resume=resume)
    if not distributed.is_main():
        return
    _report_run(summary, cfg.run.out_dir)
    typer.echo(f"student schedule {[round(t, 4) for t in summary['schedule']]}, no guidance")


@app.command()
def generate(
    prompt: Annotated[str, typer.Argument(help="what the video shows")],
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="model directory (pipeline.json + dit/ + vae/); default: the shipped 4-step student",
        ),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="sampling steps (default: the model's)")] = None,
    guidance: GuidanceOpt = None,
    seed: Annotated[int, typer.Option(help="noise seed")] = 0,
    frames: Annotated[int | None, typer.Option(help="frame count (default: the model's)")] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="output .mp4")] = Path("out.mp4"),
    sheet: Annotated[
        Path | None, typer.Option(help="also write a PNG contact sheet of the frames")
    ] = None,
    scale: Annotated[
        int | None,
        typer.Option(help="nearest upscale of the written video (default: to at least 128 px)"),
    ] = None,
    timings: Annotated[
        Path | None, typer.Option(help="also write the stage timings (seconds) as JSON")
    ] = None,
) -> None:
    """Generate a video from a prompt and write it as H.264 mp4."""

    if problem := prompt_problem(prompt):
        fail(problem)
    if output.suffix.lower() != ".mp4":
        fail(f"output must end in .mp4, got {output}")
    check_bound("seed", seed, "--seed")
    for key, value, flag in (("steps", steps, "--steps"), ("guidance", guidance, "--cfg"),
                             ("frames", frames, "--frames"), ("scale", scale, "--scale")):  # fmt: skip
        if value is not None:
            check_bound(key, value, flag)
    for path, flag in ((output, "--output"), (sheet, "--sheet"), (timings, "--timings")):
        if path is not None:
            check_output_file(path, flag)
    t0 = time.perf_counter()

    pipe = Pipeline.from_pretrained(model if model is not None else shipped_model_path())
    if frames is not None:
        pipe = pipe.with_clip(frames=frames)
    load_s = time.perf_counter() - t0
    if pipe.text_encoder.fills_window(prompt):
        typer.echo(
            f"note: the prompt fills the text encoder's {pipe.text_encoder.max_length}-token "
            "window: words past it are not read",
            err=True,
        )
    g = pipe.generate([prompt], steps=steps, guidance=guidance, seed=seed, progress=True).check()
    video = g.videos[0]
    t0 = time.perf_counter()
    write_mp4(output, video.numpy(), fps=pipe.config.fps, scale=scale)
    if sheet is not None:
        save_png(sheet, contact_sheet([video.numpy()], [prompt]))
    write_s = time.perf_counter() - t0
    if timings is not None:
        write_json(timings, {"load": load_s, **g.timings, "write": write_s, "nfe": g.nfe})
    c = pipe.config
    typer.echo(f"{c.frames}x{c.height}x{c.width} clip, {g.nfe} network evaluations")
    typer.echo(
        f"load {load_s:.2f}s | text encoder {g.timings['text']:.3f}s | DiT {g.timings['dit']:.3f}s | decode {g.timings['decode']:.3f}s | write {write_s:.2f}s"
    )
    typer.echo(f"wrote {output}" + (f" and {sheet}" if sheet else ""))


@app.command()
def convert(
    model: Annotated[Path, typer.Option("--model", "-m", help="pipeline directory")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the converted pipeline directory")],
    dtype: Annotated[
        str, typer.Option(help="storage dtype of the DiT's weights: fp32 or fp16")
    ] = "fp16",
    shipped_vae: Annotated[
        str | None,
        typer.Option(help="refer to this shipped VAE instead of copying vae/ (it must be it)"),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(help="replace OUT even if it holds files mvdit did not write there"),
    ] = False,
    steps: Annotated[
        int | None, typer.Option(help="the sampling steps the converted model samples with")
    ] = None,
    guidance: GuidanceOpt = None,
) -> None:
    """Rewrite a pipeline directory smaller: the DiT stored in fp16 (loading casts it back to
    fp32), optionally its VAE as a reference to a VAE shipped in the package, and optionally
    another default sampler (steps, guidance; not for a fixed-schedule student)."""
    dtypes = {"fp32": torch.float32, "fp16": torch.float16}
    if dtype not in dtypes:
        fail(f"--dtype must be fp32 or fp16, got {dtype}")
    claim_output_dir(out, command="convert", overwrite=overwrite, sources=[model])
    pipe = Pipeline.from_pretrained(model)
    pipe = pipe.with_sampler(steps=steps, guidance=guidance)
    pipe.save_pretrained(
        out,
        dit_dtype=dtypes[dtype],
        shipped_vae=shipped_vae,
        command="convert",
        overwrite=overwrite,
        sources=(model,),
    )
    typer.echo(f"wrote {out} ({tree_bytes(out) / 2**20:.2f} MiB)")


@app.command()
def export(
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="pipeline directory (default: the shipped student)"),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="export directory")] = Path(
        "runs/export"
    ),
    format: Annotated[str, typer.Option("--format", help="onnx, executorch or coreml")] = "onnx",
    precision: Annotated[
        str | None,
        typer.Option(
            help="onnx, executorch: fp32 or int8 (dynamically quantized linears); coreml: fp16 or fp32"
        ),
    ] = None,
    tiles: Annotated[
        int | None, typer.Option(help="tile every FFN linear into this many partial GEMMs")
    ] = None,
    tile_bytes: Annotated[
        int | None,
        typer.Option(help="or: FFN tiles whose fp16 weight slice fits this many bytes"),
    ] = None,
    attention: Annotated[
        str, typer.Option(help="fused (SDPA) or explicit (matmul + softmax + matmul)")
    ] = "fused",
    preset: Annotated[
        str | None,
        typer.Option(
            help="instead of --model: one DiT step of this preset, random weights (a size check)"
        ),
    ] = None,
    overwrite: Annotated[
        bool,
        typer.Option(help="replace OUT even if it holds files mvdit did not write there"),
    ] = False,
) -> None:
    """Export the text encoder, one DiT step and the VAE decoder, with the manifest an app needs
    (shapes, schedule, time shift, latent normalisation, tokenizer); each graph is run against
    eager where this machine can (ONNX in onnxruntime, ExecuTorch in its runtime)."""
    if preset is not None:
        if model is not None:
            fail("give --model or --preset, not both")
        export_dit_preset(
            preset, out, format, precision=precision, tiles=tiles, tile_bytes=tile_bytes,
            attention=attention, progress=typer.echo, overwrite=overwrite,
        )  # fmt: skip
        typer.echo(f"wrote {out}/manifest.json")
        return
    source = model if model is not None else shipped_model_path()
    m = export_pipeline(
        source, out, format, precision=precision, tiles=tiles, tile_bytes=tile_bytes,
        attention=attention, progress=typer.echo, overwrite=overwrite,
    )  # fmt: skip
    total = sum(a["bytes"] for a in m["artefacts"].values())
    typer.echo(
        f"wrote {out}: {len(m['artefacts'])} {format} graphs ({m['precision']}), "
        f"{total / 2**20:.2f} MiB, manifest.json; {m['sampler']['nfe']} network evaluations a clip"
    )
    if format == "onnx":
        typer.echo(
            f'generate without PyTorch: python -m mvdit.export.runtime {out} "PROMPT" clip.npy'
        )
    if format == "coreml":
        typer.echo(
            "Core ML predicts on macOS/iOS only: the packages were converted and their structure checked here"
        )


@app.command("run-exported")
def run_exported(
    export_dir: Annotated[Path, typer.Argument(help="a directory written by `mvdit export`")],
    prompt: Annotated[str, typer.Argument(help="what the video shows")],
    output: Annotated[Path, typer.Option("--output", "-o", help="output .mp4")] = Path(
        "exported.mp4"
    ),
    seed: Annotated[int, typer.Option(help="noise seed (the eager pipeline's noise for it)")] = 0,
    eager: Annotated[
        bool, typer.Option(help="also run the source pipeline in PyTorch, same noise")
    ] = True,
) -> None:
    """Generate a clip from the exported graphs alone (onnxruntime or ExecuTorch, the sampler in
    NumPy), beside the eager PyTorch pipeline measured in the same run."""
    if output.suffix.lower() != ".mp4":
        fail(f"output must end in .mp4, got {output}")
    r = run_side_by_side(export_dir, prompt, seed, eager=eager)
    r["pipe"].write(r["frames"], output)
    rows = [r["exported"]] + ([r["eager"]] if "eager" in r else [])
    typer.echo("| runtime | load | text | DiT | decode |\n|---|---|---|---|---|")
    for row in rows:
        typer.echo(
            f"| {row['runtime']} | {si(row['load'], 's')} | "
            + " | ".join(f"{row[k] * 1e3:.1f} ms" for k in ("text", "dit", "decode"))
            + " |"
        )
    if "max_frame_difference" in r:
        typer.echo(f"largest frame difference against eager: {r['max_frame_difference']} of 255")
    elif "eager_missing" in r:
        typer.echo(r["eager_missing"])
    typer.echo(f"wrote {output}")


@app.command("eval-exported")
def eval_exported_cmd(
    export_dir: Annotated[Path, typer.Argument(help="a directory written by `mvdit export`")],
    prompts: Annotated[
        list[Path], typer.Option("--prompts", "-p", help="prompt files; repeatable")
    ],
    seeds: Annotated[int, typer.Option(help="samples per prompt")] = 2,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="also write JSON here")] = None,
) -> None:
    """The shapes detector's scores of clips made by the exported graphs alone, with the mean
    seconds of each stage (compare precisions or runtimes on the same prompts and seeds)."""
    r = eval_exported(export_dir, prompts, seeds)
    f, t = r["faithfulness"], r["seconds_per_clip"]
    typer.echo(
        f"{r['runtime']} {r['precision']}, {r['bytes'] / 2**20:.2f} MiB, {f['clips']} clips: "
        + ", ".join(
            f"{k} {f[k]:.3f}"
            for k in ("overall", "count", "colour", "shape", "motion", "speed")
            if f.get(k) is not None
        )
    )
    typer.echo("per clip: " + " | ".join(f"{k} {v * 1e3:.1f} ms" for k, v in t.items()))
    if out is not None:
        write_json(out, r)
        typer.echo(f"wrote {out}")


@app.command()
def info(
    preset: Annotated[
        str, typer.Option(help="tiny, small, paper-teacher, paper-student")
    ] = "paper-teacher",
    frames: Annotated[int, typer.Option()] = 49,
    height: Annotated[int, typer.Option()] = 384,
    width: Annotated[int, typer.Option()] = 512,
    temporal: Annotated[int, typer.Option(help="VAE temporal compression")] = 8,
    spatial: Annotated[int, typer.Option(help="VAE spatial compression")] = 32,
    latent_channels: Annotated[
        int | None, typer.Option(help="VAE latent channels (default: the preset's)")
    ] = None,
    text_len: Annotated[int, typer.Option(help="text tokens (77 for CLIP)")] = 77,
    text_dim: Annotated[
        int | None, typer.Option(help="text encoder width (default: the preset's)")
    ] = None,
    patch: Annotated[
        int, typer.Option(help="DiT patch size over the latent's height and width")
    ] = 1,
) -> None:
    """Parameters, latent grid, token count and FLOPs of a DiT preset (built on the meta device)."""
    typer.echo(
        describe_preset(
            preset, frames=frames, height=height, width=width, temporal=temporal, spatial=spatial,
            latent_channels=latent_channels, text_len=text_len, text_dim=text_dim, patch=patch,
        )
    )  # fmt: skip


data_app = typer.Typer(no_args_is_help=True, help="Datasets: write example clips.")
app.add_typer(data_app, name="data")


@data_app.command("shapes")
def data_shapes(
    out: Annotated[
        Path,
        typer.Option(
            "--out", "-o", help="directory for the mp4s, contact_sheet.png and captions.json"
        ),
    ] = Path("shapes_examples"),
    n: Annotated[int, typer.Option("-n", help="number of clips")] = 8,
    frames: Annotated[int, typer.Option(help="frames per clip")] = 9,
    height: Annotated[int, typer.Option(help="frame height")] = 32,
    width: Annotated[int, typer.Option(help="frame width")] = 32,
    fps: Annotated[float, typer.Option(help="frames per second")] = 8.0,
    seed: Annotated[int, typer.Option(help="dataset seed")] = 0,
    split: Annotated[str, typer.Option(help="train, val or holdout")] = "train",
    holdout: Annotated[
        list[str] | None,
        typer.Option(help="held-out 'colour shape motion' combination (repeatable)"),
    ] = None,
) -> None:
    """Write example clips of the procedural `shapes` dataset (mp4 + captioned contact sheet)."""

    paths = write_examples(
        out, n, frames, height, width, fps, seed, split=split, holdout=holdout or ()
    )
    typer.echo(
        f"wrote {n} clips of {frames}x{height}x{width} to {out} (contact sheet: {paths[-2]})"
    )


@app.command()
def cache(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="cache directory; rerun the same command to resume")
    ],
    config: Annotated[
        Path | None,
        typer.Argument(
            help="training config: its data, vae and text sections say what to encode and with what"
        ),
    ] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key, e.g. --set data.kind=folder")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="cache only the first N clips")] = None,
    shard_size: Annotated[int, typer.Option(help="clips per safetensors shard")] = 256,
    batch_size: Annotated[int, typer.Option(help="clips encoded at once")] = 8,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16 on disk")] = "float32",
) -> None:
    """Encode clips and captions once (VAE latents + text embeddings) so training skips both encoders."""
    if dtype not in ("float32", "bfloat16", "float16"):
        fail(f"--dtype must be float32, bfloat16 or float16, got {dtype}")

    cfg = load_train_config(config or default_config_path(), set_)
    ds = cache_from_config(cfg, out, limit, shard_size, batch_size, getattr(torch, dtype))
    typer.echo(f"{len(ds)} clips cached in {out}: latents {'x'.join(map(str, ds.latent_shape))}")
    typer.echo(f"train on them with: --set data.kind=cache --set data.path={out}")


@app.command("train-vae")
def train_vae(
    config: Annotated[
        Path | None,
        typer.Argument(
            help="TOML/YAML VAE training config (e.g. configs/vae-cpu.toml); omit for the defaults"
        ),
    ] = None,
    set_: SetOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Train the causal video VAE (L1 + Haar wavelet + KL [+ 3D patch GAN]); writes OUT/model."""

    cfg = vae_stage.load_vae_config(config, set_)
    summary = vae_stage.train_vae(cfg, resume=resume)
    if not distributed.is_main():  # rank 0 scored the model and reports it
        return
    out, ev = Path(cfg.run.out_dir), summary["eval"]
    typer.echo(f"trained {summary['steps']} steps in {summary['seconds']:.0f}s")
    typer.echo(
        f"held-out reconstruction ({ev['clips']} clips): PSNR {ev['psnr']:.2f} dB, SSIM {ev['ssim']:.4f}, edge F1 {ev['edge_f1']:.3f}"
    )
    if "faithfulness" in ev:
        typer.echo(
            f"prompt faithfulness of the reconstructions: {vae_stage.format_faithfulness(ev['faithfulness'])}"
        )
    typer.echo(
        f"model: {out / 'model'}   loss curve: {out / 'loss.png'}   log: {out / 'metrics.jsonl'}"
    )


@app.command("eval-vae")
def eval_vae(
    model: Annotated[
        str, typer.Argument(help="autoencoder directory, or 'default' for the shipped CPU VAE")
    ] = "default",
    config: Annotated[
        Path | None,
        typer.Option(
            help="VAE training config whose data section (clip size, vocabulary) picks the clips"
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a key of that config, e.g. --set data.frames=17"),
    ] = None,
    clips: Annotated[int, typer.Option(help="held-out clips to score")] = 64,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the scores as JSON")
    ] = None,
    sheet: Annotated[
        Path | None,
        typer.Option(help="also write a PNG of 8 held-out clips, each above its reconstruction"),
    ] = None,
    latent_noise: Annotated[
        float,
        typer.Option(
            help="add this much N(0,1) noise to the unit-scale latent before decoding (a DiT's "
            "error): how forgiving the decoder is"
        ),
    ] = 0.0,
) -> None:
    """Reconstruction PSNR / SSIM of an autoencoder on held-out clips (the data's 'val' split)."""

    if clips < 1:
        fail(f"--clips must be positive, got {clips}")
    if latent_noise < 0:
        fail(f"--latent-noise must be 0 or more, got {latent_noise}")
    path = shipped_vae_path(model) if model in SHIPPED_VAES else Path(model)
    if not path.is_dir():
        fail(f"autoencoder directory {path} does not exist")
    data = vae_stage.load_vae_config(config, set_).data
    vae = load_autoencoder(path)
    vae.check_clip(data.frames, data.height, data.width)
    scores = vae_stage.evaluate_reconstruction(
        vae, build_video_dataset(data, "val"), clips, latent_noise=latent_noise
    )
    clip = f"{data.frames}x{data.height}x{data.width}"
    noise = f" (latent noise {latent_noise:g})" if latent_noise else ""
    typer.echo(
        f"{path}: {scores['clips']} held-out {clip} clips{noise}: PSNR {scores['psnr']:.2f} dB, SSIM {scores['ssim']:.4f}, edge F1 {scores['edge_f1']:.3f}"
    )
    if "faithfulness" in scores:
        typer.echo(
            "prompt faithfulness of the reconstructions (the ceiling of a DiT on this VAE): "
            + vae_stage.format_faithfulness(scores["faithfulness"])
        )
    if sheet is not None:
        vae_stage.reconstruction_sheet(vae, build_video_dataset(data, "val"), sheet)
        typer.echo(f"wrote {sheet}")
    if json_out is not None:
        write_json(
            json_out,
            {
                "model": str(path),
                "config": str(config) if config else None,
                "clip": clip,
                "latent_noise": latent_noise,
                **scores,
            },
        )


@app.command("eval")
def eval_(
    model: Annotated[
        Path, typer.Option("--model", "-m", help="model directory (pipeline.json + dit/ + vae/)")
    ],
    prompts: Annotated[
        list[Path],
        typer.Option(
            "--prompts",
            "-p",
            help="prompt file: text (one a line) or JSONL {prompt, split}; repeatable",
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="output directory for eval.json, eval.md, contact_sheet.png, videos/",
        ),
    ],
    seeds: Annotated[int, typer.Option(help="samples per prompt")] = 2,
    seed: Annotated[int, typer.Option(help="noise seed of each prompt's batch")] = 0,
    steps: Annotated[int | None, typer.Option(help="sampling steps (default: the model's)")] = None,
    guidance: GuidanceOpt = None,
    feature_size: Annotated[
        int, typer.Option(help="frame side fed to the feature network (VBench: 224)")
    ] = 224,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
) -> None:
    """Generate clips for a prompt set and score them (faithfulness, VBench-style dimensions, FVD analogue)."""
    require_device(device, "--device")

    if seeds < 1:
        fail(f"--seeds must be at least 1, got {seeds}")
    r = evaluate(
        model,
        prompts,
        out,
        seeds=seeds,
        steps=steps,
        guidance=guidance,
        seed=seed,
        feature_size=feature_size,
        device=device,
    )
    f = r["faithfulness"]
    typer.echo(
        f"{r['clips']} clips scored; faithfulness {f['all']['overall']:.3f}"
        if f
        else f"{r['clips']} clips scored"
    )
    typer.echo(
        f"results: {out / 'eval.md'}   {out / 'eval.json'}   sheet: {out / 'contact_sheet.png'}"
    )
    if r["failed_clips"]:
        bad = r["failed_clips"]
        fail(
            f"{len(bad)} of {r['clips']} clips failed ({bad[0]['prompt']!r}: {bad[0]['why']}); "
            "they are listed in eval.json under failed_clips"
        )


def _csv(text: str | None, kind=str) -> list | None:
    """A comma-separated flag (--timesteps 0.1,0.5 --levels block,ffn) as a list; None stays."""
    if text is None:
        return None
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MvditError(f"{text!r} is not a comma-separated list of {kind.__name__}s") from None


def _flags(**flags) -> dict:
    """The flags a user gave, as dotted keys of the command's section (None: not given, the
    section's default stands)."""
    return {k.replace("__", "."): v for k, v in flags.items() if v is not None}


ModelOpt = Annotated[
    str | None,
    typer.Option("--model", "-m", help="pipeline directory, or a diffusers Wan / LTX transformer"),
]
OutOpt = Annotated[str | None, typer.Option("--out", "-o", help="output directory")]
PromptsOpt = Annotated[str | None, typer.Option(help="prompt file of the calibration set")]
NPromptsOpt = Annotated[int | None, typer.Option(help="calibration prompts (the file's first N)")]
SeedsOpt = Annotated[int | None, typer.Option(help="noise seeds per calibration prompt")]
TimesOpt = Annotated[str | None, typer.Option(help="flow times of the calibration set: a,b,c")]
LatentOpt = Annotated[
    str | None,
    typer.Option(help="T,H,W of a diffusers transformer's Gaussian calibration latents"),
]


def _calibration_flags(prompts, n_prompts, seeds, timesteps, latent) -> dict:
    """The calibration flags `sensitivity` and `prune` share, as keys of their [*.calibration]."""
    return _flags(calibration__prompts=prompts, calibration__n_prompts=n_prompts,
                  calibration__seeds=seeds, calibration__timesteps=_csv(timesteps, float),
                  calibration__latent=_csv(latent, int))  # fmt: skip


@app.command()
def sensitivity(
    config: ConfigArg = None,
    model: ModelOpt = None,
    out: OutOpt = None,
    prompts: PromptsOpt = None,
    n_prompts: NPromptsOpt = None,
    seeds: SeedsOpt = None,
    timesteps: TimesOpt = None,
    latent: LatentOpt = None,
    group: Annotated[int | None, typer.Option(help="FFN channels per unit")] = None,
    faith_prompts: Annotated[
        int | None, typer.Option(help="prompts generated per point of the depth curves (0: none)")
    ] = None,
    set_: SetOpt = None,
) -> None:
    """What removing each block, head and FFN group costs (KD sensitivity and cheap criteria),
    with the Figure-3 plot; resumable. Every option is a key of the [sensitivity] section."""
    cfg = load_config(prune_stage.SensitivitySections, config, set_).sensitivity
    cfg = updated(cfg, _flags(
        model=model, out=out, group=group, faith_prompts=faith_prompts,
    ) | _calibration_flags(prompts, n_prompts, seeds, timesteps, latent))  # fmt: skip
    typer.echo(prune_stage.sensitivity_summary(prune_stage.run_sensitivity(cfg)))


@app.command()
def prune(
    config: ConfigArg = None,
    model: ModelOpt = None,
    out: OutOpt = None,
    budget: Annotated[
        str | None,
        typer.Option(help="params=F, flops=F, latency=F (fractions kept) or memory=BYTES"),
    ] = None,
    levels: Annotated[
        str | None,
        typer.Option(
            help="levels the search may cut: block,head,ffn (head covers cross-attention heads; cross_head alone names only those)"
        ),
    ] = None,
    criterion: Annotated[
        str | None, typer.Option(help=f"unit score: {', '.join(CRITERIA)}")
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(help="'paper': prune a random paper-teacher to 20 blocks, 20 heads, FFN 6144"),
    ] = None,
    prompts: PromptsOpt = None,
    n_prompts: NPromptsOpt = None,
    seeds: SeedsOpt = None,
    timesteps: TimesOpt = None,
    latent: LatentOpt = None,
    group: Annotated[int | None, typer.Option(help="FFN channels per unit")] = None,
    overwrite: Annotated[
        bool, typer.Option(help="replace OUT even if it holds files mvdit did not write there")
    ] = False,
    set_: SetOpt = None,
) -> None:
    """Prune a DiT's blocks, heads and FFN channels greedily under a budget; the output is
    physically smaller. Every option is a key of the [prune] section."""
    cfg = load_config(prune_stage.PruneSections, config, set_).prune
    cfg = updated(cfg, _flags(
        model=model, out=out, budget=budget, levels=_csv(levels), criterion=criterion,
        preset=preset, group=group, overwrite=overwrite or None,
    ) | _calibration_flags(prompts, n_prompts, seeds, timesteps, latent))  # fmt: skip
    typer.echo(prune_stage.prune_summary(prune_stage.run_prune(cfg), cfg))


@app.command("eval-compare")
def eval_compare(
    a: Annotated[Path, typer.Argument(help="eval.json (or its directory) of model A")],
    b: Annotated[
        Path, typer.Argument(help="eval.json (or its directory) of model B, same prompts and seeds")
    ],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="also write the table to this .md file")
    ] = None,
) -> None:
    """Faithfulness of A minus B per attribute, with a paired bootstrap 95% interval over prompts."""

    evals = []
    for p in (a, b):
        path = p / "eval.json" if p.is_dir() else p
        f = read_json(path).get("faithfulness")
        if not f:
            fail(f"{path} has no faithfulness scores (its prompts are not shapes captions)")
        evals.append(f)
    diff = paired_difference(*evals)
    table = difference_markdown(diff, "A", "B")
    typer.echo(f"A = {a}\nB = {b}, {evals[0]['all']['clips']} clips each\n{table}", nl=False)
    if out is not None:
        atomic_write_text(out, f"A = `{a}`, B = `{b}`\n\n{table}")
        typer.echo(f"wrote {out}")


@app.command("eval-curve")
def eval_curve(
    run: Annotated[
        Path, typer.Argument(help="a `mvdit train` run directory (model/ + checkpoints/)")
    ],
    prompts: Annotated[
        list[Path],
        typer.Option("--prompts", "-p", help="prompt file of shapes captions; repeatable"),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="directory for curve.json, curve.md, curve.png (default: RUN/curve)"
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(help="samples per prompt")] = 1,
    seed: Annotated[int, typer.Option(help="noise seed of each prompt's batch")] = 0,
    steps: Annotated[int | None, typer.Option(help="sampling steps (default: the model's)")] = None,
    guidance: GuidanceOpt = None,
    weights: Annotated[
        str, typer.Option(help="'ema' (what the run exports) or 'model' (the raw weights)")
    ] = "ema",
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
) -> None:
    """Prompt faithfulness of every kept checkpoint of a run: a table and a plot against the step."""
    require_device(device, "--device")

    out = out or run / "curve"
    r = checkpoint_curve(
        run,
        prompts,
        out,
        seeds=seeds,
        steps=steps,
        guidance=guidance,
        seed=seed,
        weights=weights,
        device=device,
    )
    for p in r["points"]:
        a = p["all"]
        typer.echo(
            f"step {p['step']:>7}: overall {a['overall']:.2f}  colour {a['colour']:.2f}  shape {a['shape']:.2f}  motion {a['motion']:.2f}"
        )
    typer.echo(f"wrote {out / 'curve.md'}, curve.json, curve.png")


study_app = typer.Typer(
    no_args_is_help=True, help="Trade-off studies that write a table, a CSV and a plot."
)
app.add_typer(study_app, name="study")


@study_app.command("vae")
def study_vae(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            "-o",
            help="study directory (one run per ratio + study.md/csv/json/png); rerun to resume",
        ),
    ] = Path("runs/study-vae"),
    quick: Annotated[
        bool, typer.Option(help="a seconds-long smoke run: tiny models, 2 steps, 9x32x32 clips")
    ] = False,
    steps: Annotated[
        int, typer.Option(help="training steps per ratio (the same budget for all)")
    ] = 300,
    frames: Annotated[int, typer.Option(help="clip frames (1 + 8k, so every ratio applies)")] = 17,
    size: Annotated[int, typer.Option(help="clip height and width (a multiple of 32)")] = 64,
    width: Annotated[int, typer.Option(help="VAE base width (channels of the finest stage)")] = 32,
    threads: Annotated[
        int, typer.Option(help="CPU threads (1 is steadiest on a shared machine)")
    ] = 1,
    ratio: Annotated[
        list[str] | None,
        typer.Option(
            "--ratio",
            help=f"only these ratios (repeatable; default all: {', '.join(STUDY_CHANNELS)}); "
            "two processes can each take some, and a last run with all tabulates them",
        ),
    ] = None,
    generate: Annotated[
        list[str] | None,
        typer.Option(
            "--generate",
            help="train the default's tiny DiT on these ratios' latents and score what it draws "
            "(repeatable; the gen. columns, and the DiT's seconds per step)",
        ),
    ] = None,
    dit_steps: Annotated[int, typer.Option(help="--generate: DiT training steps")] = 1500,
    dit_clips: Annotated[
        int, typer.Option(help="--generate: clips encoded once for the DiT to train on")
    ] = 4000,
) -> None:
    """Train one VAE per compression ratio on the same data and budget; tabulate quality vs. cost."""

    if steps < 1 or width < 1 or (threads is not None and threads < 1):
        fail(f"--steps, --width and --threads must be at least 1, got {steps}, {width}, {threads}")
    for flag, names in (("--ratio", ratio), ("--generate", generate)):
        unknown = [r for r in names or [] if r not in STUDY_CHANNELS]
        if unknown:
            fail(
                f"{flag} {unknown[0]!r} is not in the study: use one of {', '.join(STUDY_CHANNELS)}"
            )
    if dit_steps < 1 or dit_clips < 1:
        fail(f"--dit-steps and --dit-clips must be at least 1, got {dit_steps} and {dit_clips}")
    if quick:
        rows = run_vae_study(
            out, ratios=ratio, threads=threads, generate=generate, **quick_study(bool(generate))
        )
    else:
        if (frames - 1) % 8 or size % 32 or size <= 0:
            fail(
                f"--frames must be 1 + 8k and --size a multiple of 32 so every ratio applies, got {frames} and {size}"
            )
        clip = (frames, size, size)
        quality = DiTGenerationQuality(clip, steps=dit_steps, cache_clips=dit_clips)
        rows = run_vae_study(
            out,
            ratios=ratio,
            clip=clip,
            steps=steps,
            width=width,
            threads=threads,
            generation_quality=quality if generate else None,
            generate=generate,
        )
    for r in rows:
        typer.echo(
            f"{r['ratio']:>8} {r['latent_channels']:>4}ch  tokens {r['tokens_49x384x512']:>6,}  PSNR {r['psnr']:6.2f}  SSIM {r['ssim']:.4f}  decode {r['decode_ms']:.1f} ms"
            + (
                ""
                if r["gen_overall"] is None
                else f"  generated: overall {r['gen_overall']:.2f} shape {r['gen_shape']:.2f}"
            )
        )
    typer.echo(f"wrote {out / 'study.md'}, study.csv, study.json, study.png")


@study_app.command("prune")
def study_prune(
    teacher: Annotated[
        Path, typer.Option("--teacher", "-m", help="pipeline directory to prune")
    ] = Path("runs/tiny/model"),
    out: Annotated[
        Path, typer.Option("--out", "-o", help="study directory; rerun to resume")
    ] = Path("runs/study-prune"),
    kd_config: Annotated[
        Path,
        typer.Option(
            help="KD config of the recovery (its data and optim sections; kd.student is set per variant)"
        ),
    ] = Path("configs/kd-tiny.toml"),
    budget: Annotated[
        str, typer.Option(help="the budget every variant is pruned to")
    ] = "params=0.55",
    recovery_steps: Annotated[
        int, typer.Option(help="KD steps per variant (the same for all)")
    ] = 500,
    variants: Annotated[
        str | None, typer.Option(help=f"comma-separated subset of: {', '.join(VARIANTS)}")
    ] = None,
    eval_prompts: Annotated[
        list[Path] | None,
        typer.Option(
            "--prompts",
            "-p",
            help="prompt files of the faithfulness columns (default: prompts/shapes-eval.txt)",
        ),
    ] = None,
    seeds: Annotated[int, typer.Option(help="clips per prompt for the faithfulness columns")] = 1,
    calib_prompts: Annotated[
        Path, typer.Option(help="prompts of the search's calibration set")
    ] = Path(EVAL_PROMPTS),
    heldout_prompts: Annotated[
        Path, typer.Option(help="prompts of the held-out KD loss (other seeds too)")
    ] = Path("prompts/shapes-paraphrase.txt"),
) -> None:
    """Tri-level against block-, head- and FFN-only pruning, KD against magnitude and Taylor scores, before and after KD recovery."""

    if recovery_steps < 0 or seeds < 1:
        fail("--recovery-steps must be >= 0 and --seeds >= 1")
    chosen = [v.strip() for v in variants.split(",")] if variants else None
    rows = run_prune_study(
        teacher, out, kd_config, variants=chosen, budget=budget, recovery_steps=recovery_steps,
        calib_prompts=calib_prompts, heldout_prompts=heldout_prompts,
        eval_prompts=eval_prompts or [Path(EVAL_PROMPTS)], eval_seeds=seeds,
    )  # fmt: skip
    for r in rows:
        if "unreachable" in r:
            typer.echo(f"{r['variant']:>20}  not reachable: {r['unreachable']}")
            continue
        b, a = r["before"], r["after"]
        typer.echo(
            f"{r['variant']:>20}  params {b['params']:>9,}  held-out KD {b['heldout_kd']:.4g} -> {a['heldout_kd']:.4g}"
            + (f"  overall {b['overall']:.2f} -> {a['overall']:.2f}" if "overall" in a else "")
        )
    typer.echo(f"wrote {out / 'study.md'}, study.csv, study.json, study.png")


@study_app.command("distill")
def study_distill(
    teacher: Annotated[Path, typer.Option("--teacher", "-m", help="the teacher pipeline")] = Path(
        "runs/tiny/model"
    ),
    config: Annotated[
        Path, typer.Option(help="distillation config the students are trained from")
    ] = Path("configs/distill-tiny.toml"),
    out: Annotated[
        Path, typer.Option("--out", "-o", help="study directory; rerun to resume")
    ] = Path("runs/study-distill"),
    rows: Annotated[
        str | None, typer.Option(help=f"comma-separated subset of: {', '.join(DISTILL_ROWS)}")
    ] = None,
    eval_prompts: Annotated[
        list[Path] | None,
        typer.Option("--prompts", "-p", help="prompt files (default: the three shipped ones)"),
    ] = None,
    seeds: Annotated[int, typer.Option(help="clips per prompt")] = 4,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="override a distillation key for every student"),
    ] = None,
    reps: Annotated[int, typer.Option(help="timed clips per row (the median is reported)")] = 5,
    threads: Annotated[
        int | None,
        typer.Option(help="CPU threads of the timing pass (default: torch's; 1 is steadiest)"),
    ] = None,
) -> None:
    """Teacher at 40/4/2 steps with and without CFG against the distilled students and their ablations."""

    if seeds < 1 or reps < 1 or (threads is not None and threads < 1):
        fail(f"--seeds, --reps and --threads must be at least 1, got {seeds}, {reps}, {threads}")
    chosen = [r.strip() for r in rows.split(",")] if rows else None
    files = eval_prompts or [
        Path(EVAL_PROMPTS), Path("prompts/shapes-holdout.txt"),
        Path("prompts/shapes-paraphrase.txt"),
    ]  # fmt: skip
    report = run_distill_study(
        teacher, config, out, prompt_files=files, seeds=seeds, rows=chosen,
        overrides=set_ or [], reps=reps, threads=threads,
    )  # fmt: skip
    typer.echo(study_distill_markdown(report), nl=False)
    typer.echo(f"wrote {out / 'study.md'}, study.csv, study.json, study.png")


@app.command("bench-vae")
def bench_vae(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="directory for bench.json and bench.md")
    ] = Path("runs/bench-vae"),
    max_tile_mb: Annotated[
        int, typer.Option(help="memory cap for one decode tile of the paper VAE, in MiB")
    ] = 1024,
    threads: Annotated[
        int, typer.Option(help="CPU threads (1 is steadiest on a shared machine)")
    ] = 1,
    repeats: Annotated[
        int, typer.Option(help="timed repeats of the CPU-preset decode and DiT steps")
    ] = 20,
    paper: Annotated[
        bool,
        typer.Option(
            help="also decode 49x384x512 with the paper-width 8x32x32 VAE (minutes on CPU)"
        ),
    ] = True,
    vae: Annotated[
        Path | None,
        typer.Option(help="VAE directory for the CPU-preset bench (default: the shipped one)"),
    ] = None,
) -> None:
    """Decode speed and memory: the paper VAE at 49x384x512 (tiled), and the CPU default vs 4 DiT steps."""

    if max_tile_mb < 1 or repeats < 1:
        fail("--max-tile-mb and --repeats must be positive")
    result = run_vae_bench(
        out, max_tile_bytes=max_tile_mb << 20, threads=threads, paper=paper, vae_path=vae,
        repeats=repeats,
    )  # fmt: skip
    typer.echo(bench_markdown(result))
    typer.echo(f"wrote {out / 'bench.json'} and {out / 'bench.md'}")


@app.command("bench-tiling")
def bench_tiling(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="directory for tiling.json and tiling.md")
    ] = Path("runs/bench-tiling"),
    ks: Annotated[str, typer.Option("--k", help="tile counts, comma-separated")] = "1,2,4,8,16",
    reps: Annotated[int, typer.Option(help="alternated timed repetitions (best is reported)")] = 3,
    runtimes: Annotated[
        str, typer.Option(help="eager and/or onnxruntime, comma-separated")
    ] = "eager,onnxruntime",
    presets: Annotated[
        str, typer.Option(help="whose FFN shapes, comma-separated")
    ] = "paper-student,tiny",
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: torch's)")] = None,
) -> None:
    """Tiled against untiled FFN GEMMs over k, eager and in onnxruntime, ratios from one run."""
    try:
        k_list = tuple(int(k) for k in ks.split(","))
    except ValueError:
        fail(f"--k takes comma-separated integers, got {ks}")
    result = run_tiling_bench(
        out, ks=k_list, reps=reps, runtimes=tuple(runtimes.split(",")),
        presets=tuple(presets.split(",")), threads=threads,
    )  # fmt: skip
    typer.echo(tiling_markdown(result))
    typer.echo(f"wrote {out / 'tiling.json'} and {out / 'tiling.md'}")


@app.command()
def bench(
    targets: Annotated[
        list[str] | None,
        typer.Argument(
            help="presets (tiny, small, paper-teacher, paper-student) and/or model directories"
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="directory for bench.json and bench.md")
    ] = Path("runs/bench"),
    device: Annotated[str, typer.Option(help="cpu or cuda (bf16 on cuda)")] = "cpu",
    threads: Annotated[
        int | None,
        typer.Option(
            help="CPU threads for every measurement, GEMM peak included (default: torch's)"
        ),
    ] = None,
    reps: Annotated[
        int, typer.Option(help="timed repetitions of each stage after a warm-up (best is reported)")
    ] = 2,
    ltx: Annotated[
        bool, typer.Option(help="also time diffusers' LTXVideoTransformer3DModel of the same shape")
    ] = True,
    paper_decode: Annotated[
        bool | None,
        typer.Option(help="time the paper VAE decode at 49x384x512 (default: on GPU only)"),
    ] = None,
    gemm_n: Annotated[
        int, typer.Option(help="side of the square matmul that measures the GEMM peak")
    ] = 4096,
) -> None:
    """Latency per stage, seconds per clip, memory, FLOPs and the DiT's share of the GEMM peak."""
    require_device(device, "--device")

    if gemm_n < 64:
        fail(f"--gemm-n must be at least 64, got {gemm_n}")
    targets = targets or ["tiny", "small", "paper-student", "paper-teacher"]
    result = run_bench(
        targets,
        out,
        device=device,
        threads=threads,
        reps=reps,
        ltx=ltx,
        paper_decode=paper_decode,
        gemm_n=gemm_n,
    )
    typer.echo((out / "bench.md").read_text())
    typer.echo(
        f"wrote {out / 'bench.json'} and {out / 'bench.md'} ({len(result['targets'])} targets)"
    )


@app.command()
def report(
    runs: Annotated[
        list[Path], typer.Argument(help="run directories holding eval.json and/or bench.json")
    ],
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="markdown file; the plot is written beside it as .png"),
    ] = Path("report.md"),
) -> None:
    """Collect eval and bench results of several models into one page with a speed-quality plot."""

    path = write_report(runs, out)
    typer.echo(f"wrote {path} and {path.with_suffix('.png')}")


@app.command()
def demo(
    model: Annotated[
        list[Path] | None,
        typer.Option(
            "--model",
            "-m",
            help="also offer this model directory (repeatable); the shipped student is always there",
        ),
    ] = None,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to listen on")] = 7860,
) -> None:
    """Serve a web page that generates clips from prompts (http://127.0.0.1:7860 by default)."""

    try:
        import gradio  # noqa: F401 (the demo extra, not a core dependency: looked for here)
    except ModuleNotFoundError:
        fail("mvdit demo needs the demo extra: pip install 'mvdit[demo]'")
    if not 1 <= port <= 65535:
        fail(f"--port must be in 1…65535, got {port}")
    for d in model or []:
        if not d.is_dir():
            fail(f"--model {d}: no such model directory (pipeline.json + dit/ + vae/)")
        if not (d / "pipeline.json").is_file():
            fail(f"--model {d} is not an mvdit model directory: it has no pipeline.json")
    launch_demo(models_available(model or []), host=host, port=port)


def _one_line(message: str) -> str:
    """An error on one line, whatever line breaks a user's input put into it."""
    return " ".join(part.strip() for part in message.splitlines() if part.strip())


def main() -> None:
    try:
        code = app(standalone_mode=False)  # usage errors come here, not to click's own printer
    except typer.TyperException as e:  # click's usage errors: unknown option, bad value, missing
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        if type(e).__name__ == "NoArgsIsHelpError":  # `mvdit study`: the help is the message
            typer.echo(message, err=True)
            sys.exit(2)
        ctx = getattr(e, "ctx", None)
        where = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        typer.echo(f"error: {_one_line(message)}{where}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except MvditError as e:
        typer.echo(f"error: {_one_line(str(e))}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # a full disk, whichever library hit it, is one line too
        if not is_disk_full(e):
            raise
        typer.echo(f"error: {_one_line(disk_full_message(e))}", err=True)
        sys.exit(2)
    if isinstance(code, int) and code:
        sys.exit(code)  # typer.Exit(code) inside a command (fail())


if __name__ == "__main__":
    main()

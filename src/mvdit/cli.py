"""The `mvdit` command line: one typer app, each subcommand a thin call into a module.

A stage command reads one config section (a TOML/YAML file, `--set section.key=value`, then its
flags) and makes one library call; its flags are generated from the section's fields, so a flag's
help, default and bounds are written once, in the section. What a call returns renders itself.
User mistakes (MvditError) print one line and exit with status 2; nothing half-written is left.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NamedTuple

import typer
from pydantic import BaseModel

from mvdit import MvditError, distributed
from mvdit import recipe as recipe_mod
from mvdit.bench import dit as dit_bench
from mvdit.bench import tiled_gemm, vae_decode
from mvdit.build import InfoConfig, InfoSections, cache_from_config, describe_preset
from mvdit.config import (
    KeyInfo,
    default_config_path,
    key_info,
    load_config,
    load_train_config,
    parse_csv,
    updated,
)
from mvdit.data.shapes import write_examples
from mvdit.demo import launch as launch_demo
from mvdit.demo import models_available
from mvdit.eval import evaluate as eval_stage
from mvdit.eval.curve import checkpoint_curve, curve_summary
from mvdit.eval.report import write_report
from mvdit.export import compare as export_compare
from mvdit.export import pipeline as export_stage
from mvdit.generate import generate_video
from mvdit.io import disk_full_message, is_disk_full
from mvdit.limits import GUIDANCE_HELP, STEPS_HELP
from mvdit.recipe import STAGES as RECIPE_STAGES
from mvdit.stages import convert as convert_stage
from mvdit.stages import distill as distill_stage
from mvdit.stages import kd as kd_stage
from mvdit.stages import prune as prune_stage
from mvdit.stages import train_vae as vae_stage
from mvdit.stages.teacher import train_teacher
from mvdit.studies import distill_ablation, prune_ablation, vae_ratios

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="mvdit: small, fast text-to-video diffusion transformers.",
)
study_app = typer.Typer(
    no_args_is_help=True, help="Trade-off studies that write a table, a CSV and a plot."
)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: write example clips.")
app.add_typer(study_app, name="study")
app.add_typer(data_app, name="data")

SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="override a key, e.g. --set optim.steps=200")
]
ResumeOpt = Annotated[bool, typer.Option(help="continue from the latest checkpoint in run.out_dir")]
GuidanceOpt = Annotated[float | None, typer.Option("--cfg", "--guidance", help=GUIDANCE_HELP)]
StepsOpt = Annotated[int | None, typer.Option(help=STEPS_HELP)]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda")]


# ---------------------------------------------------------------------------------------------
# stage commands: flags generated from a config section


class Flag(NamedTuple):
    """A flag that overrides one key of a command's section: `--<leaf>` plus `names` (short or
    older spellings); `csv`: typed as "a,b,c", a list of that type; `argument`: positional."""

    key: str
    names: tuple[str, ...] = ()
    csv: type | None = None
    argument: bool = False


def flag(key: str, *names: str, csv: type | None = None, argument: bool = False) -> Flag:
    return Flag(key, names, csv, argument)


# what a section command passes on: model, out and the sampler under the names people type
MODEL, OUT, PROMPTS = flag("model", "-m"), flag("out", "-o"), flag("prompts", "-p")
SAMPLER = (flag("steps"), flag("guidance", "--cfg"))
CALIBRATION = (flag("calibration.prompts"), flag("calibration.n_prompts"),
               flag("calibration.seeds"), flag("calibration.timesteps", csv=float),
               flag("calibration.latent", csv=int))  # fmt: skip


def _flag_name(key: str) -> str:
    return "--" + key.rsplit(".", 1)[-1].replace("_", "-")


def _parameter(f: Flag, key: KeyInfo) -> inspect.Parameter:
    """The typer parameter of one flag, typed and documented by its section key."""
    kind = str if f.csv else key.kind
    leaf = _flag_name(f.key)
    names = (f"{leaf}/--no-{leaf[2:]}",) if kind is bool else (leaf, *f.names)
    help_ = key.help(csv=f.csv is not None)
    info = typer.Argument(help=help_) if f.argument else typer.Option(*names, help=help_)
    return inspect.Parameter(f.key.replace(".", "__"), inspect.Parameter.KEYWORD_ONLY,
                             default=None, annotation=Annotated[kind | None, info])  # fmt: skip


def section_command(parent: typer.Typer, name: str, sections: type[BaseModel], *flags: Flag):
    """Register `run(section) -> Result` as command `name`: a config file, `--set` and the flags
    make the section; the command prints what `run` returns."""
    section = next(iter(sections.model_fields))
    cls = sections.model_fields[section].annotation
    flag_params = [_parameter(f, key_info(cls, f.key)) for f in flags]
    positional = any(f.argument for f in flags)
    what = f"TOML/YAML file with a \\[{section}] section"
    config_info = (typer.Option("--config", "-c", help=what) if positional
                   else typer.Argument(help=what, metavar="CONFIG"))  # fmt: skip
    params = [
        *[p for f, p in zip(flags, flag_params, strict=True) if f.argument],
        inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, default=None,
                          annotation=Annotated[Path | None, config_info]),
        *[p for f, p in zip(flags, flag_params, strict=True) if not f.argument],
        inspect.Parameter("set_", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
            list[str] | None, typer.Option("--set", help=f"override a key, e.g. --set {section}.KEY=V")
        ]),
    ]  # fmt: skip

    def decorate(run: Callable[[Any], Any]):
        def command(config_file=None, set_=None, **given):
            cfg = getattr(load_config(sections, config_file, set_), section)
            changes = {}
            for f in flags:
                value = given[f.key.replace(".", "__")]
                if value is not None and value != []:
                    changes[f.key] = parse_csv(value, f.csv) if f.csv else value
            names = {k: _flag_name(k) for k in changes}  # an error names the flag given
            typer.echo(str(run(updated(cfg, changes, names=names))))

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        parent.command(name, help=inspect.cleandoc(run.__doc__).replace("[", "\\["))(command)
        return run

    return decorate


# ---------------------------------------------------------------------------------------------
# training commands: a whole config file (data, model, optim, run sections)


def _run_lines(summary: dict, cfg) -> str:
    """What a training command prints at the end: steps, time, final loss, where things are."""
    out, final = Path(cfg.run.out_dir), summary["final"].get("loss", float("nan"))
    return (
        f"trained {summary['steps']} steps in {summary['seconds']:.0f}s; final loss {final:.4f}\n"
        f"model: {out / 'model'}   loss curve: {out / 'loss.png'}   log: {out / 'metrics.jsonl'}"
    )


def _schedule_lines(summary: dict, cfg) -> str:
    schedule = [round(t, 4) for t in summary["schedule"]]
    return f"{_run_lines(summary, cfg)}\nstudent schedule {schedule}, no guidance"


def training_command(name: str, help: str, load, run, render, config_help: str) -> None:
    """A training command: CONFIG (the whole config: data, model, optim, run sections), --set
    and --resume; under torchrun rank 0 alone prints what `render` makes of the run's summary."""

    def command(
        config: Path | None = None,
        set_: SetOpt = None,
        resume: ResumeOpt = False,
    ) -> None:
        cfg = load(config, set_)
        summary = run(cfg, resume=resume)
        if distributed.is_main():
            typer.echo(render(summary, cfg))

    # the argument's help differs per command: a real annotation, not the deferred string
    command.__annotations__["config"] = Annotated[Path | None, typer.Argument(help=config_help)]
    app.command(name, help=help)(command)


training_command(
    "train", "Train a text-to-video DiT teacher with rectified flow.",
    lambda path, sets: load_train_config(path or default_config_path(), sets), train_teacher,
    _run_lines, "TOML/YAML training config (default: the embedded configs/tiny.toml)",
)  # fmt: skip
training_command(
    "kd", "Recover a pruned DiT by distillation from the model it was pruned from.",
    kd_stage.load_kd_config, kd_stage.train_kd, _run_lines,
    "TOML/YAML KD config, e.g. configs/kd-tiny.toml",
)  # fmt: skip
training_command(
    "distill", "Adversarial step distillation: a guidance-free N-step student with a DiT "
    "discriminator.", distill_stage.load_distill_config, distill_stage.train_distill,
    _schedule_lines, "TOML/YAML distillation config, e.g. configs/distill-tiny.toml",
)  # fmt: skip
training_command(
    "train-vae", "Train the causal video VAE (L1 + Haar wavelet + KL [+ 3D patch GAN]); writes "
    "OUT/model.", vae_stage.load_vae_config, vae_stage.train_vae,
    lambda s, cfg: vae_stage.train_summary(s, cfg.run.out_dir),
    "TOML/YAML VAE training config, e.g. configs/vae-cpu.toml (default: the defaults)",
)  # fmt: skip


@app.command()
def cache(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="cache directory; rerun the same command to resume")
    ],
    config: Annotated[
        Path | None,
        typer.Argument(help="training config: its data, vae and text sections say what to encode"),
    ] = None,
    set_: SetOpt = None,
    limit: Annotated[int | None, typer.Option(help="cache only the first N clips")] = None,
    shard_size: Annotated[int, typer.Option(help="clips per safetensors shard")] = 256,
    batch_size: Annotated[int, typer.Option(help="clips encoded at once")] = 8,
    dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16 on disk")] = "float32",
) -> None:
    """Encode clips and captions once (VAE latents + text embeddings) so training skips both
    encoders."""
    cfg = load_train_config(config or default_config_path(), set_)
    ds = cache_from_config(cfg, out, limit=limit, shard_size=shard_size, batch_size=batch_size,
                           dtype=dtype)  # fmt: skip
    typer.echo(f"{len(ds)} clips cached in {out}: latents {'x'.join(map(str, ds.latent_shape))}")
    typer.echo(f"train on them with: --set data.kind=cache --set data.path={out}")


@app.command()
def recipe(
    config: Annotated[Path, typer.Argument(help="recipe config, e.g. configs/recipe-smoke.toml")],
    out: Annotated[Path, typer.Option("--out", "-o", help="the recipe's directory (resumable)")],
    start: Annotated[
        str | None, typer.Option("--from", help=f"first stage to run: {', '.join(RECIPE_STAGES)}")
    ] = None,
    until: Annotated[str | None, typer.Option("--until", help="last stage to run")] = None,
    set_: SetOpt = None,
) -> None:
    """The whole chain, teacher to exported 4-step student, as one resumable command: each stage
    a section of CONFIG writing OUT/<stage>/; a rerun skips what is done and unchanged, resumes an
    interrupted training stage, and reruns a changed stage and all after it; OUT/report.md."""
    cfg = recipe_mod.load_recipe_config(config, set_)
    recipe_mod.run_recipe(cfg, out, start=start, until=until, echo=typer.echo)
    typer.echo(recipe_mod.describe(out))


# ---------------------------------------------------------------------------------------------
# stage commands made from their sections


@section_command(app, "synth", distill_stage.SynthSections, MODEL, PROMPTS, OUT, flag("seeds"),
                 *SAMPLER, flag("batch"), flag("seed"))  # fmt: skip
def synth(cfg):
    """Teacher samples of a prompt list as a latent cache (distill.synthetic, or data.kind =
    "cache"). Every option is a key of the [synth] section."""
    return distill_stage.run_synth(cfg)


@section_command(app, "sensitivity", prune_stage.SensitivitySections, MODEL, OUT, *CALIBRATION,
                 flag("group"), flag("faith_prompts"))  # fmt: skip
def sensitivity(cfg):
    """What removing each block, head and FFN group costs (KD sensitivity and cheap criteria),
    with the Figure-3 plot; resumable. Every option is a key of the [sensitivity] section."""
    return prune_stage.run_sensitivity(cfg)


@section_command(app, "prune", prune_stage.PruneSections, MODEL, OUT, flag("budget"),
                 flag("levels", csv=str), flag("criterion"), flag("preset"), *CALIBRATION,
                 flag("group"), flag("overwrite"))  # fmt: skip
def prune(cfg):
    """Prune a DiT's blocks, heads and FFN channels greedily under a budget; the output is
    physically smaller. Every option is a key of the [prune] section."""
    return prune_stage.run_prune(cfg)


@section_command(app, "eval", eval_stage.EvalSections, MODEL, PROMPTS, OUT, flag("seeds"),
                 flag("seed"), *SAMPLER, flag("feature_size"), flag("device"))  # fmt: skip
def eval_(cfg):
    """Generate clips for prompt sets and score them (faithfulness, VBench-style dimensions, FVD
    analogue). Every option is a key of the [eval] section."""
    return eval_stage.run_eval(cfg)


@section_command(app, "convert", convert_stage.ConvertSections, MODEL, OUT, flag("dtype"),
                 flag("shipped_vae"), *SAMPLER, flag("frames"), flag("height"), flag("width"),
                 flag("overwrite"))  # fmt: skip
def convert(cfg):
    """Rewrite a pipeline directory (mvdit's or a diffusers one) smaller: the DiT stored in fp16
    (loading casts it back to fp32), optionally its VAE as a reference to a VAE shipped in the
    package, another default sampler (steps, guidance; not for a fixed-schedule student), and
    the clip size it is meant to generate at."""
    return convert_stage.run_convert(cfg)


@section_command(app, "export", export_stage.ExportSections, MODEL, OUT, flag("format"),
                 flag("precision"), flag("tiles"), flag("tile_bytes"), flag("attention"),
                 flag("preset"), flag("overwrite"))  # fmt: skip
def export(cfg):
    """Export the text encoder, one DiT step and the VAE decoder, with the manifest an app needs
    (shapes, schedule, time shift, latent normalisation, tokenizer); each graph is run against
    eager where this machine can (ONNX in onnxruntime, ExecuTorch in its runtime)."""
    return export_stage.run_export(cfg, progress=typer.echo)


@section_command(app, "bench", dit_bench.BenchSections, flag("targets", argument=True), OUT,
                 flag("device"), flag("threads"), flag("reps"), flag("ltx"),
                 flag("paper_decode"), flag("gemm_n"))  # fmt: skip
def bench(cfg):
    """Latency per stage, seconds per clip, memory, FLOPs and the DiT's share of the GEMM peak."""
    return dit_bench.run_bench(cfg)


@section_command(app, "bench-vae", vae_decode.BenchVAESections, OUT, flag("max_tile_mb"),
                 flag("threads"), flag("repeats"), flag("paper"), flag("vae"))  # fmt: skip
def bench_vae(cfg):
    """Decode speed and memory: the paper VAE at 49x384x512 (tiled), and the CPU default vs 4 DiT steps."""
    return vae_decode.bench_vae(cfg)


@section_command(app, "bench-tiling", tiled_gemm.BenchTilingSections, OUT, flag("k", csv=int),
                 flag("reps"), flag("runtimes", csv=str), flag("presets", csv=str),
                 flag("threads"))  # fmt: skip
def bench_tiling(cfg):
    """Tiled against untiled FFN GEMMs over k, eager and in onnxruntime, ratios from one run."""
    return tiled_gemm.bench_tiling(cfg)


@section_command(study_app, "vae", vae_ratios.StudyVAESections, OUT, flag("quick"),
                 flag("steps"), flag("frames"), flag("size"), flag("width"), flag("threads"),
                 flag("ratio"), flag("generate"), flag("dit_steps"), flag("dit_clips"))  # fmt: skip
def study_vae(cfg):
    """Train one VAE per compression ratio on the same data and budget; tabulate quality vs. cost."""
    return vae_ratios.study_vae(cfg)


@section_command(study_app, "prune", prune_ablation.StudyPruneSections, flag("teacher", "-m"),
                 OUT, flag("kd_config"), flag("budget"), flag("recovery_steps"),
                 flag("variants", csv=str), PROMPTS, flag("seeds"), flag("calib_prompts"),
                 flag("heldout_prompts"))  # fmt: skip
def study_prune(cfg):
    """Tri-level against block-, head- and FFN-only pruning, KD against magnitude and Taylor
    scores, before and after KD recovery."""
    return prune_ablation.study_prune(cfg)


@section_command(study_app, "distill", distill_ablation.StudyDistillSections,
                 flag("teacher", "-m"), flag("distill_config", "--config"), OUT,
                 flag("rows", csv=str), PROMPTS, flag("seeds"), flag("student_set"),
                 flag("reps"), flag("threads"))  # fmt: skip
def study_distill(cfg):
    """Teacher at 40/4/2 steps with and without CFG against the distilled students and their
    ablations."""
    return distill_ablation.study_distill(cfg)


# ---------------------------------------------------------------------------------------------
# generating, exported graphs, evaluation


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
    steps: StepsOpt = None,
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
    r = generate_video(prompt, output, model=model, steps=steps, guidance=guidance, seed=seed,
                       frames=frames, sheet=sheet, scale=scale, timings=timings,
                       warn=lambda m: typer.echo(m, err=True))  # fmt: skip
    typer.echo(str(r))


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
    typer.echo(str(export_compare.run_exported(export_dir, prompt, output, seed=seed, eager=eager)))


@app.command("eval-exported")
def eval_exported(
    export_dir: Annotated[Path, typer.Argument(help="a directory written by `mvdit export`")],
    prompts: Annotated[
        list[Path], typer.Option("--prompts", "-p", help="prompt files; repeatable")
    ],
    seeds: Annotated[int, typer.Option(help="samples per prompt")] = 2,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="also write JSON here")] = None,
) -> None:
    """The shapes detector's scores of clips made by the exported graphs alone, with the mean
    seconds of each stage (compare precisions or runtimes on the same prompts and seeds)."""
    typer.echo(str(export_compare.eval_exported_to(export_dir, prompts, seeds, out=out)))


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
    set_: SetOpt = None,
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
            help="add this much N(0,1) noise to the unit-scale latent before decoding (a DiT's error): how forgiving the decoder is"
        ),
    ] = 0.0,
) -> None:
    """Reconstruction PSNR / SSIM of an autoencoder on held-out clips (the data's 'val' split)."""
    r = vae_stage.eval_vae(
        model, config, set_, clips=clips, latent_noise=latent_noise, sheet=sheet, json_out=json_out
    )
    typer.echo(str(r))


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
    typer.echo(str(eval_stage.compare_evals(a, b, out)))


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
    steps: StepsOpt = None,
    guidance: GuidanceOpt = None,
    weights: Annotated[
        str, typer.Option(help="'ema' (what the run exports) or 'model' (the raw weights)")
    ] = "ema",
    device: DeviceOpt = "cpu",
) -> None:
    """Prompt faithfulness of every kept checkpoint of a run: a table and a plot against the step."""
    out = out or run / "curve"
    r = checkpoint_curve(run, prompts, out, seeds=seeds, steps=steps, guidance=guidance, seed=seed,
                         weights=weights, device=device)  # fmt: skip
    typer.echo(curve_summary(r, out))


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


@section_command(app, "info", InfoSections, *map(flag, InfoConfig.model_fields))
def info(cfg):
    """Parameters, latent grid, token count and FLOPs of a DiT preset (built on the meta
    device)."""
    return describe_preset(cfg)


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
    paths = write_examples(out, n=n, frames=frames, height=height, width=width, fps=fps,
                           seed=seed, split=split, holdout=holdout or ())  # fmt: skip
    typer.echo(
        f"wrote {n} clips of {frames}x{height}x{width} to {out} (contact sheet: {paths[-2]})"
    )


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
    launch_demo(models_available(model or []), host=host, port=port)


# ---------------------------------------------------------------------------------------------


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
    except (typer.Abort, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except MvditError as e:
        typer.echo(f"error: {_one_line(str(e))}", err=True)
        sys.exit(2)
    except Exception as e:  # a full disk, whichever library hit it, is one line too
        if not is_disk_full(e):
            raise
        typer.echo(f"error: {_one_line(disk_full_message(e))}", err=True)
        sys.exit(2)
    if isinstance(code, int) and code:
        sys.exit(code)  # a typer.Exit(code) raised inside a command


if __name__ == "__main__":
    main()

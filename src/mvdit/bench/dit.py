"""`mvdit bench`: how fast each stage is, and how close the DiT runs to this machine's limit.

For every target (a preset with random weights, or a trained model directory) it measures the
latency of the text encoder, of one DiT evaluation and of the VAE decode, the end-to-end seconds
per clip and output frames per second, peak memory, parameters and FLOPs per step, and the FLOP
rate the DiT forward achieves as a fraction of the GEMM peak measured in the same run (a large
square matmul at the same thread count and dtype: the most a dense model can hope for).

Where diffusers' LTXVideoTransformer3DModel can take the same shape (width = heads x head_dim,
FFN = 4 x width, uniform blocks) it is built with that shape and timed in alternation with ours,
so a slow implementation shows up as a ratio, not as an excuse about the machine.

On CPU the paper presets (49x384x512 -> 7x12x16 = 1,344 tokens) run one DiT step each and the
end-to-end time is estimated from the stage timings; on a GPU the whole clip is generated.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field
from torch import nn

from mvdit import MvditError
from mvdit.bench.measure import (
    PeakMemory,
    load_average,
    machine_info,
    seconds,
    si,
    time_once,
    timed,
)
from mvdit.build import build_autoencoder
from mvdit.config import PRESETS, Strict, default_train_config, preset_config
from mvdit.flow import euler_sample
from mvdit.io import atomic_write_text, read_json, write_json
from mvdit.limits import bounded
from mvdit.models.dit import VideoDiT
from mvdit.models.text import TextConfig, load_text_encoder
from mvdit.models.vae import CausalVideoVAE, vae_preset
from mvdit.pipeline import Pipeline, SamplerConfig, Sampling
from mvdit.results import Result

PAPER_CLIP = (49, 384, 512)  # the paper's clip: 8x32x32 VAE -> 7x12x16 latent, 1,344 tokens
# Sampling of the paper's models: the teacher ~40 Euler steps with CFG, the student 4 steps without.
PAPER_SAMPLER = {
    "paper-teacher": SamplerConfig(steps=40, guidance=4.0),
    "paper-student": SamplerConfig(steps=4, guidance=1.0),
}
CPU_PRESET_CLIPS = {"tiny": (9, 32, 32), "small": (17, 64, 64)}
PROMPT = "a red circle moves quickly to the left on a black background"


# ---------------------------------------------------------------------------------------------
# measuring


def gemm_peak(device: torch.device, dtype: torch.dtype, n: int = 4096, reps: int = 5) -> float:
    """FLOP/s of the fastest n x n x n matmul: the practical ceiling of a dense network."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / min(timed(lambda: a @ b, device, reps))


def linear_peak(
    cfg, tokens: int, text_len: int, device: torch.device, dtype: torch.dtype, reps: int = 3
) -> float:
    """FLOP/s of the fastest of the DiT's own linear shapes, timed like gemm_peak. On a loaded
    machine these can beat the square matmul; the peak a model is compared with is the best of
    both, so its share of the peak cannot read high."""
    best = 0.0
    for m, k, n in cfg.linear_shapes(tokens, text_len):
        x = torch.randn(m, k, device=device, dtype=dtype)
        w = torch.randn(n, k, device=device, dtype=dtype)
        best = max(best, 2 * m * k * n / min(timed(lambda: x @ w.T, device, reps)))  # noqa: B023
    return best


def params(module: nn.Module | None) -> int:
    return sum(p.numel() for p in module.parameters()) if module is not None else 0


# ---------------------------------------------------------------------------------------------
# building models without paying for initialisation


def cheap_init_(module: nn.Module, seed: int = 0) -> nn.Module:
    """Fill every parameter and buffer by tiling one small random vector (std 0.02).

    Timing does not depend on the values, and drawing 2B random numbers costs longer than a
    forward; this is a memory copy. Norm scales get ones so activations stay finite.
    """
    pattern = torch.randn(1 << 16, generator=torch.Generator().manual_seed(seed)) * 0.02
    with torch.no_grad():
        for name, t in [*module.named_parameters(), *module.named_buffers()]:
            if not t.is_floating_point():
                continue
            if t.dim() == 1 and "norm" in name and name.endswith("weight"):
                t.fill_(1.0)
                continue
            flat, src = t.view(-1), pattern.to(t.device, t.dtype)
            for i in range(0, flat.numel(), src.numel()):
                n = min(src.numel(), flat.numel() - i)
                flat[i : i + n].copy_(src[:n])
    return module


def build_random(
    ctor: Callable[[], nn.Module], device: torch.device, dtype: torch.dtype
) -> nn.Module:
    """Construct on the meta device (no allocation, no init), then allocate and fill cheaply."""
    with torch.device("meta"):
        module = ctor()
    module = cheap_init_(module.to_empty(device=device))
    return (module if dtype == torch.float32 else module.to(dtype)).eval()


def ltx_twin_kwargs(cfg) -> tuple[dict | None, str]:
    """LTXVideoTransformer3DModel arguments with our DiT's shape, or None and the reason it has none."""
    b0 = cfg.blocks[0]
    if any(
        (b.heads, b.cross_heads, b.ffn_dim) != (b0.heads, b0.heads, b0.ffn_dim) for b in cfg.blocks
    ):
        return None, "pruned blocks are non-uniform; LTX blocks are all alike"
    if b0.heads * cfg.head_dim != cfg.hidden_size:
        return (
            None,
            f"LTX ties width to heads x head_dim ({b0.heads} x {cfg.head_dim} != {cfg.hidden_size})",
        )
    if b0.ffn_dim != 4 * cfg.hidden_size:
        return None, f"LTX's FFN is 4 x width ({4 * cfg.hidden_size}), ours is {b0.ffn_dim}"
    return dict(
        in_channels=cfg.in_channels, out_channels=cfg.out_ch, num_attention_heads=b0.heads,
        attention_head_dim=cfg.head_dim, cross_attention_dim=cfg.hidden_size,
        num_layers=len(cfg.blocks), caption_channels=cfg.text_dim,
    ), ""  # fmt: skip


def ltx_twin(target, device: torch.device, dtype: torch.dtype) -> tuple[nn.Module | None, str]:
    """diffusers' LTX transformer with our DiT's shape and cheap random weights, or the reason why not."""
    kw, why = ltx_twin_kwargs(target.dit_config)
    if kw is None:
        return None, why
    try:
        from diffusers import LTXVideoTransformer3DModel
        from diffusers.utils import logging as diffusers_logging
    except ImportError:
        return None, "diffusers is not installed (pip install 'mvdit[interop]')"
    diffusers_logging.set_verbosity_error()
    return build_random(lambda: LTXVideoTransformer3DModel(**kw), device, dtype), ""


# ---------------------------------------------------------------------------------------------
# targets


@dataclass
class Target:
    name: str
    kind: str  # "preset" (random weights) or "checkpoint"
    dit_config: object  # DiTConfig
    dit: nn.Module | None  # built lazily for presets, so only one large model lives at a time
    # None: decode not timed (e.g. the paper VAE on CPU without --paper-decode)
    vae: nn.Module | None
    latent: tuple[int, int, int, int]  # (C, t, h, w)
    clip: tuple[int, int, int]
    fps: float
    text_len: int
    sampling: Sampling  # the schedule, guidance and network evaluations of one clip
    note: str = ""


def preset_target(name: str, paper_decode: bool) -> Target:
    """A preset with random weights at its clip size: the CPU presets with the tiny config's VAE
    and text encoder, the paper presets at 49x384x512 with the paper's 8x32x32 VAE."""
    if name not in PRESETS:
        raise MvditError(
            f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)} or give a model directory"
        )
    if name in PAPER_SAMPLER:
        frames, height, width = PAPER_CLIP
        latent = (128, 1 + (frames - 1) // 8, height // 32, width // 32)
        vae = None
        if paper_decode:
            vae = build_random(
                lambda: CausalVideoVAE(vae_preset("paper")), torch.device("cpu"), torch.float32
            )
        sampling = PAPER_SAMPLER[name].resolve(latent[1] * latent[2] * latent[3])
        note = "random weights; 77 text tokens of 768-d (CLIP-L's shape), text encoder timed with MiniLM"
        return Target(
            name,
            "preset",
            preset_config(name),
            None,
            vae,
            latent,
            PAPER_CLIP,
            8.0,
            77,
            sampling,
            note,
        )
    tc = default_train_config()
    frames, height, width = CPU_PRESET_CLIPS.get(
        name, (tc.data.frames, tc.data.height, tc.data.width)
    )
    vae = build_autoencoder(tc.vae)
    latent = vae.latent_shape(frames, height, width)
    dit_cfg = preset_config(name, latent[0], 384, tc.model.patch_size)
    tf, sf = vae.temporal_factor, vae.spatial_factor
    note = f"random weights; the {tf}x{sf}x{sf} VAE and text encoder of configs/tiny.toml"
    return Target(
        name,
        "preset",
        dit_cfg,
        None,
        vae,
        latent,
        (frames, height, width),
        tc.data.fps,
        tc.text.max_length,
        SamplerConfig(steps=tc.sample.steps, guidance=tc.sample.guidance).resolve(
            dit_cfg.tokens(latent)
        ),
        note,
    )


def checkpoint_target(path: str | Path, device: torch.device) -> tuple[Target, object]:
    pipe = Pipeline.from_pretrained(path, device=str(device))
    c = pipe.config
    t = Target(
        str(path),
        "checkpoint",
        pipe.dit.config,
        pipe.dit,
        pipe.vae,
        pipe.latent_shape,
        (c.frames, c.height, c.width),
        c.fps,
        pipe.text_encoder.max_length,
        pipe.sampling(),  # the model's own sampler (pipeline.json), a fixed schedule included
    )
    return t, pipe


# ---------------------------------------------------------------------------------------------
# one target


def dit_inputs(target: Target, device: torch.device, dtype: torch.dtype, batch: int = 1):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *target.latent, generator=g).to(device, dtype)
    t = torch.full((batch,), 0.5, device=device, dtype=dtype)
    text = torch.randn(batch, target.text_len, target.dit_config.text_dim, generator=g).to(
        device, dtype
    )
    mask = torch.ones(batch, target.text_len, dtype=torch.bool, device=device)
    return x, t, text, mask


@torch.inference_mode()
def bench_target(
    target: Target,
    text_encoder,
    device: torch.device,
    dtype: torch.dtype,
    reps: int,
    ltx: bool,
    pipe=None,
    e2e_budget: float = 20.0,
) -> dict:
    """Time one target's stages; generate a whole clip when that is expected to take <= e2e_budget s."""
    _, lt, lh, lw = target.latent
    tokens = target.dit_config.tokens(target.latent)
    r: dict = {
        "name": target.name, "kind": target.kind, "note": target.note,
        "clip": dict(zip(("frames", "height", "width"), target.clip, strict=True), fps=target.fps),
        "latent": list(target.latent), "tokens": tokens, "text_tokens": target.text_len,
        "sampler": target.sampling.summary(),
    }  # fmt: skip

    # text encoder: one prompt
    text_s = timed(lambda: text_encoder.encode([PROMPT]), torch.device("cpu"), reps)
    # DiT: one network evaluation at batch 1; the warm-up runs inside the memory probe
    with PeakMemory(device) as mem:
        dit = target.dit or build_random(lambda: VideoDiT(target.dit_config), device, dtype)
        x, t, text, mask = dit_inputs(target, device, dtype)

        def ours():
            with _autocast(device, dtype):
                return dit(x, t, text, mask)

        ours()
    twin, why = ltx_twin(target, device, dtype) if ltx else (None, "not requested")
    if twin is not None:
        hs = x.flatten(2).transpose(1, 2).contiguous()  # LTX takes tokens, not a latent grid

        def other():
            with _autocast(device, dtype):
                return twin(
                    hs,
                    text,
                    t * 1000,
                    mask.long(),
                    num_frames=lt,
                    height=lh,
                    width=lw,
                    return_dict=False,
                )

        other()
    # alternate ours and the twin so that both see the same machine load; small models keep
    # going for a second so that one unlucky time slice cannot decide the result
    dit_s, ltx_s = [], []
    while len(dit_s) < reps or (sum(dit_s) < 1.0 and len(dit_s) < 100):
        dit_s.append(time_once(ours, device))
        if twin is not None:
            ltx_s.append(time_once(other, device))
    cost = dit.cost(None, tokens, target.text_len)
    flops = cost["flops"]
    r["params"] = {
        "dit": cost["params"],
        "text_encoder": params(text_encoder.model),
        "vae": params(target.vae),
    }
    r["flops_per_step"] = flops
    r["latency_s"] = {
        "text": min(text_s),
        "dit_step": min(dit_s),
        "dit_step_median": sorted(dit_s)[len(dit_s) // 2],
    }
    r["dit_achieved_flops"] = flops / min(dit_s)
    r["peak_memory_mb"] = {"dit": mem.mb, "before_dit": mem.start / 2**20}
    if twin is not None:
        r["ltx"] = {
            "dit_step": min(ltx_s),
            "params": params(twin),
            "ours_speedup": min(ltx_s) / min(dit_s),
            "times": ltx_s,
        }
        twin = other = None  # free the twin before decoding (8 GB at the teacher's size)
    else:
        r["ltx"] = {"skipped": why}
    r["dit_times"] = dit_s

    # VAE decode of one clip's latent
    if target.vae is not None:
        vae = target.vae.to(device)
        z = torch.randn(1, *target.latent, generator=torch.Generator().manual_seed(1)).to(device)
        with PeakMemory(device) as vmem, _autocast(device, dtype):
            dec_s = timed(lambda: vae.decode(z), device, max(1, reps // 2))
        r["latency_s"]["decode"] = min(dec_s)
        r["peak_memory_mb"]["decode"] = vmem.mb
    else:
        r["latency_s"]["decode"] = None

    # end to end: measured where it is affordable, else the sum of the stages
    lat = r["latency_s"]
    nfe = r["sampler"]["nfe"]
    est = lat["text"] + nfe * lat["dit_step"] + (lat["decode"] or 0.0)
    if est <= e2e_budget and (pipe is not None or target.vae is not None):
        run = (
            (lambda: pipe.generate([PROMPT], seed=0))
            if pipe is not None
            else _sampler(target, dit, text_encoder, device, dtype)
        )
        with _autocast(device, dtype):
            r["end_to_end"] = {
                "seconds": min(timed(run, device, max(1, reps // 2))),
                "measured": True,
            }
    else:
        how = "text + NFE x one batch-1 DiT step" + (
            " + decode" if lat["decode"] is not None else " (decode not timed)"
        )
        r["end_to_end"] = {"seconds": est, "measured": False, "how": how}
    r["end_to_end"]["output_fps"] = target.clip[0] / r["end_to_end"]["seconds"]
    return r


def generate_process(model_dir: str | Path, reps: int, threads: int | None = None) -> dict:
    """`mvdit generate` as a user runs it: a fresh Python process from start to the mp4 written,
    timed from outside (best of `reps`), with the stages the command reports; "start" is the rest
    (interpreter, imports, argument parsing, exit)."""
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        stages_json = Path(tmp) / "timings.json"
        cmd = [sys.executable, "-c", "from mvdit.cli import main; main()", "generate", PROMPT,
               "--model", str(model_dir), "--output", str(Path(tmp) / "clip.mp4"),
               "--timings", str(stages_json)]  # fmt: skip
        for _ in range(reps):
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            total = time.perf_counter() - t0
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise MvditError(f"`mvdit generate --model {model_dir}` failed: {last}")
            stages = read_json(stages_json)
            nfe = stages.pop("nfe")
            stages["start"] = total - sum(stages.values())
            runs.append({"seconds": total, "stages": stages, "nfe": nfe})
    best = min(runs, key=lambda r: r["seconds"])
    return best | {"times": [r["seconds"] for r in runs]}


def _autocast(device: torch.device, dtype: torch.dtype):
    # bf16 weights with fp32 noise and latents: autocast casts each op's inputs (GPU path)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def _sampler(
    target: Target, dit, text_encoder, device: torch.device, dtype: torch.dtype
) -> Callable[[], object]:
    """A whole clip for a preset: encode the prompt, run the sampler, decode. The DiT reads random
    text tokens of its own width (a paper preset expects CLIP-L's 768-d, MiniLM gives 384-d)."""
    x, _, text, mask = dit_inputs(target, device, dtype)
    s = target.sampling
    cond = {"text": text, "text_mask": mask}

    def run() -> None:
        text_encoder.encode([PROMPT])
        latents, _ = euler_sample(
            dit,
            x,
            s.schedule,
            cond,
            cond if s.guidance != 1.0 else None,
            s.guidance,
            prepare=dit.prepare_conditioning,
        )
        target.vae.decode(latents.float())

    return run


# ---------------------------------------------------------------------------------------------
# the run


def run_bench(cfg: BenchConfig) -> Result:
    """Benchmark presets or model directories; write OUT/bench.json and OUT/bench.md."""
    targets, out, device, threads, reps = cfg.targets, cfg.out, cfg.device, cfg.threads, cfg.reps
    ltx, paper_decode, gemm_n = cfg.ltx, cfg.paper_decode, cfg.gemm_n
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MvditError("--device cuda but no CUDA GPU is visible; use --device cpu")
    if dev.type not in ("cpu", "cuda"):
        raise MvditError(f"--device must be cpu or cuda, got {device}")
    if reps < 1:
        raise MvditError(f"--reps must be at least 1, got {reps}")
    if threads is not None:
        if threads < 1:
            raise MvditError(f"--threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    # fp32 on CPU (bf16 matmul is far slower on most CPUs), bf16 on GPU: what the project runs.
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    paper_decode = dev.type == "cuda" if paper_decode is None else paper_decode
    for spec in targets:
        if not Path(spec).is_dir() and spec not in PRESETS:
            raise MvditError(
                f"'{spec}' is neither a preset ({', '.join(PRESETS)}) nor a model directory"
            )
    load_start = load_average()

    text_cache: dict = {}
    peaks = [gemm_peak(dev, dtype, gemm_n)]
    rows = []
    for spec in targets:
        pipe = None
        if Path(spec).is_dir():
            target, pipe = checkpoint_target(spec, dev)
            te = pipe.text_encoder
        else:
            target = preset_target(spec, paper_decode)
            key = target.text_len
            te = text_cache.get(key) or text_cache.setdefault(
                key, load_text_encoder(TextConfig(max_length=min(key, 128)))
            )
        te.model.to(dev)  # the text encoder runs where the DiT runs
        # right before the DiT: the load may have changed
        peaks.append(gemm_peak(dev, dtype, gemm_n))
        _, lt, lh, lw = target.latent
        own = linear_peak(target.dit_config, lt * lh * lw, target.text_len, dev, dtype)
        rows.append(bench_target(target, te, dev, dtype, reps, ltx, pipe))
        rows[-1]["linear_peak_flops"] = own
        if pipe is not None and dev.type == "cpu":
            rows[-1]["process"] = generate_process(spec, max(2, reps), threads)
    peaks.append(gemm_peak(dev, dtype, gemm_n))
    linear = [r["linear_peak_flops"] for r in rows]
    peak = max(peaks + linear)
    for r in rows:
        r["dit_fraction_of_peak"] = r["dit_achieved_flops"] / peak
    result = {
        "machine": machine_info(load_start, dev) | {
            "dtype": str(dtype).replace("torch.", ""), "gemm_peak_flops": peak,
            "gemm_peak_samples": peaks, "gemm_n": gemm_n,
            "gemm_peak_source": "square" if max(peaks) >= max(linear, default=0.0) else "model linear shapes",
        },
        "targets": rows,
    }  # fmt: skip
    out = Path(out)
    write_json(out / "bench.json", result)
    atomic_write_text(out / "bench.md", bench_markdown(result))
    n = len(rows)
    return Result(
        result,
        lambda r: (
            f"{bench_markdown(r)}\nwrote {out / 'bench.json'} and {out / 'bench.md'} ({n} targets)"
        ),
        out,
    )


def bench_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Benchmark",
        "",
        f"{m['device']}, {m['threads']} threads, {m['dtype']}, torch {m['torch']}. "
        f"GEMM peak (best of the run over a {m['gemm_n']}³ matmul and every target's own linear shapes, "
        f"here from the {m.get('gemm_peak_source', 'square')}): {si(m['gemm_peak_flops'], 'FLOP/s')}.",
        "",
        "| target | clip | tokens | DiT params | FLOPs/step | text | DiT step | decode | end-to-end | out FPS | DiT FLOP/s | of peak | vs LTX | peak mem |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["targets"]:
        c, lat, e = r["clip"], r["latency_s"], r["end_to_end"]
        l = r["ltx"]  # noqa: E741
        vs = f"{l['ours_speedup']:.2f}x" if "ours_speedup" in l else "–"
        mem = r["peak_memory_mb"].get("dit")
        lines.append(
            f"| {r['name']} | {c['frames']}×{c['height']}×{c['width']} | {r['tokens']:,} | {si(r['params']['dit'])} | "
            f"{si(r['flops_per_step'])} | {seconds(lat['text'])} | {seconds(lat['dit_step'])} | {seconds(lat['decode'])} | "
            f"{seconds(e['seconds'])}{'' if e['measured'] else '*'} | {e['output_fps']:.2f} | {si(r['dit_achieved_flops'])} | "
            f"{100 * r['dit_fraction_of_peak']:.0f}% | {vs} | {'–' if mem is None else f'{mem:,.0f} MB'} |"
        )
    lines += [
        "",
        "DiT step: one network evaluation at batch 1 (best of the run). End-to-end: text + sampler "
        "(NFE evaluations) + decode; * = estimated from the stage timings rather than measured. "
        "vs LTX: diffusers' LTXVideoTransformer3DModel of the same shape, timed in alternation; "
        ">1 means ours is faster. Peak memory: while building the DiT and running one step "
        "(CPU: the process's resident set, ~0.5 GB of it Python, torch and the text encoder).",
    ]
    procs = [r for r in result["targets"] if "process" in r]
    if procs:
        lines += [
            "",
            "`mvdit generate` as a process, start of Python to mp4 written (best of "
            f"{len(procs[0]['process']['times'])}); start = interpreter, imports and exit:",
            "",
            "| model | process | start | load | text | DiT | decode | write |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in procs:
            p, st = r["process"], r["process"]["stages"]
            lines.append(
                f"| {r['name']} | {seconds(p['seconds'])} | "
                + " | ".join(
                    seconds(st[k]) for k in ("start", "load", "text", "dit", "decode", "write")
                )
                + " |"
            )
    for r in result["targets"]:
        extra = [r["note"]] if r["note"] else []
        if "skipped" in r["ltx"]:
            extra.append(f"no LTX twin: {r['ltx']['skipped']}")
        if not r["end_to_end"]["measured"]:
            extra.append(f"end-to-end = {r['end_to_end']['how']}, {r['sampler']['nfe']} NFE")
        if extra:
            lines.append(f"- {r['name']}: " + "; ".join(extra))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# the [bench] section: `mvdit bench`


class BenchConfig(Strict):
    """[bench]"""

    targets: list[str] = Field(
        default_factory=lambda: ["tiny", "small", "paper-student", "paper-teacher"],
        description="presets (tiny, small, paper-teacher, paper-student) and/or model directories",
    )
    out: str = Field(default="runs/bench", description="directory for bench.json and bench.md")
    device: str = Field(default="cpu", description="cpu or cuda (bf16 on cuda)")
    threads: int | None = bounded(
        "threads",
        None,
        description="CPU threads for every measurement, GEMM peak included (default: torch's)",
    )
    reps: int = Field(
        default=2,
        ge=1,
        description="timed repetitions of each stage after a warm-up (best is reported)",
    )
    ltx: bool = Field(
        default=True,
        description="also time diffusers' LTXVideoTransformer3DModel of the same shape",
    )
    paper_decode: bool | None = Field(
        default=None, description="time the paper VAE decode at 49x384x512 (default: on GPU only)"
    )
    gemm_n: int = Field(
        default=4096, ge=64, description="side of the square matmul that measures the GEMM peak"
    )


class BenchSections(Strict):
    bench: BenchConfig = Field(default_factory=BenchConfig)

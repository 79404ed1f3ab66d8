"""Decode benchmarks (`mvdit bench-vae`): is the VAE the bottleneck once the DiT takes 4 steps?

1. The paper's setting: the 8x32x32 VAE at LTX-Video's width decodes a 128x7x12x16 latent to a
   49x384x512 clip on CPU, tiled under a memory cap. Weights are random: time and memory do not
   depend on their values. Peak memory is sampled from the process's resident set while decoding.
2. The CPU preset: the shipped VAE's decode of a 9x32x32 clip against 4 steps of the student-size
   DiT (the `tiny` preset) on the same latent, interleaved in one run so both see the same load.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import torch
from pydantic import Field

from mvdit.bench.measure import PeakMemory, time_once
from mvdit.build import build_autoencoder, load_autoencoder
from mvdit.config import Strict, default_train_config, preset_config
from mvdit.io import atomic_write_text, write_json
from mvdit.limits import bounded
from mvdit.models.dit import VideoDiT
from mvdit.models.vae import CausalVideoVAE, vae_preset
from mvdit.results import Result


@torch.no_grad()
def bench_paper_decode(max_tile_bytes: int | None, seed: int = 0) -> dict:
    torch.manual_seed(seed)
    vae = CausalVideoVAE(vae_preset("paper")).eval()
    latent = torch.randn(1, 128, 7, 12, 16)
    tiling = (
        vae.tiling_for_budget(tuple(latent.shape[2:]), max_tile_bytes) if max_tile_bytes else None
    )
    out = []
    with PeakMemory() as mem:
        seconds = time_once(lambda: out.append(vae.decode(latent, tiling=tiling)))
    video = out[0]
    tile = (tiling.frames or 7, tiling.height or 12, tiling.width or 16) if tiling else (7, 12, 16)
    return {
        "vae": "paper (8x32x32, 128 ch, widths 128/256/512/512)",
        "params_m": round(vae.param_count()["total"] / 1e6, 1),
        "latent": "x".join(map(str, latent.shape[1:])),
        "video": "x".join(map(str, video.shape[1:])),
        "max_tile_bytes": max_tile_bytes,
        "tiling": tiling.model_dump() if tiling else None,
        "estimated_tile_bytes": vae.decode_bytes(tile),
        "decode_s": round(seconds, 2),
        "peak_rss_gb": round(mem.peak / 1e9, 3),
        "peak_rss_above_weights_gb": round((mem.peak - mem.start) / 1e9, 3),
        # oneDNN keeps a reordered copy of every conv's weights: part of the peak above weights
        "decoder_weights_gb": round(4 * vae.param_count()["decoder"] / 1e9, 3),
        "output_clip_gb": round(video.numel() * 4 / 1e9, 3),
    }


@torch.no_grad()
def bench_cpu_default(
    vae_path: str | Path | None = None,
    repeats: int = 20,
    text_len: int = 24,
    text_dim: int = 384,
    steps: int = 4,
) -> dict:
    # the default config's VAE, read at its patch size; another VAE at patch 1
    tc = default_train_config()
    vae = (build_autoencoder(tc.vae) if vae_path is None else load_autoencoder(vae_path)).eval()
    frames, height, width = 9, 32, 32
    shape = vae.latent_shape(frames, height, width)
    patch = (tc.model.patch_size or 1) if vae_path is None else 1
    dit = VideoDiT(preset_config("tiny", vae.latent_channels, text_dim, patch)).eval()
    z = torch.randn(1, *shape)
    text, mask = torch.randn(1, text_len, text_dim), torch.ones(1, text_len, dtype=torch.bool)

    def dit_steps() -> None:
        x = z
        for i in range(steps):
            x = x - dit(x, torch.full((1,), 1 - i / steps), text, mask) / steps

    def reference_decode() -> None:
        # oneDNN off: the kernel PyTorch itself picks for a batch-1 clip this small
        # (slow_conv3d), which models/vae.py:conv3d routes around at inference
        # (set directly: the flags() context also sets oneDNN's TF32 switch, which warns on CPU)
        before = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = False
        try:
            vae.decode(z)
        finally:
            torch.backends.mkldnn.enabled = before

    dec, den, ref = [], [], []
    vae.decode(z), dit_steps(), reference_decode()  # warm-up
    for _ in range(repeats):  # interleaved, so all see the same machine load
        dec.append(time_once(lambda: vae.decode(z)))
        den.append(time_once(dit_steps))
        ref.append(time_once(reference_decode))
    return {
        "vae": str(vae_path or tc.vae.path or tc.vae.kind),
        "clip": f"{frames}x{height}x{width}",
        "latent": "x".join(map(str, shape)),
        "dit": f"tiny preset, {sum(p.numel() for p in dit.parameters()) / 1e6:.2f}M params, {dit.config.tokens(shape)} tokens (patch {patch}), {text_len} text tokens",
        "repeats": repeats,
        "decode_ms_median": round(1000 * statistics.median(dec), 2),
        "decode_ms_min": round(1000 * min(dec), 2),
        "decode_reference_kernel_ms_median": round(1000 * statistics.median(ref), 2),
        "decode_reference_kernel_ms_min": round(1000 * min(ref), 2),
        f"dit_{steps}_steps_ms_median": round(1000 * statistics.median(den), 2),
        f"dit_{steps}_steps_ms_min": round(1000 * min(den), 2),
        "decode_faster": statistics.median(dec) < statistics.median(den),
    }


def run_vae_bench(
    out_dir: str | Path,
    *,
    max_tile_bytes: int | None,
    threads: int | None,
    paper: bool,
    vae_path: str | Path | None,
    repeats: int,
) -> dict:
    """Both benchmarks; writes bench.json and bench.md to out_dir and returns the results
    (defaults: the [bench_vae] section)."""
    if threads:
        torch.set_num_threads(threads)
    result: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__}
    result["cpu_default"] = bench_cpu_default(vae_path, repeats)
    if paper:
        result["paper_decode"] = bench_paper_decode(max_tile_bytes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench.json", result)
    atomic_write_text(out / "bench.md", bench_markdown(result))
    return result


def bench_markdown(r: dict) -> str:
    c = r["cpu_default"]
    dit_key = next(k for k in c if k.startswith("dit_") and k.endswith("_median"))
    lines = [
        f"CPU, {r['threads']} thread(s), torch {r['torch']}.",
        "",
        "| CPU preset (9x32x32) | median ms | min ms |",
        "|---|---|---|",
        f"| VAE decode ({c['latent']} latent) | {c['decode_ms_median']:.1f} | {c['decode_ms_min']:.1f} |",
        f"| the same, PyTorch's own kernel choice (slow_conv3d) | {c['decode_reference_kernel_ms_median']:.1f} | {c['decode_reference_kernel_ms_min']:.1f} |",
        f"| DiT, 4 steps ({c['dit']}) | {c[dit_key]:.1f} | {c[dit_key.replace('median', 'min')]:.1f} |",
    ]
    if "paper_decode" in r:
        p = r["paper_decode"]
        lines += [
            "",
            "| paper VAE decode | value |",
            "|---|---|",
            f"| model | {p['vae']}, {p['params_m']}M params |",
            f"| latent -> video | {p['latent']} -> {p['video']} |",
            f"| memory cap / tiling | {p['max_tile_bytes']} bytes / {p['tiling']} |",
            f"| time | {p['decode_s']:.1f} s |",
            f"| peak RSS of the process | {p['peak_rss_gb']:.2f} GB |",
            f"| peak RSS above the loaded model | {p['peak_rss_above_weights_gb']:.2f} GB |",
            f"| of which: tile activations (estimate) | {p['estimated_tile_bytes'] / 1e9:.2f} GB |",
            f"| of which: oneDNN's reordered decoder weights | {p['decoder_weights_gb']:.2f} GB |",
            f"| of which: the output clip | {p['output_clip_gb']:.2f} GB |",
        ]
    return "\n".join(lines) + "\n"


class BenchVAEConfig(Strict):
    """[bench_vae]: `mvdit bench-vae`"""

    out: str = Field(default="runs/bench-vae", description="directory for bench.json and bench.md")
    max_tile_mb: int = Field(
        default=1024, ge=1, description="memory cap for one decode tile of the paper VAE, in MiB"
    )
    threads: int = bounded(
        "threads", 1, description="CPU threads (1 is steadiest on a shared machine)"
    )
    repeats: int = Field(
        default=20, ge=1, description="timed repeats of the CPU-preset decode and DiT steps"
    )
    paper: bool = Field(
        default=True,
        description="also decode 49x384x512 with the paper-width 8x32x32 VAE (minutes on CPU)",
    )
    vae: str | None = Field(
        default=None,
        description="VAE directory for the CPU-preset bench (default: the shipped one)",
    )


class BenchVAESections(Strict):
    bench_vae: BenchVAEConfig = Field(default_factory=BenchVAEConfig)


def bench_vae(cfg: BenchVAEConfig) -> Result:
    r = run_vae_bench(cfg.out, max_tile_bytes=cfg.max_tile_mb << 20, threads=cfg.threads,
                      paper=cfg.paper, vae_path=cfg.vae, repeats=cfg.repeats)  # fmt: skip
    out = Path(cfg.out)
    return Result(
        r, lambda r: f"{bench_markdown(r)}\nwrote {out / 'bench.json'} and {out / 'bench.md'}", out
    )

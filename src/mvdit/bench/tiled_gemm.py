"""Tiled against untiled FFN GEMMs (`mvdit bench-tiling`), eager and in onnxruntime, on this machine.

For each FFN shape (paper-student: 2048 -> 6144 and 6144 -> 2048 at 1,344 tokens; the tiny preset's
at its 48 tokens) and each tile count k, the untiled layer and the tiled one are timed in
alternation, so both see the same machine load; the ratio untiled / tiled is per shape and k from
that one run (> 1: tiling is faster). The paper's gain is a phone effect (each partial GEMM's
weight tile stays in on-chip memory); a desktop CPU with large caches need not show it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from mvdit import MvditError
from mvdit.bench.measure import load_average, machine_info, seconds, time_once
from mvdit.config import PRESETS, Strict
from mvdit.export.onnx import ort_session, save_onnx
from mvdit.export.tiling import TiledLinear
from mvdit.io import atomic_write_text, write_json
from mvdit.limits import bounded
from mvdit.results import Result

DEFAULT_KS = (1, 2, 4, 8, 16)
TOKENS = {"paper-student": 1344, "tiny": 48}  # 49x384x512 at 4x16x16 / patch 1; 9x32x32 at 4x8x8


def ffn_shapes(presets: tuple[str, ...] = ("paper-student", "tiny")) -> list[dict]:
    shapes = []
    for name in presets:
        d, f = PRESETS[name]["hidden_size"], PRESETS[name]["ffn_dim"]
        for layer, (i, o) in (("fc1", (d, f)), ("fc2", (f, d))):
            shapes.append(
                {"preset": name, "layer": layer, "in": i, "out": o, "tokens": TOKENS[name]}
            )
    return shapes


def _ort_session(module: nn.Module, x: torch.Tensor, path: Path):
    save_onnx(module, (x,), ["x"], ["y"], path)
    return ort_session(path, torch.get_num_threads())


def run_tiling_bench(
    out: str | Path,
    *,
    ks: tuple[int, ...],
    reps: int,
    runtimes: tuple[str, ...],
    presets: tuple[str, ...],
    threads: int | None,
    progress: bool = True,
) -> dict:
    """Time each preset's FFN GEMMs tiled into each k against untiled (defaults: [bench_tiling])."""
    if reps < 1:
        raise MvditError(f"--reps must be at least 1, got {reps}")
    if not ks or any(k < 1 for k in ks):
        raise MvditError(f"tile counts must be positive integers, got {list(ks)}")
    unknown = [r for r in runtimes if r not in ("eager", "onnxruntime")]
    if unknown:
        raise MvditError(f"unknown runtime {unknown[0]!r}: choose eager and/or onnxruntime")
    bad = [p for p in presets if p not in PRESETS]
    if bad:
        raise MvditError(f"unknown preset {bad[0]!r}; choose from {', '.join(PRESETS)}")
    if threads is not None:
        torch.set_num_threads(threads)
    load_start = load_average()
    rows = []
    shapes = ffn_shapes(presets)
    bar = tqdm(
        total=len(shapes) * len(ks) * len(runtimes), desc="bench-tiling", disable=not progress
    )
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for s in shapes:
            torch.manual_seed(0)
            lin = nn.Linear(s["in"], s["out"]).eval()
            x = torch.randn(1, s["tokens"], s["in"])
            ref = lin(x)
            for runtime in runtimes:
                # the untiled graph once per shape, not once per k
                sb = _ort_session(lin, x, Path(tmp) / "base.onnx") if runtime != "eager" else None
                for k in ks:
                    if k > s["in"]:
                        continue
                    tiled = TiledLinear(lin, k).eval()
                    if runtime == "eager":
                        base_fn = lambda lin=lin, x=x: lin(x)  # noqa: E731
                        tiled_fn = lambda t=tiled, x=x: t(x)  # noqa: E731
                        err = float((tiled(x) - ref).abs().max())
                    else:
                        st = _ort_session(tiled, x, Path(tmp) / f"tiled{k}.onnx")
                        feed = {"x": x.numpy()}
                        base_fn = lambda sb=sb, feed=feed: sb.run(None, feed)  # noqa: E731
                        tiled_fn = lambda st=st, feed=feed: st.run(None, feed)  # noqa: E731
                        err = float(np.abs(st.run(None, feed)[0] - ref.numpy()).max())
                    base_fn(), tiled_fn()  # warm-up
                    base_t, tiled_t = [], []
                    for _ in range(reps):  # alternated: the same load for both
                        base_t.append(time_once(base_fn))
                        tiled_t.append(time_once(tiled_fn))
                    rows.append(
                        s
                        | {
                            "runtime": runtime,
                            "k": k,
                            "weight_tile_bytes_fp16": s["in"] // k * s["out"] * 2,
                            "untiled_s": min(base_t),
                            "tiled_s": min(tiled_t),
                            "speedup": min(base_t) / min(tiled_t),
                            "max_abs_error": err,
                            "flops": 2 * s["tokens"] * s["in"] * s["out"],
                        }  # fmt: skip
                    )
                    bar.update(1)
    bar.close()
    result = {
        "machine": machine_info(load_start),
        "rows": rows,
    }  # fmt: skip
    out = Path(out)
    write_json(out / "tiling.json", result)
    atomic_write_text(out / "tiling.md", tiling_markdown(result))
    return result


def tiling_markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        "# Tiled FFN GEMM against untiled",
        "",
        f"{m['device']}, {m['threads']} threads, fp32, torch {m['torch']}; load average "
        f"{m['loadavg_start'][0]:.2f} at the start, {m['loadavg_end'][0]:.2f} at the end. Best of "
        "the alternated repetitions; speed-up = untiled / tiled (> 1: tiling is faster).",
        "",
        "| shape | tokens | runtime | k | weight tile (fp16) | untiled | tiled | speed-up | GFLOP/s tiled | max abs err |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['preset']} {r['layer']} {r['in']}→{r['out']} | {r['tokens']:,} | {r['runtime']} | {r['k']} | "
            f"{r['weight_tile_bytes_fp16'] / 2**20:.2f} MiB | {seconds(r['untiled_s'])} | {seconds(r['tiled_s'])} | "
            f"{r['speedup']:.2f}x | {r['flops'] / r['tiled_s'] / 1e9:.1f} | {r['max_abs_error']:.1e} |"
        )
    return "\n".join(lines) + "\n"


class BenchTilingConfig(Strict):
    """[bench_tiling]: `mvdit bench-tiling`"""

    out: str = Field(
        default="runs/bench-tiling", description="directory for tiling.json and tiling.md"
    )
    k: list[int] = Field(default_factory=lambda: list(DEFAULT_KS), description="tile counts")
    reps: int = Field(
        default=3, ge=1, description="alternated timed repetitions (best is reported)"
    )
    runtimes: list[Literal["eager", "onnxruntime"]] = Field(
        default_factory=lambda: ["eager", "onnxruntime"], description="eager and/or onnxruntime"
    )
    presets: list[str] = Field(
        default_factory=lambda: ["paper-student", "tiny"], description="whose FFN shapes"
    )
    threads: int | None = bounded("threads", None, description="CPU threads (default: torch's)")


class BenchTilingSections(Strict):
    bench_tiling: BenchTilingConfig = Field(default_factory=BenchTilingConfig)


def bench_tiling(cfg: BenchTilingConfig) -> Result:
    r = run_tiling_bench(cfg.out, ks=tuple(cfg.k), reps=cfg.reps, runtimes=tuple(cfg.runtimes),
                         presets=tuple(cfg.presets), threads=cfg.threads)  # fmt: skip
    out = Path(cfg.out)
    return Result(
        r,
        lambda r: f"{tiling_markdown(r)}\nwrote {out / 'tiling.json'} and {out / 'tiling.md'}",
        out,
    )

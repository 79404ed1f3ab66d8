"""Export a pipeline as three graphs and a manifest: everything an app needs to generate a clip
with no Python of ours (mvdit.export.runtime does it from an ONNX export with numpy and
onnxruntime, no PyTorch).

OUT/text_encoder.EXT   (input_ids, attention_mask) int64 (1, L) -> text (1, L, D)
OUT/dit_step.EXT       (latent (1, C, t, h, w), timestep (1,), text (1, L, D), text_mask (1, L))
                       -> velocity (1, C, t, h, w): one network evaluation
OUT/vae_decoder.EXT    normalised latent (1, C, t, h, w) -> video (1, 3, T, H, W) in [-1, 1]
OUT/tokenizer/         the text encoder's tokenizer files (tokenizer.json for `tokenizers`)
OUT/manifest.json      shapes and dtypes of every input and output, the sampler (the student's
                       timestep schedule, guidance, time shift), the latent normalisation, the
                       tokenizer settings, each file's size, each graph's error against eager
                       where this machine can run it, and what each backend delegated

EXT and precision by format (mvdit.export.onnx, .executorch, .coreml):
- onnx: .onnx, fp32 or int8 (dynamic), run in onnxruntime;
- executorch: .pte with the XNNPACK delegate, fp32 or int8 (dynamic), run in ExecuTorch's runtime;
- coreml: .mlpackage ML program for iOS 17+, fp16 (default) or fp32, structure checked (prediction
  needs macOS); the FFN is tiled to 1 MiB fp16 weight tiles unless --tiles/--tile-bytes say else.
Shapes are static: the pipeline's clip size.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from mvdit import MvditError, __version__
from mvdit.bench.dit import build_random, dit_inputs, preset_target
from mvdit.config import Strict
from mvdit.export.coreml import save_mlpackage
from mvdit.export.executorch import run_pte, save_pte
from mvdit.export.onnx import quantize_int8, run_onnx, save_onnx
from mvdit.export.tiling import tile_ffn
from mvdit.io import OVERWRITE_HELP, claim_output_dir, output_dir, tree_bytes, write_json
from mvdit.models.dit import Attention, VideoDiT
from mvdit.models.text import default_minilm_path
from mvdit.pipeline import Pipeline, shipped_model_path
from mvdit.results import Result

FORMATS = {  # format: (file suffix, precisions, default precision)
    "onnx": (".onnx", ("fp32", "int8"), "fp32"),
    "executorch": (".pte", ("fp32", "int8"), "fp32"),
    "coreml": (".mlpackage", ("fp16", "fp32"), "fp16"),
}
ATTENTION_FORMS = ("fused", "explicit")
COREML_TILE_BYTES = 2**20  # the default FFN weight tile of a Core ML export (fp16)
PACKAGES = {
    "onnx": ("onnx", "onnxscript", "onnxruntime"),
    "executorch": ("executorch",),
    "coreml": ("coremltools",),
}


class _DiTStep(nn.Module):
    def __init__(self, dit: nn.Module):
        super().__init__()
        self.dit = dit

    def forward(self, latent, timestep, text, text_mask):
        # a float mask (Core ML has no bool I/O) becomes bool inside the graph
        mask = text_mask if text_mask.dtype == torch.bool else text_mask > 0.5
        return self.dit(latent, timestep, text, mask)


class _Decoder(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent)


def _io(example: dict[str, torch.Tensor]) -> list[dict]:
    return [
        {"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
        for k, v in example.items()
    ]


def _tokenizer_files(pipe: Pipeline) -> Path:
    """The directory of the pipeline's tokenizer; the exported runtime reads its tokenizer.json
    (a fast tokenizer's file) with the `tokenizers` library."""
    t = pipe.config.text
    where = t.tokenizer or t.path
    path = Path(where) if where else default_minilm_path()
    if not (path / "tokenizer.json").is_file():
        raise MvditError(
            f"the tokenizer in {path} has no tokenizer.json, which the exported runtime reads: "
            "save the tokenizer as a fast tokenizer (transformers' save_pretrained of a "
            "PreTrainedTokenizerFast writes it)"
        )
    return path


def _pad_id(tokenizer) -> int:
    """The padding token's id of a `tokenizers` Tokenizer (MiniLM) or a transformers one."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else int(tokenizer.padding["pad_id"])


def _save(fmt: str, module, example: dict, output: str, path: Path, precision: str) -> dict:
    """Write one graph; returns what the backend reports about it."""
    args, names = tuple(example.values()), list(example)
    if fmt == "onnx":
        save_onnx(module, args, names, [output], path)
        if precision == "int8":
            quantize_int8(path)
        return {}
    if fmt == "executorch":
        return {"delegation": save_pte(module, args, path, precision)}
    return {"coreml": save_mlpackage(module, args, names, path, precision)}


def _run(fmt: str, path: Path, example: dict) -> tuple[np.ndarray | None, str | None]:
    """The graph's output on `example` in its runtime, or None and why it did not run here."""
    args = tuple(example.values())
    if fmt == "onnx":
        return run_onnx(path, args, list(example)), None
    if fmt == "executorch":
        try:
            return run_pte(path, args), None
        except RuntimeError as e:
            return None, f"ExecuTorch's runtime failed on it here: {str(e).strip()}"
    return None, "Core ML predicts on macOS only"


def _check(
    fmt: str, precision: str | None, tiles: int | None, tile_bytes: int | None, attention: str
) -> tuple[str, str]:
    """Every export option checked, the backend's packages importable; returns the file suffix and
    the precision (the format's default when None)."""
    if fmt not in FORMATS:
        raise MvditError(f"--format {fmt} is not one of: {', '.join(FORMATS)}")
    suffix, precisions, default = FORMATS[fmt]
    precision = precision or default
    if precision not in precisions:
        raise MvditError(
            f"--precision {precision} is not available for {fmt}; choose one of: {', '.join(precisions)}"
        )
    if attention not in ATTENTION_FORMS:
        raise MvditError(f"--attention must be fused or explicit, got {attention}")
    if tiles is not None and tile_bytes is not None:
        raise MvditError("give --tiles or --tile-bytes, not both")
    for package in PACKAGES[fmt]:
        try:
            __import__(package)
        except ImportError:
            raise MvditError(f"{fmt} export needs {package}: pip install 'mvdit[export]'") from None
    return suffix, precision


def _export_forms(
    dit: nn.Module, fmt: str, tiles: int | None, tile_bytes: int | None, attention: str
) -> tuple[dict[str, int], int | None]:
    """Put the DiT in its export forms, in place: the FFN tiled (Core ML: 1 MiB tiles unless told
    otherwise), attention explicit when asked. Returns the tiles per layer and the tile size."""
    if fmt == "coreml" and tiles is None and tile_bytes is None:
        tile_bytes = COREML_TILE_BYTES
    tiled = {}
    if tiles is not None or tile_bytes is not None:
        tiled = tile_ffn(dit, k=tiles, tile_bytes=tile_bytes)
    if attention == "explicit":
        for m in dit.modules():
            if isinstance(m, Attention):
                m.fused = False
    return tiled, tile_bytes


def _text_mask(mask: torch.Tensor, fmt: str) -> torch.Tensor:
    """The DiT step's caption mask input: bool, or float where Core ML has no bool I/O."""
    return mask.float() if fmt == "coreml" else mask.bool()


def export_pipeline(
    model_dir: str | Path,
    out: str | Path,
    fmt: str = "onnx",
    *,
    precision: str | None = None,
    tiles: int | None = None,
    tile_bytes: int | None = None,
    attention: str = "fused",
    progress=print,
    overwrite: bool = False,
) -> dict:
    """Export `model_dir` to `out` (written atomically, never over a directory that is not an
    export's unless `overwrite`; mvdit.io.output_dir), running each graph against eager where this
    machine can. Returns the manifest."""
    suffix, precision = _check(fmt, precision, tiles, tile_bytes, attention)
    claim_output_dir(out, command="export", overwrite=overwrite, sources=[model_dir])
    pipe = Pipeline.from_pretrained(model_dir)
    tok_dir = _tokenizer_files(pipe)
    c = pipe.config
    dit, vae, te = pipe.dit.eval(), pipe.vae.eval(), pipe.text_encoder
    tiled, tile_bytes = _export_forms(dit, fmt, tiles, tile_bytes, attention)
    sampling = pipe.sampling()
    latent_shape = (1, *pipe.latent_shape)
    gen = torch.Generator().manual_seed(0)
    prompt = "a red circle moves to the left on a black background"
    ids, mask = te.tokenize([prompt])
    with torch.no_grad():
        text = te.model(ids, mask).float()
    examples = {
        "text_encoder": ({"input_ids": ids, "attention_mask": mask}, "text", te.model),
        "dit_step": (
            {
                "latent": torch.randn(latent_shape, generator=gen),
                "timestep": torch.tensor([0.75]),
                "text": text,
                "text_mask": _text_mask(mask, fmt),
            },
            "velocity",
            _DiTStep(dit),
        ),
        "vae_decoder": (
            {"latent": torch.randn(latent_shape, generator=gen)},
            "video",
            _Decoder(vae),
        ),
    }
    artefacts = {}
    with output_dir(
        out, command="export", overwrite=overwrite, sources=[model_dir], model=str(model_dir)
    ) as tmp:
        bar = tqdm(examples.items(), desc=f"export {fmt}", leave=False, disable=progress is None)
        for name, (example, output, module) in bar:
            t0 = time.perf_counter()
            path = tmp / f"{name}{suffix}"
            report = _save(fmt, module.eval(), example, output, path, precision)
            with torch.no_grad():
                ref = module(*example.values()).float().numpy()
            got, why = _run(fmt, path, example)
            size = tree_bytes(path)
            artefacts[name] = (
                {
                    "file": path.name,
                    "inputs": _io(example),
                    "outputs": [{"name": output, "shape": list(ref.shape), "dtype": "float32"}],
                    "bytes": size,
                    "max_abs_error_vs_eager": None
                    if got is None
                    else float(np.abs(got - ref).max()),
                    "export_s": round(time.perf_counter() - t0, 2),
                }
                | report
                | ({"not_run": why} if why else {})
            )
            if progress is not None:
                err = artefacts[name]["max_abs_error_vs_eager"]
                progress(
                    f"{name}: {size / 2**20:.2f} MiB, "
                    + (f"not run: {why}" if err is None else f"max |{fmt} - eager| {err:.2e}")
                )
        (tmp / "tokenizer").mkdir()
        for f in (
            "tokenizer.json",
            "vocab.txt",
            "tokenizer_config.json",
            "special_tokens_map.json",
        ):
            if (tok_dir / f).is_file():
                shutil.copy2(tok_dir / f, tmp / "tokenizer" / f)
        norm = {
            k: [float(x) for x in getattr(vae, k).flatten()]
            for k in ("latent_mean", "latent_std")
            if hasattr(vae, k)
        }
        manifest = {
            "format": fmt,
            "precision": precision,
            "mvdit": __version__,
            "source": str(model_dir),
            "clip": {"frames": c.frames, "height": c.height, "width": c.width, "fps": c.fps},
            "latent": {
                "shape": list(latent_shape),
                "normalisation": norm
                | {"note": "the DiT reads normalised latents; vae_decoder de-normalises inside"},
            },
            "sampler": {
                "kind": "euler",
                "schedule": [float(t) for t in sampling.schedule],
                "guidance": sampling.guidance,
                "nfe": sampling.nfe,
                "time_shift": c.sampler.shift,
                "negative_prompt": "",
                "update": "x <- x + (t_next - t) * v, v = v_u + guidance * (v_c - v_u) when guidance != 1",
                "noise": "standard normal latent of shape latent.shape at t = schedule[0]",
            },
            "text": {
                "tokenizer": "tokenizer/tokenizer.json",
                "max_length": te.max_length,
                "dim": te.dim,
                "pad_id": _pad_id(te.tokenizer),
                "padding": "right, to max_length; attention_mask 1 on tokens, 0 on padding",
                "truncation": "to max_length, the tokenizer's special tokens kept",
            },
            "video": {
                "layout": "(1, 3, T, H, W)",
                "range": "[-1, 1]: uint8 = round((x + 1) * 127.5)",
            },
            "ffn_tiles": tiled,
            "ffn_tile_bytes": tile_bytes,
            "attention": attention,
            "artefacts": artefacts,
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest


def export_dit_preset(
    preset: str,
    out: str | Path,
    fmt: str = "executorch",
    *,
    precision: str | None = None,
    tiles: int | None = None,
    tile_bytes: int | None = None,
    attention: str = "fused",
    run: bool = True,
    progress=print,
    overwrite: bool = False,
) -> dict:
    """One DiT step of a preset with random weights at its clip size (paper presets: 49x384x512,
    1,344 tokens), exported alone: does the backend take a model of that size, how large is the
    artefact, how much memory does the export need, and which ops does it delegate."""
    import resource

    suffix, precision = _check(fmt, precision, tiles, tile_bytes, attention)
    claim_output_dir(out, command="export", overwrite=overwrite)
    target = preset_target(preset, paper_decode=False)
    dit = build_random(lambda: VideoDiT(target.dit_config), torch.device("cpu"), torch.float32)
    # distinct random values per tensor: the bench's cheap fill repeats across blocks, and an
    # exporter that deduplicates constants (coremltools does) would then write a tenth of the size
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0.0, 0.02, generator=gen)
    tiled, tile_bytes = _export_forms(dit, fmt, tiles, tile_bytes, attention)
    x, t, text, mask = dit_inputs(target, torch.device("cpu"), torch.float32)
    example = {"latent": x, "timestep": t, "text": text, "text_mask": _text_mask(mask, fmt)}
    module = _DiTStep(dit).eval()
    with output_dir(out, command="export", overwrite=overwrite, preset=preset) as tmp:
        path = tmp / f"dit_step{suffix}"
        t0 = time.perf_counter()
        report = _save(fmt, module, example, "velocity", path, precision)
        export_s = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
        err, run_s, why = None, None, None
        if run and fmt != "coreml":
            with torch.no_grad():
                ref = module(*example.values()).numpy()
            t0 = time.perf_counter()
            got, why = _run(fmt, path, example)
            run_s = time.perf_counter() - t0
            err = None if got is None else float(np.abs(got - ref).max())
        size = tree_bytes(path)
        manifest = {
            "format": fmt,
            "precision": precision,
            "preset": preset,
            "params": sum(p.numel() for p in dit.parameters()),
            "latent": list(x.shape),
            "tokens": target.dit_config.tokens(target.latent),
            "text_tokens": target.text_len,
            "weights": "random (a shape check, not a model)",
            "ffn_tiles": tiled,
            "ffn_tile_bytes": tile_bytes,
            "attention": attention,
            "artefacts": {
                "dit_step": {
                    "file": path.name,
                    "inputs": _io(example),
                    "bytes": size,
                    "export_s": round(export_s, 1),
                    "run_s": None if run_s is None else round(run_s, 2),
                    "max_abs_error_vs_eager": err,
                }
                | report
                | ({"not_run": why} if why else {})
            },
            "peak_rss_bytes_during_export": peak,
        }
        write_json(tmp / "manifest.json", manifest)
    if progress is not None:
        progress(
            f"{preset} DiT step ({manifest['params'] / 1e9:.3f}B params, {manifest['tokens']:,} tokens): "
            f"{size / 2**30:.2f} GiB {fmt} {precision}, export {export_s:.0f} s, peak RSS {peak / 2**30:.1f} GiB"
            + ("" if err is None else f", max |{fmt} - eager| {err:.2e}, one run {run_s:.1f} s")
        )
    return manifest


# ---------------------------------------------------------------------------------------------
# the [export] section: `mvdit export`


class ExportConfig(Strict):
    """[export]"""

    model: str | None = Field(
        default=None, description="pipeline directory (default: the shipped student)"
    )
    out: str = Field(default="runs/export", description="export directory")
    format: Literal["onnx", "executorch", "coreml"] = Field(
        default="onnx", description="graph format"
    )
    precision: str | None = Field(
        default=None,
        description="onnx, executorch: fp32 or int8 (dynamically quantized linears); coreml: fp16 or fp32",
    )
    tiles: int | None = Field(
        default=None, ge=1, description="tile every FFN linear into this many partial GEMMs"
    )
    tile_bytes: int | None = Field(
        default=None, ge=1, description="or: FFN tiles whose fp16 weight slice fits this many bytes"
    )
    attention: Literal["fused", "explicit"] = Field(
        default="fused", description="fused (SDPA) or explicit (matmul + softmax + matmul)"
    )
    preset: str | None = Field(
        default=None,
        description="instead of --model: one DiT step of this preset, random weights (a size check)",
    )
    overwrite: bool = Field(default=False, description=OVERWRITE_HELP)


class ExportSections(Strict):
    export: ExportConfig = Field(default_factory=ExportConfig)


def run_export(cfg: ExportConfig, *, progress=print) -> Result:
    """Export a pipeline (or with cfg.preset one random DiT step); the record is the manifest."""
    kw = dict(precision=cfg.precision, tiles=cfg.tiles, tile_bytes=cfg.tile_bytes,
              attention=cfg.attention, progress=progress, overwrite=cfg.overwrite)  # fmt: skip
    if cfg.preset is not None:
        if cfg.model is not None:
            raise MvditError("give --model or --preset, not both")
        m = export_dit_preset(cfg.preset, cfg.out, cfg.format, **kw)
        return Result(m, lambda m: f"wrote {cfg.out}/manifest.json", Path(cfg.out))
    m = export_pipeline(cfg.model or shipped_model_path(), cfg.out, cfg.format, **kw)
    return Result(m, lambda m: _export_summary(m, cfg), Path(cfg.out))


def _export_summary(m: dict, cfg: ExportConfig) -> str:
    total = sum(a["bytes"] for a in m["artefacts"].values())
    lines = [
        f"wrote {cfg.out}: {len(m['artefacts'])} {cfg.format} graphs ({m['precision']}), "
        f"{total / 2**20:.2f} MiB, manifest.json; {m['sampler']['nfe']} network evaluations a clip"
    ]
    if cfg.format == "onnx":
        lines.append(
            f'generate without PyTorch: python -m mvdit.export.runtime {cfg.out} "PROMPT" clip.npy'
        )
    if cfg.format == "coreml":
        lines.append(
            "Core ML predicts on macOS/iOS only: the packages were converted and their structure checked here"
        )
    return "\n".join(lines)

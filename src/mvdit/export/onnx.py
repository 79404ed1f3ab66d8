"""Export a pipeline as three ONNX graphs and a manifest: everything an app needs to generate a
clip with no Python of ours and no PyTorch (mvdit.export.runtime is such an app, in numpy).

OUT/text_encoder.onnx   (input_ids, attention_mask) int64 (1, L) -> text (1, L, D)
OUT/dit_step.onnx       (latent (1, C, t, h, w), timestep (1,), text (1, L, D), text_mask bool (1, L))
                        -> velocity (1, C, t, h, w): one network evaluation
OUT/vae_decoder.onnx    normalised latent (1, C, t, h, w) -> video (1, 3, T, H, W) in [-1, 1]
OUT/tokenizer/          the text encoder's tokenizer files (tokenizer.json for `tokenizers`)
OUT/manifest.json       shapes and dtypes of every input and output, the sampler (the student's
                        timestep schedule, guidance, time shift), the latent normalisation, the
                        tokenizer settings, each file's size, and each graph's error against eager

Shapes are static: the pipeline's clip size. Precision: fp32, or int8 (onnxruntime's dynamic
quantization of the MatMul weights, activations quantized per call); fp16 is refused here, since
onnxruntime's CPU provider lacks fp16 kernels for several of these ops and could not check it.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mvdit import MvditError, __version__
from mvdit.export.tiling import tile_ffn
from mvdit.io import atomic_dir, write_json
from mvdit.models.dit import Attention
from mvdit.models.text import default_minilm_path
from mvdit.pipeline import Pipeline

PRECISIONS = ("fp32", "int8")
ATTENTION_FORMS = ("fused", "explicit")
OPSET = 18


class _DiTStep(nn.Module):
    def __init__(self, dit: nn.Module):
        super().__init__()
        self.dit = dit

    def forward(self, latent, timestep, text, text_mask):
        return self.dit(latent, timestep, text, text_mask)


class _Decoder(nn.Module):
    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, latent):
        return self.vae.decode(latent)


def _onnx_inputs(example: dict[str, torch.Tensor]) -> list[dict]:
    return [
        {"name": k, "shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
        for k, v in example.items()
    ]


def save_onnx(
    module: nn.Module, args: tuple, input_names: list[str], output_names: list[str], path: Path
) -> None:
    """torch.onnx's dynamo exporter at static shapes, weights inside the file."""
    import logging
    import warnings

    # the exporter logs a line per torchvision op it cannot register (torchvision is not needed)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            args,
            input_names=input_names,
            output_names=output_names,
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    program.save(str(path))


def ort_session(path: Path, threads: int | None = None):
    """An onnxruntime CPU session, quiet, with `threads` intra-op threads (default: its own)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _quantize(path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".fp32.onnx")
    path.rename(tmp)
    try:
        quantize_dynamic(
            str(tmp),
            str(path),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
    finally:
        tmp.unlink(missing_ok=True)


def run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort_session(path).run(None, feeds)[0]


def _tokenizer_files(pipe: Pipeline) -> Path:
    t = pipe.config.text
    if t.kind != "minilm":
        raise MvditError(
            f"export takes the MiniLM (BERT) text encoder; this pipeline uses {t.kind!r}"
        )
    return Path(t.path) if t.path else default_minilm_path()


def export_onnx(
    model_dir: str | Path,
    out: str | Path,
    precision: str = "fp32",
    tiles: int | None = None,
    tile_bytes: int | None = None,
    attention: str = "fused",
    progress=print,
) -> dict:
    """Export `model_dir` to `out` (written atomically) and check each graph against eager in
    onnxruntime on the same inputs. Returns the manifest."""
    if precision not in PRECISIONS:
        raise MvditError(
            f"--precision {precision} is not available for ONNX; choose one of: {', '.join(PRECISIONS)}"
        )
    if attention not in ATTENTION_FORMS:
        raise MvditError(f"--attention must be fused or explicit, got {attention}")
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise MvditError(
            f"ONNX export needs {e.name}: pip install 'mvdit[export]' (onnx, onnxscript, onnxruntime)"
        ) from None
    pipe = Pipeline.from_pretrained(model_dir)
    tok_dir = _tokenizer_files(pipe)
    c = pipe.config
    dit, vae, te = pipe.dit.eval(), pipe.vae.eval(), pipe.text_encoder
    tiled = {}
    if tiles is not None or tile_bytes is not None:
        tiled = tile_ffn(dit, k=tiles, tile_bytes=tile_bytes)
    if attention == "explicit":
        for m in dit.modules():
            if isinstance(m, Attention):
                m.fused = False
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
                "text_mask": mask.bool(),
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
    with atomic_dir(out) as tmp:
        for name, (example, output, module) in examples.items():
            t0 = time.perf_counter()
            path = tmp / f"{name}.onnx"
            save_onnx(module.eval(), tuple(example.values()), list(example), [output], path)
            if precision == "int8":
                _quantize(path)
            with torch.no_grad():
                ref = module(*example.values()).float().numpy()
            got = run_onnx(path, {k: v.numpy() for k, v in example.items()})
            artefacts[name] = {
                "file": path.name,
                "inputs": _onnx_inputs(example),
                "outputs": [{"name": output, "shape": list(ref.shape), "dtype": "float32"}],
                "bytes": path.stat().st_size,
                "max_abs_error_vs_eager": float(np.abs(got - ref).max()),
                "export_s": round(time.perf_counter() - t0, 2),
            }
            progress(
                f"{name}: {path.stat().st_size / 2**20:.2f} MiB, max |onnxruntime - eager| "
                f"{artefacts[name]['max_abs_error_vs_eager']:.2e}"
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
            "format": "onnx",
            "opset": OPSET,
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
                "pad_id": 0,
                "padding": "right, to max_length; attention_mask 1 on tokens, 0 on padding",
                "truncation": "to max_length, [CLS] and [SEP] kept",
            },
            "video": {
                "layout": "(1, 3, T, H, W)",
                "range": "[-1, 1]: uint8 = round((x + 1) * 127.5)",
            },
            "ffn_tiles": tiled,
            "attention": attention,
            "artefacts": artefacts,
        }
        write_json(tmp / "manifest.json", manifest)
    return manifest

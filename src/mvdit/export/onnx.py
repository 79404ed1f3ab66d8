"""ONNX: torch.onnx's dynamo exporter at static shapes, onnxruntime to check and benchmark,
onnxruntime's dynamic int8 quantization of the MatMul weights.

Importing this module does not import torch (only `save_onnx` does): the exported-graph runtime,
which runs where PyTorch is absent, opens its sessions with `ort_session` too.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch
    from torch import nn

OPSET = 18


def save_onnx(
    module: nn.Module, args: tuple, input_names: list[str], output_names: list[str], path: Path
) -> None:
    """torch.onnx's dynamo exporter at static shapes, weights inside the file."""
    import logging
    import warnings

    import torch

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


def quantize_int8(path: Path) -> None:
    """In place: int8 weights for every MatMul/Gemm, activations quantized per call."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = path.with_suffix(".fp32.onnx")
    path.rename(tmp)
    root = logging.getLogger()
    level, root.level = root.level, logging.ERROR  # its advice to pre-process, at every call
    try:
        quantize_dynamic(
            str(tmp),
            str(path),
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
        )
    finally:
        root.setLevel(level)
        tmp.unlink(missing_ok=True)


def run_onnx(path: Path, args: tuple[torch.Tensor, ...], names: list[str]) -> np.ndarray:
    return ort_session(path).run(None, {k: v.numpy() for k, v in zip(names, args, strict=True)})[0]

"""ExecuTorch: torch.export, lowered with the XNNPACK delegate, saved as .pte and run here through
the ExecuTorch runtime. int8: XNNPACK's dynamic quantization of the linears (pt2e), weights int8
per channel, activations quantized per call.

What XNNPACK does not take runs on ExecuTorch's portable kernels; `delegation` says which ops
those are. XNNPACK has no 3-D convolution, so the causal VAE's convolutions stay portable; and
its compiler refuses some of the decoder's 5-D subgraphs at load time, so a graph whose delegated
program fails to load is lowered again without the delegate, and the manifest says so. On the
shipped default that portable decoder then fails in ExecuTorch 1.5's convolution kernel
(InvalidArgument): the export records it (`not_run`) and the runtime refuses the directory.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mvdit import MvditError


def _quiet() -> None:
    import logging

    for name in ("executorch", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _lower(program, delegate: bool):
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    parts = [XnnpackPartitioner()] if delegate else []
    return to_edge_transform_and_lower(program, partitioner=parts)


def _op_name(target) -> str:
    """'aten.linear.default', 'aten::linear' or a function -> 'linear'."""
    parts = str(getattr(target, "__name__", None) or target).split("::")[-1].split(".")
    namespaces = ("aten", "dim_order_ops", "quantized_decomposed", "torchao")
    return parts[1] if len(parts) > 1 and parts[0] in namespaces else parts[0]


def delegation(edge) -> dict:
    """Delegated and portable op counts by op type of a lowered program."""
    gm = edge.exported_program().graph_module
    portable: Counter = Counter()
    delegated = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node.target)
        if name == "executorch_call_delegate":
            delegated += 1
        elif name != "getitem":
            portable[name] += 1
    lowered = [
        getattr(gm, n.target)
        for n in gm.graph.nodes
        if n.op == "get_attr" and str(n.target).startswith("lowered_module")
    ]
    inside: Counter = Counter()
    for lm in lowered:
        for node in lm.original_module.graph.nodes:
            if node.op == "call_function":
                inside[_op_name(node.target)] += 1
    return {
        "delegated_subgraphs": delegated,
        "delegated_ops": dict(inside.most_common()),
        "portable_ops": dict(portable.most_common()),
    }


def save_pte(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, precision: str) -> dict:
    """Export, (quantize,) lower and save; returns the delegation report."""
    import warnings

    _quiet()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            edge = _lower(_program(module, args, precision), delegate=True)
        except AssertionError as e:
            # seen on the int8 DiT step: XNNPACK's partitioner groups the quantized ops into
            # subgraphs that depend on each other; its one-subgraph-per-op mode ran > 8 min
            raise MvditError(
                f"XNNPACK's partitioner failed on the {precision} graph of {path.stem} ({e}); "
                "export it in fp32 for executorch, or in int8 for onnx"
            ) from None
        path.write_bytes(edge.to_executorch().buffer)
        report = delegation(edge)
        try:
            _load(path)
        except RuntimeError as e:
            # XNNPACK accepted the subgraphs at lowering but its compiler refuses one at load.
            # Exported again: lowering rewrites the program it is given (dim orders, for one),
            # so the first program would not run on portable kernels.
            edge = _lower(_program(module, args, precision), delegate=False)
            path.write_bytes(edge.to_executorch().buffer)
            report = delegation(edge) | {
                "xnnpack_refused": f"XNNPACK's compiler rejected a delegated subgraph at load ({e}); "
                "lowered with portable kernels only"
            }
    return report


def _program(module: nn.Module, args: tuple[torch.Tensor, ...], precision: str):
    program = torch.export.export(module, args)
    if precision == "int8":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
        )
        prepared = prepare_pt2e(program.module(), quantizer)
        prepared(*args)  # dynamic quantization needs no calibration; one call fixes shapes
        program = torch.export.export(convert_pt2e(prepared), args)
    return program


def _load(path: Path):
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(path)).load_method("forward")


def run_pte(path: Path, args: tuple[torch.Tensor, ...]) -> np.ndarray:
    return _load(path).execute(list(args))[0].numpy()

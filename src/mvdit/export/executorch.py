"""ExecuTorch: torch.export, lowered with the XNNPACK delegate, saved as .pte and run here through
the ExecuTorch runtime. int8: XNNPACK's dynamic quantization of the linears (pt2e), weights int8
per channel, activations quantized per call.

What XNNPACK does not take runs on ExecuTorch's portable kernels; `delegation` says which ops
those are. Neither has a 3-D convolution (the portable kernel checks for 3-D or 4-D inputs, i.e.
1-D and 2-D convolutions), so before export every `Conv3d` (and the VAE's fixed channel
shortcuts) is rewritten as one 2-D convolution over its temporal taps stacked into channels
(`conv3d_as_conv2d`): the same numbers, and a graph both can run. A graph XNNPACK cannot take
(its lowering passes fail, or its compiler refuses the delegated program at load) is lowered
again without the delegate, and the manifest says so.
"""

from __future__ import annotations

import copy
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mvdit import MvditError
from mvdit.models.vae import ChannelShortcut


def _taps_conv2d(x, weight, bias, stride, padding, kt: int) -> torch.Tensor:
    """A 3-D convolution without temporal padding as one `conv2d`: the kt frames each output
    frame reads are stacked into channels (`weight`: (Co, Ci*kt, kh, kw), the 3-D weight
    (Co, Ci, kt, kh, kw) so reshaped), output frames folded into the batch; no tensor over 6
    dimensions (XNNPACK's limit)."""
    st = stride[0]
    b, c, t, h, w = x.shape
    frames = (t - kt) // st + 1
    last = st * (frames - 1) + 1
    taps = torch.stack([x[:, :, i : i + last : st] for i in range(kt)], dim=2)
    taps = taps.permute(0, 3, 1, 2, 4, 5).reshape(b * frames, c * kt, h, w)
    y = F.conv2d(taps, weight, bias, stride=tuple(stride[1:]), padding=tuple(padding[1:]))
    return y.reshape(b, frames, *y.shape[1:]).permute(0, 2, 1, 3, 4)


class Conv3dAs2d(nn.Module):
    """A fixed stride-1 3-D convolution (mvdit's VAE channel shortcut) as one `conv2d`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple) -> None:
        super().__init__()
        co, ci, self.kt, kh, kw = weight.shape
        self.padding = tuple(padding)
        self.register_buffer("weight", weight.detach().reshape(co, ci * self.kt, kh, kw).clone())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _taps_conv2d(x, self.weight, self.bias, (1, 1, 1), self.padding, self.kt)


def _as_2d(name: str, conv: nn.Conv3d) -> None:
    """Make `conv` compute through `_taps_conv2d`, in place. Its own forward stays (a subclass's
    padding or frame cache, e.g. Wan's causal convolution, runs as before); only the convolution
    it ends in changes."""
    if conv.groups != 1 or conv.padding[0] != 0 or conv.padding_mode != "zeros":
        raise MvditError(
            f"{name}: only ungrouped Conv3d without temporal padding exports (pad time before it)"
        )
    stride, padding = conv.stride, conv.padding
    co, ci, kt, kh, kw = conv.weight.shape
    # a constant of the exported graph (a reshape inside it would keep XNNPACK from the conv)
    conv.register_buffer("weight_2d", conv.weight.detach().reshape(co, ci * kt, kh, kw).clone())
    conv._conv_forward = lambda x, _weight, bias: _taps_conv2d(
        x, conv.weight_2d, bias, stride, padding, kt
    )


def conv3d_as_conv2d(module: nn.Module, args: tuple[torch.Tensor, ...] | None = None) -> nn.Module:
    """A copy of `module` whose every Conv3d (ungrouped, no temporal padding; any stride) computes
    through one 2-D convolution, and every ChannelShortcut is a Conv3dAs2d. With `args`, only the
    ones a forward on them runs (a diffusers VAE's decoder beside an encoder it never calls);
    anything else 3-D that runs is refused with its name."""
    if not any(isinstance(m, nn.Conv3d | ChannelShortcut) for m in module.modules()):
        return module  # no copy of a large DiT
    module = copy.deepcopy(module)
    convs = [
        (n, m) for n, m in module.named_modules() if isinstance(m, nn.Conv3d | ChannelShortcut)
    ]
    if args is not None:
        ran: set[str] = set()
        hooks = [m.register_forward_pre_hook(lambda *_, n=n: ran.add(n)) for n, m in convs]
        try:
            with torch.no_grad():
                module(*args)
        finally:
            for h in hooks:
                h.remove()
        convs = [(n, m) for n, m in convs if n in ran]
    for name, child in convs:
        if isinstance(child, nn.Conv3d):
            _as_2d(name, child)
            continue
        parent, _, leaf = name.rpartition(".")
        new = Conv3dAs2d(child.weight, None, (0, 0, 0))
        setattr(module.get_submodule(parent) if parent else module, leaf, new)
    return module


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
    """Export, (quantize,) lower and save; returns the delegation report. A graph XNNPACK cannot
    take (its lowering passes fail, or its compiler refuses a subgraph at load) is lowered again
    with portable kernels only, and the report says why under "xnnpack_refused"."""
    import warnings

    _quiet()
    module = conv3d_as_conv2d(module, args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refused = None
        try:
            edge = _lower(_program(module, args, precision), delegate=True)
        except AssertionError as e:
            # XNNPACK's partitioner found subgraphs that depend on each other (seen on the int8
            # DiT step before each linear had its own quantization chain, and on Wan's VAE
            # decoder in fp32, whose frame cache feeds one convolution from another's input):
            # fp32 goes portable, int8 has no portable fallback worth having
            if precision == "fp32":
                refused = f"XNNPACK's partitioner failed ({_last_line(e)})"
            else:
                raise MvditError(
                    f"XNNPACK's partitioner failed on the {precision} graph of {path.stem} ({e}); "
                    "export it in fp32 for executorch, or in int8 for onnx"
                ) from None
        except Exception as e:  # noqa: BLE001 - a backend pass failing: report it, go portable
            # seen on the VAE decoder when int8 quantized its convolutions as well:
            # ChannelsLastTaggedReshapePass tagged a 5-D tensor for channels-last
            refused = f"XNNPACK's lowering failed ({_last_line(e)})"
        if refused is None:
            path.write_bytes(edge.to_executorch().buffer)
            try:
                _load(path)
            except RuntimeError as e:
                refused = f"XNNPACK's compiler rejected a delegated subgraph at load ({e})"
        if refused is None:
            return delegation(edge)
        # Exported again: lowering rewrites the program it is given (dim orders, for one), so
        # the first program would not run on portable kernels.
        edge = _lower(_program(module, args, precision), delegate=False)
        path.write_bytes(edge.to_executorch().buffer)
        return delegation(edge) | {
            "xnnpack_refused": f"{refused}; lowered with portable kernels only"
        }


def _last_line(e: BaseException) -> str:
    """The innermost cause's message, first line: what a pass manager's wrapper hides."""
    while e.__cause__ is not None:
        e = e.__cause__
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _program(module: nn.Module, args: tuple[torch.Tensor, ...], precision: str):
    program = torch.export.export(module, args)
    if precision == "int8":
        from executorch.backends.transforms.duplicate_dynamic_quant_chain import (
            DuplicateDynamicQuantChainPass,
        )
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        # the linears only: dynamic quantization is XNNPACK's int8 linear (its global config
        # would quantize convolutions too, which then have no portable kernels to fall back to)
        quantizer = XNNPACKQuantizer().set_operator_type(
            torch.ops.aten.linear.default,
            get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True),
        )
        prepared = prepare_pt2e(program.module(), quantizer)
        prepared(*args)  # dynamic quantization needs no calibration; one call fixes shapes
        converted = convert_pt2e(prepared)
        # one choose_qparams chain per consumer: linears sharing an input (every block's
        # cross-attention keys and values read the same text) otherwise share one chain, and
        # XNNPACK's partitioner then finds dependency cycles between its subgraphs
        DuplicateDynamicQuantChainPass()(converted)
        program = torch.export.export(converted, args)
    return program


def _load(path: Path):
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(path)).load_method("forward")


def run_pte(path: Path, args: tuple[torch.Tensor, ...]) -> np.ndarray:
    return _load(path).execute(list(args))[0].numpy()

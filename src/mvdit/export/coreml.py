"""Core ML: an ML program (.mlpackage, iOS 17+) converted by coremltools from torch.export's graph.

Converted and checked for structure here (the program's ops, inputs and outputs, read back from the
saved package); running a prediction needs macOS, so `max_abs_error_vs_eager` is not measured here.
Boolean inputs are not Core ML I/O types: the DiT step's text mask is taken as float (1 = token,
0 = padding) and cast to bool inside the program.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import torch
from torch import nn

PRECISION = {"fp16": "FLOAT16", "fp32": "FLOAT32"}


def save_mlpackage(
    module: nn.Module, args: tuple[torch.Tensor, ...], names: list[str], path: Path, precision: str
) -> dict:
    import logging
    import warnings

    logging.getLogger("coremltools").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import coremltools as ct

        program = torch.export.export(module, args).run_decompositions({})
        model = ct.convert(
            program,
            convert_to="mlprogram",
            compute_precision=getattr(ct.precision, PRECISION[precision]),
            minimum_deployment_target=ct.target.iOS17,
            skip_model_load=True,  # loading compiles for the device: macOS only
        )
        model.save(str(path))
        spec = ct.utils.load_spec(str(path))
    ops = Counter(
        op.type
        for f in spec.mlProgram.functions.values()
        for block in f.block_specializations.values()
        for op in block.operations
        if op.type != "const"
    )
    return {
        "program_ops": dict(ops.most_common()),
        "inputs": [i.name for i in spec.description.input],
        "outputs": [o.name for o in spec.description.output],
        "minimum_deployment_target": "iOS17",
        "prediction": "not run: Core ML predicts on macOS/iOS only",
    }

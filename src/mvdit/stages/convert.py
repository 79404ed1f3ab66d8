"""`mvdit convert`: rewrite a pipeline directory smaller, with another default sampler or clip.

The DiT is stored in fp16 (loading casts it back to fp32), its VAE optionally as a reference to
a VAE shipped in the package, its sampler optionally changed (steps, guidance; not for a
fixed-schedule student) and the clip size it is meant to generate at recorded (a diffusers
pipeline's mvdit.json)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from mvdit.config import Strict, required
from mvdit.io import OVERWRITE_HELP, claim_output_dir, tree_bytes
from mvdit.limits import GUIDANCE_HELP, bounded
from mvdit.pipeline import Pipeline
from mvdit.results import Result

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


class ConvertConfig(Strict):
    """[convert]"""

    model: str | None = Field(default=None, description="pipeline directory")
    out: str | None = Field(default=None, description="the converted pipeline directory")
    dtype: Literal["fp32", "fp16"] = Field(
        default="fp16", description="storage dtype of the DiT's weights"
    )
    shipped_vae: str | None = Field(
        default=None,
        description="refer to this shipped VAE instead of copying vae/ (it must be it)",
    )
    steps: int | None = bounded(
        "steps", None, description="the sampling steps the converted model samples with"
    )
    guidance: float | None = bounded(
        "guidance", None, allow_inf_nan=False, description=GUIDANCE_HELP
    )
    frames: int | None = bounded("frames", None, description="the clip's frames it is meant for")
    height: int | None = bounded("side", None, description="the clip's height it is meant for")
    width: int | None = bounded("side", None, description="the clip's width it is meant for")
    overwrite: bool = Field(default=False, description=OVERWRITE_HELP)


class ConvertSections(Strict):
    convert: ConvertConfig = Field(default_factory=ConvertConfig)


def run_convert(cfg: ConvertConfig) -> Result:
    model = Path(required(cfg.model, "convert.model (--model)"))
    out = Path(required(cfg.out, "convert.out (--out)"))
    claim_output_dir(out, command="convert", overwrite=cfg.overwrite, sources=[model])
    pipe = Pipeline.from_pretrained(model).with_sampler(steps=cfg.steps, guidance=cfg.guidance)
    pipe = pipe.with_clip(cfg.frames, cfg.height, cfg.width)
    pipe.save_pretrained(
        out, dit_dtype=DTYPES[cfg.dtype], shipped_vae=cfg.shipped_vae, command="convert",
        overwrite=cfg.overwrite, sources=(model,),
    )  # fmt: skip
    size = tree_bytes(out)
    return Result(
        {"out": str(out), "bytes": size}, lambda r: f"wrote {out} ({size / 2**20:.2f} MiB)", out
    )

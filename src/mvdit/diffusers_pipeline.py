"""Diffusers pipeline directories (`model_index.json`) read and written as mvdit pipelines.

A diffusers text-to-video pipeline directory holds one folder per component:

DIR/model_index.json   the pipeline class and each component's library and class
DIR/transformer/       the DiT: through mvdit.compress.diffusers_dit (a pruned one carries
                       mvdit_prune.json with its per-block widths)
DIR/vae/               through mvdit.models.diffusers_vae (latents normalised as the pipeline does)
DIR/text_encoder/      through mvdit.models.text: the transformers class its config names
                       (UMT5 for Wan, T5 for LTX-Video, CLIP), with the tokenizer of DIR/tokenizer/
DIR/scheduler/         its flow shift becomes the Euler sampler's time shift
DIR/mvdit.json         (optional, written by mvdit) the clip size the pipeline is meant to generate
                       at and its sampler; without it, the pipeline class's own defaults

mvdit samples a diffusers model with its own Euler sampler on the rectified-flow ODE at the
scheduler's shift (the sampler is named in every result). A pipeline mvdit writes keeps the source
pipeline's other components (hard links where the filesystem allows, else copies) and replaces the
transformer. Nothing here runs code found in a model directory.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from mvdit import MvditError
from mvdit.compress.diffusers_dit import DiffusersDiT, index_entry, load_transformer
from mvdit.io import link_tree, read_json, write_json
from mvdit.models.autoencoder import VideoAutoencoder
from mvdit.models.diffusers_vae import DiffusersVideoVAE

INDEX = "model_index.json"
SIDECAR = "mvdit.json"  # the clip size and sampler mvdit records beside the components


@dataclass(frozen=True)
class PipelineDefaults:
    """What a diffusers pipeline class generates when its caller names nothing (its __call__'s
    defaults): the clip, the sampler and the text length it pads prompts to."""

    frames: int
    height: int
    width: int
    fps: float
    steps: int
    guidance: float
    max_length: int
    attend_padding: bool  # its text encoder runs without the attention mask
    # its __call__ hands the scheduler its own sigmas, linspace(1, 1/N, N) (LTXPipeline), rather
    # than letting the scheduler space N steps itself (WanPipeline)
    passes_sigmas: bool


# the pipeline classes mvdit reads, with their __call__ defaults and how they encode a prompt
PIPELINES = {
    "WanPipeline": PipelineDefaults(
        81, 480, 832, 16.0, 50, 5.0, 512, attend_padding=False, passes_sigmas=False
    ),
    "LTXPipeline": PipelineDefaults(
        161, 512, 704, 25.0, 50, 3.0, 128, attend_padding=True, passes_sigmas=True
    ),
}
COMPONENTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


def is_diffusers_pipeline(path: str | Path) -> bool:
    return (Path(path) / INDEX).is_file()


def _index(path: Path) -> dict:
    index = read_json(path / INDEX)
    name = index.get("_class_name")
    if name not in PIPELINES:
        raise MvditError(
            f"{path}/{INDEX} names pipeline {name!r}; mvdit reads {', '.join(PIPELINES)}"
        )
    missing = [c for c in COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise MvditError(f"{path} is a {name} directory without {', '.join(missing)}/")
    return index


def _shift(path: Path) -> float | None:
    """The flow shift the pipeline's scheduler applies (None: no fixed shift)."""
    cfg_path = path / "scheduler" / "scheduler_config.json"
    if not cfg_path.is_file():
        return None
    cfg = read_json(cfg_path)
    if cfg.get("use_dynamic_shifting"):
        return None  # shifted by the token count, as mvdit's own sampler does without a shift
    shift = cfg.get("flow_shift", cfg.get("shift"))
    return float(shift) if shift is not None else None


STUDENT_SCHEDULER = "FlowMatchEulerDiscreteScheduler"  # what a distilled student is saved with


def _student_scheduler(path: Path):
    """The Euler flow-matching scheduler a distilled student of this pipeline is saved with: the
    teacher's static shift (1 where it shifts by the token count)."""
    import diffusers

    return getattr(diffusers, STUDENT_SCHEDULER)(shift=_shift(path) or 1.0)


def student_schedule(path: str | Path, steps: int) -> list[float]:
    """The N + 1 flow times the pipeline class runs with the student's scheduler at
    `num_inference_steps` = N: a student distilled on them samples in stock diffusers exactly as
    it was trained."""
    import numpy as np

    path = Path(path)
    scheduler = _student_scheduler(path)
    if PIPELINES[_index(path)["_class_name"]].passes_sigmas:
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))
    else:
        scheduler.set_timesteps(steps)
    return [float(t) for t in scheduler.sigmas]


def pipeline_settings(path: str | Path) -> dict:
    """The raw mvdit pipeline config (clip, text encoder, sampler) of a diffusers directory: its
    mvdit.json where mvdit wrote one, else the pipeline class's defaults; the text encoder and
    tokenizer are the directory's own."""
    path = Path(path).resolve()
    index = _index(path)
    d = PIPELINES[index["_class_name"]]
    sidecar = read_json(path / SIDECAR) if (path / SIDECAR).is_file() else {}
    text = {"kind": "auto", "max_length": d.max_length, "attend_padding": d.attend_padding}
    text |= sidecar.get("text", {})
    text |= {"path": str(path / "text_encoder"), "tokenizer": str(path / "tokenizer")}
    sampler = sidecar.get("sampler") or {
        "steps": d.steps,
        "guidance": d.guidance,
        "shift": _shift(path),
    }
    clip = {"frames": d.frames, "height": d.height, "width": d.width, "fps": d.fps}
    clip |= {k: sidecar[k] for k in clip if k in sidecar}
    return clip | {"text": text, "sampler": sampler}


def read_transformer(path: str | Path, device: str | torch.device = "cpu") -> DiffusersDiT:
    """The transformer of a diffusers pipeline directory, through the adapter."""
    path = Path(path)
    _index(path)
    return load_transformer(path / "transformer").to(device)


def read_components(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[DiffusersDiT, VideoAutoencoder]:
    """The transformer (through the adapter) and the VAE of a diffusers pipeline directory."""
    path = Path(path)
    dit = read_transformer(path, device)
    vae = DiffusersVideoVAE.from_pretrained(path / "vae", device=device)
    return dit, vae


def _readme(pipeline: str, entry: list[str], directory: Path) -> str:
    """What a pipeline directory mvdit wrote is and how it loads, for whoever opens it."""
    record = read_json(directory / "transformer" / "mvdit_prune.json")
    if entry[0] != "diffusers":
        how = (
            f"The transformer keeps its own width in each block, which {entry[1]}'s parent class's "
            f"config cannot express: `transformer/{entry[0]}.py` defines {entry[1]}, a subclass "
            "that builds each block at the width `block_widths` in `transformer/config.json` "
            "gives it (diffusers and torch only). Loading runs that file:\n\n"
            "    DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)\n\n"
            "diffusers' own `save_pretrained` of the loaded pipeline does not round-trip it (it "
            "drops the component file and `mvdit_prune.json`, and the copy loads nowhere): "
            "re-save with `mvdit convert -m DIR -o NEW` instead."
        )
    elif record["loader"] == "stock":
        how = (
            "The transformer's widths fit its class's config: stock diffusers loads it with "
            "`DiffusionPipeline.from_pretrained(DIR)`."
        )
    else:
        how = (
            "The transformer keeps its own width in each block, which its class's config cannot "
            "express and for which mvdit has no custom component: mvdit loads it "
            "(`mvdit generate -m DIR`); stock diffusers does not."
        )
    return (
        f"# A {pipeline} directory written by mvdit\n\n{how}\n\n"
        "`mvdit.json` records the clip size, the sampler and the text length mvdit generates "
        "with; `transformer/mvdit_prune.json` each block's widths and the teacher's index of every "
        "unit it kept. mvdit reads this directory as its own and never runs code found in it.\n"
    )


def write_components(
    directory: Path,
    origin: Path,
    dit: DiffusersDiT,
    settings: dict,
    state: dict[str, torch.Tensor] | None = None,
) -> None:
    """A diffusers pipeline directory into `directory`: `origin`'s model_index.json and components,
    the transformer replaced by `dit` (with `state` as its weights where given), and `settings`
    (mvdit's pipeline config: clip, text length, sampler) as mvdit.json."""
    index = _index(origin)
    for name in index:
        if name.startswith("_") or name == "transformer" or not (origin / name).is_dir():
            continue
        link_tree(origin / name, directory / name)
    dit.save_pretrained(directory / "transformer", state=state)
    entry = index_entry(directory / "transformer")
    index = index | {"transformer": entry}
    if settings["sampler"].get("schedule") is not None:  # a distilled student: its scheduler
        shutil.rmtree(directory / "scheduler")
        _student_scheduler(origin).save_config(directory / "scheduler")
        index["scheduler"] = ["diffusers", STUDENT_SCHEDULER]
    write_json(directory / INDEX, index)
    (directory / "README.md").write_text(_readme(index["_class_name"], entry, directory))
    text = {k: v for k, v in settings["text"].items() if k not in ("path", "tokenizer")}
    sidecar = {k: settings[k] for k in ("frames", "height", "width", "fps")}
    write_json(directory / SIDECAR, sidecar | {"text": text, "sampler": settings["sampler"]})

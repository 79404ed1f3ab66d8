"""Typed configuration: model presets and the training config (unknown keys are rejected).

The config file is the documentation of every knob: see configs/*.toml.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar, get_args, get_origin

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from mvdit import MvditError
from mvdit.distributed import ParallelKind
from mvdit.io import read_text, validate
from mvdit.limits import bounded
from mvdit.models.dit import DiTConfig
from mvdit.models.text import TextConfig

# DiT sizes. in_channels and text_dim come from the VAE and text encoder the model is paired with,
# except for the paper presets, which fix them (128 latent channels, CLIP-L's 768-d tokens).
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=128, head_dim=32, depth=6, heads=4, ffn_dim=512),
    "small": dict(hidden_size=256, head_dim=32, depth=8, heads=8, ffn_dim=1024),
    # The paper's 2.0B teacher: d=2048, 28 blocks, 32 heads of 64, FFN 8192 (docs/parameters.md).
    "paper-teacher": dict(
        hidden_size=2048,
        head_dim=64,
        depth=28,
        heads=32,
        ffn_dim=8192,
        in_channels=128,
        text_dim=768,
    ),
    # The paper's 0.9B mobile student after tri-level pruning: 20 blocks, 20 heads, FFN ~6144.
    "paper-student": dict(
        hidden_size=2048,
        head_dim=64,
        depth=20,
        heads=20,
        ffn_dim=6144,
        in_channels=128,
        text_dim=768,
    ),
}


def preset_config(
    name: str,
    in_channels: int | None = None,
    text_dim: int | None = None,
    patch_size: int | None = None,
) -> DiTConfig:
    if name not in PRESETS:
        raise MvditError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    kw = dict(PRESETS[name])
    for key, value in (
        ("in_channels", in_channels),
        ("text_dim", text_dim),
        ("patch_size", patch_size),
    ):
        if value is not None:
            kw[key] = value
    kw.setdefault("in_channels", 128)
    kw.setdefault("text_dim", 384)
    return DiTConfig.uniform(**kw)


M = TypeVar("M", bound=BaseModel)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
    kind: Literal["shapes", "folder", "cache"] = "shapes"
    path: str | None = None  # folder: video directory; cache: latent cache directory
    captions: str | None = None  # folder: CSV or JSONL of path,caption (default: PATH/captions.*)
    frames: int = bounded("frames", 8)
    height: int = bounded("side", 32)
    width: int = bounded("side", 32)
    fps: float = Field(default=8.0, gt=0, allow_inf_nan=False)
    seed: int = 0
    window: Literal["start", "center"] = "start"  # folder: where a longer video is cut
    # shapes: "colour shape motion" triples kept out of training
    holdout: list[str] = Field(default_factory=list)
    # shapes: the vocabulary drawn from (None: everything the generator knows)
    max_objects: int = Field(default=2, ge=1)
    paraphrase: bool = True
    colours: list[str] | None = None
    shapes: list[str] | None = None
    motions: list[str] | None = None
    speeds: list[str] | None = None
    backgrounds: list[str] | None = None
    background_styles: list[str] | None = None
    # shapes: every shape drawn at angle 0 (a rotating one starts there) instead of a random angle
    upright: bool = False
    # shapes: [smallest, largest] object diameter as a fraction of min(height, width) (None: the
    # generator's 0.2-0.35). A tiny DiT trained on larger objects, measured: docs/vae.md
    object_size: list[float] | None = None
    # shapes/folder: encode the first N training clips (and captions) once into a latent cache in
    # run.out_dir/latents, then train on it: the encoder runs once per clip, not once per step
    # (None: encode every batch). A rerun or --resume reuses a complete cache.
    cache_clips: int | None = bounded("clips", None)


class VAEConfig(Strict):
    kind: Literal["patchify", "pretrained"] = "patchify"
    path: str | None = (
        None  # pretrained: a directory written by save_pretrained, or a shipped VAE's name ("default", "cpu-4x8x8")
    )
    temporal_factor: int = 1
    spatial_factor: int = 8


class ModelConfig(Strict):
    # whose DiT: mvdit's own (the keys below), or a diffusers Wan 2.1 / LTX-Video transformer built
    # from `diffusers` (the class's own config keys; its latent channels and text width come from
    # the VAE and the text encoder)
    architecture: Literal["mvdit", "wan", "ltx"] = "mvdit"
    diffusers: dict[str, Any] = Field(default_factory=dict)
    preset: str = "tiny"
    hidden_size: int | None = None
    depth: int | None = None
    heads: int | None = None
    ffn_dim: int | None = None
    head_dim: int | None = None
    # latent voxels per token along height and width: 2 over a VAE that compresses space 4x
    # gives the tokens of an 8x VAE at patch 1 (None: the preset's, 1)
    patch_size: int | None = None
    # what the network's output layer predicts (models/dit.py: DiTConfig.prediction); None: the
    # preset's, "velocity"
    prediction: Literal["velocity", "sample"] | None = None
    # also modulate every block by the mean of the caption's text states (DiTConfig.pooled_text)
    pooled_text: bool = False


class FlowConfig(Strict):
    logit_mean: float = 0.0
    logit_std: float = 1.0
    shift: float | Literal["auto"] = "auto"  # time shift; "auto" follows the token count (SD3)
    caption_dropout: float = 0.1  # share of captions replaced by "" so CFG works at sampling


# the bounds of optimizer settings, in their types: a stage's OptimConfig subclass that changes a
# default keeps the bound by writing the same type
LearningRate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=1)]
CountOrZero = Annotated[int, Field(ge=0)]
Decay = Annotated[float, Field(ge=0, lt=1)]


class OptimConfig(Strict):
    lr: LearningRate = 1e-3
    betas: tuple[float, float] = (0.9, 0.99)
    weight_decay: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    warmup_steps: CountOrZero = 100
    schedule: Literal["constant", "cosine"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    grad_clip: float = Field(default=1.0, ge=0)  # 0: no clipping
    batch_size: int = bounded("batch", 16)
    grad_accum: Count = 1
    steps: int = bounded("train_steps", 1500)
    ema_decay: Decay = 0.999
    # a step with a non-finite loss or gradient is skipped for that module; this many in a row stop
    max_nonfinite_steps: int = Field(default=3, ge=1)


DEVICE = re.compile(r"(cpu|cuda)(:\d{1,3})?")


def _device_problem(text: object, what: str = "") -> str | None:
    if isinstance(text, str) and DEVICE.fullmatch(text):
        return None
    return f"{what + ' ' if what else ''}{text!r} is not a device: use cpu, cuda or cuda:N"


def check_device(text: str, what: str = "device") -> str:
    """A device string mvdit runs on ("cpu", "cuda", "cuda:N"); MvditError for anything else."""
    if problem := _device_problem(text, what):
        raise MvditError(problem)
    return text


def require_device(text: str, what: str = "device") -> str:
    """A device string (check_device) that this machine has: `cuda` without a visible GPU, or a
    GPU index past the last, is one line instead of a failure deep inside torch."""
    check_device(text, what)
    if text.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise MvditError(f"{what} {text}: no CUDA GPU is visible here; use cpu")
        index = int(text.split(":")[1]) if ":" in text else 0
        if index >= torch.cuda.device_count():
            raise MvditError(
                f"{what} {text}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    return text


class RunConfig(Strict):
    out_dir: str = "runs/tiny"
    seed: int = Field(default=0, ge=0, lt=2**63)
    checkpoint_every: int = Field(default=250, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    log_every: int = Field(default=10, ge=1)
    device: str = "cpu"
    threads: int | None = bounded("threads", None)

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if problem := _device_problem(v):
            raise ValueError(problem)  # pydantic reports a ValueError as this field's error
        return v

    # "bf16": autocast the loss to bfloat16 with fp32 master weights (GPU); fp32 on CPU is ~100x faster
    precision: Literal["fp32", "bf16"] = "fp32"
    # under torchrun: "ddp" replicates the trained modules, "fsdp" shards them (FSDP2); one
    # process ignores it (docs/training.md, "Many processes")
    parallel: ParallelKind = "none"
    # recompute each DiT block in the backward instead of storing its activations (GPU memory)
    activation_checkpointing: bool = False
    # torch.compile each trained DiT block in place (worth it on a GPU; minutes of compiling)
    compile: bool = False
    # the scaled-dot-product attention kernel: PyTorch's choice, or one forced ("flash" on a GPU)
    attention: Literal["auto", "flash", "efficient", "cudnn", "math"] = "auto"


class SampleConfig(Strict):
    """The sampler the trained model carries (its pipeline.json): steps and guidance scale."""

    steps: int = bounded("steps", 20)
    # classifier-free guidance scale ("cfg" in configs written before it had this name)
    guidance: float = bounded("guidance", 4.0, validation_alias=AliasChoices("guidance", "cfg"))


class TrainConfig(Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    vae: VAEConfig = Field(default_factory=VAEConfig)
    text: TextConfig = Field(default_factory=TextConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    sample: SampleConfig = Field(default_factory=SampleConfig)


def required(value: str | None, key: str) -> str:
    """A section's key that a run cannot do without (a model, an output directory), or one line
    naming it."""
    if not value:
        raise MvditError(f"{key} is not set: give it in the config or on the command line")
    return value


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise MvditError(f"config file {path} not found")
    text = read_text(path, "config file")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml"):
            return yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, Exception) as e:  # yaml raises its own error types
        raise MvditError(f"{path}: cannot parse: {str(e).splitlines()[0]}") from None
    raise MvditError(f"{path}: config must be .toml, .yaml or .yml")


def default_config_path() -> Path:
    """The embedded default training config (the tiny preset; configs/tiny.toml is the same file)."""
    return Path(str(files("mvdit") / "configs" / "tiny.toml"))


def default_train_config() -> TrainConfig:
    return load_train_config(default_config_path())


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a TOML/YAML file (or the defaults when None) and apply `section.key=value` overrides."""
    return load_config(TrainConfig, path, overrides)


def updated(
    cfg: M,
    changes: Mapping[str, Any],
    source: str = "the command line",
    names: Mapping[str, str] | None = None,
) -> M:
    """A copy of a config section with dotted keys changed (`{"calibration.seeds": 4}`), checked
    exactly as a file is: how a command applies its flags and a study derives one row's config
    from another's (never by formatting `--set` strings)."""
    raw = cfg.model_dump(mode="json")
    for key, value in changes.items():
        value = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        _set_key(raw, key, value, f"{source}: {key}")
    return validate(type(cfg), raw, source, names=names)


def _set_key(raw: dict, key: str, value: Any, what: str) -> None:
    """Set a dotted key (`section.key`) in a raw config dict, making sections as needed; one line
    naming `what` when the key is malformed or passes through a value."""
    *parents, leaf = key.split(".")
    if not all(parents) or not leaf:
        raise MvditError(f"{what}: the key must look like section.key")
    node = raw
    for i, p in enumerate(parents):
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise MvditError(f"{what}: '{'.'.join(parents[: i + 1])}' is a value, not a section")
    node[leaf] = value


def load_config(
    cls: type[BaseModel],
    path: str | Path | None,
    overrides: list[str] | None = None,
    changes: Mapping[str, Any] | None = None,
):
    """Any stage's config: a TOML/YAML file (or defaults), `section.key=value` overrides as a
    user types them, then `changes`: dotted keys with Python values (a study's or the recipe's
    derived settings), all checked together."""
    raw = read_config_file(path) if path else {}
    for key, value in (changes or {}).items():
        _set_key(raw, key, value, f"setting {key}")
    for item in overrides or []:
        if "=" not in item:
            raise MvditError(f"override '{item}' must look like section.key=value")
        key, text = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        _set_key(raw, key, value, f"override '{item}'")
    hint = f"check the spelling against {default_config_path()}"
    return validate(cls, raw, str(path or "default config"), hint)


# ---------------------------------------------------------------------------------------------
# a section's keys as command-line flags (the CLI generates its stage flags from these)


class KeyInfo(NamedTuple):
    kind: Any  # what a flag of it takes: int, float, str, bool, or list[int | float | str]
    choices: tuple  # the allowed values of a Literal key (else empty)
    default: Any
    description: str | None

    def help(self, csv: bool = False) -> str:
        """The key's description with its choices and default, as a flag's help shows them."""
        d = self.default
        shown = ",".join(map(str, d)) if isinstance(d, list) else d
        return " ".join(filter(None, [
            self.description,
            f"(one of {', '.join(map(str, self.choices))})" if self.choices else "",
            f"(default: {shown})" if shown not in (None, "") and not isinstance(d, bool) else "",
            "(comma-separated)" if csv else "",
        ]))  # fmt: skip


def key_info(cls: type[BaseModel], key: str) -> KeyInfo:
    """Type, choices, default and description of a dotted key (`calibration.seeds`) of a section
    class, read from its pydantic field: each is written once, in the section."""
    *parents, leaf = key.split(".")
    for p in parents:
        cls = cls.model_fields[p].annotation
    field = cls.model_fields[leaf]
    ann = field.annotation
    if get_origin(ann) not in (list, Literal):  # `X | None` -> X
        ann = next(a for a in get_args(ann) if a is not type(None)) if get_args(ann) else ann
    choices = get_args(ann) if get_origin(ann) is Literal else ()
    if get_origin(ann) is list:
        item = get_args(ann)[0]
        kind: Any = list[item] if item in (int, float) else list[str]
    else:
        kind = str if choices else ann
    return KeyInfo(kind, choices, field.get_default(call_default_factory=True), field.description)


def parse_csv(text: str, kind: type) -> list:
    """A comma-separated flag value ("0.1,0.5", "block,ffn") as a list of `kind`."""
    try:
        return [kind(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise MvditError(f"{text!r} is not a comma-separated list of {kind.__name__}s") from None

"""Text → video: a DiT, an autoencoder and a text encoder, saved and loaded as one directory.

An mvdit model directory:
DIR/pipeline.json   format version, clip size, the text encoder's config and the sampler the
                    model was made for (steps or a fixed schedule, guidance, time shift, NFE)
DIR/dit/            config.json + model.safetensors
DIR/vae/            config.json (+ model.safetensors for a trained VAE)

A diffusers pipeline directory (model_index.json: a Wan 2.1 or LTX-Video pipeline) is read and
written as the same `Pipeline` (mvdit.diffusers_pipeline); a model read from one is saved as one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from tqdm.auto import tqdm

from mvdit import MvditError
from mvdit.build import load_autoencoder
from mvdit.compress.diffusers_dit import is_diffusers_transformer, load_transformer
from mvdit.data.cache import weights_hash
from mvdit.diffusers_pipeline import (
    is_diffusers_pipeline,
    pipeline_settings,
    read_components,
    read_transformer,
    student_schedule,
    write_components,
)
from mvdit.flow import (
    check_schedule,
    euler_sample,
    network_evaluations,
    shift_for_tokens,
    timestep_schedule,
)
from mvdit.io import link_tree, output_dir, read_json, validate, write_json
from mvdit.limits import bounded, check_bound
from mvdit.models.autoencoder import VideoAutoencoder, to_uint8
from mvdit.models.dit import VideoDiT
from mvdit.models.interface import PrunableDiT
from mvdit.models.text import TextConfig, TextEncoder, load_text_encoder
from mvdit.models.vae import shipped_vae_path

FORMAT = 2  # pipeline.json layout; 1 (no "format" key) kept the sampler settings at the top level

# The pipeline shipped inside the package, which `mvdit generate` runs when no --model is given:
# the 4-step student distilled from the pruned default teacher (its MODEL_CARD.md says how).
SHIPPED_MODEL = "default-student"


def shipped_model_path() -> Path:
    """The directory of the shipped default pipeline (SHIPPED_MODEL)."""
    path = Path(str(files("mvdit") / "assets" / SHIPPED_MODEL))
    if not (path / "pipeline.json").is_file():
        raise MvditError(
            f"the shipped default model is missing from {path}; reinstall mvdit, or train a "
            "model (`mvdit train`) and pass it with --model"
        )
    return path


def shipped_teacher_path() -> Path:
    """The shipped default teacher (the student's, at 80 network evaluations; its MODEL_CARD.md
    says how it was trained and what it scores); the demo offers it once it is installed."""
    return Path(str(files("mvdit") / "assets" / "default-teacher"))


def start_noise(batch: int, latent_shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The standard normal latent a generation of `batch` clips with `seed` starts from (CPU)."""
    check_bound("seed", seed, "--seed")
    return torch.randn(batch, *latent_shape, generator=torch.Generator().manual_seed(seed))


class SamplerConfig(BaseModel):
    """How the model samples, owned by the model: a teacher's step count and guidance, or a
    distilled student's fixed schedule. Every command that samples, reports or estimates reads it."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["euler"] = "euler"  # Euler steps on the rectified-flow ODE (flow.euler_sample)
    steps: int = bounded("steps", 20)  # without a fixed schedule: uniform in t, then time-shifted
    schedule: list[float] | None = None  # a fixed schedule (a distilled student): steps + 1 times
    guidance: float = bounded("guidance", 4.0)  # classifier-free guidance scale; 1 turns it off
    shift: float | None = None  # time shift; None follows the token count (flow.shift_for_tokens)
    nfe: int | None = None  # network evaluations per clip; written on save, checked on load

    @model_validator(mode="after")
    def _check(self) -> SamplerConfig:
        if self.schedule is not None:
            check_schedule(self.schedule)
            self.steps = len(self.schedule) - 1
        if self.steps < 1:
            raise ValueError(f"steps must be at least 1, got {self.steps}")
        nfe = network_evaluations(self.steps, self.guidance)
        if self.nfe is not None and self.nfe != nfe:
            raise ValueError(
                f"nfe is {self.nfe} but {self.steps} steps at guidance {self.guidance:g} make {nfe}"
            )
        self.nfe = nfe
        return self

    @property
    def fixed(self) -> bool:
        return self.schedule is not None

    def resolve(
        self,
        tokens: int,
        steps: int | None = None,
        guidance: float | None = None,
        schedule: list[float] | None = None,
    ) -> Sampling:
        """The schedule, guidance and network evaluations of one clip of `tokens` latent tokens,
        with `steps`, `guidance` or an explicit `schedule` overriding this sampler. A fixed schedule
        (a distilled student) refuses another step count rather than silently sampling with a
        schedule the model never saw."""
        if steps is not None:
            check_bound("steps", steps, "--steps")
        guidance = (
            self.guidance if guidance is None else float(check_bound("guidance", guidance, "--cfg"))
        )
        if schedule is not None:
            sched = check_schedule(schedule)
        elif self.fixed:
            if steps is not None and steps != self.steps:
                raise MvditError(
                    f"this model was trained for a fixed {self.steps}-step schedule {self.schedule}; "
                    f"it cannot sample with {steps} steps: drop --steps"
                )
            sched = list(self.schedule)
        else:
            shift = self.shift if self.shift is not None else shift_for_tokens(tokens)
            sched = timestep_schedule(steps or self.steps, shift)
        return Sampling(sched, guidance, network_evaluations(len(sched) - 1, guidance))


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: int = FORMAT
    frames: int = bounded("frames", ...)
    height: int = bounded("side", ...)
    width: int = bounded("side", ...)
    fps: float
    text: TextConfig = Field(default_factory=TextConfig)
    sampler: SamplerConfig = Field(default_factory=SamplerConfig)


def upgrade_pipeline_json(raw: dict) -> dict:
    """Read a pipeline.json of an earlier format as the current one."""
    if not isinstance(raw, dict):
        raise MvditError(f"pipeline.json must be a JSON object, got a {type(raw).__name__}")
    raw = dict(raw)
    if "format" not in raw:  # format 1: steps / cfg / shift / schedule at the top level
        old = {k: raw.pop(k) for k in ("steps", "cfg", "shift", "schedule") if k in raw}
        if "cfg" in old:
            old["guidance"] = old.pop("cfg")
        raw["sampler"] = {k: v for k, v in old.items() if v is not None}
        raw["format"] = FORMAT
    if raw["format"] != FORMAT:
        raise MvditError(
            f"pipeline.json format {raw['format']} is newer than this mvdit reads ({FORMAT}); upgrade mvdit"
        )
    return raw


@dataclass
class Sampling:
    """The sampler a generation runs: the model's, with any allowed override applied."""

    schedule: list[float]
    guidance: float
    nfe: int

    @property
    def steps(self) -> int:
        return len(self.schedule) - 1

    def summary(self) -> dict:
        return {"steps": self.steps, "guidance": self.guidance, "nfe": self.nfe}


@dataclass
class Generation:
    videos: torch.Tensor | None  # uint8 (B, T, H, W, 3); None when generated with decode=False
    latents: torch.Tensor
    nfe: int
    timings: dict[str, float] = field(default_factory=dict)
    # per clip: the first sampler step (1-based) whose latents held NaN/inf, "decode" when only
    # the decoded frames did, None for a clip that stayed finite
    nonfinite: list[int | str | None] = field(default_factory=list)
    guidance: float = 1.0
    steps: int = 0

    @property
    def failed(self) -> list[int]:
        """The clips whose sampling or decoding produced NaN/inf (their video is not a result)."""
        return [i for i, at in enumerate(self.nonfinite) if at is not None]

    def failure(self, i: int) -> str:
        """Why clip i failed, in one line, with the likely cause."""
        at = self.nonfinite[i]
        where = "in the decoded frames" if at == "decode" else f"at step {at} of {self.steps}"
        cause = (
            f"the guidance scale {self.guidance:g} is too large"
            if at != "decode" and abs(self.guidance) > 20
            else "the model's weights are not finite or the model diverged"
        )
        return f"sampling produced NaN/inf values {where} (likely cause: {cause})"

    def check(self) -> Generation:
        """Raise MvditError naming the first failed clip; self when every clip is finite."""
        if self.failed:
            i = self.failed[0]
            n = (
                f"{len(self.failed)} of {len(self.nonfinite)} clips: "
                if len(self.nonfinite) > 1
                else ""
            )
            raise MvditError(f"{n}{self.failure(i)}; nothing was written")
        return self


def is_model_dir(path: str | Path) -> bool:
    """Whether `path` holds a model a command can read: an mvdit model directory or a diffusers
    pipeline directory."""
    return (Path(path) / "pipeline.json").is_file() or is_diffusers_pipeline(path)


def _relative_paths(config: PipelineConfig, directory: Path) -> dict:
    """pipeline.json's content, with a user's text encoder (and a tokenizer in its own folder)
    held inside the model directory (`directory` is its temporary twin) as text_encoder/ and
    tokenizer/, hard links where the filesystem allows, and recorded relative to it: the
    directory loads from anywhere and moves or copies whole."""
    raw = config.model_dump()
    for key, name in (("path", "text_encoder"), ("tokenizer", "tokenizer")):
        if raw["text"].get(key) is None:
            continue
        source = Path(raw["text"][key]).resolve()
        if not source.is_dir():
            raise MvditError(f"the text encoder's directory {source} (text.{key}) does not exist")
        link_tree(source, directory / name)
        raw["text"][key] = name
    return raw


def _resolve_paths(config: PipelineConfig, directory: Path) -> PipelineConfig:
    """The text encoder's directories of a pipeline.json, relative ones read against the model
    directory (an older file's relative path, given against the working directory, still loads
    from there when the model directory holds nothing at it)."""
    text = config.text
    fixed = {}
    for key in ("path", "tokenizer"):
        value = getattr(text, key)
        if value is not None and not Path(value).is_absolute():
            if (directory / value).exists() or not Path(value).exists():
                fixed[key] = str((directory / value).resolve())
    if not fixed:
        return config
    return config.model_copy(update={"text": text.model_copy(update=fixed)})


def load_dit(path: str | Path, device: str | torch.device = "cpu") -> PrunableDiT:
    """The DiT alone of a model directory (mvdit's or a diffusers pipeline's)."""
    path = Path(path)
    if is_diffusers_pipeline(path):
        return read_transformer(path, device)
    if not (path / "pipeline.json").is_file():
        raise MvditError(f"{path} is not a model directory (pipeline.json or model_index.json)")
    return _dit_of(path, device)


def _dit_of(path: Path, device: str | torch.device) -> PrunableDiT:
    """The DiT in an mvdit model directory's dit/: mvdit's own, or a diffusers transformer (a
    Wan or LTX architecture beside mvdit's VAE and text encoder)."""
    if is_diffusers_transformer(path / "dit"):
        return load_transformer(path / "dit").to(device)
    return VideoDiT.from_pretrained(path / "dit", device=device)


class Pipeline:
    """A DiT (any `PrunableDiT`), an autoencoder, a text encoder and the config they generate
    with. `origin`: the diffusers pipeline directory whose other components a diffusers DiT's
    pipeline keeps (it is saved as a diffusers pipeline directory beside them); None for mvdit's
    own format."""

    def __init__(
        self,
        dit: PrunableDiT,
        vae: VideoAutoencoder,
        text_encoder: TextEncoder,
        config: PipelineConfig,
        origin: Path | None = None,
    ):
        self.dit, self.vae, self.text_encoder, self.config = (
            dit.eval(),
            vae.eval(),
            text_encoder,
            config,
        )
        self.origin = origin
        vae.check_clip(config.frames, config.height, config.width)

    def replace(
        self, dit: PrunableDiT | None = None, config: PipelineConfig | None = None
    ) -> Pipeline:
        """The same pipeline with another DiT (a pruned or distilled one) or config."""
        return Pipeline(
            self.dit if dit is None else dit,
            self.vae,
            self.text_encoder,
            self.config if config is None else config,
            self.origin,
        )

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        c = self.config
        return self.vae.latent_shape(c.frames, c.height, c.width)

    def sampling(
        self,
        steps: int | None = None,
        guidance: float | None = None,
        schedule: list[float] | None = None,
    ) -> Sampling:
        """The sampler a generation runs: the model's own (pipeline.json) at this clip size, with
        the overrides it allows (SamplerConfig.resolve)."""
        tokens = self.dit.config.tokens(self.latent_shape)
        return self.config.sampler.resolve(tokens, steps, guidance, schedule)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        steps: int | None = None,
        guidance: float | None = None,
        seed: int = 0,
        schedule: list[float] | None = None,
        negative: str = "",
        progress: bool = False,
        decode: bool = True,
        start: torch.Tensor | None = None,
    ) -> Generation:
        """Sample `prompts` with the model's sampler (or the overrides it allows); with
        decode=False only the latents are returned (videos is None). `start`: the latents at the
        schedule's first time, in place of the seed's noise (with a schedule that starts below 1,
        clips noised along the flow path and completed by the model: SDEdit)."""
        if not prompts or any(not p.strip() for p in prompts):
            raise MvditError("the prompt is empty: give a text description of the video")
        if start is not None and tuple(start.shape) != (len(prompts), *self.latent_shape):
            raise MvditError(
                f"start latents are {tuple(start.shape)}, this model samples "
                f"{(len(prompts), *self.latent_shape)}: one latent per prompt"
            )
        sampling = self.sampling(steps, guidance, schedule)
        device = next(self.dit.parameters()).device
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        text, mask = self.text_encoder.encode(prompts)
        cond = {"text": text.to(device), "text_mask": mask.to(device)}
        uncond = None
        if sampling.guidance != 1.0:
            ntext, nmask = self.text_encoder.encode([negative] * len(prompts))
            uncond = {"text": ntext.to(device), "text_mask": nmask.to(device)}
        timings["text"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        noise = (start_noise(len(prompts), self.latent_shape, seed) if start is None else start).to(
            device
        )
        bar = tqdm(total=sampling.steps, desc="denoise", leave=False, disable=not progress)
        nonfinite: list[int | str | None] = [None] * len(prompts)

        def watch(i: int, x: torch.Tensor) -> None:
            bad = (~torch.isfinite(x.flatten(1)).all(1)).tolist()
            for k, b in enumerate(bad):
                if b and nonfinite[k] is None:
                    nonfinite[k] = i + 1

        latents, nfe = euler_sample(
            self.dit,
            noise,
            sampling.schedule,
            cond,
            uncond,
            sampling.guidance,
            progress=lambda i: bar.update(1),
            prepare=self.dit.prepare_conditioning,
            watch=watch,
        )
        bar.close()
        timings["dit"] = time.perf_counter() - t0

        videos = None
        if decode:
            t0 = time.perf_counter()
            frames = self.vae.decode(latents).float().cpu()
            for k, ok in enumerate(torch.isfinite(frames.flatten(1)).all(1).tolist()):
                if not ok and nonfinite[k] is None:
                    nonfinite[k] = "decode"
            videos = to_uint8(frames)
            timings["decode"] = time.perf_counter() - t0
        return Generation(
            videos=videos,
            latents=latents.cpu(),
            nfe=nfe,
            timings=timings,
            nonfinite=nonfinite,
            guidance=sampling.guidance,
            steps=sampling.steps,
        )

    def save_pretrained(
        self,
        path: str | Path,
        dit_state: dict[str, torch.Tensor] | None = None,
        dit_dtype: torch.dtype | None = None,
        shipped_vae: str | None = None,
        *,
        command: str = "model",
        overwrite: bool = True,
        sources: tuple[str | Path, ...] = (),
    ) -> None:
        """Write the whole pipeline atomically (an interrupted save leaves the old one intact)
        as the output directory of `mvdit COMMAND` (mvdit.io.output_dir: with overwrite=False a
        directory that is not that command's is refused, and `sources` are never replaced).

        `dit_dtype` stores the DiT's weights in that dtype (fp16 for a shipped model; loading
        casts them back to the model's fp32). `shipped_vae` names a VAE inside the package
        (SHIPPED_VAES) that vae/ refers to instead of holding a copy; it must be this VAE."""
        if shipped_vae is not None:
            ref = load_autoencoder(shipped_vae_path(shipped_vae))
            if weights_hash(ref) != weights_hash(self.vae):
                raise MvditError(f"this pipeline's VAE is not the shipped VAE {shipped_vae!r}")
        with output_dir(path, command=command, overwrite=overwrite, sources=sources) as tmp:
            self.write(tmp, dit_state=dit_state, dit_dtype=dit_dtype, shipped_vae=shipped_vae)

    def write(
        self,
        directory: Path,
        dit_state: dict[str, torch.Tensor] | None = None,
        dit_dtype: torch.dtype | None = None,
        shipped_vae: str | None = None,
    ) -> None:
        """The pipeline's files (pipeline.json, dit/, vae/; a diffusers pipeline's
        model_index.json and component folders) into an existing directory (the temporary one of
        an atomic save)."""
        state = dit_state if dit_state is not None else self.dit.state_dict()
        if dit_dtype is not None:
            state = {k: v.to(dit_dtype) if v.is_floating_point() else v for k, v in state.items()}
        if self.origin is not None:
            if shipped_vae is not None:
                raise MvditError(
                    "a diffusers pipeline keeps its own VAE (a shipped-VAE reference would not "
                    "load without mvdit): drop --shipped-vae"
                )
            write_components(directory, self.origin, self.dit, self.config.model_dump(), state)
            return
        write_json(directory / "pipeline.json", _relative_paths(self.config, directory))
        self.dit.save_pretrained(directory / "dit", state=state)
        if shipped_vae is None:
            self.vae.save_pretrained(directory / "vae")
        else:
            write_json(directory / "vae" / "config.json", {"kind": "shipped", "name": shipped_vae})

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str = "cpu", text_encoder: TextEncoder | None = None
    ) -> Pipeline:
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise MvditError(
                f"{path} is a file, not a model directory (pipeline.json + dit/ + vae/)"
            )
        if not path.is_dir():
            raise MvditError(
                f"model directory {path} does not exist (train one with `mvdit train`)"
            )
        origin = None
        if is_diffusers_pipeline(path):
            origin = path.resolve()
            config = validate(PipelineConfig, pipeline_settings(path), str(path))
            dit, vae = read_components(path, device)
        elif not (path / "pipeline.json").is_file():
            raise MvditError(
                f"{path} is not a model directory: it has neither pipeline.json (mvdit) nor "
                "model_index.json (a diffusers pipeline)"
            )
        else:
            raw = upgrade_pipeline_json(read_json(path / "pipeline.json"))
            config = _resolve_paths(
                validate(PipelineConfig, raw, str(path / "pipeline.json")), path
            )
            dit = _dit_of(path, device)
            vae = load_autoencoder(path / "vae").to(device)
        te = text_encoder or load_text_encoder(config.text)
        if te.dim != dit.config.text_dim:
            raise MvditError(
                f"{path}: the DiT expects {dit.config.text_dim}-d text tokens but the text encoder gives {te.dim}"
            )
        if vae.latent_channels != dit.config.in_channels:
            raise MvditError(
                f"{path}: the DiT expects {dit.config.in_channels} latent channels but the VAE gives {vae.latent_channels}"
            )
        return cls(dit, vae, te, config, origin)

    def distilled_schedule(self, steps: int) -> list[float]:
        """The N + 1 times a guidance-free N-step student of this model is distilled on: N
        uniform steps under the time shift, or for a diffusers pipeline the schedule its own
        pipeline class runs with the scheduler the student is saved with (so that stock
        diffusers samples the student as it was trained)."""
        if self.origin is not None:
            return student_schedule(self.origin, steps)
        return self.sampling(steps, 1.0).schedule

    def with_sampler(self, steps: int | None = None, guidance: float | None = None) -> Pipeline:
        """The same networks with another default sampler (pipeline.json's), checked like a file;
        a distilled student's fixed schedule refuses another step count."""
        changes = {k: v for k, v in dict(steps=steps, guidance=guidance).items() if v is not None}
        if not changes:
            return self
        if self.config.sampler.fixed and "steps" in changes:
            raise MvditError(
                f"this model samples a fixed {self.config.sampler.steps}-step schedule: drop --steps"
            )
        raw = self.config.sampler.model_dump() | changes | {"nfe": None}
        sampler = validate(SamplerConfig, raw, "--steps/--guidance")
        return self.replace(config=self.config.model_copy(update={"sampler": sampler}))

    def with_clip(
        self, frames: int | None = None, height: int | None = None, width: int | None = None
    ) -> Pipeline:
        """The same networks at another clip size (checked against the VAE's frame rules)."""
        c = self.config.model_copy(
            update={
                k: v
                for k, v in dict(frames=frames, height=height, width=width).items()
                if v is not None
            }
        )
        return self.replace(config=c)

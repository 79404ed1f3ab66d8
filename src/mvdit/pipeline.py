"""Text → video: a DiT, an autoencoder and a text encoder, saved and loaded as one directory.

DIR/pipeline.json   clip size, sampler defaults, the text encoder's config
DIR/dit/            config.json + model.safetensors
DIR/vae/            config.json (+ model.safetensors for a trained VAE)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mvdit import MvditError
from mvdit.flow import check_schedule, euler_sample, shift_for_tokens, timestep_schedule
from mvdit.io import atomic_dir, read_json, write_json
from mvdit.models.autoencoder import VideoAutoencoder, load_autoencoder
from mvdit.models.dit import VideoDiT
from mvdit.models.text import TextConfig, TextEncoder, load_text_encoder


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    frames: int
    height: int
    width: int
    fps: float
    text: TextConfig = Field(default_factory=TextConfig)
    steps: int = 20
    cfg: float = 4.0
    shift: float | None = None  # None: follow the token count (flow.shift_for_tokens)
    schedule: list[float] | None = (
        None  # a fixed schedule (the 4-step student) overrides steps/shift
    )


@dataclass
class Generation:
    videos: torch.Tensor  # uint8 (B, T, H, W, 3)
    latents: torch.Tensor
    nfe: int
    timings: dict[str, float] = field(default_factory=dict)


def to_uint8(video: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] → uint8 (B, T, H, W, 3)."""
    return (
        ((video.clamp(-1, 1) + 1) * 127.5)
        .round()
        .to(torch.uint8)
        .permute(0, 2, 3, 4, 1)
        .contiguous()
    )


class Pipeline:
    def __init__(
        self,
        dit: VideoDiT,
        vae: VideoAutoencoder,
        text_encoder: TextEncoder,
        config: PipelineConfig,
    ):
        self.dit, self.vae, self.text_encoder, self.config = (
            dit.eval(),
            vae.eval(),
            text_encoder,
            config,
        )
        vae.check_clip(config.frames, config.height, config.width)

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        c = self.config
        return self.vae.latent_shape(c.frames, c.height, c.width)

    def default_schedule(self, steps: int | None = None) -> list[float]:
        c = self.config
        if c.schedule is not None and steps in (None, len(c.schedule) - 1):
            return list(c.schedule)
        _, t, h, w = self.latent_shape
        shift = c.shift if c.shift is not None else shift_for_tokens(t * h * w)
        return timestep_schedule(steps or c.steps, shift)

    @torch.no_grad()
    def generate(
        self,
        prompts: list[str],
        steps: int | None = None,
        cfg: float | None = None,
        seed: int = 0,
        schedule: list[float] | None = None,
        negative: str = "",
        progress: bool = False,
    ) -> Generation:
        if not prompts or any(not p.strip() for p in prompts):
            raise MvditError("the prompt is empty: give a text description of the video")
        if steps is not None and steps < 1:
            raise MvditError(f"--steps must be at least 1, got {steps}")
        device = next(self.dit.parameters()).device
        cfg = self.config.cfg if cfg is None else cfg
        sched = check_schedule(schedule) if schedule is not None else self.default_schedule(steps)
        timings: dict[str, float] = {}

        t0 = time.perf_counter()
        text, mask = self.text_encoder.encode(prompts)
        cond = {"text": text.to(device), "text_mask": mask.to(device)}
        uncond = None
        if cfg != 1.0:
            ntext, nmask = self.text_encoder.encode([negative] * len(prompts))
            uncond = {"text": ntext.to(device), "text_mask": nmask.to(device)}
        timings["text"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(len(prompts), *self.latent_shape, generator=gen).to(device)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(sched) - 1, desc="denoise", leave=False)
        latents, nfe = euler_sample(
            self.dit,
            noise,
            sched,
            cond,
            uncond,
            cfg,
            progress=(lambda i: bar.update(1)) if bar else None,
        )
        if bar:
            bar.close()
        timings["dit"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        videos = to_uint8(self.vae.decode(latents).float().cpu())
        timings["decode"] = time.perf_counter() - t0
        return Generation(videos=videos, latents=latents.cpu(), nfe=nfe, timings=timings)

    def save_pretrained(
        self, path: str | Path, dit_state: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Write the whole pipeline atomically (an interrupted save leaves the old one intact)."""
        with atomic_dir(path) as tmp:
            write_json(tmp / "pipeline.json", self.config.model_dump())
            self.dit.save_pretrained(tmp / "dit", state=dit_state)
            self.vae.save_pretrained(tmp / "vae")

    @classmethod
    def from_pretrained(
        cls, path: str | Path, device: str = "cpu", text_encoder: TextEncoder | None = None
    ) -> Pipeline:
        path = Path(path)
        if not path.is_dir():
            raise MvditError(
                f"model directory {path} does not exist (train one with `mvdit train`)"
            )
        if not (path / "pipeline.json").is_file():
            raise MvditError(f"{path} is not an mvdit model directory: it has no pipeline.json")
        try:
            config = PipelineConfig(**read_json(path / "pipeline.json"))
        except ValidationError as e:
            err = e.errors()[0]
            raise MvditError(
                f"{path}/pipeline.json: {'.'.join(map(str, err['loc']))}: {err['msg']}"
            ) from None
        dit = VideoDiT.from_pretrained(path / "dit", device=device)
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
        return cls(dit, vae, te, config)

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
        return Pipeline(self.dit, self.vae, self.text_encoder, c)

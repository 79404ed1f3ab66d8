"""Stage: train a text-to-video DiT teacher with rectified flow (`mvdit train CONFIG`).

The stage is its loss: encode the clip (or read a cached latent), noise it along the straight
path, regress the velocity. Everything else is the shared loop in train.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from mvdit import distributed
from mvdit.build import build_autoencoder, build_dataset, build_model, cache_from_config
from mvdit.checkpoint import check_fresh_run
from mvdit.config import FlowConfig, TrainConfig
from mvdit.data.cache import LatentCacheDataset
from mvdit.flow import flow_loss, sample_timesteps, shift_for_tokens
from mvdit.models.autoencoder import VideoAutoencoder
from mvdit.models.interface import PrunableDiT
from mvdit.models.text import TextEncoder, load_text_encoder
from mvdit.pipeline import Pipeline, PipelineConfig, SamplerConfig
from mvdit.train import make_batch_fn, train_loop


def flow_inputs(vae: VideoAutoencoder, text: TextEncoder, flow: FlowConfig, shift: float):
    """batch -> (x0, text states, text mask, t, noise): a training clip's latent, its caption's
    encoding with caption dropout for CFG, a timestep and the noise. Every stage that trains on
    the flow path (the teacher, KD recovery, distillation) draws its inputs here."""

    def inputs(batch: dict, gen: torch.Generator):
        with torch.no_grad():
            x0 = batch["latent"] if "latent" in batch else vae.encode(batch["video"])
            captions = list(batch["caption"])
            drop = torch.rand(len(captions), generator=gen) < flow.caption_dropout
            captions = ["" if dr else c for c, dr in zip(captions, drop.tolist(), strict=True)]
            if "text" in batch:
                null_h, null_m = text.encode_cached([""])
                keep = ~drop.to(x0.device)[:, None, None]
                ctx = torch.where(keep, batch["text"], null_h.to(batch["text"]))
                mask = torch.where(keep[:, :, 0], batch["text_mask"], null_m.to(batch["text_mask"]))
            else:
                ctx, mask = text.encode_cached(captions)
        t = sample_timesteps(x0.shape[0], gen, flow.logit_mean, flow.logit_std, shift).to(x0)
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        return x0, ctx.to(x0.device), mask.to(x0.device), t, noise

    return inputs


def train_shift(dit: PrunableDiT, vae: VideoAutoencoder, data, flow: FlowConfig) -> float:
    """The time shift of training: flow.shift, or the one the token count asks for."""
    tokens = dit.config.tokens(vae.latent_shape(data.frames, data.height, data.width))
    return shift_for_tokens(tokens) if flow.shift == "auto" else float(flow.shift)


def make_flow_loss(dit: PrunableDiT, vae: VideoAutoencoder, text: TextEncoder, cfg: TrainConfig):
    """The teacher's loss: rectified-flow velocity regression with caption dropout for CFG."""
    inputs = flow_inputs(vae, text, cfg.flow, train_shift(dit, vae, cfg.data, cfg.flow))

    def loss_fn(step: int, batch: dict, gen: torch.Generator):
        x0, ctx, mask, t, noise = inputs(batch, gen)
        return {"model": flow_loss(dit, x0, t, noise, text=ctx, text_mask=mask)}, {}

    return loss_fn


@dataclass
class TeacherParts:
    """Everything a teacher run is made of, built from its config (train_teacher trains it)."""

    dit: PrunableDiT
    vae: VideoAutoencoder
    text: TextEncoder
    dataset: object
    pipeline: Pipeline
    loss_fn: object


def build_teacher(cfg: TrainConfig) -> TeacherParts:
    vae = build_autoencoder(cfg.vae)
    d = cfg.data
    vae.check_clip(d.frames, d.height, d.width)
    text = load_text_encoder(cfg.text)
    torch.manual_seed(cfg.run.seed)  # the initial weights
    dit = build_model(cfg.model, vae.latent_channels, text.dim)
    if d.cache_clips and d.kind != "cache":
        cache_dir = Path(cfg.run.out_dir) / "latents"
        with distributed.main_first():  # under torchrun rank 0 writes it, the others read it
            cache_from_config(
                cfg,
                cache_dir,
                limit=d.cache_clips,
                batch_size=32,
                vae=vae,
                text=text,
                progress=distributed.is_main(),
            )
        dataset = LatentCacheDataset(cache_dir, autoencoder=vae, text_encoder=text)
    else:
        dataset = build_dataset(cfg.data, "train", vae, text)
    pipe_cfg = PipelineConfig(
        frames=d.frames,
        height=d.height,
        width=d.width,
        fps=d.fps,
        text=cfg.text,
        sampler=SamplerConfig(
            steps=cfg.sample.steps,
            guidance=cfg.sample.guidance,
            shift=None if cfg.flow.shift == "auto" else float(cfg.flow.shift),
        ),
    )
    pipeline = Pipeline(dit, vae, text, pipe_cfg)
    return TeacherParts(dit, vae, text, dataset, pipeline, make_flow_loss(dit, vae, text, cfg))


def train_teacher(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    check_fresh_run(cfg.run.out_dir, resume)  # before the latent cache is built
    distributed.setup(cfg.run.parallel, cfg.run.device)  # under torchrun: join the group first
    parts = build_teacher(cfg)
    batch_fn = make_batch_fn(
        parts.dataset, cfg.optim.batch_size, cfg.optim.grad_accum, cfg.run.seed
    )
    return train_loop(
        {"model": parts.dit},
        parts.loss_fn,
        batch_fn,
        cfg.optim,
        cfg.run,
        cfg.run.out_dir,
        resume=resume,
        config_dump=cfg.model_dump(mode="json"),
        on_export=lambda path, state, _step: parts.pipeline.save_pretrained(path, dit_state=state),
        progress=progress,
        frozen={"vae": parts.vae, "text": parts.text},
    )

"""Stage: train a text-to-video DiT teacher with rectified flow (`mvdit train CONFIG`).

The stage is its loss: encode the clip (or read a cached latent), noise it along the straight
path, regress the velocity. Everything else is the shared loop in train.py.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mvdit import MvditError
from mvdit.config import DataConfig, ModelConfig, TrainConfig, VAEConfig, preset_config
from mvdit.flow import flow_loss, sample_timesteps, shift_for_tokens
from mvdit.models.autoencoder import PatchifyAutoencoder, VideoAutoencoder, load_autoencoder
from mvdit.models.dit import DiTConfig, VideoDiT
from mvdit.models.text import TextEncoder, load_text_encoder
from mvdit.pipeline import Pipeline, PipelineConfig
from mvdit.train import make_batch_fn, train_loop


def build_autoencoder(cfg: VAEConfig) -> VideoAutoencoder:
    if cfg.kind == "patchify":
        return PatchifyAutoencoder(cfg.temporal_factor, cfg.spatial_factor)
    if cfg.path is None:
        raise MvditError(
            "vae.kind = 'pretrained' needs vae.path (a directory written by save_pretrained, or 'default')"
        )
    if cfg.path == "default":
        from mvdit.models.vae import default_vae_path

        return load_autoencoder(default_vae_path())
    if not Path(cfg.path).is_dir():
        raise MvditError(f"vae.path {cfg.path} does not exist")
    return load_autoencoder(cfg.path)


def build_dataset(
    cfg: DataConfig,
    split: str = "train",
    autoencoder: VideoAutoencoder | None = None,
    text_encoder: TextEncoder | None = None,
):
    """The dataset a config names. Given the encoders, a latent cache is checked against them."""
    if cfg.kind == "shapes":
        from mvdit.data.shapes import ShapesDataset

        vocab = (
            "max_objects",
            "paraphrase",
            "colours",
            "shapes",
            "motions",
            "speeds",
            "backgrounds",
            "background_styles",
        )
        return ShapesDataset(
            frames=cfg.frames,
            height=cfg.height,
            width=cfg.width,
            fps=cfg.fps,
            seed=cfg.seed,
            split=split,
            holdout=cfg.holdout,
            **{k: getattr(cfg, k) for k in vocab},
        )
    if cfg.path is None:
        raise MvditError(f"data.kind = '{cfg.kind}' needs data.path")
    if cfg.kind == "folder":
        from mvdit.data.folder import VideoFolderDataset

        return VideoFolderDataset(
            cfg.path,
            captions=cfg.captions,
            frames=cfg.frames,
            height=cfg.height,
            width=cfg.width,
            fps=cfg.fps,
            window=cfg.window,
        )
    from mvdit.data.cache import LatentCacheDataset

    return LatentCacheDataset(cfg.path, autoencoder=autoencoder, text_encoder=text_encoder)


def build_dit_config(cfg: ModelConfig, in_channels: int, text_dim: int) -> DiTConfig:
    base = preset_config(cfg.preset, in_channels, text_dim)
    over = {k: v for k, v in cfg.model_dump().items() if k != "preset" and v is not None}
    if not over:
        return base
    b0 = base.blocks[0]
    return DiTConfig.uniform(
        depth=over.get("depth", len(base.blocks)),
        heads=over.get("heads", b0.heads),
        ffn_dim=over.get("ffn_dim", b0.ffn_dim),
        hidden_size=over.get("hidden_size", base.hidden_size),
        head_dim=over.get("head_dim", base.head_dim),
        in_channels=in_channels,
        text_dim=text_dim,
    )


def make_flow_loss(dit: VideoDiT, vae: VideoAutoencoder, text: TextEncoder, cfg: TrainConfig):
    """The teacher's loss: rectified-flow velocity regression with caption dropout for CFG."""
    d = cfg.data
    _, lt, lh, lw = vae.latent_shape(d.frames, d.height, d.width)
    shift = shift_for_tokens(lt * lh * lw) if cfg.flow.shift == "auto" else float(cfg.flow.shift)

    def loss_fn(step: int, batch: dict, gen: torch.Generator):
        with torch.no_grad():
            x0 = batch["latent"] if "latent" in batch else vae.encode(batch["video"])
            captions = list(batch["caption"])
            drop = torch.rand(len(captions), generator=gen) < cfg.flow.caption_dropout
            captions = ["" if dr else c for c, dr in zip(captions, drop.tolist(), strict=True)]
            if "text" in batch:
                null_h, null_m = text.encode_cached([""])
                keep = ~drop[:, None, None]
                ctx = torch.where(keep, batch["text"], null_h.to(batch["text"]))
                mask = torch.where(keep[:, :, 0], batch["text_mask"], null_m.to(batch["text_mask"]))
            else:
                ctx, mask = text.encode_cached(captions)
        t = sample_timesteps(x0.shape[0], gen, cfg.flow.logit_mean, cfg.flow.logit_std, shift).to(
            x0
        )
        noise = torch.randn(x0.shape, generator=gen).to(x0)
        loss = flow_loss(dit, x0, t, noise, text=ctx.to(x0.device), text_mask=mask.to(x0.device))
        return {"model": loss}, {}

    return loss_fn


def train_teacher(cfg: TrainConfig, resume: bool = False, progress: bool = True) -> dict:
    vae = build_autoencoder(cfg.vae)
    d = cfg.data
    vae.check_clip(d.frames, d.height, d.width)
    text = load_text_encoder(cfg.text)
    torch.manual_seed(cfg.run.seed)  # the initial weights
    dit = VideoDiT(build_dit_config(cfg.model, vae.latent_channels, text.dim))
    dataset = build_dataset(cfg.data, "train", vae, text)
    batch_fn = make_batch_fn(dataset, cfg.optim.batch_size, cfg.optim.grad_accum, cfg.run.seed)
    pipe_cfg = PipelineConfig(
        frames=d.frames,
        height=d.height,
        width=d.width,
        fps=d.fps,
        text=cfg.text,
        steps=cfg.sample.steps,
        cfg=cfg.sample.cfg,
        shift=None if cfg.flow.shift == "auto" else float(cfg.flow.shift),
    )
    pipeline = Pipeline(dit, vae, text, pipe_cfg)
    return train_loop(
        {"model": dit},
        make_flow_loss(dit, vae, text, cfg),
        batch_fn,
        cfg.optim,
        cfg.run,
        cfg.run.out_dir,
        resume=resume,
        config_dump=cfg.model_dump(mode="json"),
        on_export=lambda path, state: pipeline.save_pretrained(path, dit_state=state),
        progress=progress,
    )

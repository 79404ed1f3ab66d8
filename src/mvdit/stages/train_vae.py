"""Stage: train the causal video VAE (`mvdit train-vae CONFIG`), the paper's first step.

The stage is its loss, run by the shared loop in train.py:
- pixel L1 and MSE;
- a Haar wavelet loss (L1 on the detail bands of a 2-level spatial Haar transform, plus frame
  differences for time): it puts weight on edges and motion that L1 alone blurs;
- the KL term of the posterior, small: it only keeps the latent space smooth for the DiT;
- optionally, a perceptual term on early features of the shipped EfficientNet-Lite0 (LPIPS's
  networks cannot be downloaded here), a frozen helper of the loop;
- optionally, after `adv_start` steps, a hinge GAN term from a 3D patch discriminator ("disc"),
  which the loop trains with its own AdamW on its own loss, its weight fixed or adaptive.

docs/vae.md measures each of these against the shape the detector reads on reconstructions.

At every checkpoint the EMA weights are exported to OUT/model with the per-channel latent
mean/std measured on training clips; at the end the export is scored on held-out clips.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from mvdit import MvditError, distributed
from mvdit.build import build_video_dataset, load_autoencoder
from mvdit.config import (
    Count,
    DataConfig,
    Decay,
    LearningRate,
    OptimConfig,
    RunConfig,
    Strict,
    load_config,
)
from mvdit.eval.faithfulness import score_clip, summarize
from mvdit.eval.features import MEAN as FEATURE_MEAN
from mvdit.eval.features import STD as FEATURE_STD
from mvdit.eval.features import load_efficientnet_lite0
from mvdit.eval.metrics import edge_f1, psnr, ssim
from mvdit.io import atomic_dir, atomic_write_text, check_output_file, write_json
from mvdit.models.autoencoder import to_uint8
from mvdit.models.vae import (
    SHIPPED_VAES,
    CausalVideoVAE,
    VAEModelConfig,
    latent_stats,
    shipped_vae_path,
    vae_preset,
)
from mvdit.results import Result
from mvdit.train import make_batch_fn, plot_losses, train_loop
from mvdit.video import contact_sheet, save_png


class VAEArchConfig(Strict):
    """A preset from mvdit.models.vae.VAE_PRESETS, with any field overridden."""

    preset: str = "cpu"
    latent_channels: int | None = None
    patch_size: int | None = None
    widths: list[int] | None = None
    down: list[str] | None = None
    blocks: int | None = None
    decoder_blocks: int | None = None
    decoder_shortcuts: bool | None = None

    def build(self) -> VAEModelConfig:
        over = {k: v for k, v in self.model_dump().items() if k != "preset" and v is not None}
        return vae_preset(self.preset, **over)


class VAELossConfig(Strict):
    l1: float = 1.0
    mse: float = 10.0  # with L1: L1 keeps edges sharp, MSE is what PSNR measures
    wavelet: float = 1.0
    wavelet_levels: int = 2
    # extra weight of the L1 and MSE terms at the original's edges (1 + edge_weight on pixels
    # within one pixel of a gradient of edge_scale or more): a small object's outline is a few
    # percent of a frame, so an unweighted pixel loss learns the background first and the outline last
    edge_weight: float = 0.0
    edge_scale: float = 0.2
    kl: float = 1e-4
    sample_posterior: bool = True  # decode a posterior sample (False: the mean, a plain AE)
    # decoder robustness: decode z + s * std(z) * noise, s uniform in [0, latent_noise] per clip and
    # std(z) the batch's per-channel spread (detached, so scaling the latent cannot shrink it). A
    # DiT's latents are never exactly the encoder's; a decoder trained only on clean latents turns
    # small errors into stray blobs (docs/vae.md, "Wider latents, a decoder that forgives")
    latent_noise: float = Field(default=0.0, ge=0.0)
    # L1 between early EfficientNet-Lite0 feature maps (the ImageNet network `mvdit eval` ships)
    # of original and reconstructed frames, upsampled to perceptual_size: an LPIPS stand-in
    perceptual: float = 0.0
    perceptual_size: int = 64
    adv: float = 0.0  # weight of the GAN term; 0 builds no discriminator
    adv_start: int = 1000  # steps of reconstruction-only warm-up before the GAN term
    # scale the GAN term by |grad L_rec| / |grad L_adv| at the decoder's last layer (VQGAN, SD's
    # VAE): the adversarial push then never swamps reconstruction, whatever the loss scales
    adv_adaptive: bool = False
    disc_lr: float = 1e-4
    disc_width: int = 32


class VAEEvalConfig(Strict):
    clips: int = 64  # held-out clips scored after training
    # held-out clips scored at every checkpoint (PSNR, edge F1, the detector's shape, ...) into
    # OUT/held_out.jsonl and OUT/held_out.png: when shape is learned, not only whether; 0: off
    track_clips: int = Field(default=64, ge=0)
    stats_clips: int = 256  # training clips the latent mean/std are measured on
    batch_size: int = 16


class VAEDataConfig(DataConfig):
    frames: int = 9  # 1 + 8k: a clip every causal ratio up to 8x in time accepts


class VAEOptimConfig(OptimConfig):  # other defaults, the same bounds
    lr: LearningRate = 3e-4
    batch_size: Count = 4
    steps: Count = 6000
    ema_decay: Decay = 0.99


class VAERunConfig(RunConfig):
    out_dir: str = "runs/vae"


class VAETrainConfig(Strict):
    data: VAEDataConfig = Field(default_factory=VAEDataConfig)
    model: VAEArchConfig = Field(default_factory=VAEArchConfig)
    loss: VAELossConfig = Field(default_factory=VAELossConfig)
    optim: VAEOptimConfig = Field(default_factory=VAEOptimConfig)
    run: VAERunConfig = Field(default_factory=VAERunConfig)
    eval: VAEEvalConfig = Field(default_factory=VAEEvalConfig)


def load_vae_config(path: str | Path | None, overrides: list[str] | None = None) -> VAETrainConfig:
    return load_config(VAETrainConfig, path, overrides)


# ---------------------------------------------------------------------------------------------
# losses


def haar2d(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One level of the orthonormal 2D Haar transform of (N, C, H, W): (LL, the 3 detail bands)."""
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    ll = (a + b + c + d) / 2
    details = torch.stack([a - b + c - d, a + b - c - d, a - b - c + d], dim=1) / 2
    return ll, details


def wavelet_loss(y: torch.Tensor, x: torch.Tensor, levels: int = 2) -> torch.Tensor:
    """L1 between the Haar detail bands of two videos (B, 3, T, H, W), plus between their frame
    differences: the high frequencies, in space and time, that a pixel L1 under-weights."""
    loss = (y.diff(dim=2) - x.diff(dim=2)).abs().mean() if y.shape[2] > 1 else y.new_zeros(())
    fy, fx = y.transpose(1, 2).flatten(0, 1), x.transpose(1, 2).flatten(0, 1)
    for _ in range(levels):
        if min(fy.shape[-2:]) < 2:
            break
        (fy, dy), (fx, dx) = haar2d(fy), haar2d(fx)
        loss = loss + (dy - dx).abs().mean()
    return loss


def edge_map(x: torch.Tensor, scale: float) -> torch.Tensor:
    """(B, 1, T, H, W) in [0, 1]: the spatial gradient magnitude of a video (B, 3, T, H, W) over
    `scale`, clipped at 1 and dilated by one pixel so both sides of an edge count."""
    f = x.transpose(1, 2).flatten(0, 1)  # (B*T, 3, H, W)
    gx = F.pad((f[..., :, 1:] - f[..., :, :-1]).abs().sum(1, keepdim=True), (0, 1, 0, 0))
    gy = F.pad((f[..., 1:, :] - f[..., :-1, :]).abs().sum(1, keepdim=True), (0, 0, 0, 1))
    e = F.max_pool2d((gx + gy) / scale, 3, stride=1, padding=1).clamp(max=1)
    return e.view(x.shape[0], x.shape[2], 1, *x.shape[-2:]).transpose(1, 2)


def latent_noise(mean: torch.Tensor, scale: float, generator: torch.Generator) -> torch.Tensor:
    """Noise for a batch of latents (B, C, T, H, W): per clip a level s ~ U[0, scale], times each
    channel's spread over the batch (detached), times N(0, 1)."""
    b, c = mean.shape[:2]
    spread = mean.detach().transpose(0, 1).reshape(c, -1).std(dim=1).view(1, c, 1, 1, 1)
    level = torch.rand(b, generator=generator).to(mean).view(b, 1, 1, 1, 1) * scale
    return level * spread * torch.randn(mean.shape, generator=generator).to(mean)


def kl_loss(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, 1)), averaged over latent elements."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).mean()


class PatchDiscriminator3D(nn.Module):
    """A 3D PatchGAN: logits for overlapping space-time patches of a video (B, 3, T, H, W)."""

    def __init__(self, width: int = 32, layers: int = 3):
        super().__init__()
        chans = [3] + [width * 2**i for i in range(layers)]
        mods: list[nn.Module] = []
        for i in range(layers):
            # halve space at every layer, keep time: clips are only a few frames long
            mods += [
                nn.Conv3d(chans[i], chans[i + 1], (3, 4, 4), stride=(1, 2, 2), padding=1),
                nn.LeakyReLU(0.2),
            ]
        mods.append(nn.Conv3d(chans[-1], 1, 3, padding=1))
        self.net = nn.Sequential(*mods)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        return self.net(video)


class PerceptualLoss(nn.Module):
    """Mean L1 distance between unit-normalised early feature maps (strides 2, 4 and 8) of a
    frozen ImageNet EfficientNet-Lite0, frame by frame: edges and corners, where pixel losses
    let a blurred outline pass. Frames are upsampled to `size` first (the network was trained
    on 224 px images; 32 px frames are below its receptive fields)."""

    TAPS = (0, 2, 4)  # block indices: 16 channels at stride 2, 24 at 4, 40 at 8

    def __init__(self, size: int = 64):
        super().__init__()
        self.size = size
        self.net = load_efficientnet_lite0()

    def features(self, v: torch.Tensor) -> list[torch.Tensor]:
        f = v.transpose(1, 2).flatten(0, 1)  # (B*T, 3, H, W) in [-1, 1]
        f = F.interpolate(f, size=(self.size, self.size), mode="bilinear", align_corners=False)
        x = ((f + 1) / 2 - FEATURE_MEAN) / FEATURE_STD
        x = F.relu6(self.net._conv_stem(x))
        out = []
        for i, block in enumerate(self.net._blocks[: max(self.TAPS) + 1]):
            x = block(x)
            if i in self.TAPS:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-6))
        return out

    def forward(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            target = self.features(x)
        return sum((a - b).abs().mean() for a, b in zip(self.features(y), target, strict=True))


def make_vae_loss(
    vae: CausalVideoVAE,
    disc: nn.Module | None,
    cfg: VAELossConfig,
    perceptual: PerceptualLoss | None = None,
):
    """The stage's loss_fn for train_loop: {"model": VAE loss[, "disc": discriminator loss]}."""

    def loss_fn(step: int, batch: dict, generator: torch.Generator):
        x = batch["video"]
        mean, logvar = vae.encode_dist(x)
        z = mean
        if cfg.sample_posterior:
            z = mean + torch.randn(mean.shape, generator=generator).to(mean) * (0.5 * logvar).exp()
        if cfg.latent_noise:
            z = z + latent_noise(mean, cfg.latent_noise, generator)
        y = vae.decode_raw(z)
        err = y - x
        if cfg.edge_weight:
            w = 1 + cfg.edge_weight * edge_map(x, cfg.edge_scale)
            l1 = (w * err.abs()).mean() / w.mean()
            mse = (w * err.pow(2)).mean() / w.mean()
        else:
            l1, mse = err.abs().mean(), err.pow(2).mean()
        wav = wavelet_loss(y, x, cfg.wavelet_levels)
        kl = kl_loss(mean, logvar)
        loss = cfg.l1 * l1 + cfg.mse * mse + cfg.wavelet * wav + cfg.kl * kl
        extra = {}
        if perceptual is not None:
            p = perceptual(y, x)
            loss = loss + cfg.perceptual * p
            extra["perceptual"] = p.item()
        metrics = extra | {
            "l1": l1.item(),
            "wavelet": wav.item(),
            "kl": kl.item(),
            "psnr": psnr(y.detach().clamp(-1, 1), x),
            "edge_f1": edge_f1(y.detach().clamp(-1, 1), x),
        }
        losses = {"model": loss}
        if disc is not None and step >= cfg.adv_start:
            g_adv = -disc(y).mean()  # hinge generator loss
            d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(y.detach())).mean()
            weight = cfg.adv
            if cfg.adv_adaptive:
                last = vae.decoder.conv_out.conv.weight
                g_rec = torch.autograd.grad(loss, last, retain_graph=True)[0].norm()
                g_gan = torch.autograd.grad(g_adv, last, retain_graph=True)[0].norm()
                weight = cfg.adv * float((g_rec / (g_gan + 1e-4)).clamp(0, 1e4))
                metrics["adv_weight"] = weight
            losses = {"model": loss + weight * g_adv, "disc": d_loss}
            metrics["g_adv"] = g_adv.item()
        return losses, metrics

    return loss_fn


# ---------------------------------------------------------------------------------------------
# data, export, evaluation


def _videos_only(items: list[dict]) -> dict:
    # captions, specs and ground truth are not needed to train an autoencoder
    return {"video": torch.stack([it["video"] for it in items])}


def clip_batches(dataset, n: int, batch_size: int) -> list[torch.Tensor]:
    """The first n clips of a dataset as batches (B, 3, T, H, W)."""
    n = min(n, len(dataset))
    return [
        _videos_only([dataset[i] for i in range(s, min(s + batch_size, n))])["video"]
        for s in range(0, n, batch_size)
    ]


@torch.no_grad()
def export_vae(
    config: VAEModelConfig,
    state: dict[str, torch.Tensor],
    stats_clips: list[torch.Tensor],
    path: Path,
) -> CausalVideoVAE:
    """Write a usable VAE directory: weights plus the latent statistics measured with them."""
    vae = CausalVideoVAE(config).eval()
    vae.load_state_dict(state)
    vae.set_latent_stats(*latent_stats(vae, stats_clips))
    with atomic_dir(path) as tmp:
        vae.save_pretrained(tmp)
    return vae


@torch.no_grad()
def evaluate_reconstruction(
    vae, dataset, n: int, batch_size: int = 16, latent_noise: float = 0.0
) -> dict:
    """Encode -> decode (posterior mean) the first n clips of a dataset, in one pass: PSNR, SSIM
    and edge F1 (mvdit.eval.metrics) averaged over clips and, when the clips are captioned `shapes` clips, "faithfulness": the
    prompt-faithfulness detector (mvdit.eval.faithfulness) on the reconstructions.

    `latent_noise` > 0 adds that much N(0, 1) noise (seeded) to the normalised latent before
    decoding: latents are unit-scale, so 0.3 is an error of 30% of the latent's spread. How much
    the scores fall measures how forgiving the decoder is of a DiT's errors.

    A DiT generates in this VAE's latent space, so what the detector no longer sees after a round
    trip (a star blurred into a blob, a rotation too small to survive) no DiT on this VAE can
    produce: those accuracies are its ceiling, attribute by attribute.
    """
    vae.eval()
    n = min(n, len(dataset))
    sums, scores = {"psnr": 0.0, "ssim": 0.0, "edge_f1": 0.0}, []
    captioned = True
    gen = torch.Generator().manual_seed(0)
    for s in range(0, n, batch_size):
        items = [dataset[i] for i in range(s, min(s + batch_size, n))]
        x = torch.stack([it["video"] for it in items])
        z = vae.encode(x)
        if latent_noise:
            z = z + latent_noise * torch.randn(z.shape, generator=gen)
        y = vae.decode(z)
        for key, metric in (("psnr", psnr), ("ssim", ssim), ("edge_f1", edge_f1)):
            sums[key] += metric(y, x) * len(x)  # each a mean over the batch's clips
        captioned = captioned and all("caption" in it and "spec" in it for it in items)
        if captioned:
            scores += [
                score_clip(v, it["caption"]) for v, it in zip(y.clamp(-1, 1), items, strict=True)
            ]
    out: dict = {
        "psnr": round(sums["psnr"] / n, 3),
        "ssim": round(sums["ssim"] / n, 4),
        "edge_f1": round(sums["edge_f1"] / n, 4),
        "clips": n,
    }
    if captioned:
        out["faithfulness"] = {
            k: v if v is None or k == "clips" else round(v, 4) for k, v in summarize(scores).items()
        }
    return out


@torch.no_grad()
def reconstruction_sheet(vae, dataset, path: str | Path, n: int = 8) -> Path:
    """A PNG of the first n clips of a dataset, each original above its reconstruction."""
    vae.eval()
    items = [dataset[i] for i in range(min(n, len(dataset)))]
    x = torch.stack([it["video"] for it in items])
    y = vae.decode(vae.encode(x)).clamp(-1, 1)
    videos, labels = [], []
    for it, a, b in zip(items, to_uint8(x), to_uint8(y), strict=True):
        videos += [a.numpy(), b.numpy()]
        labels += [it.get("caption", "original"), "reconstruction"]
    return save_png(path, contact_sheet(videos, labels))


TRACKED = ("psnr", "edge_f1", "shape", "colour", "motion")


def track_held_out(out: Path, step: int, scores: dict) -> None:
    """Append a checkpoint's held-out scores (evaluate_reconstruction) to OUT/held_out.jsonl as
    one flat row, dropping rows from this step on (a resumed run rewrites them), and redraw
    OUT/held_out.png."""
    path = out / "held_out.jsonl"
    rows = (
        [json.loads(r) for r in path.read_text().splitlines() if r.strip()] if path.exists() else []
    )
    row = {"step": step} | {k: scores[k] for k in ("psnr", "ssim", "edge_f1")}
    row |= {k: v for k, v in scores.get("faithfulness", {}).items() if k != "clips"}
    rows = [r for r in rows if r["step"] < step] + [row]
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    plot_losses(path, out / "held_out.png", prefixes=TRACKED, log=False)


def format_faithfulness(scores: dict) -> str:
    keys = ("colour", "shape", "motion", "speed", "background", "overall")
    return ", ".join(f"{k} {scores[k]:.2f}" for k in keys if scores.get(k) is not None)


def train_vae(cfg: VAETrainConfig, resume: bool = False, progress: bool = True) -> dict:
    """Train, export OUT/model (weights + latent stats) and score it on held-out clips (under
    torchrun: rank 0 scores it)."""
    par, _ = distributed.setup(cfg.run.parallel, cfg.run.device)  # under torchrun: join first
    if par.active and cfg.loss.adv > 0 and cfg.loss.adv_adaptive:
        raise MvditError(
            "loss.adv_adaptive differentiates by the decoder's last weight, which FSDP2 and "
            "replicate do not expose: set loss.adv_adaptive = false under torchrun"
        )
    torch.manual_seed(cfg.run.seed)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    arch = cfg.model.build()
    vae = CausalVideoVAE(arch)
    vae.check_clip(cfg.data.frames, cfg.data.height, cfg.data.width)
    modules: dict[str, nn.Module] = {"model": vae}
    frozen = {"perceptual": PerceptualLoss(cfg.loss.perceptual_size)} if cfg.loss.perceptual else {}
    if cfg.loss.adv > 0:
        modules["disc"] = PatchDiscriminator3D(cfg.loss.disc_width)
    train_set = build_video_dataset(cfg.data, "train")
    batch_fn = make_batch_fn(
        train_set, cfg.optim.batch_size, cfg.optim.grad_accum, cfg.run.seed, collate=_videos_only
    )
    stats_clips = clip_batches(train_set, cfg.eval.stats_clips, cfg.eval.batch_size)
    out = Path(cfg.run.out_dir)
    val_set = build_video_dataset(cfg.data, "val")

    def on_export(path: Path, state: dict[str, torch.Tensor], step: int) -> None:
        vae = export_vae(arch, state, stats_clips, path)
        if cfg.eval.track_clips:
            scores = evaluate_reconstruction(
                vae, val_set, cfg.eval.track_clips, cfg.eval.batch_size
            )
            track_held_out(out, step, scores)

    summary = train_loop(
        modules,
        make_vae_loss(vae, modules.get("disc"), cfg.loss, frozen.get("perceptual")),
        batch_fn,
        cfg.optim,
        cfg.run,
        out,
        resume=resume,
        config_dump=cfg.model_dump(mode="json"),
        optim_overrides={"disc": {"lr": cfg.loss.disc_lr, "betas": (0.5, 0.9)}},
        on_export=on_export,
        progress=progress,
        frozen=frozen,
    )
    if not distributed.is_main():
        return summary
    trained = CausalVideoVAE.from_pretrained(out / "model")
    summary["eval"] = evaluate_reconstruction(trained, val_set, cfg.eval.clips, cfg.eval.batch_size)
    write_json(out / "eval.json", summary["eval"])
    reconstruction_sheet(trained, val_set, out / "reconstructions.png")
    return summary


def train_summary(summary: dict, out: str | Path) -> str:
    """What `mvdit train-vae` prints: steps, time, the held-out scores, where things are."""
    out, ev = Path(out), summary["eval"]
    lines = [
        f"trained {summary['steps']} steps in {summary['seconds']:.0f}s",
        f"held-out reconstruction ({ev['clips']} clips): PSNR {ev['psnr']:.2f} dB, SSIM "
        f"{ev['ssim']:.4f}, edge F1 {ev['edge_f1']:.3f}",
    ]
    if "faithfulness" in ev:
        lines.append(
            f"prompt faithfulness of the reconstructions: {format_faithfulness(ev['faithfulness'])}"
        )
    lines.append(
        f"model: {out / 'model'}   loss curve: {out / 'loss.png'}   log: {out / 'metrics.jsonl'}"
    )
    return "\n".join(lines)


def eval_vae(
    model: str, config: str | Path | None = None, overrides: list[str] | None = None, *,
    clips: int = 64, latent_noise: float = 0.0, sheet: str | Path | None = None,
    json_out: str | Path | None = None,
) -> Result:  # fmt: skip
    """`mvdit eval-vae`: reconstruction PSNR / SSIM / edge F1 of an autoencoder on held-out clips
    picked by the data section of a VAE config, optionally with `latent_noise` added to the
    unit-scale latent (a DiT's error)."""
    if clips < 1:
        raise MvditError(f"--clips must be positive, got {clips}")
    if latent_noise < 0:
        raise MvditError(f"--latent-noise must be 0 or more, got {latent_noise}")
    for path, flag in ((sheet, "--sheet"), (json_out, "--json")):
        if path is not None:
            check_output_file(path, flag)
    path = shipped_vae_path(model) if model in SHIPPED_VAES else Path(model)
    if not path.is_dir():
        raise MvditError(f"autoencoder directory {path} does not exist")
    data = load_vae_config(config, overrides).data
    vae = load_autoencoder(path)
    vae.check_clip(data.frames, data.height, data.width)
    scores = evaluate_reconstruction(
        vae, build_video_dataset(data, "val"), clips, latent_noise=latent_noise
    )
    clip = f"{data.frames}x{data.height}x{data.width}"
    record = {"model": str(path), "config": str(config) if config else None, "clip": clip,
              "latent_noise": latent_noise, **scores}  # fmt: skip
    if sheet is not None:
        reconstruction_sheet(vae, build_video_dataset(data, "val"), sheet)
    if json_out is not None:
        write_json(json_out, record)

    def render(r: dict) -> str:
        noise = f" (latent noise {latent_noise:g})" if latent_noise else ""
        lines = [f"{path}: {r['clips']} held-out {clip} clips{noise}: PSNR {r['psnr']:.2f} dB, "
                 f"SSIM {r['ssim']:.4f}, edge F1 {r['edge_f1']:.3f}"]  # fmt: skip
        if "faithfulness" in r:
            lines.append("prompt faithfulness of the reconstructions (the ceiling of a DiT on this "
                         "VAE): " + format_faithfulness(r["faithfulness"]))  # fmt: skip
        return "\n".join(lines + [f"wrote {p}" for p in (sheet, json_out) if p is not None])

    return Result(record, render, None)

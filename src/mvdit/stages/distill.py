"""Stage: adversarial step distillation (`mvdit synth`, `mvdit distill CONFIG`).

The student (initialised from any DiT pipeline: the pruned, KD-recovered model or the teacher
itself) learns to sample in a fixed schedule of N steps (default 4) without guidance. A training
sample:

1. picks one of the N schedule times t_i, and a clean latent x0: a real clip's, or (with
   probability `synthetic_fraction` per item) one the teacher generated (`mvdit synth`);
2. forms x_t on the flow path, or, with probability `rollout` (and i > 0), from the student's own
   Euler step out of t_{i-1}, which is what sampling feeds it;
3. predicts x0_hat = x_t - t v_S(x_t, t, text);
4. is trained with
       L_G = adv * L_adv(D(x0_hat re-noised to t')) + regression * L_reg,
   L_reg = |v_S - v_T^CFG|^2 (the teacher's guided velocity at the same x_t; "teacher") or
   |v_S - (noise - x0)|^2 ("flow").

The discriminator D is the first `disc.blocks` blocks of the teacher (frozen, or with the last
`disc.trainable_blocks` trained), conditioned on the text and on a re-noising time t' (logit-
normal): real x0 and x0_hat are re-noised to the same t' with the same noise before it sees them,
and the generator's gradient flows through the frozen blocks. MLP heads on the tokens of
`disc.feature_blocks`, pooled over tokens or per token, give the logits. Hinge loss by default
(`disc.loss = "non_saturating"` as an option), an optional R1 penalty on the re-noised real
latents, and optionally real latents with a wrong caption (another item's) as extra fakes.

Everything runs through the one training loop: the student is "model", the discriminator "disc"
(its own AdamW and lr), so a non-finite step of either is skipped and counted, every term is a
curve in loss.png, and the same config and seed give the same run. At every checkpoint the EMA
student is exported as a pipeline whose sampler is the fixed schedule without guidance, and a
grid of its clips at fixed prompts and seeds is written to OUT/samples/, and players.png draws
the discriminator's accuracy on real and generated latents and both players' gradient norms.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from mvdit import MvditError, distributed
from mvdit.build import build_dataset
from mvdit.checkpoint import latest_checkpoint
from mvdit.config import (
    Count,
    CountOrZero,
    DataConfig,
    Decay,
    FlowConfig,
    LearningRate,
    OptimConfig,
    RunConfig,
    Strict,
    load_config,
    required,
)
from mvdit.data.cache import LatentCacheDataset, build_latent_cache
from mvdit.eval.evaluate import read_prompts
from mvdit.flow import interpolate, sample_timesteps
from mvdit.io import load_state_strict, write_json, write_record
from mvdit.limits import bounded
from mvdit.models.dit import UnitMask
from mvdit.models.interface import PrunableDiT
from mvdit.models.text import same_text_encoder
from mvdit.pipeline import Pipeline, SamplerConfig
from mvdit.results import Result
from mvdit.stages.teacher import flow_inputs
from mvdit.train import make_batch_fn, plot_losses, train_loop
from mvdit.video import contact_sheet, save_png


class DistillSection(Strict):
    student: str  # pipeline directory the student starts from
    teacher: str  # the teacher pipeline: regression target and discriminator backbone
    steps: int = Field(default=4, ge=1)  # N: the student's fixed schedule
    schedule: list[float] | None = None  # explicit N + 1 times; default: the teacher's shift
    synthetic: str | None = None  # latent cache written by `mvdit synth`
    synthetic_fraction: float = Field(default=0.5, ge=0, le=1)  # share of a batch from it
    rollout: float = Field(default=0.25, ge=0, le=1)  # x_t from the student's previous step
    adv: float = 1.0  # weight of the adversarial term
    regression: Literal["teacher", "flow", "none"] = "teacher"
    regression_weight: float = 1.0
    teacher_guidance: float | None = None  # CFG of the regression target (None: the teacher's)
    sample_prompts: list[str] = Field(
        default_factory=lambda: [
            "a red circle moves to the left on a black background",
            "a green square moves up on a gray background",
            "a blue triangle moves to the right on a black background",
            "a yellow star moves down on a gray background",
        ]
    )


class DiscSection(Strict):
    blocks: int = Field(default=2, ge=1)  # the teacher's first blocks as feature extractor
    trainable_blocks: int = Field(default=0, ge=0)  # the last of those trained with the heads
    feature_blocks: list[int] | None = None  # backbone blocks with a head (None: the last)
    head: Literal["pooled", "token"] = "pooled"
    hidden: int = Field(default=128, ge=1)
    loss: Literal["hinge", "non_saturating"] = "hinge"
    r1: float = Field(default=0.0, ge=0)  # R1 penalty weight on re-noised real latents
    wrong_caption: float = Field(default=0.0, ge=0)  # weight of real + wrong caption as fakes
    t_mean: float = 0.0  # logit-normal re-noising time t'
    t_std: float = 1.0
    lr: float | None = None  # the discriminator's lr (None: optim.lr)


class DistillOptimConfig(OptimConfig):  # other defaults, the same bounds
    lr: LearningRate = 1e-4
    warmup_steps: CountOrZero = 0
    steps: Count = 1000
    batch_size: Count = 16
    ema_decay: Decay = 0.99


class DistillRunConfig(RunConfig):
    out_dir: str = "runs/distill"
    checkpoint_every: int = 100


class DistillFlowConfig(FlowConfig):
    caption_dropout: float = 0.0  # the student samples without guidance


class DistillConfig(Strict):
    distill: DistillSection
    disc: DiscSection = Field(default_factory=DiscSection)
    data: DataConfig = Field(default_factory=DataConfig)
    flow: DistillFlowConfig = Field(default_factory=DistillFlowConfig)
    optim: DistillOptimConfig = Field(default_factory=DistillOptimConfig)
    run: DistillRunConfig = Field(default_factory=DistillRunConfig)


def load_distill_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    changes: Mapping[str, Any] | None = None,
) -> DistillConfig:
    return load_config(DistillConfig, path, overrides, changes)


# ---------------------------------------------------------------------------------------------
# the discriminator


class Discriminator(nn.Module):
    """The teacher's first blocks (a sliced copy: embeddings and blocks, no output layer) and an
    MLP head per feature block; logits per clip ("pooled") or per token ("token")."""

    def __init__(self, teacher: PrunableDiT, cfg: DiscSection):
        super().__init__()
        n = len(teacher.blocks)
        if cfg.blocks > n:
            raise MvditError(f"disc.blocks = {cfg.blocks} but the teacher has {n} blocks")
        if cfg.trainable_blocks > cfg.blocks:
            raise MvditError(
                f"disc.trainable_blocks = {cfg.trainable_blocks} exceeds disc.blocks = {cfg.blocks}"
            )
        feats = cfg.feature_blocks if cfg.feature_blocks is not None else [cfg.blocks - 1]
        if not feats or any(not 0 <= b < cfg.blocks for b in feats):
            raise MvditError(f"disc.feature_blocks must lie in 0..{cfg.blocks - 1}, got {feats}")
        mask = UnitMask.full(teacher.config)
        mask.blocks[cfg.blocks :] = 0
        # its own copy of the weights (slice copies): training it never touches the teacher
        self.backbone = teacher.slice(mask) if cfg.blocks < n else copy.deepcopy(teacher)
        self.backbone.requires_grad_(False)
        if cfg.trainable_blocks:
            for blk in list(self.backbone.blocks)[-cfg.trainable_blocks :]:
                blk.requires_grad_(True)
        self.feature_blocks = sorted(set(feats))
        self.per_token = cfg.head == "token"
        d = teacher.config.hidden_size
        self.heads = nn.ModuleDict(
            {
                str(b): nn.Sequential(nn.Linear(d, cfg.hidden), nn.SiLU(), nn.Linear(cfg.hidden, 1))
                for b in self.feature_blocks
            }
        )

    def forward(self, x: torch.Tensor, t: torch.Tensor, text, text_mask) -> list[torch.Tensor]:
        """One logit tensor per head: (B,) pooled, or (B, N) per token."""
        f = self.backbone.features(
            x, t, text, text_mask, blocks=self.feature_blocks, stop_after=len(self.backbone.blocks)
        )
        out = []
        for b in self.feature_blocks:
            h = f.tokens[b]
            logits = self.heads[str(b)](h if self.per_token else h.mean(1)).squeeze(-1)
            out.append(logits)
        return out


def _d_loss(logits: list[torch.Tensor], real: bool, kind: str) -> torch.Tensor:
    sign = 1.0 if real else -1.0
    if kind == "hinge":
        return torch.stack([F.relu(1 - sign * z).mean() for z in logits]).mean()
    return torch.stack([F.softplus(-sign * z).mean() for z in logits]).mean()


def _g_loss(logits: list[torch.Tensor], kind: str) -> torch.Tensor:
    if kind == "hinge":
        return torch.stack([-z.mean() for z in logits]).mean()
    return torch.stack([F.softplus(-z).mean() for z in logits]).mean()


# ---------------------------------------------------------------------------------------------
# the losses


def student_schedule(teacher: Pipeline, cfg: DistillSection) -> list[float]:
    """The N + 1 times of the student: explicit, or the teacher's (Pipeline.distilled_schedule)."""
    if cfg.schedule is not None:
        if len(cfg.schedule) != cfg.steps + 1:
            raise MvditError(
                f"distill.schedule has {len(cfg.schedule)} times; {cfg.steps} steps need {cfg.steps + 1}"
            )
        return SamplerConfig(schedule=cfg.schedule, guidance=1.0).schedule
    return teacher.distilled_schedule(cfg.steps)


def make_distill_loss(
    student: PrunableDiT,
    disc: Discriminator,
    teacher: PrunableDiT,
    pipe: Pipeline,
    schedule: list[float],
    cfg: DistillConfig,
    guidance: float,
):
    ds, dc = cfg.distill, cfg.disc
    inputs = flow_inputs(pipe.vae, pipe.text_encoder, cfg.flow, 1.0)
    sched = torch.tensor(schedule)
    null_h, null_m = pipe.text_encoder.encode_cached([""])

    def clean(batch: dict, gen: torch.Generator):
        x0, ctx, mask, _, noise = inputs(batch, gen)
        if "synth.latent" in batch:
            sb = {k.removeprefix("synth."): v for k, v in batch.items() if k.startswith("synth.")}
            s0, sctx, smask, _, snoise = inputs(sb, gen)
            if sctx.shape[1:] != ctx.shape[1:]:
                raise MvditError(
                    f"the synthetic cache's text states {tuple(sctx.shape[1:])} differ from the "
                    f"text encoder's {tuple(ctx.shape[1:])}: rebuild it with mvdit synth"
                )
            x0, ctx, mask, noise = (
                torch.cat(p) for p in ((x0, s0), (ctx, sctx), (mask, smask), (noise, snoise))
            )
        return x0, ctx, mask, noise

    def teacher_velocity(x, t, ctx, mask):
        with torch.no_grad():
            if guidance == 1.0:
                return teacher(x, t, ctx, mask)
            n = x.shape[0]
            v = teacher(
                torch.cat([x, x]),
                torch.cat([t, t]),
                torch.cat([ctx, null_h.to(ctx).expand(n, -1, -1)]),
                torch.cat([mask, null_m.to(mask).expand(n, -1)]),
            )
            return v[n:] + guidance * (v[:n] - v[n:])

    def loss_fn(step: int, batch: dict, gen: torch.Generator):
        x0, ctx, mask, noise = clean(batch, gen)
        b = x0.shape[0]
        view = (b, *([1] * (x0.dim() - 1)))
        i = torch.randint(0, len(schedule) - 1, (b,), generator=gen)
        t = sched[i].to(x0)
        x_t = interpolate(x0, noise, t)
        roll = (torch.rand(b, generator=gen) < ds.rollout) & (i > 0)
        if ds.rollout > 0:  # not roll.any(): every rank must run the same forwards under FSDP
            t_prev = sched[(i - 1).clamp_min(0)].to(x0)
            x_prev = interpolate(x0, noise, t_prev)
            with torch.no_grad():
                v_prev = student(x_prev, t_prev, ctx, mask)
            stepped = x_prev + (t - t_prev).view(view) * v_prev
            x_t = torch.where(roll.view(view).to(x0.device), stepped, x_t)
        v = student(x_t, t, ctx, mask)
        x0_hat = x_t - t.view(view) * v

        if ds.regression == "teacher":
            l_reg = (v - teacher_velocity(x_t, t, ctx, mask)).pow(2).mean()
        elif ds.regression == "flow":
            l_reg = (v - (noise - x0)).pow(2).mean()
        else:
            l_reg = torch.zeros((), device=x0.device)

        # re-noise real and generated clean latents to the same t' with the same noise
        tr = sample_timesteps(b, gen, dc.t_mean, dc.t_std).to(x0)
        n2 = torch.randn(x0.shape, generator=gen).to(x0)
        fake_in = interpolate(x0_hat, n2, tr)
        real_in = interpolate(x0, n2, tr).requires_grad_(dc.r1 > 0)
        d_fake = disc(fake_in, tr, ctx, mask)  # one forward serves both players
        d_real = disc(real_in, tr, ctx, mask)
        l_adv = _g_loss(d_fake, dc.loss)
        gen_loss = ds.adv * l_adv + ds.regression_weight * l_reg

        # the same logits train the discriminator: the loop routes "disc" only to its own
        # parameters, so this term never moves the student
        l_d = _d_loss(d_real, True, dc.loss) + _d_loss(d_fake, False, dc.loss)
        if dc.wrong_caption > 0 and b > 1:
            wrong = disc(real_in.detach(), tr, ctx.roll(1, 0), mask.roll(1, 0))
            l_d = l_d + dc.wrong_caption * _d_loss(wrong, False, dc.loss)
        l_r1 = torch.zeros((), device=x0.device)
        if dc.r1 > 0:
            g = torch.autograd.grad(sum(z.sum() for z in d_real), real_in, create_graph=True)[0]
            l_r1 = g.pow(2).flatten(1).sum(1).mean()
            l_d = l_d + 0.5 * dc.r1 * l_r1

        acc_real = torch.stack([(z.detach() > 0).float().mean() for z in d_real]).mean()
        acc_fake = torch.stack([(z.detach() < 0).float().mean() for z in d_fake]).mean()
        metrics = {
            "loss_term_adv": float(l_adv.detach()),
            "loss_term_regression": float(l_reg.detach()),
            **({"loss_term_r1": float(l_r1.detach())} if dc.r1 > 0 else {}),
            "disc_acc_real": float(acc_real),
            "disc_acc_fake": float(acc_fake),
            "rollout_share": float(roll.float().mean()),
        }
        return {"model": gen_loss, "disc": l_d}, metrics

    return loss_fn


# ---------------------------------------------------------------------------------------------
# data


def mixed_batch_fn(cfg: DistillConfig, pipe: Pipeline):
    """Batches of real clips and, when a synthetic cache is given, teacher samples (keys
    prefixed "synth."), each a pure function of the step."""
    ds = cfg.distill
    bs = cfg.optim.batch_size
    n_synth = round(bs * ds.synthetic_fraction) if ds.synthetic else 0
    real_fn = None
    if bs - n_synth > 0:
        real = build_dataset(cfg.data, "train", pipe.vae, pipe.text_encoder)
        real_fn = make_batch_fn(real, bs - n_synth, cfg.optim.grad_accum, cfg.run.seed)
    synth_fn = None
    if n_synth:
        synth = LatentCacheDataset(ds.synthetic, pipe.vae, pipe.text_encoder)
        synth_fn = make_batch_fn(synth, n_synth, cfg.optim.grad_accum, cfg.run.seed + 1)

    def batch_fn(step: int, micro: int) -> dict:
        out = real_fn(step, micro) if real_fn is not None else {}
        if synth_fn is not None:
            sb = synth_fn(step, micro)
            if real_fn is None:
                return sb
            out |= {f"synth.{k}": v for k, v in sb.items()}
        return out

    return batch_fn


# ---------------------------------------------------------------------------------------------
# the run


def train_distill(cfg: DistillConfig, resume: bool = False, progress: bool = True) -> dict:
    """Distil the teacher into an N-step, guidance-free student; export it to OUT/model."""
    par, _ = distributed.setup(cfg.run.parallel, cfg.run.device)  # under torchrun: join first
    if par.active and cfg.disc.r1 > 0:
        raise MvditError(
            "disc.r1 > 0 differentiates the discriminator twice, which FSDP2 and replicate do not "
            "support: set disc.r1 = 0 under torchrun, or train in one process"
        )
    ds = cfg.distill
    teacher_pipe = Pipeline.from_pretrained(ds.teacher)
    # one text encoder: the teacher and the discriminator read the student's text states
    pipe = Pipeline.from_pretrained(ds.student, text_encoder=teacher_pipe.text_encoder)
    if not same_text_encoder(pipe.config.text, teacher_pipe.config.text):
        raise MvditError(
            f"the teacher {ds.teacher} and the student {ds.student} use different text encoders "
            f"({teacher_pipe.config.text.model_dump()} vs {pipe.config.text.model_dump()}); "
            "distil with the teacher's text encoder"
        )
    student, teacher = pipe.dit, teacher_pipe.dit
    if teacher.config.in_channels != student.config.in_channels:
        raise MvditError(
            f"the teacher {ds.teacher} and the student {ds.student} read different latents"
        )
    d = cfg.data
    pipe.vae.check_clip(d.frames, d.height, d.width)
    schedule = student_schedule(teacher_pipe, ds)
    guidance = (
        ds.teacher_guidance
        if ds.teacher_guidance is not None
        else teacher_pipe.config.sampler.guidance
    )
    with torch.random.fork_rng():  # the heads' initialisation is a function of the run's seed
        torch.manual_seed(cfg.run.seed)
        disc = Discriminator(teacher, cfg.disc)
    frozen_backbone = [p for p in disc.backbone.parameters() if not p.requires_grad]
    out_dir = Path(cfg.run.out_dir)
    sampler = SamplerConfig(schedule=schedule, guidance=1.0)
    student_config = pipe.config.model_copy(update={"sampler": sampler})

    # a copy of the module holds the exported weights (the student itself stays in training mode
    # and, under torchrun, sharded or replicated): saved, then sampled without reading them back
    template = copy.deepcopy(student).eval()

    def export(path: Path, state: dict[str, torch.Tensor], _step: int) -> None:
        load_state_strict(template, state, "the student's EMA", assign=True)
        exported = pipe.replace(dit=template, config=student_config)
        exported.save_pretrained(path)
        sample_grid(exported, out_dir, ds.sample_prompts)
        # the two players beside loss.png: discriminator accuracy, gradient norms, rollout share
        plot_losses(out_dir / "metrics.jsonl", out_dir / "players.png", ("disc_acc", "grad_norm"))

    dump = cfg.model_dump(mode="json") | {"schedule": schedule, "teacher_guidance": guidance}
    summary = train_loop(
        {"model": student, "disc": disc},
        make_distill_loss(student, disc, teacher, pipe, schedule, cfg, guidance),
        mixed_batch_fn(cfg, pipe),
        cfg.optim,
        cfg.run,
        out_dir,
        resume=resume,
        config_dump=dump,
        optim_overrides={"disc": {"lr": cfg.disc.lr}} if cfg.disc.lr is not None else None,
        on_export=export,
        progress=progress,
        frozen={"teacher": teacher, "vae": pipe.vae, "text": pipe.text_encoder},
    )
    summary["schedule"] = schedule
    summary["frozen_disc_params"] = sum(p.numel() for p in frozen_backbone)
    return summary


def sample_grid(pipe: Pipeline, out_dir: Path, prompts: list[str]) -> Path:
    """Clips of the exported student at fixed prompts and seed 0, one row per prompt, written as
    OUT/samples/step_XXXXXXX.png (the latest checkpoint's step) and OUT/samples/latest.png."""
    g = pipe.generate(prompts, seed=0)
    sheet = contact_sheet(list(g.videos.numpy()), prompts)
    ckpt = latest_checkpoint(out_dir)
    samples = out_dir / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    name = ckpt.name if ckpt is not None else "final"
    save_png(samples / f"{name}.png", sheet)
    save_png(samples / "latest.png", sheet)
    return samples / f"{name}.png"


# ---------------------------------------------------------------------------------------------
# teacher samples (`mvdit synth`)


class TeacherSamples(Dataset):
    """Items {"latent", "caption", "path"}: the teacher's sample of every prompt under each seed
    (40 steps with CFG by default), generated `batch` at a time with the seed of their block, so
    item i is the same whichever shard asks for it first (a resumed build writes the same)."""

    def __init__(
        self,
        pipe: Pipeline,
        prompts: list[str],
        seeds: int,
        steps: int,
        guidance: float,
        batch: int = 8,
        seed: int = 0,
        source: str = "",
    ):
        if not prompts:
            raise MvditError("no prompts to sample: the prompt file is empty")
        self.pipe, self.prompts, self.seeds = pipe, prompts, seeds
        self.steps, self.guidance, self.batch, self.seed = steps, guidance, batch, seed
        self.source = source
        self.items = [(p, k) for k in range(seeds) for p in prompts]
        self._block: tuple[int, torch.Tensor] | None = None
        self.sampling = pipe.sampling(steps, guidance)
        self.failed: list[dict] = []  # samples that went NaN/inf (kept, listed, reported)

    def summary(self) -> dict:
        return {
            "teacher": self.source,
            "prompts_sha": hashlib.sha256("\n".join(self.prompts).encode()).hexdigest()[:16],
            "seeds": self.seeds,
            "base_seed": self.seed,
            "block": self.batch,
            "sampler": self.sampling.summary(),
        }

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        blk = i // self.batch
        if self._block is None or self._block[0] != blk:
            chunk = self.items[blk * self.batch : (blk + 1) * self.batch]
            g = self.pipe.generate(
                [p for p, _ in chunk],
                self.steps,
                self.guidance,
                seed=(self.seed + blk) % 2**64,
                decode=False,
            )
            self.failed += [
                {"item": blk * self.batch + k, "prompt": chunk[k][0], "why": g.failure(k)}
                for k in g.failed
            ]
            self._block = (blk, g.latents)
        prompt, k = self.items[i]
        return {
            "latent": self._block[1][i % self.batch],
            "caption": prompt,
            "path": f"seed{k}/{prompt}",
        }


class SynthConfig(Strict):
    """[synth]: the teacher's samples of a prompt list as a latent cache (`mvdit synth`)."""

    model: str | None = Field(default=None, description="teacher pipeline directory")
    prompts: str | None = Field(default=None, description="prompt file, one per line")
    out: str | None = Field(default=None, description="latent cache directory (resumable)")
    seeds: int = Field(default=4, ge=1, description="samples per prompt")
    steps: int = bounded("steps", 40, description="teacher sampling steps")
    guidance: float | None = Field(
        default=None, description="classifier-free guidance scale (default: the teacher's)"
    )
    batch: int = bounded("batch", 8, description="clips sampled at once")
    seed: int = bounded("seed", 0, description="noise seed of the first batch")


class SynthSections(Strict):
    synth: SynthConfig = Field(default_factory=SynthConfig)


def run_synth(cfg: SynthConfig, *, progress: bool = True) -> Result:
    """The teacher's samples of every prompt of PROMPTS_FILE under `seeds` seeds, as a latent
    cache (data.kind = "cache", or distill.synthetic) at OUT; resumable shard by shard. Samples
    that went NaN/inf are kept, listed in OUT/failed.json and reported at the end (MvditError)."""
    model_dir, prompts_file, out = (
        required(v, f"synth.{k}") for k, v in (("model", cfg.model), ("prompts", cfg.prompts),
                                                 ("out", cfg.out))
    )  # fmt: skip
    batch = cfg.batch
    # the cache refuses a directory that is not a latent cache (data/cache.py), so a foreign
    # directory, or the teacher's own, is never written into
    pipe = Pipeline.from_pretrained(model_dir)
    prompts = [r["prompt"] for r in read_prompts(prompts_file)]
    ds = TeacherSamples(pipe, prompts, cfg.seeds, cfg.steps, cfg.guidance, batch, cfg.seed,
                        str(model_dir))  # fmt: skip
    path = build_latent_cache(
        ds,
        pipe.vae,
        pipe.text_encoder,
        out,
        shard_size=batch * 8,
        batch_size=batch,
        progress=progress,
    )
    write_record(out, "synth", teacher=str(model_dir), prompts=str(prompts_file))
    if ds.failed:
        write_json(Path(out) / "failed.json", ds.failed)
        raise MvditError(
            f"{len(ds.failed)} of {len(ds)} teacher samples are NaN/inf ({ds.failed[0]['why']}); "
            f"listed in {Path(out) / 'failed.json'}: training skips the steps whose batch holds one"
        )
    return Result(
        ds.summary(),
        lambda r: f"wrote {path} (index.json records the prompts, seeds and sampler)",
        Path(path),
    )

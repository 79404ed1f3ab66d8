"""Stage: recover a pruned DiT by knowledge distillation from the model it was pruned from
(`mvdit kd CONFIG`).

The student is a pipeline written by `mvdit prune`; the teacher (frozen, evaluated under no_grad
once per micro-batch) is the pipeline it was pruned from. At the same x_t, t and caption:

    L_task = |v_S - (noise - x0)|^2                  (flow matching on the training data)
    L_out  = |v_S - v_T|^2                           (output KD)
    L_feat = mean over aligned blocks |P(h_S,i) - h_T,source(i)|^2   (feature KD)
    L_kd   = output * L_out + features * L_feat

Each student block is aligned with the teacher block it was cut from (its config's `source`);
P is a learned linear projector only where the widths differ (never, after mvdit prune, which
keeps the hidden size). With `timestep_aware` the terms are combined the SnapGen way,

    L = alpha_t * task * L_task + (1 - alpha_t) * (|L_task| / |L_kd|) * L_kd,

alpha_t the logit-normal density of t (mean `alpha_mean`, std `alpha_std`) scaled to peak at 1,
and the magnitude ratio detached: mid-trajectory steps lean on the data, the ends on the teacher,
and the KD term is brought to the task loss's scale whatever the feature norms are.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import nn

from mvdit import MvditError, distributed
from mvdit.build import build_dataset
from mvdit.config import (
    Count,
    DataConfig,
    FlowConfig,
    LearningRate,
    OptimConfig,
    RunConfig,
    Strict,
    load_config,
)
from mvdit.flow import interpolate
from mvdit.io import read_json
from mvdit.models.interface import PrunableDiT
from mvdit.pipeline import Pipeline, load_dit
from mvdit.stages.teacher import flow_inputs, train_shift
from mvdit.train import make_batch_fn, train_loop


class KDSection(Strict):
    student: str  # pipeline directory written by `mvdit prune`
    teacher: str | None = None  # the model it was pruned from (default: the student's prune.json)
    task: float = 1.0  # weight of the flow-matching loss
    output: float = 1.0  # weight of the output KD term
    features: float = 1.0  # weight of the feature KD term (0: none)
    feature_blocks: list[int] | None = None  # student blocks aligned with the teacher (None: all)
    timestep_aware: bool = True
    alpha_mean: float = 0.0
    alpha_std: float = 1.0


class KDRunConfig(RunConfig):
    out_dir: str = "runs/kd"


class KDOptimConfig(OptimConfig):  # other defaults, the same bounds
    lr: LearningRate = 3e-4
    steps: Count = 1000
    batch_size: Count = 32


class KDConfig(Strict):
    kd: KDSection
    data: DataConfig = Field(default_factory=DataConfig)
    flow: FlowConfig = Field(default_factory=FlowConfig)
    optim: KDOptimConfig = Field(default_factory=KDOptimConfig)
    run: KDRunConfig = Field(default_factory=KDRunConfig)


def load_kd_config(
    path: str | Path | None,
    overrides: list[str] | None = None,
    changes: Mapping[str, Any] | None = None,
) -> KDConfig:
    return load_config(KDConfig, path, overrides, changes)


def alpha_t(t: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """The logit-normal density of t, divided by its maximum over (0, 1): in (0, 1]."""

    def density(x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(1e-6, 1 - 1e-6)
        z = (torch.log(x / (1 - x)) - mean) / std
        return torch.exp(-0.5 * z * z) / (x * (1 - x))

    grid = torch.linspace(1e-4, 1 - 1e-4, 20001, dtype=torch.float64)
    peak = float(density(grid).max())
    return (density(t.double()) / peak).to(t.dtype)


class KDStudent(nn.Module):
    """The trained module: the student DiT and the projectors of its aligned features."""

    def __init__(self, student: PrunableDiT, teacher_width: int, blocks: list[int]):
        super().__init__()
        self.student = student
        d = student.config.hidden_size
        self.blocks = blocks
        self.proj = nn.ModuleDict(
            {str(i): nn.Linear(d, teacher_width) for i in blocks} if d != teacher_width else {}
        )

    def project(self, i: int, h: torch.Tensor) -> torch.Tensor:
        return self.proj[str(i)](h) if str(i) in self.proj else h


def resolve_teacher(kd: KDSection) -> Path:
    if kd.teacher is not None:
        return Path(kd.teacher)
    report = Path(kd.student) / "prune.json"
    if not report.is_file():
        raise MvditError(
            f"{kd.student} has no prune.json naming its teacher: set kd.teacher to the model it was pruned from"
        )
    return Path(read_json(report)["teacher"])


def aligned_blocks(
    student: PrunableDiT, teacher: PrunableDiT, chosen: list[int] | None
) -> list[int]:
    n = len(student.blocks)
    blocks = list(range(n)) if chosen is None else [i % n for i in chosen]
    if chosen is not None and any(not -n <= i < n for i in chosen):
        raise MvditError(f"kd.feature_blocks must be in -{n}..{n - 1}, got {chosen}")
    for i in blocks:
        src = student.config.blocks[i].source
        if src is None or not 0 <= src < len(teacher.blocks):
            raise MvditError(
                f"student block {i} records no teacher block (source {src}); "
                "set kd.features = 0 or give a student written by mvdit prune"
            )
    return blocks


def make_kd_loss(wrapped: KDStudent, teacher: PrunableDiT, pipe: Pipeline, cfg: KDConfig):
    kd = cfg.kd
    student = wrapped.student
    inputs = flow_inputs(
        pipe.vae, pipe.text_encoder, cfg.flow, train_shift(student, pipe.vae, cfg.data, cfg.flow)
    )
    s_blocks = wrapped.blocks if kd.features else []
    t_blocks = sorted({student.config.blocks[i].source for i in s_blocks})

    def loss_fn(step: int, batch: dict, gen: torch.Generator):
        x0, ctx, mask, t, noise = inputs(batch, gen)
        x_t = interpolate(x0, noise, t)
        with torch.no_grad():
            tf = teacher.features(x_t, t, ctx, mask, blocks=t_blocks)
        sf = student.features(x_t, t, ctx, mask, blocks=s_blocks)
        per = lambda a, b: (a - b).pow(2).flatten(1).mean(1)  # noqa: E731
        l_task = per(sf.velocity, noise - x0)
        l_out = per(sf.velocity, tf.velocity)
        l_feat = torch.zeros_like(l_out)
        for i in s_blocks:
            src = student.config.blocks[i].source
            l_feat = l_feat + per(wrapped.project(i, sf.tokens[i]), tf.tokens[src]) / len(s_blocks)
        l_kd = kd.output * l_out + kd.features * l_feat
        if kd.timestep_aware:
            a = alpha_t(t, kd.alpha_mean, kd.alpha_std)
            ratio = (l_task.mean() / l_kd.mean().clamp_min(1e-12)).detach()
            loss = (a * kd.task * l_task + (1 - a) * ratio * l_kd).mean()
        else:
            loss = (kd.task * l_task + l_kd).mean()
        # named loss_* so the run's loss.png draws a curve per term beside the total
        metrics = {
            "loss_term_task": float(l_task.detach().mean()),
            "loss_term_kd_out": float(l_out.detach().mean()),
            "loss_term_kd_feat": float(l_feat.detach().mean()),
        }
        return {"model": loss}, metrics

    return loss_fn


def train_kd(cfg: KDConfig, resume: bool = False, progress: bool = True) -> dict:
    """Distil the teacher into the pruned student; export a pipeline to OUT/model."""
    distributed.setup(cfg.run.parallel, cfg.run.device)  # under torchrun: join the group first
    student_pipe = Pipeline.from_pretrained(cfg.kd.student)
    teacher_path = resolve_teacher(cfg.kd)
    teacher = load_dit(teacher_path)  # its VAE and text are the student's
    student = student_pipe.dit
    if teacher.config.in_channels != student.config.in_channels:
        raise MvditError(f"the teacher {teacher_path} and the student read different latents")
    blocks = aligned_blocks(student, teacher, cfg.kd.feature_blocks) if cfg.kd.features else []
    wrapped = KDStudent(student, teacher.config.hidden_size, blocks)
    d = cfg.data
    student_pipe.vae.check_clip(d.frames, d.height, d.width)
    dataset = build_dataset(cfg.data, "train", student_pipe.vae, student_pipe.text_encoder)
    batch_fn = make_batch_fn(dataset, cfg.optim.batch_size, cfg.optim.grad_accum, cfg.run.seed)

    def export(path: Path, state: dict[str, torch.Tensor], _step: int) -> None:
        own = {k.removeprefix("student."): v for k, v in state.items() if k.startswith("student.")}
        student_pipe.save_pretrained(path, dit_state=own)

    dump = cfg.model_dump(mode="json") | {"teacher": str(teacher_path)}
    return train_loop(
        {"model": wrapped},
        make_kd_loss(wrapped, teacher, student_pipe, cfg),
        batch_fn,
        cfg.optim,
        cfg.run,
        cfg.run.out_dir,
        resume=resume,
        config_dump=dump,
        on_export=export,
        progress=progress,
        frozen={
            "teacher": teacher,
            "vae": student_pipe.vae,
            "text": student_pipe.text_encoder,
        },
    )

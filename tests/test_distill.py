"""Adversarial step distillation: teacher samples, the two-player loss, the exported student."""

import json
from pathlib import Path

import pytest
import torch
from conftest import run_cli, save_tiny_pipeline

from mvdit.data.cache import LatentCacheDataset
from mvdit.pipeline import Pipeline
from mvdit.stages.distill import Discriminator, DiscSection, load_distill_config, train_distill

PROMPTS = [
    "a red circle moves to the left on a black background",
    "a green square moves up on a gray background",
    "a blue star moves down on a black background",
]


def _prompts(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("\n".join(PROMPTS) + "\n")
    return p


SMOKE = Path(__file__).resolve().parents[1] / "configs" / "distill-smoke.toml"


def _config(tmp_path, teacher, synthetic=None, out="distill", **extra):
    """The shipped smoke configuration, pointed at `teacher` and a run directory in tmp_path."""
    sets = {"distill.student": teacher, "distill.teacher": teacher, "run.out_dir": tmp_path / out}
    if synthetic:
        sets |= {"distill.synthetic": synthetic, "distill.synthetic_fraction": 0.5}
    sets |= extra
    return load_distill_config(SMOKE, [f"{k}={v}" for k, v in sets.items()])


def test_synth_writes_the_teachers_samples_as_a_resumable_cache(tmp_path, capsys):
    teacher = save_tiny_pipeline(tmp_path / "teacher", guidance=3.0)
    out = tmp_path / "synth"
    args = ["synth", "-m", teacher, "-p", _prompts(tmp_path), "-o", out, "--seeds", "2",
            "--steps", "3", "--batch", "2"]  # fmt: skip
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    pipe = Pipeline.from_pretrained(teacher)
    ds = LatentCacheDataset(out, pipe.vae, pipe.text_encoder)
    assert len(ds) == 6 and ds[4]["caption"] == PROMPTS[1]  # seed 1 follows seed 0
    index = json.loads((out / "index.json").read_text())
    assert (
        index["dataset"]["sampler"]["steps"] == 3 and index["dataset"]["sampler"]["guidance"] == 3.0
    )
    assert index["dataset"]["seeds"] == 2
    # item 2 is the first of block 1: the teacher's sample of (prompt 2, seed 0) with seed 0 + 1
    ref = pipe.generate(
        [PROMPTS[2], PROMPTS[0]], steps=3, guidance=3.0, seed=1, decode=False
    ).latents
    assert torch.allclose(ds[2]["latent"], ref[0], atol=1e-5)
    # rerun: complete, nothing regenerated; other settings: refused
    assert run_cli(args, capsys)[0] == 0
    code, _, err = run_cli([*args[:-4], "--steps", "5", "--batch", "2"], capsys)
    assert code != 0 and "another dataset" in err and "Traceback" not in err


def test_distill_trains_both_players_and_exports_a_guidance_free_student(tmp_path, capsys):
    teacher = save_tiny_pipeline(tmp_path / "teacher", guidance=4.0)
    synth = tmp_path / "synth"
    code, _, err = run_cli(["synth", "-m", teacher, "-p", _prompts(tmp_path), "-o", synth,
                            "--seeds", "2", "--steps", "2", "--batch", "2"], capsys)  # fmt: skip
    assert code == 0, err
    before = {k: v.clone() for k, v in Pipeline.from_pretrained(teacher).dit.state_dict().items()}
    cfg = _config(tmp_path, teacher, synth)
    summary = train_distill(cfg, progress=False)
    run = tmp_path / "distill"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    for key in ("loss", "loss_disc", "loss_term_adv", "loss_term_regression", "disc_acc_real",
                "disc_acc_fake", "grad_norm_model", "grad_norm_disc"):  # fmt: skip
        assert all(key in r for r in rows), key
    assert (run / "loss.png").is_file() and (run / "players.png").is_file()
    assert (run / "samples" / "step_0000002.png").is_file() and (
        run / "samples" / "latest.png"
    ).is_file()
    # the student's sampler: the fixed 4-step schedule under the teacher's shift, no guidance
    student = Pipeline.from_pretrained(run / "model")
    s = student.config.sampler
    assert s.schedule == summary["schedule"] and len(s.schedule) == 5 and s.guidance == 1.0
    assert Pipeline.from_pretrained(teacher).sampling(4, 1.0).schedule == s.schedule
    g = student.generate(["a red circle moves up on a black background"])
    assert g.nfe == 4 and g.videos.shape[1:] == (9, 32, 32, 3)
    # the teacher on disk is untouched, and so is the discriminator's frozen backbone
    after = Pipeline.from_pretrained(teacher).dit.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the same config and seed give the same run; a resumed run continues it exactly
    again = _config(tmp_path, teacher, synth, out="again", **{"optim.steps": 2})
    train_distill(again, progress=False)
    again = _config(tmp_path, teacher, synth, out="again")
    train_distill(again, resume=True, progress=False)
    rows2 = [
        json.loads(line) for line in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["loss"] for r in rows2] == [r["loss"] for r in rows]
    assert [r["loss_disc"] for r in rows2] == [r["loss_disc"] for r in rows]


def test_discriminator_backbone_is_the_teachers_first_blocks():
    from mvdit.models.dit import DiTConfig, VideoDiT

    torch.manual_seed(0)
    teacher = VideoDiT(
        DiTConfig.uniform(
            depth=3, heads=2, ffn_dim=32, hidden_size=32, head_dim=16, in_channels=4, text_dim=8
        )  # fmt: skip
    )
    d = Discriminator(teacher, DiscSection(blocks=2, trainable_blocks=1, head="token",
                                           feature_blocks=[0, 1]))  # fmt: skip
    assert len(d.backbone.blocks) == 2
    trainable = {n for n, p in d.named_parameters() if p.requires_grad}
    assert any(n.startswith("backbone.blocks.1.") for n in trainable)
    assert not any(n.startswith(("backbone.blocks.0.", "backbone.x_embed")) for n in trainable)
    x, t, text = torch.randn(2, 4, 2, 4, 4), torch.rand(2), torch.randn(2, 5, 8)
    logits = d(x, t, text, torch.ones(2, 5, dtype=torch.bool))
    assert [z.shape for z in logits] == [(2, 32), (2, 32)]  # per token
    # its features are the teacher's own: block 1's tokens equal the teacher's block 1
    with torch.no_grad():
        ref = teacher.features(x, t, text, None, blocks=[1]).tokens[1]
        got = d.backbone.features(x, t, text, None, blocks=[1], stop_after=2).tokens[1]
    assert torch.allclose(ref, got, atol=1e-6)
    with pytest.raises(Exception, match="disc.blocks"):
        Discriminator(teacher, DiscSection(blocks=4))


def test_distill_command_rejects_a_bad_config(tmp_path, capsys):
    teacher = save_tiny_pipeline(tmp_path / "teacher")
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[distill]\nstudent = "{teacher}"\nteacher = "{teacher}"\n[disc]\nblocks = 3\n'
                   f'[data]\nframes = 9\n[run]\nout_dir = "{tmp_path / "o"}"\n')  # fmt: skip
    code, _, err = run_cli(["distill", cfg], capsys)
    assert code != 0 and "disc.blocks = 3" in err and "Traceback" not in err


def test_study_distill_trains_evaluates_and_times_each_row(tmp_path, capsys):
    teacher = save_tiny_pipeline(tmp_path / "teacher", guidance=4.0)
    out = tmp_path / "study"
    args = ["study", "distill", "-m", teacher, "--config", SMOKE, "-o", out, "--seeds", "1",
            "-p", _prompts(tmp_path), "--rows", "teacher-4-cfg,teacher-4,student-4",
            "--student-set", f"distill.student={teacher}", "--student-set", "optim.steps=2"]  # fmt: skip
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    report = json.loads((out / "study.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert [rows[k]["nfe"] for k in ("teacher-4-cfg", "teacher-4", "student-4")] == [8, 4, 4]
    assert all(r["clips"] == 3 and r["end_to_end_s"] > r["dit_s"] > 0 for r in rows.values())
    assert (out / "students" / "student-4" / "model" / "pipeline.json").is_file()
    assert (out / "study.png").is_file() and "distilled student, 4 steps" in stdout
    assert report["timing"]["reps"] == 5 and report["timing"]["threads"] >= 1
    # a rerun reuses the trained student and the evaluations; --threads sets the timing pass's
    # threads only (recorded, and the process's own restored after)
    stamp = (out / "rows" / "student-4" / "eval.json").stat().st_mtime
    before = torch.get_num_threads()
    assert run_cli([*args, "--threads", "1", "--reps", "2"], capsys)[0] == 0
    assert (out / "rows" / "student-4" / "eval.json").stat().st_mtime == stamp
    timing = json.loads((out / "study.json").read_text())["timing"]
    assert timing["threads"] == 1 and timing["reps"] == 2 and torch.get_num_threads() == before
    assert "at 1 CPU thread," in (out / "study.md").read_text()
    assert run_cli([*args, "--reps", "0"], capsys)[0] != 0
    code, _, err = run_cli([*args[:-4], "--rows", "nope"], capsys)
    assert code != 0 and "unknown study row" in err

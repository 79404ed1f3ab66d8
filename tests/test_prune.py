"""Pruning: unit accounting, the scores, the greedy search, and the two commands."""

import json

import pytest
import torch
from conftest import run_cli, save_tiny_pipeline

from mvdit import MvditError
from mvdit.compress.importance import (
    Unit,
    criterion_scores,
    enumerate_units,
    kd_scores,
    random_calibration,
    remove,
)
from mvdit.compress.search import greedy_prune, parse_budget, prune_to_shape
from mvdit.models.dit import (
    BlockSpec,
    DiTConfig,
    UnitMask,
    VideoDiT,
    block_params,
    dit_params,
    masked_config,
    slice_dit,
)


def _model(patch: int = 1) -> VideoDiT:
    cfg = DiTConfig(
        blocks=[
            BlockSpec(heads=3, cross_heads=2, ffn_dim=64),
            BlockSpec(heads=0, cross_heads=2, ffn_dim=32),
            BlockSpec(heads=2, cross_heads=0, ffn_dim=48),
            BlockSpec(heads=2, cross_heads=2, ffn_dim=0),
        ],
        hidden_size=32,
        head_dim=16,
        in_channels=4,
        text_dim=24,
        patch_size=patch,
    )
    torch.manual_seed(0)
    model = VideoDiT(cfg).eval()
    for m in model.modules():  # every weight and bias non-zero, the output layer included
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=0.3)
            torch.nn.init.normal_(m.bias, std=0.1)
    return model


def _calib(model: VideoDiT, n: int = 4):
    return random_calibration(model.config, (2, 4, 4), n=n, text_len=5)


@pytest.mark.parametrize("patch", [1, 2])
def test_parameter_counts_match_the_modules(patch):
    model = _model(patch)
    assert dit_params(model.config) == sum(p.numel() for p in model.parameters())
    for blk, spec in zip(model.blocks, model.config.blocks, strict=True):
        assert block_params(model.config, spec) == sum(p.numel() for p in blk.parameters())


def test_units_removal_and_the_config_they_leave():
    model = _model()
    units = enumerate_units(model.config, group=16)
    # 4 blocks, 3+0+2+2 self heads, 2+2+0+2 cross heads, 4+2+3+0 FFN groups
    assert len(units) == 4 + 7 + 6 + 9
    mask = UnitMask.full(model.config)
    for key in ("head:0:1", "ffn:2:0", "cross_head:1:0", "cross_head:1:1", "block:3"):
        mask = remove(mask, Unit.parse(key), 16)
    left = enumerate_units(model.config, 16, mask=mask)
    assert len(left) == len(units) - 1 - 1 - 2 - 5  # block 3 takes its 4 heads with it
    small = slice_dit(model, mask)
    assert small.config.blocks == masked_config(model.config, mask).blocks
    assert [(b.heads, b.cross_heads, b.ffn_dim) for b in small.config.blocks] == [
        (2, 2, 64),
        (0, 0, 32),
        (2, 0, 32),
    ]
    assert dit_params(masked_config(model.config, mask)) == sum(
        p.numel() for p in small.parameters()
    )


def test_scores_see_a_dead_unit():
    """A head whose output projection is zero, and an FFN group whose input rows are zero, change
    nothing when removed: KD, Taylor and activation give them 0, and magnitude the smallest value."""
    model = _model()
    hd = model.config.head_dim
    with torch.no_grad():
        model.blocks[0].attn.out.weight[:, hd : 2 * hd] = 0
        model.blocks[0].attn.q.weight[hd : 2 * hd] = 0
        model.blocks[0].attn.k.weight[hd : 2 * hd] = 0
        model.blocks[0].attn.v.weight[hd : 2 * hd] = 0
        model.blocks[0].attn.v.bias[hd : 2 * hd] = 0
        model.blocks[2].ffn.fc1.weight[16:32] = 0
        model.blocks[2].ffn.fc1.bias[16:32] = 0
    calib = _calib(model)
    units = enumerate_units(model.config, 16, levels=["head", "ffn"])
    dead = {"head:0:1", "ffn:2:1"}
    for criterion in ("kd", "taylor", "activation"):
        s = criterion_scores(criterion, model, calib, units, 16)
        assert all(s[k] == pytest.approx(0, abs=1e-9) for k in dead), criterion
        assert all(v > 1e-7 for k, v in s.items() if k not in dead), criterion
    mag = criterion_scores("magnitude", model, calib, units, 16)
    heads = {k: v for k, v in mag.items() if k.startswith("head:")}
    assert min(heads, key=heads.get) == "head:0:1"


def test_kd_score_is_the_damage_of_the_sliced_model():
    model = _model()
    calib = _calib(model)
    unit = Unit("cross_head", 0, 1)
    score = kd_scores(model, calib, [unit], 16)[unit.key]["kd"]
    small = slice_dit(model, remove(UnitMask.full(model.config), unit, 16))
    args = (calib.x_t, calib.t, calib.text, calib.text_mask)
    with torch.no_grad():
        direct = float((model(*args) - small(*args)).pow(2).mean())
    assert score == pytest.approx(direct, rel=1e-4)


def test_greedy_prune_meets_a_parameter_budget_and_removes_dead_units_first():
    model = _model()
    with torch.no_grad():  # block 1 does nothing: its updates are multiplied by zero gates
        model.blocks[1].cross_attn.out.weight.zero_()
        model.blocks[1].cross_attn.out.bias.zero_()
        model.blocks[1].ffn.fc2.weight.zero_()
        model.blocks[1].ffn.fc2.bias.zero_()
    calib = _calib(model)
    base = dit_params(model.config)
    r = greedy_prune(model, calib, parse_budget("params=0.8"), group=16, rescore_every=3)
    assert r.final["params"] <= 0.8 * base < r.history[-2]["params"]
    assert r.history[0]["score"] == pytest.approx(0, abs=1e-9)  # a dead unit goes first
    assert r.history[0]["unit"].startswith(("block:1", "ffn:1", "cross_head:1"))
    small = slice_dit(model, r.mask)
    assert sum(p.numel() for p in small.parameters()) == r.final["params"]
    assert r.rescored >= len(r.history) // 3


def test_levels_and_flops_budget_restrict_the_search():
    model = _model()
    calib = _calib(model)
    r = greedy_prune(model, calib, parse_budget("flops=0.9"), levels=["ffn"], group=16)
    assert all(row["unit"].startswith("ffn:") for row in r.history)
    assert r.final["flops"] <= 0.9 * r.base["flops"]
    r = greedy_prune(
        model, calib, parse_budget("params=0.6"), levels=["block"], criterion="magnitude", group=16
    )
    assert all(row["unit"].startswith("block:") for row in r.history)
    with pytest.raises(MvditError, match="cannot be met"):
        greedy_prune(model, calib, parse_budget("params=0.01"), levels=["head"], group=16)


def test_measured_budgets_are_measured():
    model = _model()
    calib = _calib(model)
    weights = sum(p.numel() * 4 for p in model.parameters())
    # a budget the model already meets removes nothing; the measure counts at least the weights
    r = greedy_prune(model, calib, parse_budget("memory=100G"), criterion="magnitude", group=16)
    assert r.history == [] and r.final["memory"] >= weights
    # a measured budget is measured on the sliced model: seconds of one step
    from mvdit.compress.search import measured_cost

    assert 0 < measured_cost(model, UnitMask.full(model.config), calib, "latency") < 10


@pytest.mark.parametrize(
    "text, kind, value",
    [("params=0.55", "params", 0.55), ("flops=0.5", "flops", 0.5), ("memory=2G", "memory", 2**31),
     ("memory=5e8", "memory", 5e8), ("latency=0.6", "latency", 0.6)],
)  # fmt: skip
def test_parse_budget(text, kind, value):
    b = parse_budget(text)
    assert (b.kind, b.value) == (kind, pytest.approx(value))


@pytest.mark.parametrize("text", ["params", "params=1.5", "speed=0.5", "memory=lots", "flops=0"])
def test_bad_budget_is_one_clear_error(text):
    with pytest.raises(MvditError, match="--budget"):
        parse_budget(text)


def test_prune_to_shape_keeps_the_best_units():
    cfg = DiTConfig.uniform(
        depth=5, heads=4, ffn_dim=64, hidden_size=32, head_dim=8, in_channels=4, text_dim=8
    )
    model = VideoDiT(cfg)
    units = enumerate_units(cfg, 16)
    scores = {u.key: float(u.block * 10 + (u.index or 0)) for u in units}  # later = better
    mask = prune_to_shape(model, scores, blocks=3, heads=2, ffn=32, group=16)
    small = slice_dit(model, mask)
    assert [b.source for b in small.config.blocks] == [2, 3, 4]
    assert {(b.heads, b.cross_heads, b.ffn_dim) for b in small.config.blocks} == {(2, 2, 32)}
    assert mask.heads[4].tolist() == [0, 0, 1, 1] and mask.ffn[4][32:].all()
    with pytest.raises(MvditError, match="multiple of the FFN group"):
        prune_to_shape(model, scores, blocks=3, heads=2, ffn=30, group=16)


# ---------------------------------------------------------------------------------------------
# the commands


def _prompts(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("a red square moving left\na blue circle on black\na green star spinning\n")
    return p


def _pipeline(tmp_path):
    return save_tiny_pipeline(
        tmp_path / "teacher", frames=4, size=16, temporal_factor=4, ffn_dim=64
    )


def test_sensitivity_command_writes_scores_plot_and_resumes(tmp_path, capsys):
    pipe, prompts, out = _pipeline(tmp_path), _prompts(tmp_path), tmp_path / "sens"
    args = ["sensitivity", "-m", pipe, "-o", out, "--prompts", prompts, "--n-prompts", 3,
            "--seeds", 1, "--timesteps", "0.3,0.7", "--faith-prompts", 2]  # fmt: skip
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    assert "rank correlation with KD" in stdout
    r = json.loads((out / "sensitivity.json").read_text())
    assert r["calibration"]["items"] == 6 and len(r["units"]) == 1 + 2 + 2 + 8
    assert (out / "sensitivity.png").stat().st_size > 10_000
    assert "Each level pruned alone" in (out / "sensitivity.md").read_text()
    assert set(r["curves"]) == {"block", "head", "cross_head", "ffn"}
    # a killed run: keep half the scores, then run again -> the same scores, the rest recomputed
    lines = (out / "scores.jsonl").read_text().splitlines()
    (out / "scores.jsonl").write_text("\n".join(lines[:6]) + "\n" + lines[6][:10])
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    again = json.loads((out / "sensitivity.json").read_text())
    assert [u["kd"] for u in again["units"]] == pytest.approx([u["kd"] for u in r["units"]])
    # another calibration into the same directory is refused, not mixed in
    code, _, err = run_cli([*args[:-4], "--timesteps", "0.5", "--faith-prompts", 0], capsys)
    assert code == 2 and "another calibration" in err


def test_prune_command_writes_a_smaller_pipeline_that_loads(tmp_path, capsys):
    from mvdit.pipeline import Pipeline

    pipe, prompts, out = _pipeline(tmp_path), _prompts(tmp_path), tmp_path / "pruned"
    code, stdout, err = run_cli(
        ["prune", "-m", pipe, "-o", out, "--budget", "params=0.9", "--prompts", prompts,
         "--n-prompts", 2, "--seeds", 1, "--timesteps", "0.5"], capsys,
    )  # fmt: skip
    assert code == 0, err
    r = json.loads((out / "prune.json").read_text())
    assert r["final"]["params"] <= 0.9 * r["base"]["params"]
    assert r["sliced_vs_masked_max_abs_diff"] <= 1e-5
    small = Pipeline.from_pretrained(out)
    assert sum(p.numel() for p in small.dit.parameters()) == r["final"]["params"]
    assert small.generate(["a red square"], seed=0).videos.shape[1:] == (4, 16, 16, 3)
    code, _, err = run_cli(
        ["prune", "-m", pipe, "-o", tmp_path / "x", "--budget", "params"], capsys
    )
    assert code == 2 and "--budget" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    code, _, err = run_cli(["prune", "-m", pipe, "-o", tmp_path / "x", "--levels", "heads"], capsys)
    assert code == 2 and "--levels 'heads': Input should be 'block', 'head'" in err
    code, _, err = run_cli(["prune", "-m", pipe, "-o", tmp_path / "x", "--latent", "2,4,4"], capsys)
    assert code == 2 and "calibration.latent (--latent) does not apply to" in err


def test_alpha_t_peaks_at_one_mid_trajectory():
    from mvdit.stages.kd import alpha_t

    a = alpha_t(torch.tensor([0.02, 0.25, 0.5, 0.75, 0.98]), 0.0, 1.0)
    assert (
        a[2] == pytest.approx(1.0, abs=1e-4) and a[0] < a[1] < a[2] and a[1] == pytest.approx(a[3])
    )


def test_kd_recovers_a_pruned_student_and_its_losses_fall(tmp_path, capsys):
    """Prune a random teacher, distil it back for a few steps (KD terms only: a random teacher and
    the data disagree): the KD terms fall, the export is a
    pipeline of the student's (smaller) shape, and a missing teacher is a one-line error."""
    from mvdit.pipeline import Pipeline

    pipe, prompts, pruned = _pipeline(tmp_path), _prompts(tmp_path), tmp_path / "pruned"
    code, _, err = run_cli(
        ["prune", "-m", pipe, "-o", pruned, "--budget", "params=0.9", "--prompts", prompts,
         "--n-prompts", 2, "--seeds", 1, "--timesteps", "0.5"], capsys,
    )  # fmt: skip
    assert code == 0, err
    cfg = tmp_path / "kd.toml"
    cfg.write_text(
        f'[kd]\nstudent = "{pruned}"\ntask = 0.0\ntimestep_aware = false\n[data]\nkind = "shapes"\nframes = 4\nheight = 16\nwidth = 16\n'
        f'[optim]\nsteps = 30\nbatch_size = 4\nlr = 3e-3\nwarmup_steps = 0\nschedule = "constant"\n'
        f'[run]\nout_dir = "{tmp_path / "kd"}"\ncheckpoint_every = 30\nlog_every = 1\n'
    )
    code, _, err = run_cli(["kd", cfg], capsys)
    assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    for key in ("loss_term_kd_out", "loss_term_kd_feat", "loss"):
        first = sum(r[key] for r in rows[:5]) / 5
        last = sum(r[key] for r in rows[-5:]) / 5
        assert last < first, key
    out = Pipeline.from_pretrained(tmp_path / "kd" / "model")
    small = Pipeline.from_pretrained(pruned)
    assert out.dit.config == small.dit.config
    (pruned / "prune.json").unlink()
    code, _, err = run_cli(["kd", cfg, "--set", f"run.out_dir='{tmp_path / 'kd2'}'"], capsys)
    assert code == 2 and "set kd.teacher" in err


def test_prune_study_writes_its_table_and_resumes(tmp_path, capsys):
    pipe, prompts = _pipeline(tmp_path), _prompts(tmp_path)
    cfg = tmp_path / "kd.toml"
    cfg.write_text(
        '[kd]\nstudent = "unused"\n[data]\nkind = "shapes"\nframes = 4\nheight = 16\nwidth = 16\n'
        "[optim]\nbatch_size = 2\nwarmup_steps = 0\n[run]\ncheckpoint_every = 2\n"
    )
    out = tmp_path / "study"
    args = ["study", "prune", "-m", pipe, "-o", out, "--kd-config", cfg, "--budget", "params=0.97",
            "--recovery-steps", 2, "--variants", "tri-level-kd,ffn-kd", "-p", prompts,
            "--calib-prompts", prompts, "--heldout-prompts", prompts]  # fmt: skip
    code, stdout, err = run_cli(args, capsys)
    assert code == 0, err
    table = (out / "study.md").read_text()
    assert "tri-level-kd" in table and "ffn-kd" in table and "after 2 KD steps" in table
    teacher = json.loads((out / "teacher.json").read_text())
    for r in json.loads((out / "study.json").read_text())["rows"]:
        assert r["before"]["params"] <= 0.97 * teacher["params"]
        assert r["after"]["params"] == r["before"]["params"]
        assert r["before"]["heldout_kd"] > 0
    assert (out / "study.png").stat().st_size > 5_000 and (out / "study.csv").is_file()
    stamp = (out / "ffn-kd" / "rows.json").stat().st_mtime
    code, _, err = run_cli(args, capsys)  # a rerun reads the finished variants back
    assert code == 0, err
    assert (out / "ffn-kd" / "rows.json").stat().st_mtime == stamp


@pytest.mark.slow
def test_paper_preset_prunes_to_the_paper_shape_and_reloads(tmp_path, capsys):
    code, stdout, err = run_cli(["prune", "--preset", "paper", "-o", tmp_path / "p"], capsys)
    assert code == 0, err
    r = json.loads((tmp_path / "p" / "prune.json").read_text())
    assert abs(r["pruned_params"] - 0.9e9) / 0.9e9 <= 0.07
    assert r["blocks"] == 20 and r["heads"] == [20] and r["mean_ffn"] == 6144
    assert r["reloaded_params"] == r["pruned_params"]
    assert r["sliced_vs_masked_max_abs_diff"] <= 1e-4 * r["masked_velocity_max_abs"]


def test_kd_compares_guided_velocities_at_the_models_guidance():
    """With guidance g the score is the MSE of v_u + g (v_c - v_u): text damage counts g times."""
    from dataclasses import replace

    model = _model()
    calib = _calib(model)
    null = torch.randn(1, calib.text.shape[1], model.config.text_dim)
    guided = replace(
        calib,
        guidance=4.0,
        null_text=null,
        null_mask=torch.ones(1, calib.text.shape[1], dtype=torch.bool),
    )
    unit = Unit("cross_head", 0, 0)
    score = kd_scores(model, guided, [unit], 16)[unit.key]["kd"]
    small = slice_dit(model, remove(UnitMask.full(model.config), unit, 16))
    n = len(calib)
    nt, nm = null.expand(n, -1, -1), guided.null_mask.expand(n, -1)

    def v(m):
        with torch.no_grad():
            vc = m(calib.x_t, calib.t, calib.text, calib.text_mask)
            vu = m(calib.x_t, calib.t, nt, nm)
        return vu + 4.0 * (vc - vu)

    assert score == pytest.approx(float((v(model) - v(small)).pow(2).mean()), rel=1e-4)
    assert score != pytest.approx(kd_scores(model, calib, [unit], 16)[unit.key]["kd"], rel=1e-2)

"""Benchmark and report: every field is written, the LTX twin has our shape, the report renders."""

import json

import conftest
import pytest
import torch

from mvdit import MvditError
from mvdit.bench import dit as B


def run_cli(args, capsys):
    code, out, err = conftest.run_cli(args, capsys)
    return code, out + err


def test_cheap_init_fills_every_tensor_and_keeps_outputs_finite(tiny_dit_config):
    from mvdit.models.dit import VideoDiT

    dit = B.build_random(lambda: VideoDiT(tiny_dit_config), torch.device("cpu"), torch.float32)
    assert all(p.device.type == "cpu" and p.abs().sum() > 0 for p in dit.parameters())
    assert torch.equal(dit.blocks[0].attn.q_norm.weight, torch.ones(16))  # norm scales are ones
    y = dit(torch.randn(1, 12, 2, 2, 2), torch.full((1,), 0.5), torch.randn(1, 3, 24))
    assert torch.isfinite(y).all()


def test_ltx_twin_exists_only_for_shapes_ltx_can_take():
    from mvdit.config import preset_config

    kw, _ = B.ltx_twin_kwargs(preset_config("paper-teacher"))
    assert kw["num_layers"] == 28 and kw["num_attention_heads"] * kw["attention_head_dim"] == 2048
    kw, why = B.ltx_twin_kwargs(preset_config("paper-student"))
    assert kw is None and "heads x head_dim" in why  # 20 heads of 64 inside a 2048-wide model


def test_ltx_twin_has_our_parameter_count():
    """Same width, depth, heads and FFN: the two models hold (nearly) the same weights."""
    pytest.importorskip("diffusers")
    from diffusers import LTXVideoTransformer3DModel

    from mvdit.config import preset_config
    from mvdit.models.dit import VideoDiT

    cfg = preset_config("small", 192, 384)
    kw, _ = B.ltx_twin_kwargs(cfg)
    with torch.device("meta"):
        ours, twin = VideoDiT(cfg), LTXVideoTransformer3DModel(**kw)
    assert B.params(twin) == pytest.approx(B.params(ours), rel=0.01)


def test_bench_tiny_preset_writes_every_field(tmp_path, capsys):
    code, out = run_cli(
        ["bench", "tiny", "--out", tmp_path, "--reps", 1, "--threads", 1, "--gemm-n", 1024], capsys
    )
    assert code == 0, out
    r = json.loads((tmp_path / "bench.json").read_text())
    m = r["machine"]
    assert m["threads"] == 1 and m["dtype"] == "float32" and m["gemm_peak_flops"] > 1e9
    (t,) = r["targets"]
    assert t["name"] == "tiny" and t["tokens"] == 3 * 4 * 4 and t["clip"]["frames"] == 9
    assert set(t["latency_s"]) >= {"text", "dit_step", "decode"} and all(
        v > 0 for v in t["latency_s"].values()
    )
    assert t["params"]["dit"] > 1e6 and t["params"]["text_encoder"] > 2e7
    assert t["flops_per_step"] > 0 and 0 < t["dit_fraction_of_peak"] < 1.5
    # the peak is the best of the square matmul and the model's own linear shapes
    assert r["machine"]["gemm_peak_flops"] >= max(
        t["linear_peak_flops"], *r["machine"]["gemm_peak_samples"]
    )
    assert t["end_to_end"]["measured"] and t["end_to_end"]["output_fps"] == pytest.approx(
        9 / t["end_to_end"]["seconds"]
    )
    assert t["sampler"]["nfe"] == 2 * t["sampler"]["steps"]  # the tiny config samples with CFG
    assert t["peak_memory_mb"]["dit"] > 0
    assert t["ltx"]["ours_speedup"] > 0 and len(t["ltx"]["times"]) == len(t["dit_times"])
    md = (tmp_path / "bench.md").read_text()
    for col in ("DiT step", "end-to-end", "out FPS", "of peak", "vs LTX", "peak mem", "| tiny |"):
        assert col in md


def test_bench_a_model_directory_and_an_estimated_clip(tmp_path):
    conftest.save_tiny_pipeline(tmp_path / "m", ffn_dim=64, out_std=None)
    cfg = B.BenchConfig(
        targets=[str(tmp_path / "m")],
        out=str(tmp_path / "b"),
        threads=1,
        reps=1,
        ltx=False,
        gemm_n=256,
    )
    r = B.run_bench(cfg)
    (t,) = r["targets"]
    assert t["kind"] == "checkpoint" and t["sampler"]["nfe"] == 2 and t["end_to_end"]["measured"]
    assert t["ltx"] == {"skipped": "not requested"}
    # `mvdit generate` as a fresh process, timed from outside, its stages inside that time
    p = t["process"]
    assert len(p["times"]) == 2 and p["seconds"] == min(p["times"]) and p["nfe"] == 2
    assert set(p["stages"]) == {"start", "load", "text", "dit", "decode", "write"}
    assert all(v > 0 for v in p["stages"].values())
    assert abs(sum(p["stages"].values()) - p["seconds"]) < 1e-6
    assert "| process | start | load |" in (tmp_path / "b" / "bench.md").read_text()
    # a paper preset on CPU is never sampled in full: its clip time is the sum of the stages
    target = B.preset_target("paper-student", paper_decode=False)
    assert (
        target.latent == (128, 7, 12, 16)
        and target.vae is None
        and (target.sampling.steps, target.sampling.guidance) == (4, 1.0)
    )


def test_bench_rejects_bad_input(tmp_path, capsys):
    code, out = run_cli(["bench", "huge", "--out", tmp_path], capsys)
    assert code == 2 and "'huge' is neither a preset" in out
    code, out = run_cli(["bench", "tiny", "--reps", "0", "--out", tmp_path], capsys)
    assert code == 2 and "--reps 0: Input should be greater than or equal to 1" in out
    if not torch.cuda.is_available():
        with pytest.raises(MvditError, match="no CUDA"):
            B.run_bench(B.BenchConfig(targets=["tiny"], out=str(tmp_path), device="cuda"))


# -------------------------------------------------------------------------------------------------
# report


def fake_run(root, name, faithfulness, seconds, fvd):
    run = root / name
    (run / "eval").mkdir(parents=True)
    (run / "bench").mkdir()
    dims = {
        k: {"value": 0.9, "label": "substitute", "note": ""}
        for k in (
            "temporal_flickering",
            "motion_smoothness",
            "dynamic_degree",
            "subject_consistency",
            "background_consistency",
        )
    }
    summary = {"clips": 4, "overall": faithfulness}
    (run / "eval" / "eval.json").write_text(json.dumps({
        "faithfulness": {"label": "own", "note": "", "all": summary, "shapes-eval": summary, "shapes-holdout": {"clips": 2, "overall": faithfulness / 2}, "per_clip": []},
        "vbench": dims, "distribution": {"value": fvd}, "sampler": {"nfe": 8}, "generate_seconds_per_clip": seconds,
    }))  # fmt: skip
    (run / "bench" / "bench.json").write_text(json.dumps({
        "machine": {"device": "cpu", "threads": 2},
        "targets": [{"name": name, "params": {"dit": 2e6}, "flops_per_step": 1e9, "latency_s": {"dit_step": 0.01},
                     "end_to_end": {"seconds": seconds, "measured": False, "output_fps": 9 / seconds},
                     "dit_fraction_of_peak": 0.5, "sampler": {"nfe": 8}}],
    }))  # fmt: skip
    return run


def test_report_renders_two_runs_with_a_plot(tmp_path, capsys):
    teacher = fake_run(tmp_path, "teacher", 0.8, 4.0, 10.0)
    student = fake_run(tmp_path, "student", 0.7, 0.5, 12.0)
    out = tmp_path / "report" / "models.md"
    code, output = run_cli(["report", teacher, student, "--out", out], capsys)
    assert code == 0, output
    md = out.read_text()
    assert "| teacher | 2.0M | 1.00 G | 8 | 4.00* |" in md and "| student |" in md
    assert "shapes-holdout" in md and "0.400" in md  # the per-split table
    assert "![speed vs quality](models.png)" in md and out.with_suffix(".png").stat().st_size > 1000


def test_report_names_what_is_missing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, out = run_cli(["report", tmp_path / "empty", "--out", tmp_path / "r.md"], capsys)
    assert code == 2 and "neither eval.json nor bench.json" in out
    code, out = run_cli(["report", tmp_path / "nowhere", "--out", tmp_path / "r.md"], capsys)
    assert code == 2 and "does not exist" in out


def test_linear_shapes_cover_every_gemm_of_a_step(tiny_dit_config):
    shapes = tiny_dit_config.linear_shapes(tokens=60, text_len=7)
    assert (60, 32, 64) in shapes and (60, 64, 32) in shapes  # FFN up and down
    assert (60, 32, 32) in shapes and (7, 24, 32) in shapes  # attention, caption projection
    assert len(shapes) == len(set(shapes))

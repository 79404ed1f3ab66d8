"""ONNX export: three graphs and a manifest that generate the same clip as eager, without
PyTorch; tiled FFN and explicit attention export to the same numbers; int8 quantizes."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from conftest import run_cli, save_tiny_bert, save_tiny_pipeline

from mvdit.pipeline import Pipeline

PROMPT = "a red circle moves to the left on a black background"

# the runtime must work with torch unimportable: an app has neither PyTorch nor our other modules
NO_TORCH = """
import sys
sys.modules["torch"] = None
import numpy as np
from mvdit.export.runtime import ExportedPipeline
pipe = ExportedPipeline(sys.argv[1])
frames, timings = pipe.generate(sys.argv[2], noise=np.load(sys.argv[3]))
np.save(sys.argv[4], frames)
pipe.write(frames, sys.argv[4] + ".mp4")
assert set(timings) == {"text", "dit", "decode"}
print("torch loaded:", any(m == "torch" or m.startswith("torch.") for m in sys.modules if sys.modules[m]))
"""


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    d = tmp_path_factory.mktemp("student")
    bert = save_tiny_bert(d / "bert")  # a small text encoder: exporting MiniLM takes ~30 s
    return save_tiny_pipeline(
        d / "model", ffn_dim=64, schedule=[1.0, 0.6, 0.25, 0.0], text_path=bert
    )


def test_export_generates_the_eager_clip_without_torch(student, tmp_path, capsys):
    out = tmp_path / "onnx"
    code, stdout, err = run_cli(
        ["export", "-m", student, "-o", out, "--tiles", "4", "--attention", "explicit"], capsys
    )
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert set(m["artefacts"]) == {"text_encoder", "dit_step", "vae_decoder"}
    for a in m["artefacts"].values():
        assert (out / a["file"]).stat().st_size == a["bytes"] > 0
        assert a["max_abs_error_vs_eager"] <= 1e-4
        onnx.checker.check_model(str(out / a["file"]))
    assert m["sampler"]["schedule"] == [1.0, 0.6, 0.25, 0.0] and m["sampler"]["nfe"] == 3
    assert m["ffn_tiles"] and set(m["ffn_tiles"].values()) == {4} and m["attention"] == "explicit"
    assert (out / m["text"]["tokenizer"]).is_file() and "MiB" in stdout
    # one DiT step in the graph: the FFN's tiles are partial MatMuls, attention has no SDPA op
    ops = [n.op_type for n in onnx.load(str(out / "dit_step.onnx")).graph.node]
    assert ops.count("MatMul") >= 8 and "Softmax" in ops

    pipe = Pipeline.from_pretrained(student)
    noise = torch.randn(1, *pipe.latent_shape, generator=torch.Generator().manual_seed(3))
    np.save(tmp_path / "noise.npy", noise.numpy())
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            NO_TORCH,
            str(out),
            PROMPT,
            str(tmp_path / "noise.npy"),
            str(tmp_path / "frames.npy"),
        ],  # fmt: skip
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "torch loaded: False" in done.stdout
    frames = np.load(tmp_path / "frames.npy")
    expected = pipe.generate([PROMPT], seed=3).videos[0].numpy()  # the same noise, seed 3
    assert frames.shape == expected.shape and frames.dtype == np.uint8
    assert np.abs(frames.astype(int) - expected.astype(int)).max() <= 1
    assert (tmp_path / "frames.npy.mp4").stat().st_size > 0  # PyAV, still without torch

    # the command: the exported clip beside eager in one run, and the detector on exported clips
    code, stdout, err = run_cli(
        ["run-exported", out, PROMPT, "-o", tmp_path / "x.mp4", "--seed", 3], capsys
    )
    assert code == 0, err
    assert "| onnxruntime |" in stdout and "| PyTorch eager |" in stdout
    assert "largest frame difference against eager: 0 of 255" in stdout or (
        "largest frame difference against eager: 1 of 255" in stdout
    )
    prompts = tmp_path / "p.txt"
    prompts.write_text(PROMPT + "\na blue star moves up on a gray background\n")
    code, stdout, err = run_cli(
        ["eval-exported", out, "-p", prompts, "--seeds", 2, "-o", tmp_path / "e.json"], capsys
    )
    assert code == 0, err
    r = json.loads((tmp_path / "e.json").read_text())
    assert r["faithfulness"]["clips"] == 4 and r["runtime"] == "onnxruntime"
    assert r["seconds_per_clip"]["total"] > 0


def test_int8_export_quantizes_the_linears(student, tmp_path, capsys):
    out = tmp_path / "int8"
    code, _, err = run_cli(["export", "-m", student, "-o", out, "--precision", "int8"], capsys)
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    ops = {n.op_type for n in onnx.load(str(out / "dit_step.onnx")).graph.node}
    assert "DynamicQuantizeLinear" in ops or "MatMulInteger" in ops
    assert m["precision"] == "int8" and all(
        np.isfinite(a["max_abs_error_vs_eager"]) for a in m["artefacts"].values()
    )


def test_executorch_export_runs_in_the_executorch_runtime(student, tmp_path, capsys):
    out = tmp_path / "pte"
    code, stdout, err = run_cli(
        ["export", "-m", student, "-o", out, "--format", "executorch"], capsys
    )
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    for name, a in m["artefacts"].items():
        assert a["file"].endswith(".pte") and (out / a["file"]).stat().st_size == a["bytes"]
        # XNNPACK's fp32 kernels (their own GEMM blocking, exp and tanh) differ from eager's
        # more than onnxruntime's do: 1.6e-4 on this model's DiT step (docs/export.md)
        assert a["max_abs_error_vs_eager"] <= 1e-3, name
        d = a["delegation"]
        assert d["delegated_subgraphs"] + sum(d["portable_ops"].values()) > 0
    # the DiT step's linears run in XNNPACK; XNNPACK takes every graph (a causal VAE's
    # convolutions: test_a_causal_vae_decoder_runs_in_executorch_as_2d_convolutions)
    assert m["artefacts"]["dit_step"]["delegation"]["delegated_subgraphs"] >= 1
    assert not any("xnnpack_refused" in a for a in m["artefacts"].values())
    # a clip from the .pte files in ExecuTorch's runtime, beside eager
    code, stdout, err = run_cli(["run-exported", out, PROMPT, "-o", tmp_path / "x.mp4"], capsys)
    assert code == 0, err
    assert "| ExecuTorch |" in stdout and (tmp_path / "x.mp4").stat().st_size > 0
    diff = int(stdout.split("largest frame difference against eager: ")[1].split(" ")[0])
    assert diff <= 2


def test_coreml_export_is_an_fp16_ml_program_with_tiled_ffn(student, tmp_path, capsys):
    out = tmp_path / "coreml"
    code, stdout, err = run_cli(
        ["export", "-m", student, "-o", out, "--format", "coreml", "--tile-bytes", "1024"], capsys
    )
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    assert m["precision"] == "fp16" and set(m["ffn_tiles"].values()) == {
        4
    }  # 32x64 fp16 weights, 1 KiB tiles
    dit = m["artefacts"]["dit_step"]
    assert (
        (out / dit["file"]).is_dir() and dit["bytes"] > 0 and dit["max_abs_error_vs_eager"] is None
    )
    assert dit["coreml"]["inputs"] == ["latent", "timestep", "text", "text_mask"]
    assert (
        dit["coreml"]["program_ops"].get("linear", 0)
        + dit["coreml"]["program_ops"].get("matmul", 0)
        > 0
    )
    assert "macOS" in stdout


def test_export_rejects_what_it_cannot_do(student, tmp_path, capsys):
    for args, msg in (
        (["--precision", "fp16"], "not available for onnx"),
        (
            ["--format", "tflite"],
            "--format 'tflite': Input should be 'onnx', 'executorch' or 'coreml'",
        ),
        (["--format", "coreml", "--precision", "int8"], "not available for coreml"),
        (["--tiles", "2", "--tile-bytes", "100"], "not both"),
    ):
        code, _, err = run_cli(["export", "-m", student, "-o", tmp_path / "x", *args], capsys)
        assert code != 0 and msg in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()


def test_a_presets_dit_step_exports_alone(tmp_path, capsys):
    # the size check for paper presets, here on the tiny one: random weights, one graph
    out = tmp_path / "preset"
    code, stdout, err = run_cli(
        ["export", "--preset", "tiny", "--format", "onnx", "-o", out], capsys
    )
    assert code == 0, err
    m = json.loads((out / "manifest.json").read_text())
    a = m["artefacts"]["dit_step"]
    assert m["preset"] == "tiny" and m["tokens"] == 48 and m["params"] > 1_000_000
    assert a["max_abs_error_vs_eager"] <= 1e-4 and (out / a["file"]).stat().st_size == a["bytes"]
    assert m["peak_rss_bytes_during_export"] > 0 and "peak RSS" in stdout
    code, _, err = run_cli(["export", "--preset", "tiny", "-m", "x", "-o", tmp_path / "y"], capsys)
    assert code != 0 and "not both" in err


@pytest.mark.slow  # two ExecuTorch lowerings of a VAE decoder: ~1 min
def test_a_causal_vae_decoder_runs_in_executorch_as_2d_convolutions(tmp_path):
    """ExecuTorch has no 3-D convolution (portable or XNNPACK): every Conv3d and fixed channel
    shortcut becomes one 2-D convolution over its stacked temporal taps, equal to eager, and the
    lowered decoder runs in ExecuTorch's runtime."""
    from mvdit.export.executorch import conv3d_as_conv2d, run_pte, save_pte
    from mvdit.models.vae import CausalVideoVAE, vae_preset

    torch.manual_seed(0)
    vae = CausalVideoVAE(vae_preset("4x8x8", latent_channels=4, widths=[8, 16, 16])).eval()
    for p in vae.parameters():  # the zero-initialised residual branches would hide a wrong tap
        torch.nn.init.normal_(p, std=0.2)
    z = torch.randn(1, 4, 3, 4, 4)
    flat = conv3d_as_conv2d(vae.decoder)
    assert all(
        "_conv_forward" in m.__dict__ for m in flat.modules() if isinstance(m, torch.nn.Conv3d)
    )
    with torch.no_grad():
        ref = vae.decoder(z)
        scale = float(ref.abs().max())
        assert (flat(z) - ref).abs().max() <= 1e-5 * scale
    report = save_pte(vae.decoder, (z,), tmp_path / "dec.pte", "fp32")
    # XNNPACK runs the convolutions (no fold has more than 6 dimensions, its limit)
    assert "xnnpack_refused" not in report and report["delegated_ops"]["convolution"] >= 5
    assert "convolution" not in report["portable_ops"]
    got = run_pte(tmp_path / "dec.pte", (z,))
    assert got.shape == tuple(ref.shape) and np.abs(got - ref.numpy()).max() <= 1e-4 * scale


def test_a_patch_2_dit_step_has_no_tensor_over_6_dimensions():
    """XNNPACK defines no tensor of more than 6 dimensions and refuses the whole graph at load if
    one appears (the DiT step then runs on portable kernels, ~10x slower): patchify and
    unpatchify at patch 2 fold time and rows into one axis instead of reshaping to 7-D."""
    from mvdit.models.dit import DiTConfig, VideoDiT

    cfg = DiTConfig.uniform(depth=1, heads=2, ffn_dim=32, hidden_size=32, head_dim=16,
                            in_channels=8, text_dim=24, patch_size=2)  # fmt: skip
    dit = VideoDiT(cfg).eval()
    args = (torch.randn(1, 8, 3, 8, 8), torch.full((1,), 0.5), torch.randn(1, 5, 24),
            torch.ones(1, 5, dtype=torch.bool))  # fmt: skip
    graph = torch.export.export(dit, args).graph
    ranks = {n.name: n.meta["val"].dim() for n in graph.nodes
             if isinstance(n.meta.get("val"), torch.Tensor)}  # fmt: skip
    assert ranks and max(ranks.values()) <= 6, {k: r for k, r in ranks.items() if r > 6}
    with torch.no_grad():
        assert dit(*args).shape == (1, 8, 3, 8, 8)

"""Tiled GEMM: Y = sum_i X_i W_i + b equals nn.Linear, and tiling a DiT changes nothing but its
FFN's schedule of GEMMs (same weights, same state dict, same output)."""

import json

import pytest
import torch
from conftest import run_cli
from torch import nn

from mvdit import MvditError
from mvdit.export.tiling import TiledLinear, tile_bounds, tile_ffn, tiles_for_bytes, untile_ffn
from mvdit.models.dit import VideoDiT


@pytest.mark.parametrize("k", [1, 2, 3, 7, 64])
def test_tiled_linear_equals_linear(k):
    torch.manual_seed(0)
    lin = nn.Linear(64, 48)
    x = torch.randn(3, 17, 64)
    tiled = TiledLinear(lin, k)
    assert (tiled(x) - lin(x)).abs().max() <= 1e-5
    assert tiled.weight is lin.weight and tiled.bias is lin.bias  # a view, not a copy
    assert sum(b - a for a, b in tiled.bounds) == 64 and len(tiled.bounds) == k


def test_tiled_linear_without_bias_and_bounds():
    lin = nn.Linear(10, 4, bias=False)
    x = torch.randn(5, 10)
    torch.testing.assert_close(TiledLinear(lin, 3)(x), lin(x), atol=1e-6, rtol=0)
    assert tile_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    with pytest.raises(MvditError, match="1..10 tiles"):
        tile_bounds(10, 11)


def test_tile_count_from_bytes():
    lin = nn.Linear(2048, 6144, device="meta")  # paper-student fc1: 24 MiB in fp16
    assert tiles_for_bytes(lin, 2**20) == 24  # 1 MiB tiles
    assert tiles_for_bytes(lin, 2**30) == 1
    assert tiles_for_bytes(lin, 2**20, dtype_bytes=4) == 48
    with pytest.raises(MvditError, match="positive"):
        tiles_for_bytes(lin, 0)


def test_tiling_a_dit_keeps_its_weights_and_output(nonuniform_dit_config):
    torch.manual_seed(0)
    model = VideoDiT(nonuniform_dit_config).eval()
    for p in model.parameters():  # the zero-initialised output would hide any difference
        nn.init.normal_(p, std=0.1)
    grid = (2, 4, 4)
    x = torch.randn(2, nonuniform_dit_config.in_channels, *grid)
    t = torch.rand(2)
    text, mask = (
        torch.randn(2, 5, nonuniform_dit_config.text_dim),
        torch.ones(2, 5, dtype=torch.bool),
    )
    with torch.no_grad():
        ref = model(x, t, text, mask)
    before = model.state_dict()
    chosen = tile_ffn(model, k=4)
    assert chosen and all(v == 4 for v in chosen.values())
    after = model.state_dict()
    assert list(after) == list(before) and all(
        after[k] is not None and torch.equal(after[k], before[k]) for k in before
    )
    with torch.no_grad():
        assert (model(x, t, text, mask) - ref).abs().max() <= 1e-5
    # per-layer counts, and from a tile size; untiling restores plain linears
    untile_ffn(model)
    assert not any(isinstance(m, TiledLinear) for m in model.modules())
    first = next(iter(chosen))
    assert tile_ffn(model, k={first: 3}) == {first: 3}
    untile_ffn(model)
    by_size = tile_ffn(model, tile_bytes=64 * 4, dtype_bytes=4)
    assert all(n > 1 for n in by_size.values())
    with torch.no_grad():
        assert (model(x, t, text, mask) - ref).abs().max() <= 1e-5
    with pytest.raises(MvditError, match="no FFN layer"):
        tile_ffn(model, k={"blocks.99.ffn.fc1": 2})
    with pytest.raises(MvditError, match="either"):
        tile_ffn(model)


def test_tiling_bench_times_both_forms_in_both_runtimes(tmp_path, capsys):
    code, stdout, err = run_cli(
        [
            "bench-tiling",
            "-o",
            tmp_path,
            "--k",
            "1,4",
            "--reps",
            "1",
            "--presets",
            "tiny",
            "--threads",
            "1",
        ],  # fmt: skip
        capsys,
    )
    assert code == 0, err
    rows = json.loads((tmp_path / "tiling.json").read_text())["rows"]
    assert {(r["layer"], r["runtime"], r["k"]) for r in rows} == {
        (layer, rt, k)
        for layer in ("fc1", "fc2")
        for rt in ("eager", "onnxruntime")
        for k in (1, 4)
    }
    assert all(r["max_abs_error"] <= 1e-4 and r["tiled_s"] > 0 and r["speedup"] > 0 for r in rows)
    assert "| tiny fc1 128→512 |" in (tmp_path / "tiling.md").read_text()
    code, _, err = run_cli(["bench-tiling", "-o", tmp_path, "--k", "0"], capsys)
    assert code != 0 and "positive" in err

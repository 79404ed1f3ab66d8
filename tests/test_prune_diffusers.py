"""Pruning diffusers' Wan and LTX-Video transformers (tiny random configs, nothing downloaded)."""

import copy
import json

import pytest
import torch
import torch.nn.functional as F
from conftest import run_cli

pytest.importorskip("diffusers")
from diffusers import LTXVideoTransformer3DModel, WanTransformer3DModel  # noqa: E402

from mvdit import MvditError  # noqa: E402
from mvdit.compress.diffusers_dit import (  # noqa: E402
    DiffusersDiT,
    _LTXKeptHeadsProcessor,
    load_transformer,
    save_pruned,
)
from mvdit.compress.importance import criterion_scores, enumerate_units, random_calibration  # noqa: E402
from mvdit.compress.search import Budget, greedy_prune  # noqa: E402
from mvdit.models.dit import UnitMask  # noqa: E402


def _wan() -> WanTransformer3DModel:
    torch.manual_seed(0)
    m = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=8, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=32, ffn_dim=64, num_layers=3,
        cross_attn_norm=True, rope_max_seq_len=32,
    )  # fmt: skip
    return _randomise(m)


def _ltx() -> LTXVideoTransformer3DModel:
    torch.manual_seed(0)
    m = LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=3, caption_channels=16,
    )  # fmt: skip
    return _randomise(m)


def _randomise(m):
    # every weight non-zero and the norms' gains far from 1 (a head's norm statistics matter)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m.eval()


MODELS = {"wan": _wan, "ltx": _ltx}


def _inputs(n: int = 2, padded: bool = True):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, 3, 4, 4, generator=g)
    t = torch.tensor([0.3, 0.7][:n])
    text = torch.randn(n, 5, 16, generator=g)
    mask = torch.ones(n, 5, dtype=torch.bool)
    if padded:
        mask[0, 3:] = False  # one caption padded: LTX's cross-attention must ignore it
    return x, t, text, mask


def _mask(d: DiffusersDiT) -> UnitMask:
    """A mask cutting at every level: a head, a whole cross-attention, FFN channels, a whole
    FFN, a whole block."""
    m = UnitMask.full(d.config)
    m.heads[0][1] = 0
    m.heads[0][3] = 0
    m.cross_heads[2][:] = 0  # block 2 loses its cross-attention
    m.ffn[0][5:20] = 0
    m.ffn[2][:] = 0  # and its FFN
    m.blocks[1] = 0
    return m


@pytest.mark.parametrize("family", MODELS)
def test_unmasked_adapter_is_the_diffusers_model(family):
    """The adapter conditions each model as its own pipeline does: Wan gets the padded text
    positions as zeros and no mask (WanPipeline), LTX the states and the mask (LTXPipeline)."""
    model = MODELS[family]()
    d = DiffusersDiT(copy.deepcopy(model))  # the adapter may install its own processors
    x, t, text, tm = _inputs()
    with torch.no_grad():
        got = d(x, t, text, tm)
        if family == "wan":
            ref = model(x, t * 1000, text * tm[..., None], return_dict=False)[0]
        else:
            tok = x.flatten(2).transpose(1, 2)
            ref = model(tok, text, t * 1000, tm.float(), 3, 4, 4, return_dict=False)[0]
            ref = ref.transpose(1, 2).reshape(x.shape)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("family", MODELS)
def test_sliced_model_equals_masked_and_reloads(family, tmp_path):
    d = DiffusersDiT(MODELS[family]())
    mask = _mask(d)
    x, t, text, tm = _inputs()
    small = d.slice(mask)
    assert [(s.heads, s.cross_heads, s.ffn_dim, s.source) for s in small.config.blocks] == [
        (2, 4, d.config.blocks[0].ffn_dim - 15, 0),
        (4, 0, 0, 2),
    ]
    # physically smaller, and counted exactly
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small == d.cost(mask, 12, 5)["params"] < sum(p.numel() for p in d.parameters())
    assert d.cost(None, 12, 5)["params"] == sum(p.numel() for p in d.parameters())
    with torch.no_grad():
        masked = d(x, t, text, tm, unit_mask=mask)
        assert (small(x, t, text, tm) - masked).abs().max() <= 1e-5
        # the slice owns its weights: changing it leaves the teacher alone
        before = d(x, t, text, tm)
        for p in small.parameters():
            p.add_(1.0)
        assert torch.equal(d(x, t, text, tm), before)
    # non-uniform widths: mvdit's loader, with the teacher unit each kept unit came from (and
    # also a custom component stock diffusers loads with trust_remote_code)
    small = d.slice(mask)
    assert save_pruned(small, tmp_path / "p") == "remote"
    rec = json.loads((tmp_path / "p" / "mvdit_prune.json").read_text())
    assert rec["sources"][0]["heads"] == [0, 2] and rec["sources"][1]["block"] == 2
    back = load_transformer(tmp_path / "p")
    with torch.no_grad():
        assert (back(x, t, text, tm) - masked).abs().max() <= 1e-5
    # ... which diffusers' own loader cannot express
    cls = type(d.transformer)
    with pytest.raises(Exception, match="shape"):
        cls.from_pretrained(tmp_path / "p")


def test_uniform_wan_reloads_with_stock_from_pretrained(tmp_path):
    d = DiffusersDiT(_wan())
    mask = UnitMask.full(d.config)
    mask.blocks[0] = 0
    for b in range(3):
        mask.ffn[b][::2] = 0  # every block keeps the same 32 channels
    small = d.slice(mask)
    assert save_pruned(small, tmp_path / "u") == "stock"
    stock = WanTransformer3DModel.from_pretrained(tmp_path / "u").eval()
    assert stock.config.num_layers == 2 and stock.config.ffn_dim == 32
    x, t, text, tm = _inputs()
    with torch.no_grad():
        ref = d(x, t, text, tm, unit_mask=mask)
        got = stock(x, t * 1000, text * tm[..., None], return_dict=False)[0]
        assert (got - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("family", MODELS)
def test_removing_a_block_is_deleting_it(family):
    model = MODELS[family]()
    d = DiffusersDiT(model)
    mask = UnitMask.full(d.config)
    mask.blocks[1] = 0
    ref = copy.deepcopy(model)
    blocks = ref.blocks if family == "wan" else ref.transformer_blocks
    del blocks[1]
    x, t, text, tm = _inputs()
    with torch.no_grad():
        assert torch.equal(d(x, t, text, tm, unit_mask=mask), DiffusersDiT(ref)(x, t, text, tm))


def test_wan_head_removal_normalises_over_the_kept_heads():
    """Wan's q/k RMSNorm runs across heads: without head 1 it runs over heads 0, 2, 3 only."""
    d = DiffusersDiT(_wan())
    attn = d.blocks[0].attn1
    mask = UnitMask.full(d.config)
    mask.heads[0][1] = 0
    h = torch.randn(2, 12, 32)
    grabbed = {}
    d.blocks[0].attn1.register_forward_hook(lambda m, a, o: grabbed.update(x=a[0], rope=a[3]))
    x, t, text, tm = _inputs()
    with torch.no_grad():
        d(x, t, text, tm)
        h, (cos, sin) = grabbed["x"], grabbed["rope"]
        small = d.slice(mask)
        got = small.blocks[0].attn1(h, None, None, (cos, sin))
        ch = torch.tensor([c for k in (0, 2, 3) for c in range(k * 8, (k + 1) * 8)])

        def proj(lin):
            return F.linear(h, lin.weight[ch], lin.bias[ch])

        def rms(v, norm):
            return v * torch.rsqrt(v.pow(2).mean(-1, keepdim=True) + norm.eps) * norm.weight[ch]

        def rope(v):  # Wan's interleaved rotation per head
            v = v.unflatten(2, (3, 8))
            a, b = v[..., 0::2], v[..., 1::2]
            c, s = cos[..., 0::2], sin[..., 1::2]
            out = torch.stack([a * c - b * s, a * s + b * c], -1).flatten(-2)
            return out.transpose(1, 2)

        q, k = rope(rms(proj(attn.to_q), attn.norm_q)), rope(rms(proj(attn.to_k), attn.norm_k))
        v = proj(attn.to_v).unflatten(2, (3, 8)).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        ref = F.linear(o, attn.to_out[0].weight[:, ch], attn.to_out[0].bias)
    assert (got - ref).abs().max() <= 1e-5


def test_ltx_kept_heads_processor_with_all_heads_is_ltx_attention():
    """The processor a sliced LTX attention runs is LTX's own, rotary table cut per head."""
    model = _ltx()
    attn = model.transformer_blocks[0].attn2
    h, ctx = torch.randn(2, 12, 32), torch.randn(2, 5, 32)
    bias = torch.zeros(2, 1, 5)
    bias[0, :, 3:] = -10000.0
    with torch.no_grad():
        ref = attn(h, ctx, bias)
        attn.processor = _LTXKeptHeadsProcessor(range(32))
        assert (attn(h, ctx, bias) - ref).abs().max() <= 1e-5
        self_attn = model.transformer_blocks[0].attn1
        rope = model.rope(torch.zeros(2, 12, 4), 3, 2, 2)
        ref = self_attn(h, None, None, rope)
        self_attn.processor = _LTXKeptHeadsProcessor(range(32))
        assert (self_attn(h, None, None, rope) - ref).abs().max() <= 1e-5


@pytest.mark.parametrize("family", MODELS)
def test_greedy_search_runs_on_the_adapter(family):
    d = DiffusersDiT(MODELS[family]())
    calib = random_calibration(d.config, (3, 4, 4), n=2, text_len=5)
    base = d.cost(None, d.config.tokens((3, 4, 4)), 5)["params"]
    res = greedy_prune(d, calib, Budget("params", 0.7), group=16, rescore_every=4, batch=2)
    assert res.final["params"] <= 0.7 * base
    small = d.slice(res.mask)
    assert sum(p.numel() for p in small.parameters()) == res.final["params"]
    kd = criterion_scores("kd", d, calib, enumerate_units(d.config, 16, ["head"]), 16, batch=2)
    assert all(v > 0 for v in kd.values()) and len(kd) == 12
    with pytest.raises(MvditError, match="kd or magnitude"):
        criterion_scores("taylor", d, calib, [], 16)


def test_prune_command_on_a_diffusers_directory(tmp_path, capsys):
    _ltx().save_pretrained(tmp_path / "ltx")
    out = tmp_path / "pruned"
    code, stdout, err = run_cli(
        ["prune", "-m", tmp_path / "ltx", "--budget", "params=0.8", "-o", out,
         "--criterion", "magnitude", "--group", "32", "--latent", "3,4,4"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "reloaded vs masked max |diff| 0.00e+00" in stdout
    report = json.loads((out / "prune.json").read_text())
    assert report["final"]["params"] <= 0.8 * report["base"]["params"]
    assert report["calibration"]["kind"] == "random"
    back = load_transformer(out)
    assert sum(p.numel() for p in back.parameters()) == report["final"]["params"]
    code, _, err = run_cli(
        ["prune", "-m", tmp_path / "ltx", "-o", tmp_path / "x", "--criterion", "taylor"], capsys
    )
    assert code != 0 and "kd or magnitude" in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
    # calibration options a Gaussian calibration does not read are refused, not ignored
    for flag, value in (("--timesteps", "0.2,0.4"), ("--prompts", "prompts/shapes-train.txt")):
        code, _, err = run_cli(["prune", "-m", tmp_path / "ltx", "-o", tmp_path / "x", flag, value],
                               capsys)  # fmt: skip
        assert code == 2 and f"({flag}) does not apply to" in err and "Gaussian" in err
        assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("family", ["wan", "ltx"])
def test_sensitivity_command_on_a_diffusers_directory(tmp_path, capsys, family):
    (_wan if family == "wan" else _ltx)().save_pretrained(tmp_path / family)
    out = tmp_path / "sens"
    code, stdout, err = run_cli(
        ["sensitivity", "-m", tmp_path / family, "-o", out, "--latent", "3,4,4",
         "--n-prompts", 2, "--seeds", 1], capsys,
    )  # fmt: skip
    assert code == 0, err
    r = json.loads((out / "sensitivity.json").read_text())
    assert r["calibration"]["kind"] == "random" and r["calibration"]["items"] == 2
    assert {u["level"] for u in r["units"]} == {"block", "head", "cross_head", "ffn"}
    assert all(u["kd"] >= 0 and "magnitude" in u for u in r["units"])
    assert set(r["rank_correlation_with_kd"]["all"]) == {"magnitude"}  # what an adapter supports
    # the depth curves: the least sensitive units removed first, on the sliced diffusers model
    blocks = r["curves"]["block"]
    assert blocks[0]["params"] > blocks[-1]["params"] and "faithfulness" not in blocks[-1]
    assert (out / "sensitivity.png").stat().st_size > 10_000
    assert "Gaussian calibration items" in (out / "sensitivity.md").read_text()
    code, _, err = run_cli(["sensitivity", "-m", tmp_path / family, "-o", tmp_path / "x",
                            "--latent", "3,4"], capsys)  # fmt: skip
    assert code == 2 and "latent is T, H, W (three positive integers)" in err

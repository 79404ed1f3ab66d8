"""The contract every DiT the recipe works on keeps (mvdit.models.interface.PrunableDiT), checked
over mvdit's DiT and tiny random diffusers Wan 2.1 and LTX-Video transformers alike: masked equals
sliced at every level, `cost` equals the counted parameters and FlopCounterMode's FLOPs, and
`features` agrees with the forward, early exit included."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from mvdit.compress.importance import enumerate_units
from mvdit.models.dit import BlockSpec, DiTConfig, UnitMask, VideoDiT
from mvdit.models.interface import PrunableDiT

LATENT = (3, 4, 4)  # T, H, W of the test latents
TEXT_LEN = 5


def _randomise(m):
    with torch.no_grad():  # every weight non-zero, norm gains far from 1
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m.eval()


def _mvdit():
    cfg = DiTConfig(
        blocks=[BlockSpec(heads=4, cross_heads=4, ffn_dim=64) for _ in range(3)],
        hidden_size=32, head_dim=8, in_channels=4, text_dim=16,
    )  # fmt: skip
    torch.manual_seed(0)
    return _randomise(VideoDiT(cfg))


def _wan():
    diffusers = pytest.importorskip("diffusers")
    from mvdit.compress.diffusers_dit import DiffusersDiT

    torch.manual_seed(0)
    m = diffusers.WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=8, in_channels=4,
        out_channels=4, text_dim=16, freq_dim=32, ffn_dim=64, num_layers=3,
        cross_attn_norm=True, rope_max_seq_len=32,
    )  # fmt: skip
    return DiffusersDiT(_randomise(m))


def _ltx():
    diffusers = pytest.importorskip("diffusers")
    from mvdit.compress.diffusers_dit import DiffusersDiT

    torch.manual_seed(0)
    m = diffusers.LTXVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=3, caption_channels=16,
    )  # fmt: skip
    return DiffusersDiT(_randomise(m))


MODELS = {"mvdit": _mvdit, "wan": _wan, "ltx": _ltx}


@pytest.fixture(params=list(MODELS))
def model(request) -> PrunableDiT:
    return MODELS[request.param]()


def _inputs():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, *LATENT, generator=g)
    t = torch.tensor([0.3, 0.7])
    text = torch.randn(2, TEXT_LEN, 16, generator=g)
    mask = torch.ones(2, TEXT_LEN, dtype=torch.bool)
    mask[0, 3:] = False
    return x, t, text, mask


def _tokens(model) -> int:
    return model.config.tokens(LATENT)


MASKS = {
    "one head": lambda m: m.without("head", 0, [1]),
    "all heads of a block": lambda m: m.without("head", 1, [0, 1, 2, 3]),
    "cross heads": lambda m: m.without("cross_head", 2, [0, 3]),
    "ffn channels": lambda m: m.without("ffn", 0, list(range(5, 20))),
    "a whole ffn": lambda m: m.without("ffn", 2, list(range(64))),
    "a block": lambda m: m.without("block", 1),
}


def test_it_is_the_interface(model):
    assert isinstance(model, PrunableDiT)
    assert set(model.criteria) >= {"kd", "magnitude"}


@pytest.mark.parametrize("cut", MASKS)
def test_masked_equals_sliced_and_cost_counts_it(model, cut):
    x, t, text, tm = _inputs()
    mask = MASKS[cut](UnitMask.full(model.config))
    small = model.slice(mask)
    with torch.no_grad():
        masked = model(x, t, text, tm, unit_mask=mask)
        assert (small(x, t, text, tm) - masked).abs().max() <= 1e-5
    counted = sum(p.numel() for p in small.parameters())
    assert model.cost(mask, _tokens(model), TEXT_LEN)["params"] == counted
    assert model.cost(None, _tokens(model), TEXT_LEN)["params"] == sum(
        p.numel() for p in model.parameters()
    )


def test_cost_flops_match_the_flop_counter(model):
    """Every matmul of one forward, batch 1, counted within 0.5% of FlopCounterMode (attention in
    SDPA's math form, whose products the counter sees)."""
    x, t, text, tm = (a[:1] for a in _inputs())
    mask = MASKS["ffn channels"](MASKS["one head"](UnitMask.full(model.config)))
    for m in (model, model.slice(mask)):
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc, torch.no_grad():
            m(x, t, text, tm)
        counted = fc.get_total_flops()
        stated = m.cost(None, _tokens(m), TEXT_LEN)["flops"]
        assert abs(stated - counted) <= 0.005 * counted, (stated, counted)
    assert (
        model.cost(mask, _tokens(model), TEXT_LEN)["flops"]
        == model.slice(mask).cost(None, _tokens(model), TEXT_LEN)["flops"]
    )


def test_features_agree_with_the_forward(model):
    x, t, text, tm = _inputs()
    with torch.no_grad():
        v = model(x, t, text, tm)
        full = model.features(x, t, text, tm, blocks=[0, -1])
        early = model.features(x, t, text, tm, blocks=[0], stop_after=1)
    assert torch.allclose(full.velocity, v, atol=1e-6)
    assert set(full.tokens) == {0, 2} and early.velocity is None
    assert torch.allclose(early.tokens[0], full.tokens[0], atol=1e-6)


def test_magnitude_scores_cover_every_unit(model):
    units = enumerate_units(model.config, 16)
    scores = model.magnitude_scores(units, 16)
    assert set(scores) == {u.key for u in units} and all(v > 0 for v in scores.values())


def test_one_step_exports_without_float64(model):
    """torch.export of one velocity step (what `mvdit export` lowers); no float64 node, which
    mobile backends lack (diffusers builds Wan's rotary tables in float64)."""
    x, t, text, tm = _inputs()
    ep = torch.export.export(model, (x, t, text, tm))
    kinds = {n.meta["val"].dtype for n in ep.graph.nodes if hasattr(n.meta.get("val"), "dtype")}
    assert torch.float64 not in kinds and torch.float32 in kinds
    with torch.no_grad():
        assert torch.allclose(ep.module()(x, t, text, tm), model(x, t, text, tm), atol=1e-5)


def test_a_sliced_model_saves_and_loads_back(model, tmp_path):
    small = model.slice(MASKS["one head"](UnitMask.full(model.config)))
    small.save_pretrained(tmp_path / "m")
    back = type(small).from_pretrained(tmp_path / "m")
    x, t, text, mask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            back(x, t, text, mask), small(x, t, text, mask), atol=1e-6, rtol=0
        )
    assert [b.model_dump() for b in back.config.blocks] == [
        b.model_dump() for b in small.config.blocks
    ]


def test_prepared_conditioning_is_what_the_forward_reads(model):
    """The sampler prepares the text once per clip (prepare_conditioning) and passes the result
    at every step: the same velocity as the forward on the raw text."""
    x, t, text, mask = _inputs()
    with torch.no_grad():
        v = model(x, t, **model.prepare_conditioning(text, mask))
        torch.testing.assert_close(v, model(x, t, text, mask), atol=1e-6, rtol=0)

"""Masking a unit and slicing it away give the same model, at every level (one test per case)."""

import pytest
import torch

from mvdit import MvditError
from mvdit.models.dit import BlockSpec, DiTConfig, UnitMask, VideoDiT, keep_sets, slice_dit

TOL = 1e-5


@pytest.fixture
def model():
    torch.manual_seed(0)
    cfg = DiTConfig.uniform(
        depth=3, heads=4, ffn_dim=48, hidden_size=32, head_dim=8, in_channels=6, text_dim=12
    )
    m = VideoDiT(cfg).eval()
    with torch.no_grad():  # every weight and bias non-zero, so a dropped term would show
        for p in m.parameters():
            p.normal_(0, 0.3)
    return m


def _inputs(b=2):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(b, 6, 2, 3, 4, generator=g)
    text = torch.randn(b, 5, 12, generator=g)
    mask = torch.ones(b, 5, dtype=torch.bool)
    mask[0, 3:] = False
    return x, torch.rand(b, generator=g), text, mask


def _check(model, mask, expect_blocks):
    x, t, text, tmask = _inputs()
    with torch.no_grad():
        masked = model(x, t, text, tmask, unit_mask=mask)
        small = slice_dit(model, mask)
        sliced = small(x, t, text, tmask)
        full = model(x, t, text, tmask)
    assert [(b.heads, b.cross_heads, b.ffn_dim) for b in small.config.blocks] == expect_blocks
    assert (masked - sliced).abs().max() <= TOL
    assert (masked - full).abs().max() > 1e-3  # the mask did remove something
    return small


def test_some_heads(model):
    mask = UnitMask.full(model.config).without("head", 1, [0, 2])
    _check(model, mask, [(4, 4, 48), (2, 4, 48), (4, 4, 48)])


def test_all_heads_removes_the_sublayer_and_its_gated_bias(model):
    mask = UnitMask.full(model.config).without("head", 0)
    small = _check(model, mask, [(0, 4, 48), (4, 4, 48), (4, 4, 48)])
    assert small.blocks[0].attn is None


def test_some_ffn_channels(model):
    mask = UnitMask.full(model.config).without("ffn", 2, range(0, 48, 3))
    _check(model, mask, [(4, 4, 48), (4, 4, 48), (4, 4, 32)])


def test_all_ffn_channels(model):
    mask = UnitMask.full(model.config).without("ffn", 1)
    small = _check(model, mask, [(4, 4, 48), (4, 4, 0), (4, 4, 48)])
    assert small.blocks[1].ffn is None


def test_cross_attention_heads(model):
    mask = UnitMask.full(model.config).without("cross_head", 0, [3])
    _check(model, mask, [(4, 3, 48), (4, 4, 48), (4, 4, 48)])


def test_all_cross_attention_heads(model):
    mask = UnitMask.full(model.config).without("cross_head", 2)
    small = _check(model, mask, [(4, 4, 48), (4, 4, 48), (4, 0, 48)])
    assert small.blocks[2].cross_attn is None and small.blocks[2].norm2 is None


def test_a_whole_block(model):
    mask = UnitMask.full(model.config).without("block", 1)
    small = _check(model, mask, [(4, 4, 48), (4, 4, 48)])
    assert [b.source for b in small.config.blocks] == [0, 2]


def test_a_block_with_every_sublayer_masked_is_removed(model):
    m = UnitMask.full(model.config)
    for level in ("head", "cross_head", "ffn"):
        m = m.without(level, 0)
    small = _check(model, m, [(4, 4, 48), (4, 4, 48)])
    assert [b.source for b in small.config.blocks] == [1, 2]


def test_a_mix_across_blocks_saves_and_reloads(model, tmp_path):
    m = (
        UnitMask.full(model.config)
        .without("head", 0, [1])
        .without("cross_head", 0, [0, 1])
        .without("ffn", 0, range(10))
        .without("head", 2)
        .without("ffn", 2, [5, 6, 7])
        .without("block", 1)
    )
    small = _check(model, m, [(3, 2, 38), (0, 4, 45)])
    small.save_pretrained(tmp_path / "pruned")
    back = VideoDiT.from_pretrained(tmp_path / "pruned")
    assert back.config == small.config and [b.source for b in back.config.blocks] == [0, 2]
    x, t, text, tmask = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(
            back(x, t, text, tmask), small(x, t, text, tmask), rtol=0, atol=0
        )
    # the kept indices are recorded exactly
    ks = keep_sets(m)["blocks"]
    assert ks[0]["heads"] == [0, 2, 3] and ks[0]["cross_heads"] == [2, 3] and ks[1]["block"] == 2


def test_slicing_a_sliced_model_keeps_the_original_source(model):
    first = slice_dit(model, UnitMask.full(model.config).without("block", 0))
    second = slice_dit(first, UnitMask.full(first.config).without("block", 0))
    assert [b.source for b in second.config.blocks] == [2]


def test_fractional_masks_are_not_sliced(model):
    m = UnitMask.full(model.config)
    m.heads[0][1] = 0.5
    with pytest.raises(MvditError, match="binary"):
        slice_dit(model, m)


def test_a_mask_of_another_shape_is_rejected(model):
    other = UnitMask.full(model.config)
    other.ffn[0] = torch.ones(7)
    with pytest.raises(MvditError, match="ffn"):
        model(*_inputs(), unit_mask=other)


def test_a_block_spec_with_nothing_left_is_rejected():
    with pytest.raises(ValueError, match="remove the block instead"):
        DiTConfig(
            blocks=[BlockSpec(heads=0, cross_heads=0, ffn_dim=0)],
            in_channels=4,
            hidden_size=16,
            head_dim=8,
            text_dim=8,
        )

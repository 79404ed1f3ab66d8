import pytest
import torch

from mvdit import MvditError
from mvdit.config import preset_config
from mvdit.models.dit import Attention, VideoDiT, rope_3d


def _inputs(cfg, b=2, grid=(3, 4, 5), L=7):
    x = torch.randn(b, cfg.in_channels, *grid)
    text = torch.randn(b, L, cfg.text_dim)
    mask = torch.ones(b, L, dtype=torch.bool)
    mask[0, 4:] = False
    return x, torch.rand(b), text, mask


@pytest.mark.parametrize(
    "preset, target",
    [("paper-teacher", 2.0e9), ("paper-student", 0.9e9)],
)
def test_paper_presets_match_paper_parameter_counts(preset, target):
    with torch.device("meta"):
        model = VideoDiT(preset_config(preset))
    total = model.param_counts()["total"]
    assert abs(total - target) / target <= 0.07, f"{preset}: {total / 1e9:.3f}B vs {target / 1e9}B"


def test_paper_student_block_shape():
    cfg = preset_config("paper-student")
    assert (
        len(cfg.blocks) == 20 and {b.heads for b in cfg.blocks} == {20} and cfg.hidden_size == 2048
    )


def test_forward_shapes_and_zero_init(tiny_dit_config):
    model = VideoDiT(tiny_dit_config)
    x, t, text, mask = _inputs(tiny_dit_config)
    out = model(x, t, text, mask)
    assert out.shape == x.shape
    # zero-initialised output layer: an untrained model predicts v = 0
    assert torch.count_nonzero(out) == 0


def test_features_are_collected_per_block(nonuniform_dit_config):
    model = VideoDiT(nonuniform_dit_config)
    x, t, text, mask = _inputs(nonuniform_dit_config)
    feats = list(model.features(x, t, text, mask, blocks=[0, 1, 2]).tokens.values())
    assert len(feats) == 3 and all(f.shape == (2, 3 * 4 * 5, 32) for f in feats)


def test_nonuniform_blocks_have_their_own_widths(nonuniform_dit_config):
    model = VideoDiT(nonuniform_dit_config)
    b0, b1, b2 = model.blocks
    assert (
        b0.attn.q.out_features == 3 * 16
        and b0.cross_attn.q.out_features == 16
        and b0.ffn.fc1.out_features == 40
    )
    assert b1.attn is None and b1.cross_attn.k.in_features == 20 and b1.ffn.fc1.out_features == 72
    assert b2.cross_attn is None and b2.ffn is None


def test_save_load_round_trip_nonuniform(tmp_path, nonuniform_dit_config):
    torch.manual_seed(0)
    model = VideoDiT(nonuniform_dit_config)
    torch.nn.init.normal_(model.out.weight)  # make the output depend on every weight
    model.save_pretrained(tmp_path / "m")
    loaded = VideoDiT.from_pretrained(tmp_path / "m")
    assert loaded.config == model.config
    x, t, text, mask = _inputs(nonuniform_dit_config)
    torch.testing.assert_close(loaded(x, t, text, mask), model(x, t, text, mask), rtol=0, atol=0)
    assert not list(tmp_path.glob("m/*.pt")) and (tmp_path / "m" / "model.safetensors").is_file()


def test_loading_another_shape_names_the_tensor(tmp_path, tiny_dit_config, nonuniform_dit_config):
    VideoDiT(tiny_dit_config).save_pretrained(tmp_path / "m")
    # swap in a config of another architecture next to the weights
    VideoDiT(nonuniform_dit_config).save_pretrained(tmp_path / "other")
    (tmp_path / "m" / "config.json").write_text((tmp_path / "other" / "config.json").read_text())
    with pytest.raises(MvditError, match=r"tensor '.*'"):
        VideoDiT.from_pretrained(tmp_path / "m")


def test_wider_ffn_checkpoint_reports_shapes(tmp_path, tiny_dit_config):
    VideoDiT(tiny_dit_config).save_pretrained(tmp_path / "m")
    wider = tiny_dit_config.model_copy(deep=True)
    wider.blocks[1].ffn_dim = 96
    import json

    (tmp_path / "m" / "config.json").write_text(
        json.dumps({"kind": "video_dit", **wider.model_dump()})
    )
    with pytest.raises(MvditError, match=r"blocks\.1\.ffn\.fc1\.weight.*\(64, 32\).*\(96, 32\)"):
        VideoDiT.from_pretrained(tmp_path / "m")


def test_rope_positions_are_distinct_and_relative():
    cos, sin = rope_3d((3, 4, 5), 32, 10000.0)
    assert cos.shape == (60, 16)
    angles = torch.atan2(sin, cos)
    # every token its own code
    assert len({tuple(a.round(decimals=5).tolist()) for a in angles}) == 60
    # attention scores depend on relative positions only: shift every token by one frame
    from mvdit.models.dit import apply_rope

    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)
    c, s = rope_3d((4, 1, 1), 32, 10000.0)
    score = lambda i, j: (apply_rope(q, c[i], s[i]) * apply_rope(k, c[j], s[j])).sum()  # noqa: E731
    torch.testing.assert_close(score(0, 1), score(2, 3), rtol=1e-5, atol=1e-5)


def test_flops_scale_with_tokens(tiny_dit_config):
    model = VideoDiT(tiny_dit_config)
    f1, f2 = model.flops_per_step(100, 8), model.flops_per_step(200, 8)
    assert 2 * f1 < f2 < 4 * f1  # linear layers double, attention quadruples


def _trained_like(cfg):
    torch.manual_seed(0)
    model = VideoDiT(cfg).eval()
    torch.nn.init.normal_(model.out.weight, std=0.1)  # the output depends on every block
    return model


def test_features_stop_early_and_carry_the_conditioning(tiny_dit_config):
    model = _trained_like(tiny_dit_config)
    x, t, text, mask = _inputs(tiny_dit_config)
    full = model.features(x, t, text, mask, blocks=[0, -1])
    assert sorted(full.tokens) == [0, 1] and full.velocity is not None
    torch.testing.assert_close(full.velocity, model(x, t, text, mask), rtol=0, atol=0)
    early = model.features(x, t, text, mask, blocks=[0], stop_after=1)
    assert early.velocity is None and list(early.tokens) == [0]
    torch.testing.assert_close(early.tokens[0], full.tokens[0], rtol=0, atol=0)
    assert early.t_emb.shape == (2, 32) and early.text.shape == (2, 7, 32)
    assert early.grid == (3, 4, 5) and early.text_mask is mask
    with pytest.raises(MvditError, match="not run"):
        model.features(x, t, text, mask, blocks=[1], stop_after=1)


def test_text_context_computed_once_gives_the_same_velocity(tiny_dit_config):
    model = _trained_like(tiny_dit_config)
    x, t, text, mask = _inputs(tiny_dit_config)
    ctx = model.text_context(text, mask)
    torch.testing.assert_close(model(x, t, ctx), model(x, t, text, mask), rtol=0, atol=0)


def test_rope_tables_are_cached_fp32():
    model = VideoDiT(preset_config("tiny", 16, 384))
    cos, sin = model.rope((3, 4, 4), torch.device("cpu"))
    assert cos.dtype == sin.dtype == torch.float32
    assert model.rope((3, 4, 4), torch.device("cpu"))[0] is cos  # built once per grid


@pytest.mark.parametrize("prediction", ["velocity", "sample"])
def test_an_exported_step_has_no_float64(tiny_dit_config, prediction):
    model = _trained_like(tiny_dit_config.model_copy(update={"prediction": prediction}))
    x, t, text, mask = _inputs(tiny_dit_config, b=1)
    ep = torch.export.export(model, (x, t, text, mask))
    dtypes = [
        n.meta["val"].dtype for n in ep.graph.nodes if isinstance(n.meta.get("val"), torch.Tensor)
    ]
    assert dtypes and torch.float64 not in dtypes
    torch.testing.assert_close(ep.module()(x, t, text, mask), model(x, t, text, mask))


def test_patch_2_is_patch_1_on_the_folded_latent(tiny_dit_config):
    """A patch-2 DiT is the patch-1 DiT with the same weights run on each 2x2 square of latent
    voxels folded into channels (height-offset, width-offset, channel order), unfolded after."""
    torch.manual_seed(0)
    c, p = tiny_dit_config.in_channels, 2
    m2 = VideoDiT(tiny_dit_config.model_copy(update={"patch_size": p}))
    m1 = VideoDiT(tiny_dit_config.model_copy(update={"in_channels": c * p * p}))
    torch.nn.init.normal_(m2.out.weight)
    m1.load_state_dict(m2.state_dict())
    x, t, text, mask = _inputs(tiny_dit_config, grid=(3, 4, 6))
    b, _, T, H, W = x.shape
    folded = torch.empty(b, p, p, c, T, H // p, W // p)
    for i in range(p):
        for j in range(p):
            folded[:, i, j] = x[..., i::p, j::p]
    v1 = m1(folded.flatten(1, 3), t, text, mask).view(b, p, p, c, T, H // p, W // p)
    v2 = m2(x, t, text, mask)
    assert v2.shape == x.shape
    for i in range(p):
        for j in range(p):
            torch.testing.assert_close(v2[..., i::p, j::p], v1[:, i, j], atol=1e-5, rtol=1e-5)
    assert m2.config.tokens((3, 4, 6)) == 3 * 2 * 3
    assert m2.flops_per_step(18, 7) == m1.flops_per_step(18, 7)


def test_patch_size_must_divide_the_latent(tiny_dit_config):
    model = VideoDiT(tiny_dit_config.model_copy(update={"patch_size": 2}))
    x, t, text, mask = _inputs(tiny_dit_config, grid=(3, 4, 5))
    with pytest.raises(MvditError, match="patch_size 2"):
        model(x, t, text, mask)


def test_explicit_attention_equals_sdpa(nonuniform_dit_config):
    # the export form (matmul + softmax + matmul) against the fused op, caption padding included
    torch.manual_seed(0)
    model = VideoDiT(nonuniform_dit_config).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, nonuniform_dit_config.in_channels, 2, 4, 4)
    text = torch.randn(2, 6, nonuniform_dit_config.text_dim)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    t = torch.rand(2)
    with torch.no_grad():
        ref = model(x, t, text, mask)
        for m in model.modules():
            if isinstance(m, Attention):
                m.fused = False
        got = model(x, t, text, mask)
    assert (got - ref).abs().max() <= 1e-5


def test_sample_prediction_turns_the_clean_latent_into_a_velocity(tmp_path, tiny_dit_config):
    """prediction="sample": the output layer predicts x0 and forward returns (x_t - x0) / t, with
    t floored at SAMPLE_T_FLOOR; the same weights as a velocity model give that model's raw output
    as x0. An Euler step from t to 0 then lands on x0 exactly."""
    from mvdit.build import build_dit_config
    from mvdit.config import ModelConfig
    from mvdit.models.dit import SAMPLE_T_FLOOR

    torch.manual_seed(0)
    vel = VideoDiT(tiny_dit_config)
    torch.nn.init.normal_(vel.out.weight)
    smp = VideoDiT(tiny_dit_config.model_copy(update={"prediction": "sample"}))
    smp.load_state_dict(vel.state_dict())
    x, _, text, mask = _inputs(tiny_dit_config)
    t = torch.tensor([0.7, 0.01])
    x0 = vel(x, t, text, mask)
    v = smp(x, t, text, mask)
    floor = t.clamp_min(SAMPLE_T_FLOOR).view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(v, (x - x0) / floor)
    torch.testing.assert_close(x[:1] - 0.7 * v[:1], x0[:1])
    # the config records it, a saved model reloads it, the training config sets it
    smp.save_pretrained(tmp_path / "m")
    assert VideoDiT.from_pretrained(tmp_path / "m").config.prediction == "sample"
    built = build_dit_config(ModelConfig(preset="tiny", prediction="sample"), 32, 384)
    assert built.prediction == "sample" and built.in_channels == 32
    assert build_dit_config(ModelConfig(preset="tiny"), 32, 384).prediction == "velocity"


def test_pooled_text_starts_as_the_model_without_it_and_then_follows_the_caption(
    tmp_path, tiny_dit_config
):
    """pooled_text adds an MLP of the caption's mean text state to the time embedding. Its last
    layer starts at zero, so the same weights give the same velocity as the model without it; once
    trained, the velocity depends on the caption through it, padding excluded from the mean."""
    from mvdit.build import build_dit_config
    from mvdit.config import ModelConfig
    from mvdit.models.dit import dit_params

    plain = _trained_like(tiny_dit_config)
    pooled_cfg = tiny_dit_config.model_copy(update={"pooled_text": True})
    pooled = _trained_like(pooled_cfg)
    missing, unexpected = pooled.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and missing and all(k.startswith("pooled_embed.") for k in missing)
    x, t, text, mask = _inputs(tiny_dit_config)
    torch.testing.assert_close(pooled(x, t, text, mask), plain(x, t, text, mask), rtol=0, atol=0)

    torch.nn.init.normal_(pooled.pooled_embed[2].weight, std=0.5)
    ctx = pooled.text_context(text, mask)
    assert ctx.pooled is not None and ctx.pooled.shape == (2, pooled_cfg.hidden_size)
    # the caption reaches the velocity through the modulation alone: with cross-attention's keys
    # and values held fixed, another caption's pooled vector still changes it
    other = pooled.text_context(torch.randn_like(text), mask)
    swapped = type(ctx)(ctx.text, ctx.mask, ctx.kv, other.pooled)
    assert (pooled(x, t, swapped) - pooled(x, t, ctx)).abs().max() > 1e-4
    # padded positions (mask False) do not enter the mean
    padded = text.clone()
    padded[0, 4:] = 100.0
    torch.testing.assert_close(pooled.text_context(padded, mask).pooled, ctx.pooled)
    # counted, saved, reloaded and set from the training config
    assert dit_params(pooled_cfg) == sum(p.numel() for p in pooled.parameters())
    assert pooled.param_counts()["total"] == dit_params(pooled_cfg)
    pooled.save_pretrained(tmp_path / "m")
    back = VideoDiT.from_pretrained(tmp_path / "m")
    assert back.config.pooled_text
    torch.testing.assert_close(back(x, t, text, mask), pooled(x, t, text, mask))
    for over in ({}, {"depth": 3}):
        built = build_dit_config(ModelConfig(preset="tiny", pooled_text=True, **over), 32, 384)
        assert built.pooled_text and len(built.blocks) == (3 if over else 6)
    assert not build_dit_config(ModelConfig(preset="tiny"), 32, 384).pooled_text

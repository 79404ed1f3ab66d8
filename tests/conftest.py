import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_dit_config():
    from mvdit.models.dit import DiTConfig

    return DiTConfig.uniform(
        depth=2, heads=2, ffn_dim=64, hidden_size=32, head_dim=16, in_channels=12, text_dim=24
    )


@pytest.fixture
def nonuniform_dit_config():
    from mvdit.models.dit import BlockSpec, DiTConfig

    blocks = [
        BlockSpec(heads=3, cross_heads=1, ffn_dim=40, source=0),
        BlockSpec(heads=0, cross_heads=2, ffn_dim=72, source=2),  # self-attention pruned away
        # cross-attention and FFN pruned away
        BlockSpec(heads=1, cross_heads=0, ffn_dim=0, source=5),
    ]
    return DiTConfig(
        blocks=blocks, hidden_size=32, head_dim=16, in_channels=12, text_dim=24, caption_dim=20
    )


def run_cli(args, capsys) -> tuple[int, str, str]:
    """Run `mvdit ARGS` through the real entry point: (exit code, stdout, stderr)."""
    import sys

    from mvdit.cli import main

    old, sys.argv = sys.argv, ["mvdit", *map(str, args)]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code or 0
    finally:
        sys.argv = old
    out = capsys.readouterr()
    return code, out.out, out.err


def save_tiny_pipeline(
    path,
    frames: int = 9,
    size: int = 32,
    temporal_factor: int = 1,
    spatial_factor: int = 8,
    ffn_dim: int = 32,
    guidance: float = 1.0,
    out_std: float | None = 0.1,
    schedule: list[float] | None = None,
    text_path=None,
):
    """A random tiny pipeline on disk: a one-block DiT on a pixel patchify, and MiniLM.

    out_std re-draws the DiT's zero-initialised out-projection so the sampler moves the latents;
    schedule makes it a fixed-schedule model (a distilled student's sampler); text_path names a
    BERT directory (save_tiny_bert) to use instead of the bundled MiniLM.
    """
    from mvdit.models.autoencoder import PatchifyAutoencoder
    from mvdit.models.dit import DiTConfig, VideoDiT
    from mvdit.models.text import TextConfig, load_text_encoder
    from mvdit.pipeline import Pipeline, PipelineConfig, SamplerConfig

    torch.manual_seed(0)
    text_cfg = TextConfig(max_length=8, path=None if text_path is None else str(text_path))
    text = load_text_encoder(text_cfg)
    vae = PatchifyAutoencoder(temporal_factor=temporal_factor, spatial_factor=spatial_factor)
    dit = VideoDiT(
        DiTConfig.uniform(
            depth=1,
            heads=2,
            ffn_dim=ffn_dim,
            hidden_size=32,
            head_dim=16,
            in_channels=vae.latent_channels,
            text_dim=text.dim,
        )
    )
    if out_std is not None:
        torch.nn.init.normal_(dit.out.weight, std=out_std)
    clip = PipelineConfig(
        frames=frames,
        height=size,
        width=size,
        fps=8,
        text=text_cfg,
        sampler=SamplerConfig(steps=2, guidance=guidance, schedule=schedule),
    )
    Pipeline(dit, vae, text, clip).save_pretrained(path)
    return path


def save_tiny_bert(path, hidden: int = 32):
    """A random 2-layer BERT with MiniLM's tokenizer, as a local directory (kind "minilm")."""
    import transformers

    from mvdit.models.text import default_minilm_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(default_minilm_path())
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=2 * hidden,
        max_position_embeddings=64,
    )
    transformers.BertModel(cfg).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def save_tiny_diffusers_pipeline(path, family: str, text_len: int = 16):
    """A random diffusers WanPipeline or LTXPipeline directory (`save_pretrained`): a 3-block
    transformer (4 heads of 8 channels, FFN 64), the family's VAE at 8 channels, a 2-layer
    UMT5 (Wan) or T5 (LTX) with MiniLM's tokenizer in its own folder, a flow-matching scheduler,
    and mvdit.json recording the clip it is meant for: 9 frames of 32x32 at 8 fps."""
    import diffusers
    import transformers

    from mvdit.models.text import default_minilm_path

    torch.manual_seed(0)
    tok = transformers.AutoTokenizer.from_pretrained(default_minilm_path())
    t5 = dict(vocab_size=tok.vocab_size, d_model=16, d_kv=4, d_ff=32, num_layers=2, num_heads=4,
              relative_attention_num_buckets=8)  # fmt: skip
    if family == "wan":
        te = transformers.UMT5EncoderModel(transformers.UMT5Config(**t5))
        tr = diffusers.WanTransformer3DModel(
            patch_size=(1, 2, 2), num_attention_heads=4, attention_head_dim=8, in_channels=4,
            out_channels=4, text_dim=16, freq_dim=32, ffn_dim=64, num_layers=3,
            cross_attn_norm=True, rope_max_seq_len=32,
        )  # fmt: skip
        vae = diffusers.AutoencoderKLWan(
            base_dim=4, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
            temperal_downsample=[False, True, True], latents_mean=[0.1] * 4,
            latents_std=[2.0] * 4,
        )  # fmt: skip
        pipe = diffusers.WanPipeline(
            tokenizer=tok, text_encoder=te, transformer=tr, vae=vae,
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
        )  # fmt: skip
    else:
        te = transformers.T5EncoderModel(transformers.T5Config(**t5))
        tr = diffusers.LTXVideoTransformer3DModel(
            in_channels=8, out_channels=8, num_attention_heads=4, attention_head_dim=8,
            cross_attention_dim=32, num_layers=3, caption_channels=16,
        )  # fmt: skip
        vae = diffusers.AutoencoderKLLTXVideo(
            latent_channels=8, block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
            decoder_layers_per_block=(1, 1, 1, 1, 1),
            spatio_temporal_scaling=(True, True, False, False),
            decoder_spatio_temporal_scaling=(True, True, False, False),
            decoder_inject_noise=(False,) * 5, upsample_residual=(False,) * 4,
            upsample_factor=(1,) * 4, patch_size=1,
        )  # fmt: skip
        pipe = diffusers.LTXPipeline(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=te,
            tokenizer=tok, transformer=tr,
        )  # fmt: skip
    with torch.no_grad():  # weights far from zero: pruning must change what the model computes
        for p in tr.parameters():
            p.normal_(0, 0.3)
    pipe.save_pretrained(path)
    sidecar = {"frames": 9, "height": 32, "width": 32, "fps": 8.0, "text": {"max_length": text_len}}
    (path / "mvdit.json").write_text(json.dumps(sidecar))
    return path

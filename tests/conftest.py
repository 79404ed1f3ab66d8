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

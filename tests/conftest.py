import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny_dit_config():
    from mvdit.models.dit import DiTConfig

    return DiTConfig.uniform(depth=2, heads=2, ffn_dim=64, hidden_size=32, head_dim=16, in_channels=12, text_dim=24)


@pytest.fixture
def nonuniform_dit_config():
    from mvdit.models.dit import BlockSpec, DiTConfig

    blocks = [
        BlockSpec(heads=3, cross_heads=1, ffn_dim=40, source=0),
        BlockSpec(heads=0, cross_heads=2, ffn_dim=72, source=2),  # self-attention pruned away
        BlockSpec(heads=1, cross_heads=0, ffn_dim=0, source=5),  # cross-attention and FFN pruned away
    ]
    return DiTConfig(blocks=blocks, hidden_size=32, head_dim=16, in_channels=12, text_dim=24, caption_dim=20)


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

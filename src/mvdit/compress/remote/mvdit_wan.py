"""WanTransformer3DModel with per-block widths, as a diffusers custom component.

mvdit writes this file beside a pruned Wan transformer whose blocks keep different numbers of
heads, cross-attention heads or FFN channels (which the stock config cannot express), and names it
in model_index.json, so that stock diffusers loads the pipeline with

    DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)

without mvdit installed. It imports diffusers and torch only. `block_widths` lists each block's
{"heads", "cross_heads", "ffn_dim"}; a width of 0 is a sub-layer pruned away, which adds nothing to
the residual stream. Every other argument is WanTransformer3DModel's own.
"""

import inspect

import torch
from diffusers import WanTransformer3DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.transformers.transformer_wan import WanAttention, WanAttnProcessor
from torch import nn


class _Absent(nn.Module):
    """A sub-layer pruned away: it adds nothing to the residual stream."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states)


def _attention(dim, heads, head_dim, eps, cross):
    if not heads:
        return _Absent()
    return WanAttention(
        dim=dim, heads=heads, dim_head=head_dim, eps=eps,
        cross_attention_dim_head=head_dim if cross else None, processor=WanAttnProcessor(),
    )  # fmt: skip


class MvditWanTransformer3DModel(WanTransformer3DModel):
    """WanTransformer3DModel whose blocks have their own widths (`block_widths`)."""

    @register_to_config
    def __init__(self, block_widths=None, **kwargs):
        super().__init__(**kwargs)
        dim = self.config.num_attention_heads * self.config.attention_head_dim
        hd, eps = self.config.attention_head_dim, self.config.eps
        for block, w in zip(self.blocks, block_widths or [], strict=True):
            block.attn1 = _attention(dim, w["heads"], hd, eps, cross=False)
            block.attn2 = _attention(dim, w["cross_heads"], hd, eps, cross=True)
            if not w["cross_heads"]:
                block.norm2 = nn.Identity()  # it only fed the cross-attention
            ffn = w["ffn_dim"]
            block.ffn = (
                FeedForward(dim, inner_dim=ffn, activation_fn="gelu-approximate")
                if ffn
                else _Absent()
            )


# diffusers reads a model's config keys from its __init__'s signature: give this class the stock
# class's parameters beside block_widths, so that every key of config.json reaches it
_stock = inspect.signature(WanTransformer3DModel.__init__).parameters
MvditWanTransformer3DModel.__init__.__signature__ = inspect.Signature(
    [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("block_widths", inspect.Parameter.KEYWORD_ONLY, default=None),
        *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for n, p in _stock.items() if n != "self"),
    ]
)

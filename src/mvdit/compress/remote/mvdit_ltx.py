"""LTXVideoTransformer3DModel with per-block widths, as a diffusers custom component.

mvdit writes this file beside a pruned LTX-Video transformer whose blocks keep different numbers
of heads, cross-attention heads or FFN channels (which the stock config cannot express), and names
it in model_index.json, so that stock diffusers loads the pipeline with

    DiffusionPipeline.from_pretrained(DIR, trust_remote_code=True)

without mvdit installed. It imports diffusers and torch only. `block_widths` lists each block's
{"heads", "cross_heads", "ffn_dim", "rope_heads"}: a width of 0 is a sub-layer pruned away, which
adds nothing to the residual stream; LTX rotates queries and keys by one table over all heads'
channels before splitting them, so a block's self-attention keeps its heads' columns of that table
("rope_heads": the unpruned model's index of each kept head). Every other argument is
LTXVideoTransformer3DModel's own.
"""

import inspect

import torch
import torch.nn.functional as F
from diffusers import LTXVideoTransformer3DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.attention import FeedForward
from diffusers.models.transformers.transformer_ltx import LTXAttention, apply_rotary_emb
from torch import nn


class _Absent(nn.Module):
    """A sub-layer pruned away: it adds nothing to the residual stream."""

    def forward(self, hidden_states, *args, **kwargs):
        return torch.zeros_like(hidden_states)


class _KeptHeadsProcessor:
    """LTX attention over a subset of the unpruned model's heads: the rotary table (over all
    heads' channels) is cut to the kept heads' channels."""

    def __init__(self, channels):
        self.channels = torch.tensor(list(channels), dtype=torch.long)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 image_rotary_emb=None):  # fmt: skip
        b = hidden_states.shape[0]
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.norm_q(attn.to_q(hidden_states))
        k = attn.norm_k(attn.to_k(ctx))
        v = attn.to_v(ctx)
        if image_rotary_emb is not None:
            ch = self.channels.to(q.device)
            freqs = tuple(f.index_select(-1, ch) for f in image_rotary_emb)
            q, k = apply_rotary_emb(q, freqs), apply_rotary_emb(k, freqs)
        q, k, v = (x.unflatten(2, (attn.heads, -1)).transpose(1, 2) for x in (q, k, v))
        if attention_mask is not None:  # (B, 1, L) additive bias from the model's forward
            attention_mask = attention_mask.view(b, 1, -1, attention_mask.shape[-1]).to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        out = out.transpose(1, 2).flatten(2).to(q.dtype)
        return attn.to_out[1](attn.to_out[0](out))


class MvditLTXVideoTransformer3DModel(LTXVideoTransformer3DModel):
    """LTXVideoTransformer3DModel whose blocks have their own widths (`block_widths`)."""

    @register_to_config
    def __init__(self, block_widths=None, **kwargs):
        super().__init__(**kwargs)
        c = self.config
        dim, hd = c.num_attention_heads * c.attention_head_dim, c.attention_head_dim
        for block, w in zip(self.transformer_blocks, block_widths or [], strict=True):
            for attr, heads, cross, rope in (
                ("attn1", w["heads"], None, w["rope_heads"]),
                ("attn2", w["cross_heads"], c.cross_attention_dim, w["cross_rope_heads"]),
            ):
                if not heads:
                    setattr(block, attr, _Absent())
                    continue
                attn = LTXAttention(
                    query_dim=dim, heads=heads, kv_heads=heads, dim_head=hd, bias=c.attention_bias,
                    cross_attention_dim=cross, out_bias=c.attention_out_bias, qk_norm=c.qk_norm,
                )  # fmt: skip
                attn.set_processor(
                    _KeptHeadsProcessor([h * hd + i for h in rope for i in range(hd)])
                )
                setattr(block, attr, attn)
            ffn = w["ffn_dim"]
            block.ff = (
                FeedForward(dim, inner_dim=ffn, activation_fn=c.activation_fn) if ffn else _Absent()
            )


# diffusers reads a model's config keys from its __init__'s signature: give this class the stock
# class's parameters beside block_widths, so that every key of config.json reaches it
_stock = inspect.signature(LTXVideoTransformer3DModel.__init__).parameters
MvditLTXVideoTransformer3DModel.__init__.__signature__ = inspect.Signature(
    [
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("block_widths", inspect.Parameter.KEYWORD_ONLY, default=None),
        *(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for n, p in _stock.items() if n != "self"),
    ]
)

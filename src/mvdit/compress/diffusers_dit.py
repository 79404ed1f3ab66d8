"""Pruning diffusers' video transformers: `WanTransformer3DModel` and `LTXVideoTransformer3DModel`.

`DiffusersDiT` wraps one so that mvdit's KD sensitivity (mvdit.compress.importance) and greedy
search (mvdit.compress.search) run on it unchanged. It is the adapter interface for a third-party
DiT:
- `config.blocks`: the units (self-attention heads, cross-attention heads, FFN channels per block);
- `features(x, t, text, text_mask, unit_mask=...)`: the forward of the model without the units the
  mask removes; `slice(mask)`: that model as physically smaller weights;
- `cost(mask, tokens, text_len)`: its parameters and FLOPs per step; `magnitude_scores(units, group)`;
- `save_pruned(model, dir)` / `load_transformer(dir)`.

**What removing a head means here.** Both models normalise queries and keys with an RMSNorm over
all heads together (`qk_norm = "rms_norm_across_heads"`), so a removed head is not just a zeroed
output: the norm of the model without it runs over the kept heads' channels only. Masking is
therefore done by running the sliced sub-modules (sharing the kept weights, copying nothing the
mask keeps whole), which makes "masked" and "sliced" the same model by construction; the tests
check the saved-and-reloaded model against it. LTX rotates queries and keys with one rotary table
over all heads' channels before splitting them, so a sliced LTX attention keeps the table's
channels of its kept heads (`_LTXKeptHeadsProcessor`).

**Saving.** The stock `from_pretrained` rebuilds a model only from its config: blocks removed and,
for Wan, one FFN width shared by every block (`ffn_dim`). Heads cannot be expressed there (both
models tie the hidden width to the head count), nor can LTX's FFN width. When the pruned model
fits the config, `save_pruned` writes a stock diffusers directory; otherwise it writes the same
files plus `mvdit_prune.json` (per-block widths and the teacher's indices of every kept unit), and
`load_transformer` rebuilds it. `save_pruned` returns which of the two it wrote.

Flow time t in [0, 1] maps to the diffusers timestep 1000 t, and both models predict the flow
velocity noise - x0, as mvdit's DiT does. Image-conditioned Wan (added key/value projections) is
not supported. diffusers is an optional dependency (extra "interop").
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mvdit import MvditError
from mvdit.compress.importance import ADAPTER_CRITERIA
from mvdit.io import (
    load_tensors,
    only_safetensors_weights,
    output_dir,
    read_json,
    save_tensors,
    write_json,
)
from mvdit.models.dit import BlockSpec, DiTFeatures, UnitMask, unit_weight_norms

RECORD = "mvdit_prune.json"


def _diffusers():
    try:
        import diffusers
    except ImportError:
        raise MvditError(
            "pruning a diffusers transformer needs diffusers: pip install 'mvdit[interop]'"
        ) from None
    return diffusers


def is_diffusers_transformer(path: str | Path) -> bool:
    """Whether `path` holds a Wan or LTX-Video transformer directory (stock or pruned by mvdit)."""
    cfg = Path(path) / "config.json"
    return cfg.is_file() and read_json(cfg).get("_class_name") in FAMILIES


class _Absent(nn.Module):
    """A sub-layer with nothing left: it adds nothing to the residual stream (no bias either)."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        return torch.zeros_like(hidden_states)


def _rows(lin: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(lin.in_features, len(idx), bias=lin.bias is not None)
    new = new.to(device=lin.weight.device, dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(lin.weight[idx])
        if lin.bias is not None:
            new.bias.copy_(lin.bias[idx])
    return new.requires_grad_(lin.weight.requires_grad)


def _cols(lin: nn.Linear, idx: torch.Tensor) -> nn.Linear:
    new = nn.Linear(len(idx), lin.out_features, bias=lin.bias is not None)
    new = new.to(device=lin.weight.device, dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(lin.weight[:, idx])
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    return new.requires_grad_(lin.weight.requires_grad)


def _norm(norm: nn.RMSNorm, idx: torch.Tensor) -> nn.RMSNorm:
    new = nn.RMSNorm(len(idx), eps=norm.eps, elementwise_affine=norm.weight is not None)
    if norm.weight is not None:
        new = new.to(device=norm.weight.device, dtype=norm.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(norm.weight[idx])
    return new


def _shallow(module: nn.Module) -> nn.Module:
    """A copy whose sub-modules and parameters can be swapped without touching the original."""
    new = copy.copy(module)
    new._modules = dict(module._modules)
    new._parameters = dict(module._parameters)
    new._buffers = dict(module._buffers)
    new._forward_hooks = type(module._forward_hooks)()
    new._forward_pre_hooks = type(module._forward_pre_hooks)()
    return new


class _LTXKeptHeadsProcessor:
    """LTX attention over a subset of the original heads: the rotary table (one over all heads'
    channels, applied before the heads are split) is cut to the kept heads' channels."""

    def __init__(self, channels: Sequence[int]):
        self.channels = torch.tensor(list(channels), dtype=torch.long)

    def __call__(
        self,
        attn,
        hidden_states,
        encoder_hidden_states=None,
        attention_mask=None,
        image_rotary_emb=None,
    ):
        from diffusers.models.transformers.transformer_ltx import apply_rotary_emb

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


class _WanProcessor:
    """Wan's text-to-video attention (diffusers' WanAttnProcessor without the image branch, which
    the adapter refuses), the same numbers with the rotary embedding written without
    `empty_like` + strided writes: those export as `empty_permuted`, which ExecuTorch's edge
    dialect does not take."""

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 rotary_emb=None):  # fmt: skip
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        q = attn.norm_q(attn.to_q(hidden_states)).unflatten(2, (attn.heads, -1))
        k = attn.norm_k(attn.to_k(ctx)).unflatten(2, (attn.heads, -1))
        v = attn.to_v(ctx).unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            q, k = (_rotate(x, *rotary_emb) for x in (q, k))
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_mask)
        out = out.transpose(1, 2).flatten(2, 3).type_as(q)
        return attn.to_out[1](attn.to_out[0](out))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding of x (B, L, H, D): channel pairs (2i, 2i+1) rotated."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos[..., 0::2], sin[..., 1::2]
    return torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2).type_as(x)


def _head_channels(heads: Sequence[int], head_dim: int) -> list[int]:
    return [h * head_dim + i for h in heads for i in range(head_dim)]


def _slice_attention(attn: nn.Module, heads: list[int], rope: list[int] | None):
    """`attn` keeping only `heads` (indices into its own heads); `rope`: where one rotary table
    spans every head's channels (LTX), the channels those heads had in the unpruned model."""
    if not heads:
        return _Absent()
    hd = attn.inner_dim // attn.heads
    idx = torch.tensor(_head_channels(heads, hd), dtype=torch.long, device=attn.to_q.weight.device)
    new = _shallow(attn)
    new.to_q, new.to_k, new.to_v = (_rows(getattr(attn, n), idx) for n in ("to_q", "to_k", "to_v"))
    new.to_out = nn.ModuleList([_cols(attn.to_out[0], idx), *list(attn.to_out)[1:]])
    new.norm_q, new.norm_k = _norm(attn.norm_q, idx), _norm(attn.norm_k, idx)
    new.heads = len(heads)
    new.inner_dim = len(heads) * hd
    if hasattr(attn, "kv_inner_dim"):
        new.kv_inner_dim = new.inner_dim
    if hasattr(attn, "inner_kv_dim"):
        new.inner_kv_dim = new.inner_dim
    if rope is not None:
        new.processor = _LTXKeptHeadsProcessor(rope)
    return new


def _slice_ffn(ffn: nn.Module, channels: list[int]):
    if not channels:
        return _Absent()
    idx = torch.tensor(channels, dtype=torch.long, device=ffn.net[2].weight.device)
    act = _shallow(ffn.net[0])
    act.proj = _rows(ffn.net[0].proj, idx)
    new = _shallow(ffn)
    new.net = nn.ModuleList([act, ffn.net[1], _cols(ffn.net[2], idx), *list(ffn.net)[3:]])
    return new


@dataclass
class DiffusersConfig:
    """What the pruning code reads of a model's structure (the adapter's `config`)."""

    family: str
    blocks: list[BlockSpec]
    hidden_size: int
    head_dim: int
    in_channels: int
    text_dim: int
    patch: tuple[int, int, int]
    sources: list[dict] = field(
        default_factory=list
    )  # per block: teacher block, heads, cross heads, ffn

    def tokens(self, latent: Sequence[int]) -> int:
        """Latent tokens of a latent of shape (C,) T, H, W."""
        t, h, w = latent[-3:]
        pt, ph, pw = self.patch
        return (t // pt) * (h // ph) * (w // pw)

    def linear_shapes(self, tokens: int, text_len: int) -> list[tuple[int, int, int]]:
        """The distinct (rows, in, out) of the linear layers at a token count (both families
        project the text to the hidden width first; time-embedding MLPs left out)."""
        d, hd, patch = (
            self.hidden_size,
            self.head_dim,
            self.patch[0] * self.patch[1] * self.patch[2],
        )
        shapes = {(text_len, self.text_dim, d), (text_len, d, d)}
        shapes |= {(tokens, self.in_channels * patch, d), (tokens, d, self.in_channels * patch)}
        for b in self.blocks:
            for n, kv_rows in ((b.heads, tokens), (b.cross_heads, text_len)):
                if n:
                    shapes |= {(tokens, d, n * hd), (kv_rows, d, n * hd), (tokens, n * hd, d)}
            if b.ffn_dim:
                shapes |= {(tokens, d, b.ffn_dim), (tokens, b.ffn_dim, d)}
        return sorted(shapes)


@dataclass(frozen=True)
class _Layout:
    """Where a diffusers family keeps what the adapter reads."""

    class_name: str  # the diffusers transformer class
    text_key: str  # its config key of the text encoder's width
    blocks: str  # the block list
    attrs: tuple[str, str, str]  # a block's self-attention, cross-attention and FFN
    per_token: tuple[str, ...]  # modules run once per latent token (patch embedding, output)
    per_text_token: tuple[str, ...]  # modules run once per text token (caption projection)
    # every other module outside the blocks runs once per sample (the time embedding)
    # whether the model takes the text's attention mask; without one (Wan), the padded positions
    # reach it as zero states, as its own pipeline pads them
    text_mask: bool
    packed: bool  # its forward takes packed tokens (B, T*H*W, C) and the grid, not the latent
    patch: Callable[[dict], tuple[int, int, int]]  # its (t, h, w) patch, from its config
    # what the adapter cannot take, from its config: the reason, or None
    refuse: Callable[[dict], str | None]
    # the norm in a block that only feeds its cross-attention (dropped with it), if any
    cross_norm: str | None
    # queries and keys rotated by one table over all heads' channels before the heads split: a
    # sliced attention keeps its heads' columns of that table
    rope_over_heads: bool
    # the config key of one FFN width shared by every block (None: the class fixes it at 4 x width)
    ffn_key: str | None
    # its attention processor class name -> the adapter's (same numbers, exportable)
    processors: dict[str, Callable[[], object]] = field(default_factory=dict)
    # the diffusers custom component (module file in compress/remote/, class) that stock
    # diffusers loads per-block widths with (trust_remote_code), if there is one
    remote: tuple[str, str] | None = None


def _wan_refuses(cfg) -> str | None:
    if cfg.get("added_kv_proj_dim") is not None:
        return "image-conditioned Wan (added_kv_proj_dim) is not supported"
    return None


def _ltx_refuses(cfg) -> str | None:
    if cfg.patch_size != 1 or cfg.patch_size_t != 1:
        return "LTX-Video needs patch_size = patch_size_t = 1 (LTX-Video's own) here"
    return None


LAYOUTS = {
    "wan": _Layout("WanTransformer3DModel", "text_dim", "blocks", ("attn1", "attn2", "ffn"),
                   ("patch_embedding", "proj_out"), ("condition_embedder.text_embedder",),
                   text_mask=False, packed=False, patch=lambda cfg: tuple(cfg.patch_size),
                   refuse=_wan_refuses, cross_norm="norm2", rope_over_heads=False,
                   ffn_key="ffn_dim", processors={"WanAttnProcessor": _WanProcessor},
                   remote=("mvdit_wan", "MvditWanTransformer3DModel")),
    "ltx": _Layout("LTXVideoTransformer3DModel", "caption_channels", "transformer_blocks",
                   ("attn1", "attn2", "ff"), ("proj_in", "proj_out"), ("caption_projection",),
                   text_mask=True, packed=True, patch=lambda cfg: (1, 1, 1),
                   refuse=_ltx_refuses, cross_norm=None, rope_over_heads=True, ffn_key=None,
                   remote=("mvdit_ltx", "MvditLTXVideoTransformer3DModel")),
}  # fmt: skip
FAMILIES = {layout.class_name: family for family, layout in LAYOUTS.items()}
# a directory mvdit wrote with a custom component names its class: the same family to mvdit
FAMILIES |= {layout.remote[1]: family for family, layout in LAYOUTS.items() if layout.remote}


def build_dit(family: str, keys: dict, in_channels: int, text_dim: int) -> DiffusersDiT:
    """A freshly initialised Wan or LTX-Video transformer of the class's own config `keys`
    (`[model.diffusers]`), reading `in_channels` latent channels and `text_dim`-wide text."""
    layout = LAYOUTS[family]
    fixed = {"in_channels": in_channels, "out_channels": in_channels, layout.text_key: text_dim}
    clash = {k: v for k, v in keys.items() if k in fixed and v != fixed[k]}
    if clash:
        k = next(iter(clash))
        raise MvditError(
            f"model.diffusers.{k} = {clash[k]} but the VAE and text encoder make it {fixed[k]}: "
            "drop it (it follows them)"
        )
    cls = getattr(_diffusers(), layout.class_name)
    try:
        model = cls(**(keys | fixed))
    except TypeError as e:
        raise MvditError(f"model.diffusers: {e} (the keys are {layout.class_name}'s)") from None
    return DiffusersDiT(model)


def _block_attrs(family: str) -> tuple[str, str, str]:
    return LAYOUTS[family].attrs


class _StopForward(Exception):
    """Raised by a block hook to end a forward early (`features(stop_after=N)`)."""


def _blocks(model: nn.Module) -> nn.ModuleList:
    return getattr(model, LAYOUTS[FAMILIES[type(model).__name__]].blocks)


class DiffusersDiT(nn.Module):
    """A Wan or LTX-Video transformer seen as a prunable DiT (the module docstring)."""

    criteria = ADAPTER_CRITERIA  # the unit scores it can be pruned by (no unit-mask gradients)
    entry_points = ("features",)  # called besides forward (FSDP2 gathers for them too)

    def __init__(self, transformer: nn.Module, sources: list[dict] | None = None):
        super().__init__()
        name = type(transformer).__name__
        if name not in FAMILIES:
            raise MvditError(
                f"{name} is not a supported diffusers transformer; supported: {', '.join(FAMILIES)}"
            )
        self.family = FAMILIES[name]
        self.transformer = transformer
        cfg = transformer.config
        layout = LAYOUTS[self.family]
        if why := layout.refuse(cfg):
            raise MvditError(f"{name}: {why}")
        for m in transformer.modules():
            own = layout.processors.get(type(m.__dict__.get("processor")).__name__)
            if own is not None:
                m.processor = own()
        a1, a2, f = _block_attrs(self.family)
        specs = []
        for blk in _blocks(transformer):
            att, cross, ffn = getattr(blk, a1), getattr(blk, a2), getattr(blk, f)
            specs.append(
                BlockSpec(
                    heads=0 if isinstance(att, _Absent) else att.heads,
                    cross_heads=0 if isinstance(cross, _Absent) else cross.heads,
                    ffn_dim=0 if isinstance(ffn, _Absent) else ffn.net[2].in_features,
                )
            )
        n_heads, hd = cfg.num_attention_heads, cfg.attention_head_dim
        if sources is None:  # the unpruned model: every unit is its own source
            sources = [
                {"block": b, "heads": list(range(s.heads)), "cross_heads": list(range(s.cross_heads)),
                 "ffn": list(range(s.ffn_dim))}
                for b, s in enumerate(specs)
            ]  # fmt: skip
        for s, src in zip(specs, sources, strict=True):
            s.source = src["block"]
        self.config = DiffusersConfig(
            self.family,
            specs,
            hidden_size=n_heads * hd,
            head_dim=hd,
            in_channels=cfg.in_channels,
            text_dim=cfg[layout.text_key],
            patch=layout.patch(cfg),
            sources=sources,
        )

    @property
    def blocks(self) -> nn.ModuleList:
        return _blocks(self.transformer)

    # -- the model without the units a mask removes --------------------------------------------

    def _kept(self, mask: UnitMask | None) -> list[dict]:
        """Per kept block: its index here, kept heads, cross heads, FFN channels (own indices)."""
        out = []
        for b, spec in enumerate(self.config.blocks):
            if mask is None:
                out.append({"block": b, "heads": list(range(spec.heads)),
                            "cross_heads": list(range(spec.cross_heads)),
                            "ffn": list(range(spec.ffn_dim))})  # fmt: skip
                continue
            if mask.blocks[b] == 0:
                continue
            idx = [[int(i) for i in torch.nonzero(m != 0).flatten()] for m in mask.block(b)]
            if any(idx):
                out.append({"block": b, "heads": idx[0], "cross_heads": idx[1], "ffn": idx[2]})
        return out

    def _masked(self, mask: UnitMask | None) -> tuple[nn.Module, list[dict]]:
        """A transformer computing the model without the removed units (sharing kept weights),
        and the teacher-index record of what it keeps."""
        if mask is None:
            return self.transformer, self.config.sources
        mask.check(self.config)
        kept = self._kept(mask)
        if not kept:
            raise MvditError("the mask removes every block; keep at least one")
        layout = LAYOUTS[self.family]
        a1, a2, f = layout.attrs
        blocks, record = [], []
        hd = self.config.head_dim
        for k in kept:
            b, spec, src = (
                k["block"],
                self.config.blocks[k["block"]],
                self.config.sources[k["block"]],
            )
            blk = self.blocks[b]
            whole = (
                len(k["heads"]) == spec.heads
                and len(k["cross_heads"]) == spec.cross_heads
                and len(k["ffn"]) == spec.ffn_dim
            )
            heads = [src["heads"][i] for i in k["heads"]]
            cross = [src["cross_heads"][i] for i in k["cross_heads"]]
            record.append({"block": src["block"], "heads": heads, "cross_heads": cross,
                           "ffn": [src["ffn"][i] for i in k["ffn"]]})  # fmt: skip
            if whole:
                blocks.append(blk)
                continue
            new = _shallow(blk)
            for attr, own, orig in ((a1, k["heads"], heads), (a2, k["cross_heads"], cross)):
                mod = getattr(blk, attr)
                n = 0 if isinstance(mod, _Absent) else mod.heads
                if len(own) != n:
                    rope = _head_channels(orig, hd) if layout.rope_over_heads else None
                    setattr(new, attr, _slice_attention(mod, own, rope))
            if len(k["ffn"]) != spec.ffn_dim:
                setattr(new, f, _slice_ffn(getattr(blk, f), k["ffn"]))
            if layout.cross_norm is not None and not k["cross_heads"]:
                setattr(new, layout.cross_norm, nn.Identity())  # it only fed the cross-attention
            blocks.append(new)
        model = _shallow(self.transformer)
        model._modules[LAYOUTS[self.family].blocks] = nn.ModuleList(blocks)
        return model, record

    def slice(self, mask: UnitMask) -> DiffusersDiT:
        """The physically smaller model `mask` describes (independent of this one's weights)."""
        model, record = self._masked(mask)
        model = copy.deepcopy(model)
        model.register_to_config(num_layers=len(_blocks(model)))
        return DiffusersDiT(model, record).train(self.training)

    # -- forward -------------------------------------------------------------------------------

    def prepare_conditioning(
        self, text: torch.Tensor, text_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor | None]:
        """The forward's text arguments as a sampler passes them at every step (flow.euler_sample's
        `prepare`): the text as its own pipeline gives it to the model (Wan: padded positions
        zero, no mask; LTX: states and mask)."""
        if not LAYOUTS[self.family].text_mask:
            if text_mask is not None:
                text = text * text_mask[..., None].to(text.dtype)
            text_mask = None
        return {"text": text, "text_mask": text_mask}

    def _run(self, model: nn.Module, x, t, text, text_mask):
        b, _, nt, nh, nw = x.shape
        timestep = t * 1000.0
        cond = self.prepare_conditioning(text, text_mask)
        text, text_mask = cond["text"], cond["text_mask"]
        if not LAYOUTS[self.family].packed:
            return model(x, timestep, text, return_dict=False)[0]
        tokens = x.flatten(2).transpose(1, 2)  # (B, T*H*W, C): packed latents and their grid
        mask = text_mask.to(x.dtype) if text_mask is not None else None
        out = model(tokens, text, timestep, mask, nt, nh, nw, return_dict=False)[0]
        return out.transpose(1, 2).reshape(b, -1, nt, nh, nw)

    def features(
        self,
        x: torch.Tensor,
        t: torch.Tensor,
        text: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        blocks: Sequence[int] = (),
        stop_after: int | None = None,
        unit_mask: UnitMask | None = None,
    ) -> DiTFeatures:
        """The forward, handing out the output tokens of `blocks` (this model's block indices;
        negative count from the end); with `stop_after` = N only the blocks up to index N - 1 run
        and no velocity is computed. A block a mask removes hands out its input. The time
        embedding is not handed out (t_emb is None); the text is the encoder's, unprojected."""
        n = len(self.blocks)
        if stop_after is not None and not 1 <= stop_after <= n:
            raise MvditError(f"stop_after must be in 1..{n}, got {stop_after}")
        if any(not -n <= i < n for i in blocks):
            raise MvditError(f"block indices must be in -{n}..{n - 1}, got {list(blocks)}")
        want = {i % n for i in blocks}
        if stop_after is not None and want and max(want) >= stop_after:
            raise MvditError(
                f"block {max(want)} is not run when stopping after {stop_after} blocks"
            )
        model, _ = self._masked(unit_mask)
        running = [k["block"] for k in self._kept(unit_mask)]  # this model's index of each run
        outs: dict[int, torch.Tensor] = {}  # this model's block index -> its output tokens
        last = max((i for i, b in enumerate(running) if stop_after is None or b < stop_after),
                   default=None)  # fmt: skip

        def hook(i: int):
            def grab(_mod, _args, out):
                outs[running[i]] = out[0] if isinstance(out, tuple) else out
                if stop_after is not None and i == last:
                    raise _StopForward

            return grab

        handles = [blk.register_forward_hook(hook(i)) for i, blk in enumerate(_blocks(model))]
        v = None
        try:
            v = self._run(model, x, t, text, text_mask)
        except _StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        # a block the mask removes passes its input on, as a masked block of mvdit's DiT does
        tokens = {
            w: outs[max(b for b in outs if b <= w)] for w in want if any(b <= w for b in outs)
        }
        grid = tuple(n // p for n, p in zip(x.shape[-3:], self.config.patch, strict=True))
        return DiTFeatures(tokens, None, text, text_mask, grid, v)

    def forward(self, x, t, text, text_mask=None, unit_mask: UnitMask | None = None):
        return self._run(self._masked(unit_mask)[0], x, t, text, text_mask)

    # -- save and load -------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path, state: dict[str, torch.Tensor] | None = None):
        """This transformer as a diffusers model directory (write_transformer)."""
        write_transformer(self, Path(path), state)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> DiffusersDiT:
        return load_transformer(path).to(device)

    # -- costs and the cheap criterion ---------------------------------------------------------

    def _block_cost(self, b: int, heads: int, cross: int, ffn: int, tokens: int, text_len: int):
        """(parameters, FLOPs) of block b with that many heads, cross heads and FFN channels."""
        layout = LAYOUTS[self.family]
        a1, a2, f = layout.attrs
        blk = self.blocks[b]
        cross_norm = getattr(blk, layout.cross_norm) if layout.cross_norm else None
        sub = (a1 + ".", a2 + ".", f + ".") + ((layout.cross_norm + ".",) if cross_norm else ())
        fixed = sum(p.numel() for n, p in blk.named_parameters() if not n.startswith(sub))
        params, flops = fixed, 0
        hd = self.config.head_dim
        for attr, n, kv_tokens in ((a1, heads, tokens), (a2, cross, text_len)):
            mod = getattr(blk, attr)
            if n == 0 or isinstance(mod, _Absent):
                continue
            ch = n * hd
            q, k, v, o = mod.to_q, mod.to_k, mod.to_v, mod.to_out[0]
            per_row = lambda lin: lin.in_features + (lin.bias is not None)  # noqa: E731
            params += ch * (per_row(q) + per_row(k) + per_row(v) + o.out_features)
            params += o.out_features if o.bias is not None else 0
            params += sum(ch for nm in (mod.norm_q, mod.norm_k) if nm.weight is not None)
            flops += 2 * ch * (tokens * q.in_features + kv_tokens * (k.in_features + v.in_features))
            flops += 2 * tokens * ch * o.out_features + 4 * tokens * kv_tokens * ch
            if attr == a2 and cross_norm is not None:
                params += sum(p.numel() for p in cross_norm.parameters())
        ff = getattr(blk, f)
        if ffn and not isinstance(ff, _Absent):
            up, down = ff.net[0].proj, ff.net[2]
            params += ffn * (up.in_features + 1 + down.out_features) + down.out_features
            flops += 2 * tokens * ffn * (up.in_features + down.out_features)
        return params, flops

    def cost(self, mask: UnitMask | None, tokens: int, text_len: int) -> dict[str, int]:
        """Parameters and FLOPs of one forward under `mask`: every matmul (2 per multiply-add),
        attention products included."""
        outside = sum(p.numel() for n, p in self.transformer.named_parameters()
                      if not n.startswith(("blocks.", "transformer_blocks.")))  # fmt: skip
        layout, flops = LAYOUTS[self.family], 0
        for name, mod in self.transformer.named_modules():
            if name.startswith(layout.blocks + ".") or not isinstance(mod, nn.Linear | nn.Conv3d):
                continue
            rows = (tokens if name.startswith(layout.per_token) else
                    text_len if name.startswith(layout.per_text_token) else 1)  # fmt: skip
            flops += 2 * rows * mod.weight.numel()
        params = outside
        for k in self._kept(mask):
            p, fl = self._block_cost(k["block"], len(k["heads"]), len(k["cross_heads"]),
                                     len(k["ffn"]), tokens, text_len)  # fmt: skip
            params, flops = params + p, flops + fl
        return {"params": params, "flops": flops}

    def magnitude_scores(self, units, group: int) -> dict[str, float]:
        """L2 norm of each unit's weights (mvdit.models.dit.unit_weight_norms)."""
        a1, a2, f = _block_attrs(self.family)

        def linears(blk: nn.Module, level: str) -> tuple[nn.Linear, ...]:
            if level == "ffn":
                ff = getattr(blk, f)
                return ff.net[0].proj, ff.net[2]
            a = getattr(blk, a1 if level == "head" else a2)
            return a.to_q, a.to_k, a.to_v, a.to_out[0]

        return unit_weight_norms(self.blocks, units, group, self.config.head_dim, linears)


# ---------------------------------------------------------------------------------------------
# save and load


def stock_loadable(model: DiffusersDiT) -> bool:
    """Whether diffusers' own from_pretrained can rebuild `model` from its config alone."""
    cfg = model.transformer.config
    full_heads = all(s.heads == cfg.num_attention_heads and s.cross_heads == cfg.num_attention_heads
                     for s in model.config.blocks)  # fmt: skip
    ffns = {s.ffn_dim for s in model.config.blocks}
    if LAYOUTS[model.family].ffn_key is not None:  # one width for every block, in the config
        return full_heads and len(ffns) == 1
    return full_heads and ffns == {4 * model.config.hidden_size}


WEIGHTS = "diffusion_pytorch_model.safetensors"  # diffusers' file name for a model's weights


def write_transformer(
    model: DiffusersDiT, directory: Path, state: dict[str, torch.Tensor] | None = None
) -> str:
    """The transformer's files into `directory` (config.json with the widths a stock loader can
    express, the weights, and mvdit_prune.json with the per-block widths and teacher indices);
    `state`: the adapter's state dict to write instead of its own weights. Returns "stock"
    (diffusers' from_pretrained loads it), "remote" (per-block widths in a diffusers custom
    component beside it, which stock diffusers loads with trust_remote_code) or "mvdit" (per-block
    widths only mvdit's load_transformer reads). mvdit itself never runs the component."""
    stock = stock_loadable(model)
    remote = None if stock else LAYOUTS[model.family].remote
    t = model.transformer
    ffn_key = LAYOUTS[model.family].ffn_key
    if stock and ffn_key is not None:
        t.register_to_config(**{ffn_key: model.config.blocks[0].ffn_dim})
    t.register_to_config(num_layers=len(model.config.blocks))
    directory.mkdir(parents=True, exist_ok=True)
    t.save_config(directory)
    own = t.state_dict() if state is None else {
        k.removeprefix("transformer."): v for k, v in state.items()
    }  # fmt: skip
    save_tensors(directory / WEIGHTS, own)
    loader = "stock" if stock else "remote" if remote else "mvdit"
    if remote is not None:
        module, cls = remote
        shutil.copyfile(
            Path(__file__).parent / "remote" / f"{module}.py", directory / f"{module}.py"
        )
        cfg = read_json(directory / "config.json")
        # each block's widths, and which of the unpruned model's heads it kept (a rotary table
        # over all heads' channels keeps those heads' columns)
        widths = [{"heads": b.heads, "cross_heads": b.cross_heads, "ffn_dim": b.ffn_dim,
                   "rope_heads": src["heads"], "cross_rope_heads": src["cross_heads"]}
                  for b, src in zip(model.config.blocks, model.config.sources, strict=True)]  # fmt: skip
        write_json(directory / "config.json", cfg | {"_class_name": cls, "block_widths": widths})
    record = {
        "loader": loader,
        "blocks": [s.model_dump() for s in model.config.blocks],
        "sources": model.config.sources,
    }
    write_json(directory / RECORD, record)
    return loader


def index_entry(directory: Path) -> list[str]:
    """The model_index.json entry of the transformer written to `directory`: its custom
    component's [module, class], or ["diffusers", class]."""
    name = read_json(directory / "config.json")["_class_name"]
    layout = LAYOUTS[FAMILIES[name]]
    if layout.remote is not None and name == layout.remote[1]:
        return list(layout.remote)
    return ["diffusers", name]


def save_pruned(
    model: DiffusersDiT,
    out: str | Path,
    report: dict | None = None,
    *,
    overwrite: bool = False,
    sources: Sequence[str | Path] = (),
) -> str:
    """Write `model` to OUT atomically (write_transformer); returns which loader reads it."""
    with output_dir(out, command="prune", overwrite=overwrite, sources=sources) as tmp:
        loader = write_transformer(model, tmp)
        if report is not None:
            write_json(tmp / "prune.json", report)
    return loader


def load_transformer(path: str | Path) -> DiffusersDiT:
    """A (pruned or stock) Wan / LTX transformer directory as a DiffusersDiT."""
    path = Path(path)
    if not is_diffusers_transformer(path):
        raise MvditError(
            f"{path} is not a diffusers Wan or LTX transformer directory (config.json with _class_name "
            f"one of {', '.join(FAMILIES)})"
        )
    # the stock class even where a custom component is named: mvdit never runs a model's code
    family = FAMILIES[read_json(path / "config.json")["_class_name"]]
    cls = getattr(_diffusers(), LAYOUTS[family].class_name)
    rec_path = path / RECORD
    record = read_json(rec_path) if rec_path.is_file() else None
    if record is None or record["loader"] == "stock":
        only_safetensors_weights(path)
        # fp32 whatever the stored dtype (mvdit convert stores fp16), as mvdit's DiT loads
        model = cls.from_pretrained(path, use_safetensors=True, torch_dtype=torch.float32)
        sources = record["sources"] if record is not None else None
        return DiffusersDiT(model.eval(), sources)
    model = cls.from_config(cls.load_config(path))
    full = DiffusersDiT(model)
    # cut a freshly built model to the recorded widths (any indices: the weights come next)
    mask = UnitMask.full(full.config)
    for b, spec in enumerate(record["blocks"]):
        for level, n in (("heads", spec["heads"]), ("cross_heads", spec["cross_heads"]),
                         ("ffn", spec["ffn_dim"])):  # fmt: skip
            getattr(mask, level)[b][n:] = 0
    shaped = full.slice(mask)
    state = {}
    for w in only_safetensors_weights(path):
        state.update(load_tensors(w))
    try:
        shaped.transformer.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise MvditError(
            f"{path}: the weights do not match {RECORD}: {str(e).splitlines()[0]}"
        ) from None
    out = DiffusersDiT(shaped.transformer.eval(), record["sources"])
    if record["sources"]:
        # the rotary-table channels of LTX's kept heads are those of the teacher's heads
        _restore_rope(out)
    return out


def _restore_rope(model: DiffusersDiT) -> None:
    layout = LAYOUTS[model.family]
    if not layout.rope_over_heads:
        return
    hd = model.config.head_dim
    for blk, src in zip(model.blocks, model.config.sources, strict=True):
        for attr, heads in ((layout.attrs[0], src["heads"]), (layout.attrs[1], src["cross_heads"])):
            mod = getattr(blk, attr)
            if not isinstance(mod, _Absent) and hasattr(mod, "processor"):
                if isinstance(mod.processor, _LTXKeptHeadsProcessor):
                    mod.processor = _LTXKeptHeadsProcessor(_head_channels(heads, hd))

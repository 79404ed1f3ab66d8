"""The fixed-length tokenizer of the MiniLM (BERT) text encoder, through the `tokenizers` library.

Torch-free on purpose: the text encoder (`models/text.py`) and the exported-graph runtime
(`export/runtime.py`, which must run where PyTorch is absent) tokenize with the same settings.
"""

from __future__ import annotations

from pathlib import Path


def fixed_length_tokenizer(tokenizer_json: str | Path, max_length: int, pad_id: int):
    """A `tokenizers.Tokenizer` that truncates to `max_length` ([CLS] and [SEP] kept) and pads
    on the right to exactly `max_length` with `pad_id`."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    tokenizer.enable_truncation(max_length=max_length)
    tokenizer.enable_padding(
        length=max_length, pad_id=pad_id, pad_token=tokenizer.id_to_token(pad_id)
    )
    return tokenizer

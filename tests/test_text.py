"""Text encoders load from local files only: the bundled MiniLM, and CLIP / T5 directories."""

import shutil

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from mvdit import MvditError
from mvdit.data.cache import weights_hash
from mvdit.models.text import (
    MiniLM,
    TextConfig,
    TextEncoder,
    default_minilm_path,
    hf_text_encoder,
    load_text_encoder,
)

PROMPTS = ["a red ball bounces left", "two blue squares"]


@pytest.fixture(scope="module")
def minilm():
    return load_text_encoder(TextConfig(max_length=16))


def test_bundled_minilm_offline(minilm):
    hidden, mask = minilm.encode(PROMPTS)
    assert hidden.shape == (2, 16, 384) and hidden.dtype == torch.float32
    assert mask.dtype == torch.bool
    # [CLS] + word pieces + [SEP], then padding: a prefix of True, never True after a False.
    n = mask.sum(1)
    reference = transformers.AutoTokenizer.from_pretrained(default_minilm_path())
    lengths = [len(reference(p)["input_ids"]) for p in PROMPTS]
    assert n.tolist() == lengths
    assert all(mask[i, : n[i]].all() and not mask[i, n[i] :].any() for i in range(2))
    assert torch.isfinite(hidden).all()
    assert not torch.allclose(hidden[0, 1], hidden[1, 1])  # different words, different states
    # padding is not encoded: zeros where the mask is False; the tokens' states are those of an
    # encoder run over the whole padded length
    assert not hidden[~mask].any()
    ids, full_mask = minilm.tokenize(PROMPTS)
    with torch.no_grad():
        whole = minilm.model(ids, full_mask)
    torch.testing.assert_close(hidden[mask], whole[mask], atol=1e-5, rtol=1e-5)


def test_minilm_truncates_to_max_length(minilm):
    hidden, mask = minilm.encode(["word " * 100])
    assert hidden.shape == (1, 16, 384) and mask.all()


def test_minilm_equals_transformers_bert(minilm):
    # The plain-torch BERT against transformers' BertModel on the bundled weights: same token ids
    # (lower-casing, accents, punctuation, truncation), same states, same weights and hash.
    path = default_minilm_path()
    ref = hf_text_encoder(
        transformers.AutoTokenizer.from_pretrained(path),
        transformers.AutoModel.from_pretrained(path),
        TextConfig(max_length=16),
    )
    prompts = [*PROMPTS, "Héllo, WORLD! a yellow-star (rotating)", "word " * 40]
    ids, mask = minilm.tokenize(prompts)
    ref_ids, ref_mask = ref.tokenize(prompts)
    assert torch.equal(ids, ref_ids) and torch.equal(mask, ref_mask)
    hidden, _ = minilm.encode(prompts)
    torch.testing.assert_close(hidden, ref.encode(prompts)[0], atol=2e-5, rtol=1e-5)
    assert weights_hash(minilm.model) == weights_hash(ref.model.inner)
    assert isinstance(minilm.model, MiniLM)
    # the (out, in) weights are views of input-major storage, the layout a few-token GEMM reads fast
    linears = [m for m in minilm.model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(linears) == 6 * 6 + 1
    assert all(m.weight.t().is_contiguous() and not m.weight.is_contiguous() for m in linears)


def test_minilm_kind_reads_a_local_bert_directory(tmp_path):
    # A tiny random BERT saved by transformers loads through the plain-torch path unchanged,
    # with or without a pooling layer.
    tokenizer = transformers.AutoTokenizer.from_pretrained(default_minilm_path())
    cfg = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=24,
    )
    for pooling in (True, False):
        torch.manual_seed(0)
        model = transformers.BertModel(cfg, add_pooling_layer=pooling).eval()
        d = tmp_path / f"bert-{pooling}"
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        enc = load_text_encoder(TextConfig(kind="minilm", path=str(d), max_length=12))
        assert enc.dim == 32 and isinstance(enc.model, MiniLM)
        torch.testing.assert_close(
            enc.encode(PROMPTS)[0], _reference(model, tokenizer, PROMPTS, 12)
        )
    with pytest.raises(MvditError, match="exceeds the 24 positions"):
        load_text_encoder(TextConfig(kind="minilm", path=str(d), max_length=32))


def test_encode_cached_matches_encode(minilm):
    h, m = minilm.encode(PROMPTS)
    hc, mc = minilm.encode_cached([PROMPTS[1], PROMPTS[0], PROMPTS[1]])
    assert torch.equal(mc, m[[1, 0, 1]])
    torch.testing.assert_close(hc, h[[1, 0, 1]], atol=1e-5, rtol=1e-5)


def test_encode_cached_is_a_bounded_lru(minilm):
    enc = TextEncoder(
        minilm.tokenize, minilm.model, minilm.dim, TextConfig(max_length=16, cache_size=2)
    )
    calls = []
    real = enc.encode
    enc.encode = lambda prompts: calls.append(list(prompts)) or real(prompts)
    enc.encode_cached(["a", "b"])
    enc.encode_cached(["a"])  # "a" is now the most recent
    enc.encode_cached(["c"])  # evicts "b", the least recently used
    assert list(enc._cache) == ["a", "c"]
    enc.encode_cached(["a", "b"])
    assert calls == [["a", "b"], ["c"], ["b"]]  # only the evicted caption is encoded again
    h, _ = enc.encode_cached(["b", "a"])
    torch.testing.assert_close(h, real(["b", "a"])[0], atol=1e-5, rtol=1e-5)
    assert len(enc._cache) == 2


def _word_tokenizer(words: list[str], pad: bool) -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer built in memory (no download); T5-style specials."""
    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = {"eos_token": "</s>", "unk_token": "<unk>"} | ({"pad_token": "<pad>"} if pad else {})
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


def _reference(model, tokenizer, prompts, max_length):
    tok = tokenizer(
        prompts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
    # TextEncoder.encode leaves the padded positions zero (they are masked everywhere)
    return hidden.last_hidden_state * tok["attention_mask"][..., None]


def test_tiny_clip_from_directory(tmp_path):
    # The MiniLM's BERT tokenizer stands in for CLIP's BPE (which cannot be downloaded here).
    tokenizer = transformers.AutoTokenizer.from_pretrained(default_minilm_path())
    torch.manual_seed(0)
    cfg = transformers.CLIPTextConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=20,
    )
    model = transformers.CLIPTextModel(cfg).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    enc = load_text_encoder(TextConfig(kind="clip", path=str(tmp_path), max_length=12))
    assert isinstance(enc.model.inner, transformers.CLIPTextModel) and enc.dim == 32
    hidden, mask = enc.encode(PROMPTS)
    assert hidden.shape == (2, 12, 32)
    assert mask.sum(1).tolist() == [len(tokenizer(p)["input_ids"]) for p in PROMPTS]
    # The saved weights were loaded, not a fresh random init.
    torch.testing.assert_close(hidden, _reference(model, tokenizer, PROMPTS, 12))

    with pytest.raises(MvditError, match="exceeds the 20 positions"):
        load_text_encoder(TextConfig(kind="clip", path=str(tmp_path), max_length=77))


def test_tiny_t5_from_directory(tmp_path):
    # No pad token in the tokenizer: the loader pads with eos and masks the padding.
    tokenizer = _word_tokenizer("a red ball bounces left two blue squares".split(), pad=False)
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4
    )
    model = transformers.T5EncoderModel(cfg).eval()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)

    enc = load_text_encoder(TextConfig(kind="t5", path=str(tmp_path), max_length=8))
    assert isinstance(enc.model.inner, transformers.T5EncoderModel) and enc.dim == 32
    assert enc.tokenizer.pad_token == "</s>"
    hidden, mask = enc.encode(PROMPTS)
    assert hidden.shape == (2, 8, 32)
    assert mask.sum(1).tolist() == [5, 3]  # whitespace words, no specials added
    torch.testing.assert_close(hidden, _reference(model, enc.tokenizer, PROMPTS, 8))


@pytest.mark.parametrize("family", ["t5", "umt5"])
def test_t5_family_loads_as_the_encoder_its_config_names(tmp_path, family):
    """Wan's UMT5 is not T5 (per-layer position biases): "auto" and its own kind load it as
    UMT5EncoderModel, the other T5 kind is refused in one line, never loaded as the wrong class."""
    tokenizer = _word_tokenizer("a red ball bounces left two blue squares".split(), pad=True)
    torch.manual_seed(0)
    conf, cls = {"t5": (transformers.T5Config, transformers.T5EncoderModel),
                 "umt5": (transformers.UMT5Config, transformers.UMT5EncoderModel)}[family]  # fmt: skip
    model = cls(conf(vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                     num_heads=4)).eval()  # fmt: skip
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    for kind in ("auto", family):
        enc = load_text_encoder(TextConfig(kind=kind, path=str(tmp_path), max_length=8))
        assert type(enc.model.inner) is cls
        hidden, _ = enc.encode(PROMPTS)
        torch.testing.assert_close(hidden, _reference(model, enc.tokenizer, PROMPTS, 8))
    other = "t5" if family == "umt5" else "umt5"
    with pytest.raises(MvditError, match=f"holds a '{family}' model: set text.kind = '{family}'"):
        load_text_encoder(TextConfig(kind=other, path=str(tmp_path), max_length=8))


def test_missing_or_broken_directories(tmp_path):
    with pytest.raises(MvditError, match="does not exist"):
        load_text_encoder(TextConfig(kind="clip", path=str(tmp_path / "nope")))
    with pytest.raises(MvditError, match="needs a local directory"):
        load_text_encoder(TextConfig(kind="t5"))
    with pytest.raises(MvditError, match="no config.json"):
        load_text_encoder(TextConfig(kind="clip", path=str(tmp_path)))
    # A config without weights: the loader's OSError becomes one readable line.
    broken = tmp_path / "broken"
    shutil.copytree(default_minilm_path(), broken, ignore=shutil.ignore_patterns("*.safetensors"))
    with pytest.raises(MvditError, match="could not load text encoder"):
        load_text_encoder(TextConfig(kind="minilm", path=str(broken)))

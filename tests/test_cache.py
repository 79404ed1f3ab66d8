"""The latent cache: same tensors as direct encoding, resumable, and refuses mismatched reuse."""

import json
import pickle

import pytest
import torch
import transformers

from mvdit import MvditError
from mvdit.data.cache import LatentCacheDataset, build_latent_cache, shard_name
from mvdit.models.autoencoder import PatchifyAutoencoder
from mvdit.models.text import TextConfig, default_minilm_path, hf_text_encoder
from mvdit.train import make_batch_fn


class RandomClips(torch.utils.data.Dataset):
    """Random videos in [-1, 1] with distinct captions; counts the items it was asked for."""

    frames, height, width = 3, 16, 16

    def __init__(self, n=5, fail_at=None):
        self.n, self.fail_at, self.calls = n, fail_at, []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i == self.fail_at:
            raise KeyboardInterrupt  # the build is interrupted here
        self.calls.append(i)
        g = torch.Generator().manual_seed(i)
        video = torch.rand(3, self.frames, self.height, self.width, generator=g) * 2 - 1
        return {"video": video, "caption": f"clip number {i} " + "word " * i, "path": f"v{i}.mp4"}


@pytest.fixture(scope="module")
def tokenizer():
    return transformers.AutoTokenizer.from_pretrained(default_minilm_path())


def tiny_text(tokenizer, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    return hf_text_encoder(tokenizer, transformers.BertModel(cfg), TextConfig(max_length=8))


def test_cache_matches_direct_encoding(tmp_path, tokenizer):
    data, vae, text = RandomClips(5), PatchifyAutoencoder(1, 8), tiny_text(tokenizer)
    build_latent_cache(data, vae, text, tmp_path / "c", shard_size=2, batch_size=3, progress=False)
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [
        "index.json",
        *(shard_name(k) for k in range(3)),
    ]
    cache = LatentCacheDataset(tmp_path / "c", autoencoder=vae, text_encoder=text)
    assert len(cache) == 5 and cache.latent_shape == (192, 3, 2, 2)
    for i in range(5):
        item, src = cache[i], data[i]
        assert torch.equal(item["latent"], vae.encode(src["video"][None])[0])
        hidden, mask = text.encode([src["caption"]])
        torch.testing.assert_close(item["text"], hidden[0])
        assert torch.equal(item["text_mask"], mask[0])
        assert (item["caption"], item["path"]) == (src["caption"], src["path"])
    # DataLoader workers get a copy without the parent's open shard files
    assert torch.equal(pickle.loads(pickle.dumps(cache))[4]["latent"], cache[4]["latent"])
    # the training loop's batches come straight out of it
    batch = make_batch_fn(cache, batch_size=4, seed=0)(0, 0)
    assert batch["latent"].shape == (4, 192, 3, 2, 2) and batch["text_mask"].dtype == torch.bool
    assert len(batch["caption"]) == 4


def test_resume_skips_complete_shards(tmp_path, tokenizer):
    vae, text, out = PatchifyAutoencoder(1, 8), tiny_text(tokenizer), tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        build_latent_cache(RandomClips(5, fail_at=3), vae, text, out, shard_size=2, progress=False)
    assert (out / shard_name(0)).is_file() and not (out / shard_name(1)).exists()
    with pytest.raises(MvditError, match="incomplete"):
        LatentCacheDataset(out)

    again = RandomClips(5)
    build_latent_cache(again, vae, text, out, shard_size=2, progress=False)
    assert again.calls == [2, 3, 4]  # shard 0 (items 0, 1) was kept
    cache = LatentCacheDataset(out)
    assert [cache[i]["caption"] for i in range(5)] == [again[i]["caption"] for i in range(5)]

    done = RandomClips(5)
    build_latent_cache(done, vae, text, out, shard_size=2, progress=False)
    assert done.calls == []


def test_mismatched_reuse_is_refused(tmp_path, tokenizer):
    vae, text, out = PatchifyAutoencoder(1, 8), tiny_text(tokenizer), tmp_path / "c"
    build_latent_cache(RandomClips(3), vae, text, out, shard_size=2, progress=False)
    other_vae, other_text = PatchifyAutoencoder(1, 4), tiny_text(tokenizer, seed=1)
    with pytest.raises(MvditError, match="different autoencoder .*spatial_factor"):
        build_latent_cache(RandomClips(3), other_vae, text, out, shard_size=2, progress=False)
    with pytest.raises(MvditError, match="different text .*weights"):
        build_latent_cache(RandomClips(3), vae, other_text, out, shard_size=2, progress=False)
    with pytest.raises(MvditError, match="another dataset"):
        build_latent_cache(RandomClips(4), vae, text, out, shard_size=2, progress=False)
    with pytest.raises(MvditError, match="another shard_size"):
        build_latent_cache(RandomClips(3), vae, text, out, shard_size=3, progress=False)
    # at training time, too
    with pytest.raises(MvditError, match="different autoencoder"):
        LatentCacheDataset(out, autoencoder=other_vae)
    with pytest.raises(MvditError, match="different text"):
        LatentCacheDataset(out, text_encoder=other_text)
    LatentCacheDataset(
        out, autoencoder=PatchifyAutoencoder(1, 8), text_encoder=tiny_text(tokenizer)
    )


def test_bfloat16_cache_and_user_mistakes(tmp_path, tokenizer):
    vae, text = PatchifyAutoencoder(1, 8), tiny_text(tokenizer)
    build_latent_cache(
        RandomClips(2), vae, text, tmp_path / "c", dtype=torch.bfloat16, progress=False
    )
    index = json.loads((tmp_path / "c" / "index.json").read_text())
    assert index["dtype"] == "bfloat16" and index["complete"]
    item = LatentCacheDataset(tmp_path / "c")[1]
    assert item["latent"].dtype == torch.float32  # widened back on read
    exact = vae.encode(RandomClips(2)[1]["video"][None])[0]
    torch.testing.assert_close(item["latent"], exact, atol=1e-2, rtol=1e-2)

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(MvditError, match="not a latent cache"):
        build_latent_cache(RandomClips(2), vae, text, tmp_path / "notes", progress=False)
    with pytest.raises(MvditError, match="not a latent cache"):
        LatentCacheDataset(tmp_path / "notes")
    with pytest.raises(MvditError, match="empty"):
        build_latent_cache(RandomClips(0), vae, text, tmp_path / "e", progress=False)


def test_cli_caches_a_video_folder(tmp_path, capsys):
    import sys

    import av
    import numpy as np

    from mvdit.cli import main

    videos = tmp_path / "videos"
    videos.mkdir()
    for k in range(3):
        with av.open(str(videos / f"v{k}.mp4"), "w") as c:
            s = c.add_stream("libx264", rate=8)
            s.width, s.height, s.pix_fmt = 24, 16, "yuv420p"
            for i in range(10):
                img = np.full((16, 24, 3), 20 * k + 5 * i, np.uint8)
                for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                    c.mux(p)
            for p in s.encode():
                c.mux(p)
    (videos / "captions.csv").write_text(
        "path,caption\n" + "".join(f"v{k}.mp4,clip {k}\n" for k in range(3))
    )

    def cli(*extra):
        sets = ["data.kind=folder", f"data.path={videos}", "data.frames=9", "data.height=16"]
        sets += ["data.width=16", "text.max_length=8", "vae.kind=patchify", "vae.temporal_factor=1"]
        sets += ["vae.spatial_factor=8", *extra]
        old, sys.argv = (
            sys.argv,
            ["mvdit", "cache", "--out", str(tmp_path / "c"), "--shard-size", "2"],
        )
        sys.argv += [a for s in sets for a in ("--set", s)]
        try:
            main()
            code = 0
        except SystemExit as e:
            code = e.code
        finally:
            sys.argv = old
        return code, capsys.readouterr()

    code, out = cli()
    assert code == 0, out.err
    assert "3 clips cached" in out.out and "192x9x2x2" in out.out
    cache = LatentCacheDataset(tmp_path / "c")
    assert [cache[k]["caption"] for k in range(3)] == ["clip 0", "clip 1", "clip 2"]
    code, out = cli("vae.spatial_factor=4")
    assert code == 2 and "different autoencoder" in out.err and "Traceback" not in out.err

"""The latent cache: every clip encoded once by the VAE and every caption by the text encoder.

Training on latents skips both encoders at every step. The cache is a directory:

    index.json                 what built it (autoencoder, text encoder, dataset, shapes) + captions
    shard_00000.safetensors    latents (N, C, t, h, w), text (N, L, D), text_mask (N, L)
    shard_00001.safetensors    ...

Each shard is written atomically and carries its own captions in its metadata, so an interrupted
build resumes at the first missing shard. The index records a fingerprint of both encoders
(config and a hash of the weights): a cache is never silently reused with a different VAE or text
encoder, whose latents or embeddings would no longer match.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from mvdit import MvditError
from mvdit.io import read_json, write_json
from mvdit.models.autoencoder import VideoAutoencoder
from mvdit.models.text import TextEncoder

FORMAT = 1  # bump when the layout changes


def shard_name(k: int) -> str:
    return f"shard_{k:05d}.safetensors"


# ---------------------------------------------------------------------------------------------
# fingerprints: what a cache was built with


def weights_hash(module: nn.Module) -> str:
    """sha256 of every parameter and buffer (names, dtypes, shapes, bytes); ~0.1 s for MiniLM."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def autoencoder_fingerprint(autoencoder: VideoAutoencoder) -> dict:
    cfg = getattr(autoencoder, "config", None)
    if callable(cfg):  # PatchifyAutoencoder.config() is a method, CausalVideoVAE.config a model
        cfg = cfg()
    if isinstance(cfg, BaseModel):
        cfg = cfg.model_dump(mode="json")
    return {
        "kind": autoencoder.kind,
        "config": _jsonable(dict(cfg or {})),
        "weights": weights_hash(autoencoder),
    }


def text_fingerprint(text_encoder: TextEncoder) -> dict:
    cfg = text_encoder.config.model_dump(mode="json")
    return {
        "kind": cfg["kind"],
        "max_length": text_encoder.max_length,
        "dim": text_encoder.dim,
        "weights": weights_hash(text_encoder.model),
        "config": cfg,
    }


# What must agree for a cache to be reused. A text encoder's config is left out: it names the
# directory the model was loaded from, and a moved model is still the same model.
IDENTITY = {
    "autoencoder": ("kind", "config", "weights"),
    "text": ("kind", "max_length", "dim", "weights"),
}


def _differences(built: dict, now: dict, what: str) -> str | None:
    for k in IDENTITY[what]:
        if built.get(k) != now.get(k):
            return f"its {what} {k} was {_short(built.get(k))}, now {_short(now.get(k))}"
    return None


def _short(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s if len(s) <= 80 else s[:77] + "..."


def _dataset_summary(dataset: Dataset) -> dict:
    """What a rerun must agree on: the clip size and, for a folder, where the videos are."""
    base = getattr(dataset, "dataset", dataset)  # a Subset reports what it was cut from
    summary = {"type": type(base).__name__, "items": len(dataset)}
    if callable(getattr(base, "summary", None)):  # e.g. teacher samples: prompts, seeds, sampler
        summary |= base.summary()
    for k in ("frames", "height", "width", "fps", "seed", "split", "root"):
        if isinstance(v := getattr(base, k, None), int | float | str | Path):
            summary[k] = str(v) if isinstance(v, Path) else v
    return summary


def _check_reuse(index: dict, plan: dict, out_dir: Path) -> None:
    hint = f"choose another output directory or delete {out_dir}"
    if index.get("format") != FORMAT:
        raise MvditError(
            f"{out_dir} holds a latent cache of another format ({index.get('format')}); {hint}"
        )
    for what in ("autoencoder", "text"):
        diff = _differences(index[what], plan[what], what)
        if diff:
            raise MvditError(f"{out_dir} was built with a different {what} ({diff}); {hint}")
    for k in ("dataset", "shard_size", "dtype"):
        if index[k] != plan[k]:
            raise MvditError(
                f"{out_dir} was built from another {k} ({_short(index[k])}, now {_short(plan[k])}); {hint}"
            )


# ---------------------------------------------------------------------------------------------
# building


def _save_shard(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _shard_metadata(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


@torch.no_grad()
def build_latent_cache(
    dataset: Dataset,
    autoencoder: VideoAutoencoder,
    text_encoder: TextEncoder,
    out_dir: str | Path,
    shard_size: int = 256,
    batch_size: int = 8,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
) -> Path:
    """Encode every item of `dataset` ({"video", "caption"[, "path"]}) into `out_dir`; items that
    carry a "latent" instead (samples a teacher generated in this autoencoder's space) are stored
    as they are.

    Rerunning skips complete shards; a directory built with other encoders raises MvditError.
    Videos go to the autoencoder's device. Returns `out_dir`.
    """
    out_dir = Path(out_dir)
    n = len(dataset)
    if n == 0:
        raise MvditError("the dataset to cache is empty")
    if shard_size < 1 or batch_size < 1:
        raise MvditError(
            f"shard_size and batch_size must be positive, got {shard_size} and {batch_size}"
        )
    plan = {
        "format": FORMAT,
        "complete": False,
        "autoencoder": autoencoder_fingerprint(autoencoder),
        "text": text_fingerprint(text_encoder),
        "dataset": _dataset_summary(dataset),
        "shard_size": shard_size,
        "dtype": str(dtype).removeprefix("torch."),
    }
    if (out_dir / "index.json").is_file():
        index = read_json(out_dir / "index.json")
        _check_reuse(index, plan, out_dir)
        if index.get("complete"):
            return out_dir
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise MvditError(
            f"{out_dir} exists and is not a latent cache; choose an empty or new directory"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "index.json", plan)

    device = next(iter(autoencoder.parameters()), torch.empty(0)).device
    starts = list(range(0, n, shard_size))
    shards = [(k, s, min(n, s + shard_size)) for k, s in enumerate(starts)]
    todo = [sh for sh in shards if not (out_dir / shard_name(sh[0])).is_file()]
    bar = tqdm(
        total=n,
        initial=n - sum(e - s for _, s, e in todo),
        unit="clip",
        desc="caching",
        disable=not progress,
    )
    for k, start, end in todo:
        latents, texts, masks, captions, paths = [], [], [], [], []
        for b in range(start, end, batch_size):
            items = [dataset[i] for i in range(b, min(end, b + batch_size))]
            caps = [it["caption"] for it in items]
            hidden, mask = text_encoder.encode(caps)
            if "latent" in items[0]:  # already in the autoencoder's latent space (teacher samples)
                latent = torch.stack([it["latent"] for it in items])
            else:
                latent = autoencoder.encode(torch.stack([it["video"] for it in items]).to(device))
            latents.append(latent.to("cpu", dtype))
            texts.append(hidden.to("cpu", dtype))
            masks.append(mask.cpu())
            captions += caps
            paths += [str(it.get("path", i)) for i, it in enumerate(items, b)]
            bar.update(len(items))
        meta = {
            "start": str(start),
            "count": str(end - start),
            "captions": json.dumps(captions),
            "paths": json.dumps(paths),
        }
        tensors = {
            "latents": torch.cat(latents),
            "text": torch.cat(texts),
            "text_mask": torch.cat(masks),
        }
        _save_shard(out_dir / shard_name(k), tensors, meta)
    bar.close()

    # The index is complete only once every shard is on disk; it gathers their captions.
    captions, paths = [], []
    for k, start, end in shards:
        meta = _shard_metadata(out_dir / shard_name(k))
        if int(meta.get("start", -1)) != start or int(meta.get("count", -1)) != end - start:
            raise MvditError(
                f"{out_dir / shard_name(k)} does not hold items {start}-{end - 1}; delete it and rerun"
            )
        captions += json.loads(meta["captions"])
        paths += json.loads(meta["paths"])
    with safe_open(str(out_dir / shard_name(0)), framework="pt") as f:
        latent_shape = list(f.get_slice("latents").get_shape()[1:])
        text_shape = list(f.get_slice("text").get_shape()[1:])
    index = {
        **plan,
        "complete": True,
        "items": n,
        "latent_shape": latent_shape,
        "text_shape": text_shape,
        "shards": [shard_name(k) for k, _, _ in shards],
        "captions": captions,
        "paths": paths,
    }
    write_json(out_dir / "index.json", index)
    return out_dir


# ---------------------------------------------------------------------------------------------
# reading


class LatentCacheDataset(Dataset):
    """Items {"latent": (C, t, h, w), "text": (L, D), "text_mask": (L,), "caption", "path"}.

    Shards are memory-mapped and read one item at a time, so a shuffled sampler does not load
    whole shards. Pass the autoencoder / text encoder a run uses to check the cache matches them.
    """

    def __init__(
        self,
        path: str | Path,
        autoencoder: VideoAutoencoder | None = None,
        text_encoder: TextEncoder | None = None,
    ):
        self.path = Path(path)
        if not (self.path / "index.json").is_file():
            raise MvditError(
                f"{self.path} is not a latent cache (no index.json); build one with `mvdit cache`"
            )
        self.index = read_json(self.path / "index.json")
        if self.index.get("format") != FORMAT:
            raise MvditError(
                f"{self.path}: latent cache format {self.index.get('format')} is not {FORMAT}; rebuild it"
            )
        if not self.index.get("complete"):
            raise MvditError(
                f"{self.path}: the latent cache is incomplete; rerun `mvdit cache` to finish it"
            )
        self.shard_size = int(self.index["shard_size"])
        self.captions: list[str] = self.index["captions"]
        self.paths: list[str] = self.index["paths"]
        self.latent_shape = tuple(self.index["latent_shape"])
        self._files: dict[int, Any] = {}
        self.check(autoencoder, text_encoder)

    def check(
        self, autoencoder: VideoAutoencoder | None = None, text_encoder: TextEncoder | None = None
    ) -> None:
        """Raise MvditError when the cache was built with other encoders than these."""
        for what, now in (
            ("autoencoder", autoencoder and autoencoder_fingerprint(autoencoder)),
            ("text", text_encoder and text_fingerprint(text_encoder)),
        ):
            if now is not None and (diff := _differences(self.index[what], now, what)):
                raise MvditError(
                    f"{self.path} was built with a different {what} ({diff}); rebuild it with `mvdit cache`"
                )

    def __len__(self) -> int:
        return int(self.index["items"])

    def _shard(self, k: int):
        if k not in self._files:
            self._files[k] = safe_open(str(self.path / self.index["shards"][k]), framework="pt")
        return self._files[k]

    def __getstate__(self) -> dict:
        # Open file handles do not cross into DataLoader workers; each worker reopens its own.
        return {**self.__dict__, "_files": {}}

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(i)
        f, j = self._shard(i // self.shard_size), i % self.shard_size
        return {
            "latent": f.get_slice("latents")[j : j + 1][0].float(),
            "text": f.get_slice("text")[j : j + 1][0].float(),
            "text_mask": f.get_slice("text_mask")[j : j + 1][0],
            "caption": self.captions[i],
            "path": self.paths[i],
        }

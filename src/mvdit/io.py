"""Weights and configs on disk: safetensors + JSON only, always written atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ValidationError
from safetensors.torch import load_file, save_file

from mvdit import MvditError


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `final` in one rename.

    A crash or an exception leaves `final` as it was (old contents or absent), never half-written.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def tree_bytes(path: str | Path) -> int:
    """Size on disk of a file, or of every file under a directory (a model, an .mlpackage)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def atomic_write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_figure(fig, path: str | Path, dpi: float | None = None) -> Path:
    """Lay out a matplotlib figure, write it as PNG atomically (a temporary file, then a rename)
    and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=dpi)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MvditError(f"{path} not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise MvditError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_safetensors(path: str | Path) -> Path:
    """Refuse, naming the file, anything offered as weights that is not a well-formed safetensors
    file: a pickle or a torch.save zip (`.pt`, `.bin`, `.ckpt`: unpickling runs code), another
    suffix, or a header that is not what the format says (8-byte length, then that much JSON)."""
    path = Path(path)
    if not path.is_file():
        raise MvditError(f"{path} not found")
    convert = "mvdit reads weights only as safetensors: convert it with safetensors.torch.save_file"
    if path.suffix != ".safetensors":
        raise MvditError(f"{path} is not a .safetensors file; {convert}")
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = None
        if 2 <= n <= size - 8:
            try:
                header = json.loads(f.read(n))
            except (UnicodeDecodeError, json.JSONDecodeError):
                header = None
    if isinstance(header, dict):
        return path
    # not safetensors: name what it is when its signature shows it (a valid header's length can
    # begin with a pickle's first byte, so only a file that failed above is asked)
    if head[:1] == b"\x80" or head[:4] == b"PK\x03\x04":
        kind = "a pickle" if head[:1] == b"\x80" else "a torch.save zip archive"
        raise MvditError(f"{path} is {kind}, not safetensors; {convert}")
    if not 2 <= n <= size - 8:
        raise MvditError(
            f"{path} has no valid safetensors header (the file is cut or not safetensors)"
        )
    raise MvditError(f"{path} has a corrupt safetensors header (not a JSON object)")


PICKLED_WEIGHTS = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def only_safetensors_weights(directory: str | Path) -> list[Path]:
    """The .safetensors files of a model directory, each checked; refused, naming the file, when
    the directory holds pickled weights (`pytorch_model.bin`, `model.pt`...) in their place."""
    directory = Path(directory)
    found = sorted(directory.glob("*.safetensors"))
    pickled = sorted(p for p in directory.iterdir() if p.suffix in PICKLED_WEIGHTS)
    if not found:
        if pickled:
            raise MvditError(
                f"{pickled[0]} is a pickled checkpoint and mvdit loads only safetensors: convert "
                "it (safetensors.torch.save_file) and remove the pickle"
            )
        raise MvditError(f"{directory} has no .safetensors weights")
    return [check_safetensors(p) for p in found]


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (check_safetensors first); an error naming the file."""
    path = check_safetensors(path)
    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        why = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise MvditError(f"{path} is unreadable ({why})") from None


def load_state_strict(
    module: torch.nn.Module, state: dict[str, torch.Tensor], source: str, assign: bool = False
) -> None:
    """Load weights, naming the first tensor whose name or shape differs (never a bare traceback).

    `assign=True` puts the checkpoint's tensors in place of the module's (cast to the module's
    dtypes), for a module built on the meta device."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing:
        raise MvditError(
            f"{source}: checkpoint lacks tensor '{missing[0]}' ({len(missing)} missing) — it was saved from another architecture"
        )
    if unexpected:
        raise MvditError(
            f"{source}: checkpoint has unexpected tensor '{unexpected[0]}' ({len(unexpected)} extra) — it was saved from another architecture"
        )
    for k, v in own.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise MvditError(
                f"{source}: tensor '{k}' has shape {tuple(state[k].shape)} in the checkpoint but {tuple(v.shape)} in the model config"
            )
    if assign:
        state = {k: v.to(own[k].dtype) for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=assign)


def format_validation_error(e: ValidationError, source: str, hint: str = "") -> str:
    """One line naming the first bad key of a config and what is wrong with it."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key '{loc}'" + (f" — {hint}" if hint else "")
    return f"{source}: {loc}: {err['msg']}"


def validate(cls: type[BaseModel], raw: dict, source: str, hint: str = ""):
    """Build a pydantic config from a dict; a mistake becomes a one-line MvditError naming `source`."""
    if not isinstance(raw, dict):
        raise MvditError(f"{source}: expected a table of keys, got {type(raw).__name__}")
    try:
        return cls(**raw)
    except ValidationError as e:
        raise MvditError(format_validation_error(e, source, hint)) from None


def read_config_json(cls: type[BaseModel], path: str | Path):
    """A pydantic config saved as JSON (a model directory's config.json, pipeline.json)."""
    return validate(cls, read_json(path), str(path))

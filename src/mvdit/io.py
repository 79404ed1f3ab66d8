"""Weights, configs and output directories on disk: safetensors + JSON only, always written
atomically (a temporary sibling, fsynced, then one rename), following the umask, and a write
that fails for a reason the user can fix (a full disk, a directory in place of a file, a
read-only place) is one line naming the path."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from mvdit import MvditError

if TYPE_CHECKING:  # torch is imported where tensors are read or written: the exported-graph
    import torch  # runtime (mvdit.export.runtime) writes its mp4 through this module without it

# ---------------------------------------------------------------------------------------------
# write errors a user can fix


class DiskFullError(MvditError):
    """A write ran out of space (ENOSPC) or quota (EDQUOT), whichever library raised it."""


_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# libraries that raise their own exception types say it in words (safetensors: "No space left on
# device (os error 28)"; PyAV and ExecuTorch wrap the C errno the same way)
_DISK_FULL_WORDS = ("no space left on device", "disk quota exceeded", "os error 28", "os error 122")


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__


def is_disk_full(e: BaseException) -> bool:
    """Whether an exception (or one it was raised from) is a full disk or an exhausted quota."""
    for x in _chain(e):
        if isinstance(x, DiskFullError):
            return True
        if isinstance(x, OSError) and x.errno in _DISK_FULL_ERRNOS:
            return True
        if any(w in str(x).lower() for w in _DISK_FULL_WORDS):
            return True
    return False


def disk_full_message(e: BaseException) -> str:
    """The one line for a full disk met anywhere (the path where the exception names one)."""
    for x in _chain(e):
        if isinstance(x, DiskFullError):
            return str(x)
    where = next((x.filename for x in _chain(e) if isinstance(x, OSError) and x.filename), None)
    return f"the disk is full{f' writing {where}' if where else ''}: free space and rerun"


def write_problem(e: BaseException, path: str | Path) -> MvditError | None:
    """The one-line error for a failed write of `path` that the user can fix, or None when the
    failure is not one of those (then the caller re-raises it as it is)."""
    if isinstance(e, MvditError) and not is_disk_full(e):
        return e
    if is_disk_full(e):
        return DiskFullError(f"the disk is full: {path} could not be written; free space and rerun")
    if not isinstance(e, OSError):
        return None
    if isinstance(e, IsADirectoryError):
        return MvditError(f"{path} is a directory: name a file to write")
    if isinstance(e, NotADirectoryError | FileExistsError):
        return MvditError(f"cannot write {path}: a part of that path is a file, not a directory")
    if isinstance(e, PermissionError) or e.errno == errno.EROFS:
        return MvditError(f"cannot write {path}: {e.strerror} (choose a writable place)")
    return None


def check_output_file(path: str | Path, what: str = "output") -> Path:
    """Refuse, before any work, an output file path that cannot be written: a directory, a path
    through a file, or a place this process may not write."""
    path = Path(path)
    if path.is_dir():
        raise MvditError(f"{what} {path} is a directory: name a file to write")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise MvditError(f"cannot write {what} {path}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise MvditError(f"cannot write {what} {path}: permission denied (choose a writable place)")
    return path


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a failed write of `path` into its one-line MvditError (write_problem)."""
    try:
        yield
    except BaseException as e:  # noqa: BLE001 - sorted by write_problem, re-raised otherwise
        problem = write_problem(e, path)
        if problem is None or problem is e:
            raise
        raise problem from None


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once, at import: setting it to read it is not thread-safe


def _umask() -> int:
    return _UMASK


def _fsync(path: Path) -> None:
    """Flush a file, or a directory's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every regular file and directory under `root` (a symlink or a FIFO a user left there
    is not opened: a dangling link would fail, a FIFO would block)."""
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if stat.S_ISREG(os.lstat(Path(dirpath) / name).st_mode):
                _fsync(Path(dirpath) / name)
        _fsync(Path(dirpath))


# a temporary sibling carries its writer's pid, so a later run can tell a killed writer's leftover
# (removed) from a live writer's (left alone)
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_TEMP = re.compile(r"^\..+\.(?:tmp|old)-([A-Za-z0-9]+)-(\d+)-")


def _temp_prefix(name: str, kind: str = "tmp") -> str:
    return f".{name}.{kind}-{_HOST}-{os.getpid()}-"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(directory: str | Path) -> list[Path]:
    """Remove the temporary files and directories a killed writer left in `directory` (only those
    whose writer's pid is dead on this host; never a live writer's). Returns what was removed."""
    directory = Path(directory)
    removed = []
    try:
        entries = list(directory.iterdir())
    except OSError:
        return removed
    for p in entries:
        m = _TEMP.match(p.name)
        # another host's (a shared filesystem) or a live writer's: not ours to judge
        if m is None or m.group(1) != _HOST or pid_alive(int(m.group(2))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextmanager
def atomic_file(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary sibling path to write; on success it is fsynced, given the umask's
    permissions and renamed onto `path`. A failure leaves `path` as it was and no temporary file;
    a fixable failure (full disk, a directory in the way, a read-only place) is one line."""
    path = Path(path)
    with writing(path):
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)
        fd, name = tempfile.mkstemp(prefix=_temp_prefix(path.name), suffix=suffix, dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        try:
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())
            _fsync(tmp)
            os.replace(tmp, path)
            _fsync(path.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def link_tree(src: Path, dst: Path) -> None:
    """Put `src` (a file or a directory) at `dst` by hard links (no copy of the data; a copy
    where the filesystem refuses links)."""

    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    if src.is_dir() and not src.is_symlink():
        shutil.copytree(src, dst, copy_function=link, symlinks=True)
    elif src.is_symlink():
        os.symlink(os.readlink(src), dst)
    else:
        link(str(src), str(dst))


@contextmanager
def atomic_dir(
    final: str | Path, carry: Iterable[str] | Callable[[], Iterable[str]] = ()
) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces `final` in one rename.

    A crash or an exception leaves `final` as it was (old contents or absent), never half-written;
    `carry` names entries of the old `final` that the new one keeps (hard-linked in before the
    swap, so they exist at every moment). Everything written is fsynced before the rename."""
    final = Path(final)
    with writing(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(final.parent)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final.name), dir=final.parent))
        os.chmod(tmp, 0o777 & ~_umask())
        try:
            yield tmp
            # what to keep is read at the swap, so a file added while the command ran is kept
            for name in carry() if callable(carry) else carry:
                if (tmp / name).exists():
                    raise MvditError(
                        f"{final / name} is not mvdit's but this command writes a file of that "
                        "name: move it away or pass --overwrite"
                    )
                link_tree(final / name, tmp / name)
            _fsync_tree(tmp)
            if final.exists():
                old = final.with_name(_temp_prefix(final.name, "old") + "0")
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
            _fsync(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


# ---------------------------------------------------------------------------------------------
# output directories: a command writes only into a directory that is its own


RECORD = "mvdit-record.json"


def read_record(directory: str | Path) -> dict | None:
    """The record an mvdit command left in an output directory (None when there is none or it is
    unreadable: the directory is then not mvdit's)."""
    path = Path(directory) / RECORD
    try:
        raw = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return raw if isinstance(raw, dict) and isinstance(raw.get("command"), str) else None


OVERWRITE_HELP = "replace OUT even if it holds files mvdit did not write there"


def claim_output_dir(
    out: str | Path, *, command: str, overwrite: bool = False, sources: Iterable[str | Path] = ()
) -> Path:
    """Check that `mvdit COMMAND` may write the directory `out` and return it resolved.

    Allowed: a new or empty directory, or one this command wrote before (its record says so).
    Refused with one line: a file, the current directory or one holding it, a directory holding a
    source of this command (or the source itself), and, unless `overwrite`, anything else."""
    out = Path(out)
    where = out.expanduser().resolve()
    cwd = Path.cwd().resolve()
    if where == cwd or where in cwd.parents:
        raise MvditError(
            f"{out} is the current directory or holds it: name a new directory for the output"
        )
    for src in sources:
        s = Path(src).expanduser().resolve()
        if s == where or where in s.parents:
            raise MvditError(
                f"{out} is the source {src} or holds it: write the output elsewhere, the source "
                "stays as it is"
            )
    if where.exists() and not where.is_dir():
        raise MvditError(f"{out} exists and is not a directory: name a new directory")
    if where.is_dir() and not overwrite and any(where.iterdir()):
        record = read_record(where)
        if record is None or record["command"] != command:
            by = f"`mvdit {record['command']}`" if record else "something else"
            raise MvditError(
                f"{out} is not empty and was written by {by}, not `mvdit {command}`: choose a new "
                "or empty directory, or pass --overwrite to replace it"
            )
    return where


def _record(command: str, files: list[str], **extra: Any) -> dict:
    from mvdit import __version__

    return {
        "command": command,
        "mvdit": __version__,
        "written": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "files": sorted(files),
        **extra,
    }


def write_record(directory: str | Path, command: str, **extra: Any) -> None:
    """Mark `directory` as written by `mvdit COMMAND` (for a directory a command fills in place,
    resumably: a synth cache, a study). Its files are those present now."""
    directory = Path(directory)
    files = [p.name for p in directory.iterdir() if p.name != RECORD and not _TEMP.match(p.name)]
    write_json(directory / RECORD, _record(command, files, **extra))


@contextmanager
def output_dir(
    out: str | Path,
    *,
    command: str,
    overwrite: bool = False,
    sources: Iterable[str | Path] = (),
    **record: Any,
) -> Iterator[Path]:
    """Write a command's output directory: claim it (claim_output_dir), yield a temporary
    directory to fill, then put it in place in one rename with a record of what it holds. Files
    in `out` that the command did not write before are kept (unless `overwrite`)."""
    final = claim_output_dir(out, command=command, overwrite=overwrite, sources=sources)

    def carry() -> list[str]:  # the user's files in `final`: neither its record nor ours
        if overwrite or not final.is_dir():
            return []
        old = read_record(final)
        own = set(old["files"]) if old else set()
        return [
            p.name
            for p in final.iterdir()
            if p.name != RECORD and p.name not in own and not _TEMP.match(p.name)
        ]

    with atomic_dir(final, carry=carry) as tmp:
        yield tmp
        files = [p.name for p in tmp.iterdir() if p.name != RECORD]
        write_json(tmp / RECORD, _record(command, files, **record))


# ---------------------------------------------------------------------------------------------
# a run directory is one run's: a lock file names its holder


LOCK = ".mvdit.lock"


class RunLock:
    """An exclusive lock on a run directory: a file holding the holder's pid and host, created
    with O_EXCL. A lock whose pid is dead on this host is stale and taken over (with a note); a
    live holder's is an error naming it."""

    def __init__(self, directory: str | Path, note=print):
        self.path = Path(directory) / LOCK
        self.note = note
        self.held = False

    def acquire(self) -> RunLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        with writing(self.path):
            if self.path.parent.exists() and not self.path.parent.is_dir():
                raise MvditError(
                    f"{self.path.parent} is a file, not a run directory: choose another out_dir"
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for _ in range(3):
                try:
                    fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
                except FileExistsError:
                    holder = self._holder()
                    mine = holder is not None and (holder.get("pid"), holder.get("host")) == (
                        me["pid"],
                        me["host"],
                    )
                    if mine:
                        self.held = True  # this process holds it already (a second stage call)
                        return self
                    if holder is not None and (
                        holder.get("host") != me["host"] or pid_alive(int(holder.get("pid", -1)))
                    ):
                        raise MvditError(
                            f"{self.path.parent} is in use by another run (pid {holder.get('pid')} "
                            f"on {holder.get('host')}): wait for it, or use another run.out_dir"
                        ) from None
                    self.note(
                        f"note: taking over the stale lock of {self.path.parent} "
                        f"(pid {holder.get('pid') if holder else '?'} is gone)"
                    )
                    # rename, not unlink: of two processes taking over at once only one succeeds
                    stale = self.path.with_name(f"{LOCK}.stale-{os.getpid()}")
                    try:
                        os.rename(self.path, stale)
                    except FileNotFoundError:
                        continue  # another process took it over first: race for the new lock
                    stale.unlink(missing_ok=True)
                    continue
                with os.fdopen(fd, "w") as f:
                    json.dump(me, f)
                self.held = True
                return self
        raise MvditError(f"cannot lock {self.path.parent}: another run keeps taking it")

    def _holder(self) -> dict | None:
        try:
            raw = json.loads(self.path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            # being written this instant by its creator: treat as live unless it stays unreadable
            time.sleep(0.2)
            try:
                raw = json.loads(self.path.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                return None
        return raw if isinstance(raw, dict) else None

    def release(self) -> None:
        if self.held:
            holder = self._holder()
            if holder is not None and holder.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# ---------------------------------------------------------------------------------------------
# files


def tree_bytes(path: str | Path) -> int:
    """Size on disk of a file, or of every file under a directory (a model, an .mlpackage)."""
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


def save_figure(fig, path: str | Path, dpi: float | None = None) -> Path:
    """Lay out a matplotlib figure, write it as PNG atomically (a temporary file, then a rename)
    and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    try:
        with atomic_file(path, suffix=".png") as tmp:
            fig.savefig(tmp, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return path


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_text(path: str | Path, what: str = "file") -> str:
    """A text file as UTF-8; one line naming it when it is missing, a directory or not text."""
    path = Path(path)
    if not path.exists():
        raise MvditError(f"{what} {path} not found")
    if path.is_dir():
        raise MvditError(f"{what} {path} is a directory, not a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise MvditError(
            f"{what} {path} is not UTF-8 text (byte {e.start}): save it as UTF-8"
        ) from None
    except OSError as e:
        raise MvditError(f"cannot read {what} {path}: {e.strerror}") from None


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise MvditError(f"{path} not found")
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise MvditError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp)


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
    from safetensors.torch import load_file

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


def format_validation_error(
    e: ValidationError, source: str, hint: str = "", names: Mapping[str, str] | None = None
) -> str:
    """One line naming the first bad key of a config and what is wrong with it; a key in `names`
    (dotted key -> the flag that set it) is named by its flag, with the value given."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(top level)"
    if err["type"] == "extra_forbidden":
        return f"{source}: unknown key '{loc}'" + (f" — {hint}" if hint else "")
    key = next((k for k in names or () if loc == k or loc.startswith(k + ".")), None)
    if key is not None:  # a list flag's bad item: "levels.0"
        return f"{names[key]} {err.get('input')!r}: {err['msg']}"
    return f"{source}: {loc}: {err['msg']}"


def validate(
    cls: type[BaseModel],
    raw: dict,
    source: str,
    hint: str = "",
    names: Mapping[str, str] | None = None,
):
    """Build a pydantic config from a dict; a mistake becomes a one-line MvditError naming `source`
    (or the flag in `names` that set the bad key)."""
    if not isinstance(raw, dict):
        raise MvditError(f"{source}: expected a table of keys, got {type(raw).__name__}")
    try:
        return cls(**raw)
    except ValidationError as e:
        raise MvditError(format_validation_error(e, source, hint, names)) from None


def read_config_json(cls: type[BaseModel], path: str | Path):
    """A pydantic config saved as JSON (a model directory's config.json, pipeline.json)."""
    return validate(cls, read_json(path), str(path))

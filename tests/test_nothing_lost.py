"""Nothing lost, no traceback: output directories are the command's own, a real full disk and a
real second run on the same directory are one line each, sampling that goes NaN writes nothing,
and ordinary mistakes (bad bytes, huge numbers, a directory where a file goes) are one line.

Each fault is caused for real where this machine can cause it: a tmpfs mounted full (as root;
skipped with the reason where mounting is refused), two real processes, real non-UTF-8 bytes."""

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from conftest import run_cli, save_tiny_bert, save_tiny_pipeline
from safetensors.torch import save_file

from mvdit import MvditError
from mvdit.io import (
    _HOST as HOST,
)
from mvdit.io import (
    RECORD,
    DiskFullError,
    RunLock,
    atomic_dir,
    remove_stale_temps,
    save_tensors,
)
from mvdit.limits import LIMITS, limits_markdown
from mvdit.video import write_mp4

ROOT = Path(__file__).resolve().parents[1]


def one_line_error(code: int, err: str) -> str:
    """The command failed as a user mistake must: exit 2, no traceback, one `error:` line."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = [x for x in err.strip().splitlines() if x.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    bert = save_tiny_bert(d / "bert")  # a small text encoder keeps the export here quick
    return save_tiny_pipeline(d / "m", schedule=[1.0, 0.5, 0.0], text_path=bert)


# ---------------------------------------------------------------------------------------------
# an output directory is the command's own


def test_export_and_convert_never_delete_what_they_did_not_write(model, tmp_path, capsys):
    foreign = tmp_path / "d"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("notes")
    code, _, err = run_cli(["export", "-m", model, "--format", "onnx", "-o", foreign], capsys)
    assert "is not empty and was written by something else" in one_line_error(code, err)
    assert (foreign / "notes.txt").read_text() == "notes" and len(list(foreign.iterdir())) == 1

    before = sorted(p.relative_to(model) for p in model.rglob("*"))
    for cmd in (["export", "-m", model, "-o", model], ["convert", "-m", model, "-o", model],
                ["convert", "-m", model, "-o", model.parent]):  # fmt: skip
        code, _, err = run_cli(cmd, capsys)
        assert "the output must" in one_line_error(code, err) or "source" in err
    assert sorted(p.relative_to(model) for p in model.rglob("*")) == before

    # a new directory gets a record; a rerun replaces only its own files and keeps the user's
    out = tmp_path / "small"
    assert run_cli(["convert", "-m", model, "-o", out], capsys)[0] == 0
    record = json.loads((out / RECORD).read_text())
    assert record["command"] == "convert" and set(record["files"]) == {
        "pipeline.json",
        "dit",
        "vae",
        "text_encoder",  # the model's own BERT, held inside it
    }
    (out / "my-notes.md").write_text("mine")
    (out / "gone").symlink_to(tmp_path / "nowhere")  # a dangling link and a FIFO of the user's
    os.mkfifo(out / "pipe")
    (out / "dit" / "config.json").write_text("{}")  # damage one of its own files
    code, _, err = run_cli(["convert", "-m", model, "-o", out, "--dtype", "fp32"], capsys)
    assert code == 0, err
    assert (out / "my-notes.md").read_text() == "mine"
    assert (out / "gone").is_symlink() and (out / "pipe").exists()
    assert json.loads((out / "dit" / "config.json").read_text()) != {}  # rewritten
    # another command's directory is refused; --overwrite replaces a foreign one whole
    code, _, err = run_cli(["prune", "-m", model, "-o", out, "--budget", "params=0.9"], capsys)
    assert "written by `mvdit convert`, not `mvdit prune`" in one_line_error(code, err)
    code, _, err = run_cli(["convert", "-m", model, "-o", foreign, "--overwrite"], capsys)
    assert code == 0, err and not (foreign / "notes.txt").exists()


def test_export_into_its_own_directory_keeps_the_users_files(model, tmp_path, capsys):
    out = tmp_path / "onnx"
    assert run_cli(["export", "-m", model, "-o", out], capsys)[0] == 0
    (out / "README.txt").write_text("how I use it")
    code, _, err = run_cli(["export", "-m", model, "-o", out], capsys)
    assert code == 0, err
    assert (out / "README.txt").read_text() == "how I use it"
    assert json.loads((out / RECORD).read_text())["command"] == "export"
    # the current directory is never an output
    cwd = os.getcwd()
    os.chdir(out)
    try:
        code, _, err = run_cli(["export", "-m", model, "-o", "."], capsys)
    finally:
        os.chdir(cwd)
    assert "is the current directory" in one_line_error(code, err)


def test_a_killed_writers_temporaries_are_removed_and_a_live_ones_kept(tmp_path):
    dead, live = dead_pid(), os.getpid()
    (tmp_path / f".out.tmp-{HOST}-{dead}-abc").mkdir()
    (tmp_path / f".out.tmp-{HOST}-{dead}-abc" / "big.bin").write_bytes(b"0" * 1000)
    (tmp_path / f".out.tmp-otherhost-{dead}-x").mkdir()  # a shared disk: not ours to judge
    (tmp_path / f".w.safetensors.tmp-{HOST}-{dead}-x").write_bytes(b"0")
    (tmp_path / f".out.tmp-{HOST}-{live}-def").mkdir()
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted([f".out.tmp-{HOST}-{live}-def", f".out.tmp-otherhost-{dead}-x", "out"])
    assert remove_stale_temps(tmp_path) == []


def test_files_and_directories_follow_the_umask(tmp_path):
    # the umask is read once when mvdit.io is imported (reading it means setting it, which is not
    # thread-safe): a process started under umask 027 writes 0640 files and 0750 directories
    code = (
        "import torch; from mvdit.io import save_tensors, output_dir; "
        f"save_tensors('{tmp_path}/w.safetensors', {{'a': torch.zeros(2)}})\n"
        f"with output_dir('{tmp_path}/o', command='test') as t: (t / 'x').write_text('x')"
    )
    subprocess.run(["sh", "-c", f'umask 027 && "{sys.executable}" -c "{code}"'], check=True)
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "o").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "o" / RECORD).stat().st_mode & 0o777 == 0o640


# ---------------------------------------------------------------------------------------------
# a real full disk


@contextmanager
def tmpfs(where: Path, options: str):
    """A tmpfs mounted at `where` with `options` (root only); the test is skipped with the reason
    where mounting is refused."""
    where.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs ({options}) here ({r.stderr.strip() or r.returncode})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def full_disk(tmp_path):
    """A 3 MB tmpfs, filled by the test."""
    with tmpfs(tmp_path / "small-disk", "size=3m") as mnt:
        yield mnt


def test_safetensors_and_mp4_on_a_full_disk_are_one_line_and_leave_nothing(full_disk):
    save_tensors(full_disk / "small.safetensors", {"a": torch.zeros(10)})
    with pytest.raises(
        DiskFullError, match=r"disk is full: .*big.safetensors could not be written"
    ):
        save_tensors(full_disk / "big.safetensors", {"a": torch.zeros(2_000_000)})  # 8 MB
    with pytest.raises(DiskFullError, match="disk is full"):
        write_mp4(full_disk / "clip.mp4", torch.randint(0, 255, (64, 512, 512, 3),
                  dtype=torch.uint8).numpy(), fps=8, scale=1)  # fmt: skip
    with pytest.raises(DiskFullError, match="disk is full"):
        with atomic_dir(full_disk / "export") as tmp:
            (tmp / "graph.bin").write_bytes(os.urandom(4 * 2**20))
    assert sorted(p.name for p in full_disk.iterdir()) == ["small.safetensors"]


def test_training_onto_a_full_disk_exits_2_with_one_line(full_disk):
    out = full_disk / "run"
    sets = ["data.cache_clips=8", "optim.steps=2", "optim.batch_size=2", "optim.warmup_steps=1",
            "run.checkpoint_every=1", "run.threads=1", f"run.out_dir={out}"]  # fmt: skip
    args = [a for s in sets for a in ("--set", s)]
    r = subprocess.run([sys.executable, "-c", "from mvdit.cli import main; main()", "train", *args],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
    line = one_line_error(r.returncode, r.stderr)
    assert "the disk is full" in line and str(out) in line, line
    leftovers = [p for p in out.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


# ---------------------------------------------------------------------------------------------
# one run per directory


def test_two_training_runs_on_one_directory_one_runs_the_other_exits_2(tmp_path):
    out = tmp_path / "run"
    sets = ["data.cache_clips=8", "optim.steps=30", "optim.batch_size=2", "optim.warmup_steps=1",
            "run.checkpoint_every=10", "run.threads=1", f"run.out_dir={out}"]  # fmt: skip
    args = [a for s in sets for a in ("--set", s)]
    cmd = [sys.executable, "-c", "from mvdit.cli import main; main()", "train", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    first = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.time() + 120
    while not (out / ".mvdit.lock").exists() and first.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    second = subprocess.run(cmd, capture_output=True, text=True, env=env)
    _, first_err = first.communicate(timeout=600)
    assert first.returncode == 0, first_err
    line = one_line_error(second.returncode, second.stderr)
    assert f"is in use by another run (pid {first.pid}" in line
    assert not (out / ".mvdit.lock").exists()  # released at the end


def test_a_dead_runs_lock_is_taken_over_with_a_note(tmp_path):
    notes = []
    (tmp_path / ".mvdit.lock").write_text(
        json.dumps({"pid": dead_pid(), "host": os.uname().nodename})
    )
    with RunLock(tmp_path, note=notes.append):
        assert json.loads((tmp_path / ".mvdit.lock").read_text())["pid"] == os.getpid()
    assert len(notes) == 1 and "stale lock" in notes[0]
    assert not (tmp_path / ".mvdit.lock").exists()


def test_a_run_directory_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    code, _, err = run_cli(["train", "--set", f"run.out_dir={tmp_path / 'f'}"], capsys)
    assert str(tmp_path / "f") in one_line_error(code, err)


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, tiny_dit_config, capsys):
    from test_train_faults import _run

    run = tmp_path / "run"
    _run(run, tiny_dit_config, steps=4)
    log = run / "metrics.jsonl"
    log.write_text(log.read_text() + '{"step": 5, "lo')
    _run(run, tiny_dit_config, steps=6, resume=True)
    rows = [json.loads(x) for x in log.read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert "dropped the torn last line" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# sampling that goes NaN writes nothing


def test_nan_guidance_and_nan_weights_write_nothing(model, tmp_path, capsys):
    out = tmp_path / "x.mp4"
    for cfg in ("nan", "inf", "1e30"):
        code, _, err = run_cli(["generate", "a red circle", "-m", model, "--cfg", cfg, "-o", out],
                               capsys)  # fmt: skip
        assert "--cfg must be" in one_line_error(code, err)
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(model), str(broken)], check=True)
    weights = broken / "dit" / "model.safetensors"
    from safetensors.torch import load_file

    state = load_file(str(weights))
    state = {k: torch.full_like(v, float("nan")) if "out" in k else v for k, v in state.items()}
    save_file(state, str(weights))
    code, _, err = run_cli(["generate", "a red circle", "-m", broken, "-o", out], capsys)
    line = one_line_error(code, err)
    assert "NaN/inf values at step 1 of 2" in line and "weights" in line
    assert not out.exists()
    # eval scores every clip, lists the failed ones and exits 2 at the end
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle moves left\na blue square\n")
    code, _, err = run_cli(["eval", "-m", broken, "-p", prompts, "-o", tmp_path / "ev",
                            "--seeds", 1, "--feature-size", 32], capsys)  # fmt: skip
    assert "2 of 2 clips failed" in one_line_error(code, err)
    assert len(json.loads((tmp_path / "ev" / "eval.json").read_text())["failed_clips"]) == 2


# ---------------------------------------------------------------------------------------------
# ordinary mistakes are one line


def test_ordinary_mistakes_are_one_line(model, tmp_path, capsys):
    out = tmp_path / "x.mp4"
    binary = tmp_path / "prompts.txt"
    binary.write_bytes(b"a red \xff\xfe circle\n\x00\x81")
    code, _, err = run_cli(["eval", "-m", model, "-p", binary, "-o", tmp_path / "e"], capsys)
    assert "is not UTF-8 text" in one_line_error(code, err)
    cases = {
        "--seed must be in 0…2**64-1": ["--seed", 2**64],
        "--scale must be in 1…32": ["--scale", 100000],
        "--steps must be in 1…1,000": ["--steps", 10**9],
        "--frames must be in 1…257": ["--frames", 100001],
    }
    for message, flags in cases.items():
        code, _, err = run_cli(["generate", "a red circle", "-m", model, *flags, "-o", out], capsys)
        assert message in one_line_error(code, err)
    (tmp_path / "dir.mp4").mkdir()
    code, _, err = run_cli(
        ["generate", "a circle", "-m", model, "-o", tmp_path / "dir.mp4"], capsys
    )
    assert "is a directory" in one_line_error(code, err)
    code, _, err = run_cli(["generate", "a circle", "-m", model, "-o", out, "--sheet", tmp_path],
                           capsys)  # fmt: skip
    assert "is a directory" in one_line_error(code, err) and not out.exists()
    code, _, err = run_cli(["generate", "x" * 20_000, "-m", model, "-o", out], capsys)
    assert "characters; at most 2,000" in one_line_error(code, err)
    code, _, err = run_cli(["generate", "a circle", "-m", "/etc/passwd", "-o", out], capsys)
    assert "is a file, not a model directory" in one_line_error(code, err)
    if not torch.cuda.is_available():
        code, _, err = run_cli(["eval", "-m", model, "-p", binary, "-o", tmp_path / "e",
                                "--device", "cuda"], capsys)  # fmt: skip
        assert "no CUDA GPU" in one_line_error(code, err)
    # a pipeline.json that is a JSON list, or binary
    bad = tmp_path / "bad"
    subprocess.run(["cp", "-r", str(model), str(bad)], check=True)
    for content in (b"[1, 2]", b"\x89PNG\r\n\x1a\n\x00\xff"):
        (bad / "pipeline.json").write_bytes(content)
        code, _, err = run_cli(["generate", "a circle", "-m", bad, "-o", out], capsys)
        assert "pipeline.json" in one_line_error(code, err)


def test_a_caption_file_that_is_not_utf8_is_one_line(tmp_path):
    from mvdit.data.folder import read_captions

    csv = tmp_path / "captions.csv"
    csv.write_bytes(b"path,caption\nclip.mp4,caf\xe9 au lait\n")  # Latin-1, not UTF-8
    with pytest.raises(MvditError, match="is not UTF-8 text"):
        read_captions(csv)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    out = tmp_path_factory.mktemp("exp") / "onnx"
    from mvdit.export.pipeline import export_pipeline

    export_pipeline(model, out, "onnx", progress=None)
    return out


@pytest.mark.parametrize("damage", ["truncated graph", "no artefacts", "no tokenizer"])
def test_a_damaged_export_is_one_line(exported, damage, tmp_path, capsys):
    d = tmp_path / "exp"
    subprocess.run(["cp", "-r", str(exported), str(d)], check=True)
    m = json.loads((d / "manifest.json").read_text())
    if damage == "truncated graph":
        g = d / m["artefacts"]["dit_step"]["file"]
        g.write_bytes(g.read_bytes()[: g.stat().st_size // 3])
    elif damage == "no artefacts":
        del m["artefacts"]
        (d / "manifest.json").write_text(json.dumps(m))
    else:
        subprocess.run(["rm", "-r", str(d / m["text"]["tokenizer"])], check=True)
    code, _, err = run_cli(["run-exported", d, "a red circle", "-o", tmp_path / "c.mp4"], capsys)
    line = one_line_error(code, err)
    assert "export again" in line and not (tmp_path / "c.mp4").exists()


# ---------------------------------------------------------------------------------------------
# the bounds are defined once and documented


def test_the_bounds_table_in_the_docs_is_the_code_s():
    doc = (ROOT / "docs" / "reliability.md").read_text()
    assert limits_markdown() in doc
    assert LIMITS["seed"].high == 2**64 - 1


def test_a_read_only_place_is_one_line(tmp_path, capsys, model):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as ro:
        code, _, err = run_cli(["generate", "a circle", "-m", model, "-o", ro / "x.mp4"], capsys)
        assert "cannot write --output" in one_line_error(code, err)
        code, _, err = run_cli(["train", "--set", f"run.out_dir={ro / 'run'}"], capsys)
        assert "Read-only file system" in one_line_error(code, err)
        code, _, err = run_cli(["convert", "-m", model, "-o", ro / "c"], capsys)
        assert "Read-only file system" in one_line_error(code, err)


def test_a_study_refuses_a_directory_that_is_not_its_own(model, tmp_path, capsys):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "todo.txt").write_text("mine")
    for cmd in (["study", "prune", "--teacher", model, "-o", foreign],
                ["study", "distill", "--teacher", model, "-o", foreign]):  # fmt: skip
        code, _, err = run_cli(cmd, capsys)
        assert "is not empty and was written by something else" in one_line_error(code, err)
    assert [p.name for p in foreign.iterdir()] == ["todo.txt"]

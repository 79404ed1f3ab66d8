"""Config and command-line fuzzing (hypothesis, fixed seed): random TOML values, unknown keys,
wrong types, negative or huge sizes, random `--set` overrides and random arguments for every
command end in a one-line `error: ...` and exit status 2, never a traceback.

Each generated command line ends with one argument that must make it fail before any real work
(a model path that does not exist, optim.steps = -1, ...), so a lucky draw cannot start an hour of
training; everything before it is random. EXAMPLES per test, derandomised.
"""

import json
import math
import tomllib

import pytest
import typer
from conftest import run_cli
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from mvdit.cli import app

EXAMPLES = 10
FUZZ = settings(
    max_examples=EXAMPLES,
    phases=[
        Phase.explicit,
        Phase.generate,
        Phase.target,
    ],  # no shrinking: a failure is shown as drawn
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
MISSING = "/nonexistent/mvdit-fuzz"


def _text(n: int):
    return st.text(st.characters(codec="utf-8"), max_size=n)  # any character a file can hold


SECTIONS = {
    "data": ["kind", "path", "frames", "height", "width", "fps", "max_objects", "cache_clips"],
    "vae": ["kind", "path", "latent_channels"],
    "text": ["kind", "path", "max_length"],
    "model": ["preset", "depth", "hidden_size", "heads", "ffn_dim", "patch_size"],
    "flow": ["shift", "t_mean", "t_std"],
    "optim": ["lr", "steps", "batch_size", "grad_accum", "warmup_steps", "betas", "grad_clip"],
    "run": [
        "out_dir",
        "seed",
        "checkpoint_every",
        "keep_checkpoints",
        "device",
        "threads",
        "precision",
        "parallel",
        "attention",
        "compile",
    ],  # fmt: skip
    "kd": ["student", "teacher", "task", "features"],
    "distill": ["student", "teacher", "steps", "rollout"],
    "disc": ["blocks", "lr", "r1"],
    "loss": ["l1", "kl", "adv", "perceptual"],
    "sample": ["steps", "guidance"],
}
scalars = st.one_of(
    st.integers(-(10**15), 10**15),
    st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 10**12]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    _text(12),
    st.sampled_from(["cpu", "cuda", "fsdp", "ddp", "bf16", "auto", "none", MISSING]),
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(_text(5), scalars, max_size=2),
)
section_names = st.one_of(st.sampled_from(list(SECTIONS)), _text(8))


@st.composite
def config_docs(draw) -> dict:
    doc = {}
    for section in draw(st.lists(section_names, max_size=4, unique=True)):
        known = SECTIONS.get(section, [])
        keys = draw(st.lists(st.one_of(st.sampled_from(known or ["x"]), _text(8)),
                             max_size=4, unique=True))  # fmt: skip
        doc[section] = {k: draw(values) for k in keys}
    if draw(st.booleans()):
        doc[draw(_text(6))] = draw(scalars)  # a top-level scalar, where tables belong
    return doc


def _q(text: str) -> str:
    """A TOML basic string: JSON's escapes, and DEL escaped too (TOML forbids it raw)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and not math.isfinite(v):
        return "nan" if v != v else ("inf" if v > 0 else "-inf")
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return _q(v)  # JSON's string escapes are TOML's
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{_q(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


def to_toml(doc: dict) -> str:
    lines = [f"{_q(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for section, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{_q(section)}]")
            lines += [f"{_q(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


override_keys = st.one_of(
    st.sampled_from([f"{s}.{k}" for s, ks in SECTIONS.items() for k in ks]),
    st.sampled_from(["optim", "run", "optim.lr.x", ".", "a..b", "=", "run.", ".seed"]),
    _text(10),
)
overrides = st.lists(st.builds(lambda k, v: f"{k}={v}", override_keys, _text(10)),
                     max_size=4)  # fmt: skip


def _one_line_error(code: int, err: str) -> None:
    assert "Traceback" not in err, err
    assert code == 2, (code, err)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert last.startswith("error: "), err


@pytest.mark.parametrize("command", ["train", "train-vae", "kd", "distill", "cache"])
@FUZZ
@given(doc=config_docs(), sets=overrides, garbage=st.booleans())
def test_random_configs_and_overrides_end_in_one_line_errors(
    tmp_path, monkeypatch, capsys, command, doc, sets, garbage
):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "fuzz.toml"
    text = to_toml(doc)
    if garbage:
        text += "[[[ not toml\n"
    else:
        tomllib.loads(text)  # the generator writes valid TOML; the values are what is random
    config.write_text(text)
    args = [command, config, *(a for s in sets for a in ("--set", s)), "--set", "optim.steps=-1"]
    if command == "cache":
        args += ["-o", tmp_path / "cache"]
    code, _, err = run_cli(args, capsys)
    _one_line_error(code, err)


def _commands():
    group = typer.main.get_command(app)

    def walk(cmd, path=()):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, (*path, name))
        else:
            yield path, cmd

    return dict(walk(group))


COMMANDS = _commands()
# what makes each command fail before real work (appended last: a repeated option's last value
# wins; positionals come first)
POISON: dict[tuple[str, ...], tuple[list[str], list[str]]] = {
    ("train",): ([], ["--set", "optim.steps=-1"]),
    ("train-vae",): ([], ["--set", "optim.steps=-1"]),
    ("kd",): ([MISSING], []),
    ("distill",): ([MISSING], []),
    ("cache",): ([], ["--set", "optim.steps=-1", "-o", "out"]),
    ("synth",): ([], ["--model", MISSING]),
    ("generate",): (["a red circle"], ["--model", MISSING]),
    ("convert",): ([], ["--model", MISSING]),
    ("export",): ([], ["--model", MISSING]),
    ("run-exported",): ([MISSING, "a red circle"], []),
    ("eval-exported",): ([MISSING], []),
    ("info",): ([], ["--frames", "-1"]),
    ("eval-vae",): ([MISSING], []),
    ("eval",): ([], ["--model", MISSING]),
    ("sensitivity",): ([], ["--model", MISSING]),
    ("prune",): ([], ["--model", MISSING]),
    ("demo",): ([], ["--model", MISSING]),
    ("eval-compare",): ([MISSING, MISSING], []),
    ("eval-curve",): ([MISSING], []),
    ("bench-vae",): ([], ["--repeats", "0"]),
    ("bench-tiling",): ([], ["--reps", "0"]),
    ("bench",): ([MISSING], []),
    ("report",): ([MISSING], []),
    ("data", "shapes"): ([], ["-n", "0"]),
    ("study", "vae"): ([], ["--steps", "0"]),
    ("study", "prune"): ([], ["--teacher", MISSING]),
    ("study", "distill"): ([], ["--teacher", MISSING]),
    ("recipe",): ([MISSING], ["-o", "out"]),
}
NEVER = {"--preset", "--help", "--resume", "--quick", "--paper", "--ltx", "--paper-decode"}


def test_every_command_has_a_poison():
    assert set(COMMANDS) == set(POISON)


tokens = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.sampled_from(
        [
            "0",
            "-1",
            "nan",
            "inf",
            "1e99",
            "",
            " ",
            "x",
            MISSING,
            "--",
            "-",
            "a,b",
            "params=0.5",
            "fp16",
            "int8",
            "onnx",
            "9x9",
            "--bogus",
            "-z",
        ]
    ),  # fmt: skip
    _text(8),
)


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
@FUZZ
@given(data=st.data())
def test_random_arguments_end_in_one_line_errors(tmp_path, monkeypatch, capsys, path, data):
    monkeypatch.chdir(tmp_path)
    cmd = COMMANDS[path]
    options = [o for p in cmd.params if p.opts for o in p.opts if o.startswith("-")]
    options = [o for o in options if o not in NEVER]
    pairs = data.draw(st.lists(st.tuples(st.sampled_from(options or ["--x"]), tokens), max_size=4))
    first, last = POISON[path]
    args = [*path, *first, *(x for pair in pairs for x in pair), *last]
    code, _, err = run_cli(args, capsys)
    _one_line_error(code, err)

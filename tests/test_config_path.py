"""One config path: a stage command's section comes from its defaults, then a config file, then
`--set`, then its flags; each flag is generated from the section's field (type, help, default)."""

import pytest
from conftest import run_cli

import mvdit.bench.dit as dit_bench
import mvdit.eval.evaluate as evaluate
import mvdit.stages.prune as prune_stage
from mvdit.config import key_info
from mvdit.eval.evaluate import SHIPPED_PROMPTS, EvalConfig
from mvdit.results import Result


@pytest.fixture
def captured(monkeypatch):
    """Replace a stage call by one that records the section it was given."""
    seen = {}

    def capture(module, name):
        def fake(cfg, **_):
            seen["cfg"] = cfg
            return Result({"ok": True}, lambda r: "stage ran")

        monkeypatch.setattr(module, name, fake)

    return capture, seen


def test_flags_override_the_file_which_overrides_the_defaults(tmp_path, capsys, captured):
    capture, seen = captured
    capture(evaluate, "run_eval")
    cfg = tmp_path / "eval.toml"
    cfg.write_text('[eval]\nseeds = 5\nsteps = 3\nmodel = "from-file"\n')
    code, out, err = run_cli(["eval", cfg, "--seeds", "7", "--cfg", "2.5", "-o", "o"], capsys)
    assert code == 0, err
    assert out.strip() == "stage ran"
    c = seen["cfg"]
    assert (c.seeds, c.steps, c.guidance, c.model, c.out) == (7, 3, 2.5, "from-file", "o")
    assert c.prompts == list(SHIPPED_PROMPTS)  # the section's default, defined once
    code, _, _ = run_cli(["eval", "-p", "a.txt", "-p", "b.txt", "--set", "eval.seed=9"], capsys)
    assert code == 0 and seen["cfg"].prompts == ["a.txt", "b.txt"] and seen["cfg"].seed == 9


def test_list_and_bool_flags(tmp_path, capsys, captured):
    capture, seen = captured
    capture(prune_stage, "run_prune")
    code, _, err = run_cli(
        ["prune", "--levels", "block,ffn", "--timesteps", "0.2, 0.4", "--latent", "2,4,4"], capsys
    )
    assert code == 0, err
    c = seen["cfg"]
    assert c.levels == ["block", "ffn"] and c.calibration.timesteps == [0.2, 0.4]
    assert c.calibration.latent == [2, 4, 4] and c.overwrite is False
    capture(dit_bench, "run_bench")
    cfg = tmp_path / "bench.toml"
    cfg.write_text("[bench]\nltx = false\nreps = 4\n")
    code, _, err = run_cli(["bench", "tiny", "small", "--config", cfg], capsys)
    assert code == 0, err
    c = seen["cfg"]
    assert c.targets == ["tiny", "small"] and c.ltx is False and c.reps == 4
    code, _, err = run_cli(["bench", "--config", cfg, "--ltx"], capsys)
    assert code == 0 and seen["cfg"].ltx is True and seen["cfg"].targets[0] == "tiny"


def test_a_bad_value_is_one_line_naming_the_key(capsys, captured):
    capture, _ = captured
    capture(evaluate, "run_eval")
    for args, key in ((["--seeds", "0"], "seeds"), (["--cfg", "nan"], "guidance"),
                      (["--steps", "5000"], "steps")):  # fmt: skip
        code, _, err = run_cli(["eval", *args], capsys)
        assert code == 2 and key in err and len(err.strip().splitlines()) == 1, err
    code, _, err = run_cli(["prune", "--timesteps", "0.2,x"], capsys)
    assert code == 2 and "comma-separated list of floats" in err
    code, _, err = run_cli(["prune", "--levels", "block,bogus"], capsys)
    assert code == 2 and "--levels 'bogus': Input should be 'block'" in err


def test_help_is_the_sections_own(capsys):
    """A flag's help is its field's description and default, so the two cannot drift apart."""
    code, out, _ = run_cli(["eval", "--help"], capsys)
    assert code == 0
    flat = " ".join(out.replace("│", " ").split())
    info = key_info(EvalConfig, "feature_size")
    assert info.default == 224 and info.description.split()[0] in flat
    assert "(default: 224)" in flat and "--feature-size" in flat and "[eval] section" in flat

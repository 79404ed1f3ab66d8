"""Faults met through the command line: NaN in the training data, and weights that are not
safetensors (a pickle, a .pt, a broken header) offered where weights are read."""

import json

import pytest
import torch
from conftest import run_cli, save_tiny_pipeline
from safetensors import safe_open
from safetensors.torch import save_file

from mvdit import MvditError
from mvdit.io import only_safetensors_weights


def _cache_with_a_nan_clip(tmp_path, capsys):
    """8 cached clips of the default config, clip 3's latent set to NaN."""
    cache = tmp_path / "cache"
    code, _, err = run_cli(["cache", "-o", cache, "--limit", 8], capsys)
    assert code == 0, err
    shard = cache / "shard_00000.safetensors"
    with safe_open(str(shard), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iter
    tensors["latents"][3] = float("nan")
    save_file(tensors, str(shard), metadata=meta)
    return cache


def test_a_nan_batch_is_skipped_through_the_cli_and_n_in_a_row_stop_it(tmp_path, capsys):
    cache = _cache_with_a_nan_clip(tmp_path, capsys)
    sets = ["data.kind=cache", f"data.path={cache}", "optim.steps=8", "optim.batch_size=2",
            "optim.warmup_steps=1", "run.checkpoint_every=4", "run.log_every=1"]  # fmt: skip
    args = [a for s in sets for a in ("--set", s)]
    # 8 clips in batches of 2: every 4 steps are one epoch, so the NaN clip is in 2 of 8 steps
    code, out, err = run_cli(["train", *args, "--set", f"run.out_dir={tmp_path / 'ok'}"], capsys)
    assert code == 0, err
    rows = [json.loads(x) for x in (tmp_path / "ok" / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in rows if "skipped" in r]
    assert len(rows) == 8 and len(skipped) == 2
    assert all(r["skipped"] == {"model": "loss = nan"} and "loss" not in r for r in skipped)
    assert "skipped the update of 'model' (loss = nan)" in out + err
    final = tmp_path / "ok" / "checkpoints" / "step_0000008" / "model.safetensors"
    with safe_open(str(final), framework="pt") as f:
        assert all(torch.isfinite(f.get_tensor(k)).all() for k in f.keys())  # noqa: SIM118
    # one non-finite step allowed in a row: the first NaN batch stops the run, one line, exit 2
    stop = ["--set", "optim.max_nonfinite_steps=1", "--set", f"run.out_dir={tmp_path / 'stop'}"]
    code, _, err = run_cli(["train", *args, *stop], capsys)
    first = skipped[0]["step"]
    assert code == 2 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"error: step {first}: 1 steps in a row")


def test_weights_that_are_not_safetensors_are_refused_naming_the_file(tmp_path, capsys):
    pipe = save_tiny_pipeline(tmp_path / "pipe")
    weights = pipe / "dit" / "model.safetensors"
    state = {k: torch.zeros(1) for k in ("a", "b")}

    def generate() -> str:
        code, _, err = run_cli(["generate", "a red circle", "--model", pipe, "-o",
                                tmp_path / "x.mp4"], capsys)  # fmt: skip
        assert code == 2 and "Traceback" not in err and not (tmp_path / "x.mp4").exists()
        return err

    # a pickle (torch.save with the legacy format) under the safetensors name
    torch.save(state, weights, _use_new_zipfile_serialization=False)
    assert "is a pickle, not safetensors" in generate() and str(weights) in generate()
    torch.save(state, weights)  # torch.save's default zip archive
    assert "is a torch.save zip archive, not safetensors" in generate()
    # a header that claims more bytes than the file has, and a header that is not JSON
    weights.write_bytes((10**6).to_bytes(8, "little") + b"{}")
    assert "no valid safetensors header" in generate()
    weights.write_bytes((4).to_bytes(8, "little") + b"\xff\xfe{]" + b"\0" * 16)
    assert "corrupt safetensors header" in generate()

    # a model directory holding only a .pt / .bin checkpoint
    folder = tmp_path / "diffusers-like"
    folder.mkdir()
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(MvditError, match="diffusion_pytorch_model.bin is a pickled checkpoint"):
        only_safetensors_weights(folder)


def test_a_safetensors_header_whose_length_begins_like_a_pickle_loads(tmp_path):
    # the first byte of a safetensors file is the low byte of its header length: 0x80 (pickle's
    # first byte) for 1 file in 32; such a file is valid and must load
    from mvdit.io import load_tensors

    path = tmp_path / "w.safetensors"
    for pad in range(300):
        save_file({"w": torch.ones(2)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80
    assert torch.equal(load_tensors(path)["w"], torch.ones(2))

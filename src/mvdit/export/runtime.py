"""Generate a clip from an exported directory alone: the tokenizer through `tokenizers`, the
sampler loop in NumPy, the graphs in onnxruntime (an ONNX export) or ExecuTorch's runtime (a .pte
export). For ONNX nothing here imports PyTorch; of mvdit it uses only `mvdit.video` (PyAV, for
the mp4), `mvdit.tokenizer` and `mvdit.export.onnx.ort_session`, so it is what an app has to do,
and shows that the export is enough:

    python -m mvdit.export.runtime EXPORT_DIR "a red circle moves to the left" out.mp4

reads manifest.json, tokenizes, encodes the prompt (and the empty negative prompt when the sampler
guides), runs the Euler schedule with one dit_step call per network evaluation, decodes, and
returns uint8 frames (T, H, W, 3) with the seconds of each stage.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from mvdit import MvditError
from mvdit.export.onnx import ort_session
from mvdit.io import read_json
from mvdit.tokenizer import fixed_length_tokenizer
from mvdit.video import write_mp4

RUNTIMES = {"onnx": "onnxruntime", "executorch": "ExecuTorch"}


class _OnnxGraph:
    def __init__(self, path: Path):
        self.session = ort_session(path)
        self.names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *args: np.ndarray) -> np.ndarray:
        return self.session.run(None, dict(zip(self.names, args, strict=True)))[0]


class _PteGraph:
    """ExecuTorch's Python runtime takes and returns torch tensors: converted at the boundary."""

    def __init__(self, path: Path):
        from executorch.runtime import Runtime

        self.method = Runtime.get().load_program(str(path)).load_method("forward")

    def __call__(self, *args: np.ndarray) -> np.ndarray:
        import torch

        return self.method.execute([torch.from_numpy(np.ascontiguousarray(a)) for a in args])[
            0
        ].numpy()


GRAPHS = ("text_encoder", "dit_step", "vae_decoder")


def _check_manifest(m: object, where: Path) -> dict:
    """The keys generation reads, each present with the right kind of value, or one line naming
    the first that is not (a manifest edited by hand, or from another tool)."""
    bad = f"{where} is not a manifest `mvdit export` writes"
    if not isinstance(m, dict):
        raise MvditError(f"{bad}: expected a JSON object")
    for key, kind in (("format", str), ("artefacts", dict), ("text", dict), ("sampler", dict),
                      ("latent", dict), ("clip", dict)):  # fmt: skip
        if not isinstance(m.get(key), kind):
            raise MvditError(f"{bad}: it has no '{key}' {kind.__name__}; export again")
    for name in GRAPHS:
        a = m["artefacts"].get(name)
        if not isinstance(a, dict) or not isinstance(a.get("file"), str):
            raise MvditError(f"{bad}: artefacts.{name}.file is missing; export again")
    for section, keys in (("text", ("tokenizer", "max_length", "pad_id")),
                          ("sampler", ("schedule", "guidance")), ("latent", ("shape",)),
                          ("clip", ("fps",))):  # fmt: skip
        for k in keys:
            if k not in m[section]:
                raise MvditError(f"{bad}: it has no {section}.{k}; export again")
    return m


def _load_graph(graph, path: Path):
    if not path.is_file():
        raise MvditError(f"{path} is missing: export again")
    try:
        return graph(path)
    except Exception as e:  # noqa: BLE001 - onnxruntime and ExecuTorch raise their own types
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise MvditError(
            f"{path} cannot be loaded (truncated or corrupt? {why}): export again"
        ) from None


class ExportedPipeline:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not (self.path / "manifest.json").is_file():
            raise MvditError(f"{self.path} has no manifest.json: write one with `mvdit export`")
        self.manifest = _check_manifest(read_json(self.path / "manifest.json"), self.path)
        m = self.manifest
        if m["format"] not in RUNTIMES:
            raise MvditError(
                f"{self.path} is a {m['format']} export; this runtime runs onnx and executorch ones"
            )
        broken = [f"{k}: {a['not_run']}" for k, a in m["artefacts"].items() if "not_run" in a]
        if broken:
            raise MvditError(f"{self.path} cannot generate here; {broken[0]}")
        graph = _OnnxGraph if m["format"] == "onnx" else _PteGraph
        self.graphs = {
            name: _load_graph(graph, self.path / m["artefacts"][name]["file"]) for name in GRAPHS
        }
        t = m["text"]
        tokenizer = self.path / t["tokenizer"]
        if not tokenizer.is_file():
            raise MvditError(
                f"{tokenizer} is missing (the manifest's text.tokenizer): export again"
            )
        try:
            self.tokenizer = fixed_length_tokenizer(tokenizer, t["max_length"], t["pad_id"])
        except Exception as e:  # noqa: BLE001 - the tokenizers library raises its own type
            raise MvditError(
                f"{tokenizer} is not a readable tokenizer ({e}): export again"
            ) from None
        inputs = m["artefacts"]["dit_step"]["inputs"]
        self._mask_dtype = bool if inputs[-1]["dtype"] == "bool" else np.float32

    @property
    def runtime(self) -> str:
        return RUNTIMES[self.manifest["format"]]

    def encode(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tokenizer.encode(prompt)
        ids = np.array([enc.ids], dtype=np.int64)
        mask = np.array([enc.attention_mask], dtype=np.int64)
        text = self.graphs["text_encoder"](ids, mask)
        return text.astype(np.float32), mask.astype(self._mask_dtype)

    def generate(
        self, prompt: str, seed: int = 0, noise: np.ndarray | None = None
    ) -> tuple[np.ndarray, dict[str, float]]:
        """uint8 frames (T, H, W, 3) and the seconds of each stage. `noise` replaces the seeded
        standard normal start (numpy's generator, so not the eager pipeline's torch noise)."""
        if not prompt.strip():
            raise MvditError("the prompt is empty: give a text description of the video")
        s = self.manifest["sampler"]
        shape = self.manifest["latent"]["shape"]
        if noise is None:
            noise = np.random.default_rng(seed).standard_normal(shape)
        x = np.asarray(noise, dtype=np.float32).reshape(shape)
        timings = {}
        t0 = time.perf_counter()
        text, mask = self.encode(prompt)
        guided = s["guidance"] != 1.0
        if guided:
            ntext, nmask = self.encode(s["negative_prompt"])
        timings["text"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        sched = s["schedule"]
        step = self.graphs["dit_step"]
        for i, (t, t_next) in enumerate(zip(sched[:-1], sched[1:], strict=True)):
            tt = np.array([t], dtype=np.float32)
            v = step(x, tt, text, mask)
            if guided:
                v_u = step(x, tt, ntext, nmask)
                v = v_u + s["guidance"] * (v - v_u)
            x = (x + (t_next - t) * v).astype(np.float32)
            if not np.isfinite(x).all():
                raise MvditError(
                    f"sampling produced NaN/inf values at step {i + 1} of {len(sched) - 1} "
                    f"(likely cause: the guidance scale {s['guidance']:g} or non-finite weights "
                    "in the exported graphs); nothing was written"
                )
        timings["dit"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        video = self.graphs["vae_decoder"](x)
        if not np.isfinite(video).all():
            raise MvditError(
                "the decoder produced NaN/inf frames (non-finite weights in vae_decoder?); "
                "nothing was written"
            )
        frames = np.clip(np.rint((video[0] + 1.0) * 127.5), 0, 255).astype(np.uint8)
        timings["decode"] = time.perf_counter() - t0
        return frames.transpose(1, 2, 3, 0), timings  # (3, T, H, W) -> (T, H, W, 3)

    def write(self, frames: np.ndarray, output: str | Path, scale: int | None = None) -> Path:
        return write_mp4(output, frames, fps=self.manifest["clip"]["fps"], scale=scale)


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        sys.exit('usage: python -m mvdit.export.runtime EXPORT_DIR "PROMPT" OUT.mp4')
    try:
        t0 = time.perf_counter()
        pipe = ExportedPipeline(argv[0])
        load = time.perf_counter() - t0
        frames, timings = pipe.generate(argv[1])
        pipe.write(frames, argv[2])
    except MvditError as e:
        sys.exit(f"error: {e}")
    stages = " | ".join(f"{k} {v * 1e3:.1f} ms" for k, v in timings.items())
    print(f"{pipe.runtime}: load {load:.2f} s | {stages}")
    print(f"wrote {argv[2]}: {frames.shape[0]} frames of {frames.shape[1]}x{frames.shape[2]}")


if __name__ == "__main__":
    main(sys.argv[1:])

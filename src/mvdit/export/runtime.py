"""Generate a clip from an exported directory with onnxruntime, `tokenizers` and numpy only: no
PyTorch and no other mvdit module, so it shows what an app has to do (and that it is enough).

    python -m mvdit.export.runtime EXPORT_DIR "a red circle moves to the left" out.npy

reads manifest.json, tokenizes, encodes the prompt (and the empty negative prompt when the sampler
guides), runs the Euler schedule with one dit_step call per evaluation, decodes, and returns uint8
frames (T, H, W, 3).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


class ExportedPipeline:
    def __init__(self, path: str | Path):
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path = Path(path)
        self.manifest = json.loads((self.path / "manifest.json").read_text())
        m = self.manifest
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        self.sessions = {
            name: ort.InferenceSession(
                str(self.path / a["file"]), opts, providers=["CPUExecutionProvider"]
            )
            for name, a in m["artefacts"].items()
        }
        t = m["text"]
        self.tokenizer = Tokenizer.from_file(str(self.path / t["tokenizer"]))
        self.tokenizer.enable_truncation(max_length=t["max_length"])
        self.tokenizer.enable_padding(
            length=t["max_length"],
            pad_id=t["pad_id"],
            pad_token=self.tokenizer.id_to_token(t["pad_id"]),
        )

    def encode(self, prompt: str) -> tuple[np.ndarray, np.ndarray]:
        enc = self.tokenizer.encode(prompt)
        ids = np.array([enc.ids], dtype=np.int64)
        mask = np.array([enc.attention_mask], dtype=np.int64)
        (text,) = self.sessions["text_encoder"].run(
            None, {"input_ids": ids, "attention_mask": mask}
        )
        return text, mask.astype(bool)

    def velocity(self, x: np.ndarray, t: float, text: np.ndarray, mask: np.ndarray) -> np.ndarray:
        feeds = {
            "latent": x,
            "timestep": np.array([t], dtype=np.float32),
            "text": text,
            "text_mask": mask,
        }
        return self.sessions["dit_step"].run(None, feeds)[0]

    def generate(self, prompt: str, seed: int = 0, noise: np.ndarray | None = None) -> np.ndarray:
        """uint8 frames (T, H, W, 3). `noise` replaces the seeded standard normal start."""
        s = self.manifest["sampler"]
        shape = self.manifest["latent"]["shape"]
        if noise is None:
            noise = np.random.default_rng(seed).standard_normal(shape)
        x = noise.astype(np.float32).reshape(shape)
        text, mask = self.encode(prompt)
        guided = s["guidance"] != 1.0
        if guided:
            ntext, nmask = self.encode(s["negative_prompt"])
        sched = s["schedule"]
        for t, t_next in zip(sched[:-1], sched[1:], strict=True):
            v = self.velocity(x, t, text, mask)
            if guided:
                v_u = self.velocity(x, t, ntext, nmask)
                v = v_u + s["guidance"] * (v - v_u)
            x = (x + (t_next - t) * v).astype(np.float32)
        (video,) = self.sessions["vae_decoder"].run(None, {"latent": x})
        frames = np.clip(np.rint((video[0] + 1.0) * 127.5), 0, 255).astype(np.uint8)
        return frames.transpose(1, 2, 3, 0)  # (3, T, H, W) -> (T, H, W, 3)


def main(argv: list[str]) -> None:
    if len(argv) != 3:
        sys.exit('usage: python -m mvdit.export.runtime EXPORT_DIR "PROMPT" OUT.npy')
    frames = ExportedPipeline(argv[0]).generate(argv[1])
    np.save(argv[2], frames)
    print(f"wrote {argv[2]}: {frames.shape[0]} frames of {frames.shape[1]}x{frames.shape[2]}")


if __name__ == "__main__":
    main(sys.argv[1:])

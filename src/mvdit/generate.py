"""`mvdit generate`: one prompt to an H.264 mp4 (and optionally a contact sheet and timings)."""

from __future__ import annotations

import time
from pathlib import Path

from mvdit import MvditError
from mvdit.io import check_output_file, write_json
from mvdit.limits import check_bound, prompt_problem
from mvdit.pipeline import Pipeline, shipped_model_path
from mvdit.results import Result
from mvdit.video import contact_sheet, save_png, write_mp4


def generate_video(
    prompt: str,
    output: str | Path,
    *,
    model: str | Path | None = None,
    steps: int | None = None,
    guidance: float | None = None,
    seed: int = 0,
    frames: int | None = None,
    sheet: str | Path | None = None,
    scale: int | None = None,
    timings: str | Path | None = None,
    warn=print,
) -> Result:
    """Sample one clip of `prompt` with `model` (default: the shipped 4-step student) and write it
    to `output`. Every input is checked before the model loads; a clip that went NaN/inf is an
    MvditError naming the step, and no file is written for it."""
    if problem := prompt_problem(prompt):
        raise MvditError(problem)
    output = Path(output)
    if output.suffix.lower() != ".mp4":
        raise MvditError(f"output must end in .mp4, got {output}")
    for key, value, flag in (("seed", seed, "--seed"), ("steps", steps, "--steps"),
                             ("guidance", guidance, "--cfg"), ("frames", frames, "--frames"),
                             ("scale", scale, "--scale")):  # fmt: skip
        if value is not None:
            check_bound(key, value, flag)
    for path, flag in ((output, "--output"), (sheet, "--sheet"), (timings, "--timings")):
        if path is not None:
            check_output_file(path, flag)
    t0 = time.perf_counter()
    pipe = Pipeline.from_pretrained(model if model is not None else shipped_model_path())
    pipe = pipe.with_clip(frames=frames) if frames is not None else pipe
    load_s = time.perf_counter() - t0
    if pipe.text_encoder.fills_window(prompt):
        warn(f"note: the prompt fills the text encoder's {pipe.text_encoder.max_length}-token "
             "window: words past it are not read")  # fmt: skip
    g = pipe.generate([prompt], steps=steps, guidance=guidance, seed=seed, progress=True).check()
    video = g.videos[0].numpy()
    t0 = time.perf_counter()
    write_mp4(output, video, fps=pipe.config.fps, scale=scale)
    if sheet is not None:
        save_png(sheet, contact_sheet([video], [prompt]))
    record = {"load": load_s, **g.timings, "write": time.perf_counter() - t0, "nfe": g.nfe}
    if timings is not None:
        write_json(timings, record)
    c = pipe.config

    def render(t: dict) -> str:
        return "\n".join([
            f"{c.frames}x{c.height}x{c.width} clip, {t['nfe']} network evaluations",
            f"load {t['load']:.2f}s | text encoder {t['text']:.3f}s | DiT {t['dit']:.3f}s | "
            f"decode {t['decode']:.3f}s | write {t['write']:.2f}s",
            f"wrote {output}" + (f" and {sheet}" if sheet else ""),
        ])  # fmt: skip

    return Result(record, render, output)

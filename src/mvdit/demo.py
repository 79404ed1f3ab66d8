"""`mvdit demo`: a web page that turns a prompt into a clip, in a browser, on this machine.

The page takes a prompt, a seed and a model (the shipped 4-step student by default), and shows the
clip as a looping video, a strip of its frames and the time of each stage. A second model, picked
under "compare with", is sampled from the same seed and shown beside the first. The generate
action is also an API endpoint (`/generate`: prompt, seed -> video file, ...), which
`gradio_client.Client(url).predict(prompt, seed, api_name="/generate")` calls.

Only this module uses gradio (the `demo` extra), and only once a page is built: importing it, as
the command line does, needs no gradio.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mvdit import MvditError
from mvdit.config import default_train_config
from mvdit.data.shapes import (
    DIRECTION_WORDS,
    MOTION_TEMPLATES,
    MOVE_VERBS,
    SHAPE_WORDS,
    SPEED_WORDS,
)
from mvdit.limits import check_bound, prompt_problem
from mvdit.pipeline import (
    Generation,
    Pipeline,
    is_model_dir,
    shipped_model_path,
    shipped_teacher_path,
)
from mvdit.video import auto_scale, contact_sheet, write_mp4

SHIPPED_STUDENT = "shipped student"
SHIPPED_TEACHER = "shipped teacher"
NO_COMPARISON = "none"
MIN_VIDEO_SIDE = 256  # a 32x32 clip is upscaled (nearest) to at least this many pixels
VIDEO_BOX = 320  # px of the page a clip takes (a full-width one would dwarf the rest)
KEEP_OUTPUTS_S = 600.0  # written clips older than this are deleted (gradio has its own copy)

if TYPE_CHECKING:  # gradio is the demo extra: imported where the page is built, not on import
    import gradio as gr

Progress = Callable[[float, str], object]  # (fraction done, what runs now)


# ---------------------------------------------------------------------------------------------
# Models: what the page offers, each loaded once, on first use


def models_available(extra_dirs: Sequence[str | Path] = ()) -> dict[str, Path]:
    """The models the page offers, in order: name -> model directory.

    The shipped student first (the default), the shipped teacher when the package has one, then
    each directory given, named by its directory name (with its parent's name, or its whole path,
    when two share a name).
    """
    models = {SHIPPED_STUDENT: shipped_model_path()}
    teacher = shipped_teacher_path()
    if (teacher / "pipeline.json").is_file():
        models[SHIPPED_TEACHER] = teacher
    for d in extra_dirs:
        d = Path(d)
        if not d.is_dir():
            raise MvditError(f"--model {d}: no such model directory (pipeline.json + dit/ + vae/)")
        if not is_model_dir(d):
            raise MvditError(
                f"--model {d} is not a model directory: it has neither pipeline.json (mvdit) "
                "nor model_index.json (a diffusers pipeline)"
            )
        full = d.resolve()
        # "none" is the compare picker's "no second model"; a model may not take that name
        taken = {*models, NO_COMPARISON}
        name = next(
            (n for n in (full.name, f"{full.parent.name}/{full.name}", str(d)) if n not in taken),
            str(full),
        )
        if full not in {p.resolve() for p in models.values()}:  # the same directory twice: once
            models[name] = d
    return models


class ModelCache:
    """Pipelines by name, each loaded from its directory the first time it is asked for."""

    def __init__(self, dirs: Mapping[str, Path]):
        if not dirs:
            raise MvditError("the demo needs at least one model")
        self.dirs = dict(dirs)
        self._loaded: dict[str, Pipeline] = {}
        self._lock = threading.Lock()  # two events may ask for the same model at once

    def get(self, name: str) -> tuple[Pipeline, float]:
        """The pipeline and the seconds it took to load now (0 when it was already loaded)."""
        if name not in self.dirs:
            raise MvditError(f"unknown model '{name}'; choose one of: {', '.join(self.dirs)}")
        with self._lock:
            if name in self._loaded:
                return self._loaded[name], 0.0
            t0 = time.perf_counter()
            self._loaded[name] = Pipeline.from_pretrained(self.dirs[name])
            return self._loaded[name], time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# Example prompts: the shipped model's vocabulary, in the words of the captions it was trained on

# (colour, shape, motion, speed, background); speed None leaves the adverb out, as a user might
EXAMPLES: tuple[tuple[str, str, str, str | None, str], ...] = (
    ("red", "circle", "left", None, "black"),
    ("white", "triangle", "right", "fast", "black"),
    ("green", "circle", "up", "fast", "gray"),
    ("white", "square", "up-right", "slow", "black"),
    ("blue", "square", "down", "fast", "gray"),
    ("green", "star", "growing", "fast", "gray"),
    ("red", "triangle", "shrinking", "fast", "black"),
    ("yellow", "square", "still", None, "gray"),
)


def _article(word: str) -> str:
    return f"an {word}" if word[0] in "aeiou" else f"a {word}"


def example_prompt(colour: str, shape: str, motion: str, speed: str | None, background: str) -> str:
    """One prompt in the plain wording the shapes generator captions with (the first phrase of
    each of its word tables), e.g. 'a red circle moves quickly to the left on a black
    background'."""
    adv = SPEED_WORDS[speed][0] if speed else ""
    if motion in DIRECTION_WORDS:
        phrase = f"{MOVE_VERBS[0]} {adv} {DIRECTION_WORDS[motion][0]}"
    else:
        phrase = MOTION_TEMPLATES[motion][0].format(adv=adv)
    text = (
        f"{_article(colour)} {SHAPE_WORDS[shape][0]} {phrase} on {_article(background)} background"
    )
    return " ".join(text.split())  # no double space where the adverb was left out


def example_prompts() -> list[str]:
    """The page's examples, each within the vocabulary the shipped model was trained on
    (the data section of the embedded tiny config)."""
    data = default_train_config().data
    out = []
    for colour, shape, motion, speed, background in EXAMPLES:
        for value, allowed in (
            (colour, data.colours),
            (shape, data.shapes),
            (motion, data.motions),
            (background, data.backgrounds),
        ):
            if allowed is not None and value not in allowed:
                raise MvditError(f"example word '{value}' is not in the shipped vocabulary")
        out.append(example_prompt(colour, shape, motion, speed, background))
    return out


# ---------------------------------------------------------------------------------------------
# One generation: a clip, its strip of frames and a line of timings


def _seed(seed: float | None) -> int:
    if seed is None:
        raise MvditError("the seed is empty: give a whole number, e.g. 0")
    check_bound("seed", seed, "seed")
    if (
        isinstance(seed, float) and not seed.is_integer()
    ):  # an int is whole (a float of 2**64-1 is not exact)
        raise MvditError(f"seed must be a whole number, got {seed}")
    return int(seed)


def _timings_line(name: str, g: Generation, pipe: Pipeline, load_s: float) -> str:
    t = g.timings
    c = pipe.config
    load = f" · loaded in {load_s:.2f} s" if load_s else ""
    return (
        f"**{name}**: text {t['text'] * 1e3:.0f} ms · DiT {t['dit'] * 1e3:.0f} ms · "
        f"decode {t['decode'] * 1e3:.0f} ms · **{g.nfe} NFE** · "
        f"{c.frames}×{c.height}×{c.width} at {c.fps:g} fps{load}"
    )


class Generator:
    """The page's one action, without gradio: prompt + seed -> the first model's clip (and the
    second's). A user mistake, or a model that returns NaN, is an MvditError."""

    def __init__(self, models: ModelCache, workdir: Path):
        self.models, self.workdir = models, workdir

    def _prune(self) -> None:
        # gradio copies every returned file into its own cache, so ours are only needed briefly
        cutoff = time.time() - KEEP_OUTPUTS_S
        for f in self.workdir.glob("*.mp4"):
            if f.stat().st_mtime < cutoff:
                f.unlink(missing_ok=True)

    def one(
        self, name: str, prompt: str, seed: int, progress: Progress, warn: Callable[[str], object]
    ) -> tuple[str, np.ndarray, str]:
        """One model's clip (an mp4 path), its strip of frames and its line of timings."""
        progress(0.0, f"loading {name}")
        pipe, load_s = self.models.get(name)
        if pipe.text_encoder.fills_window(prompt):
            warn(
                f"the prompt fills the text encoder's {pipe.text_encoder.max_length}-token "
                "window: words past it are not read"
            )
        progress(1 / 3, f"sampling with {name}")
        g = pipe.generate([prompt], seed=seed).check()  # NaN output is a message, not a clip
        progress(2 / 3, f"writing the clip of {name}")
        video = g.videos[0].numpy()
        c = pipe.config
        scale = min(32, auto_scale(c.height, c.width, min_side=MIN_VIDEO_SIDE))
        path = self.workdir / f"{uuid.uuid4().hex[:12]}.mp4"
        write_mp4(path, video, fps=c.fps, scale=scale)
        strip = contact_sheet([video], [f"{name}, seed {seed}"])
        return str(path), strip, _timings_line(name, g, pipe, load_s)

    def __call__(
        self,
        prompt: str | None,
        seed: float | None,
        model: str,
        compare: str | None = NO_COMPARISON,
        progress: Progress = lambda fraction, desc: None,
        warn: Callable[[str], object] = lambda message: None,
    ) -> tuple:
        """(mp4, strip, timings) of `model`, then the same three of `compare` ((None, None, "")
        without one), both sampled from `seed`."""
        if problem := prompt_problem(prompt or ""):
            raise MvditError(problem)
        seed = _seed(seed)
        self._prune()
        second = compare not in (None, "", NO_COMPARISON)
        n = 2 if second else 1

        def part(k: int) -> Progress:  # model k's share of the one progress bar
            return lambda fraction, desc: progress((k + fraction) / n, desc)

        a = self.one(model, prompt, seed, part(0), warn)
        b = self.one(compare, prompt, seed, part(1), warn) if second else (None, None, "")
        progress(1.0, "done")
        return (*a, *b)


# ---------------------------------------------------------------------------------------------
# The page


INTRO = """# mvdit demo
Text → video with a small diffusion transformer, on this machine's CPU. The shipped student
draws one coloured shape (red, green, blue, yellow, white; circle, square, triangle, star) that
moves, grows, shrinks, rotates or stays still on a black or gray background, as 9 frames of 32×32
in 4 network evaluations (NFE). The same seed gives the same clip; "compare with" samples a second
model from the same noise."""


def build(models: Mapping[str, Path], workdir: Path | None = None) -> gr.Blocks:
    """The page (not yet launched) over `models` (name -> directory, the first the default)."""
    import gradio as gr

    cache = ModelCache(models)
    names = list(cache.dirs)
    if workdir is None:
        workdir = Path(tempfile.mkdtemp(prefix="mvdit-demo-"))
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    generator = Generator(cache, workdir)
    examples = example_prompts()

    def generate(
        prompt: str,
        seed: float | None = 0,
        model: str = names[0],
        compare: str = NO_COMPARISON,
        progress=gr.Progress(),  # noqa: B008 (gradio fills it in: the page's progress bar)
    ):
        """Generate a clip from a prompt. Returns the first model's mp4, its strip of frames and
        timings, then the same three for the compared model (empty without one)."""
        try:
            return generator(
                prompt,
                seed,
                model,
                compare,
                progress=lambda fraction, desc: progress(fraction, desc=desc),
                warn=gr.Warning,
            )
        except MvditError as e:
            # one line in the page, or an AppError with this message for an API client; the
            # server goes on
            message = " ".join(str(e).split())
            raise gr.Error(message, duration=15, print_exception=False) from None

    # delete_cache: gradio's copies of the clips go after an hour, checked every hour
    with gr.Blocks(title="mvdit demo", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            prompt = gr.Textbox(
                label="prompt", value=examples[0], lines=2, max_lines=6, scale=4, elem_id="prompt"
            )
            seed = gr.Number(label="seed", value=0, precision=0, scale=1, elem_id="seed")
        with gr.Row():
            model = gr.Dropdown(names, value=names[0], label="model", elem_id="model")
            compare = gr.Dropdown(
                [NO_COMPARISON, *names],
                value=NO_COMPARISON,
                label="compare with",
                elem_id="compare",
            )
            run = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Row(equal_height=False):
            with gr.Column():
                video_a = gr.Video(
                    label="clip",
                    autoplay=True,
                    loop=True,
                    interactive=False,
                    height=VIDEO_BOX,
                    width=VIDEO_BOX,
                    buttons=["download"],
                    elem_id="video-a",
                )
                strip_a = gr.Image(
                    label="frames",
                    show_label=False,  # the strip names its model and seed itself
                    format="png",
                    interactive=False,
                    buttons=["download", "fullscreen"],
                    elem_id="strip-a",
                )
                info_a = gr.Markdown(elem_id="timings-a")
            # the second model's column shows only while "compare with" names one
            with gr.Column(visible=False) as column_b:
                video_b = gr.Video(
                    label="compared clip",
                    autoplay=True,
                    loop=True,
                    interactive=False,
                    height=VIDEO_BOX,
                    width=VIDEO_BOX,
                    buttons=["download"],
                    elem_id="video-b",
                )
                strip_b = gr.Image(
                    label="compared frames",
                    show_label=False,
                    format="png",
                    interactive=False,
                    buttons=["download", "fullscreen"],
                    elem_id="strip-b",
                )
                info_b = gr.Markdown(elem_id="timings-b")
        gr.Examples([[e, 0] for e in examples], inputs=[prompt, seed], label="examples")

        inputs = [prompt, seed, model, compare]
        outputs = [video_a, strip_a, info_a, video_b, strip_b, info_b]
        run.click(generate, inputs, outputs, api_name="generate", concurrency_id="generate")
        # Enter in the prompt box does the same; one shared concurrency slot, no second endpoint
        prompt.submit(
            generate, inputs, outputs, api_visibility="private", concurrency_id="generate"
        )
        compare.change(
            lambda c: gr.Column(visible=c != NO_COMPARISON),
            compare,
            column_b,
            queue=False,
            api_visibility="private",
        )
    # one generation at a time (a CPU), and at most 8 waiting
    demo.queue(max_size=8, default_concurrency_limit=1)
    return demo


# ---------------------------------------------------------------------------------------------
# Serving


def launch(
    models: Mapping[str, Path] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 7860,
    block: bool = True,
) -> gr.Blocks:
    """Serve the page on http://host:port (models: name -> directory; None: models_available()).

    block=True serves until interrupted; block=False returns the running page at once
    (`.local_url` is its address, `.close()` stops it)."""
    try:
        import gradio  # noqa: F401 (the demo extra, not a core dependency)
    except ModuleNotFoundError:
        raise MvditError("mvdit demo needs the demo extra: pip install 'mvdit[demo]'") from None
    if not 1 <= port <= 65535:
        raise MvditError(f"--port must be in 1…65535, got {port}")
    demo = build(models if models is not None else models_available())
    try:
        # never gradio's own blocking: its banner speaks of launch() arguments, not of mvdit
        demo.launch(
            server_name=host,
            server_port=port,
            prevent_thread_lock=True,
            ssr_mode=False,
            mcp_server=False,
            quiet=True,
        )
    except OSError as e:
        if "Cannot find empty port" in str(e):
            raise MvditError(f"port {port} on {host} is in use: pass another --port") from None
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise MvditError(f"cannot serve the demo on {host}:{port} ({first})") from None
    if block:
        print(f"mvdit demo on {demo.local_url} (Ctrl+C stops it)", flush=True)
        demo.block_thread()  # until Ctrl+C, then closes the server
    return demo

"""`mvdit demo`: the Gradio page, through its API (fast) and in a real headless Chromium (-m browser).

Needs the demo extra (gradio); without it the module is skipped, so the README suite passes.
"""

import os
import socket
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli, save_tiny_pipeline

pytest.importorskip("gradio")

from mvdit import MvditError  # noqa: E402
from mvdit.data.shapes import parse_caption, parse_holdout  # noqa: E402
from mvdit.demo import (  # noqa: E402
    EXAMPLES,
    NO_COMPARISON,
    SHIPPED_STUDENT,
    SHIPPED_TEACHER,
    example_prompts,
    launch,
    models_available,
)
from mvdit.pipeline import Pipeline, shipped_model_path  # noqa: E402
from mvdit.video import read_video  # noqa: E402

PROMPT = "a red circle moves to the left on a black background"
LONG = ("a red circle moves to the left " * 700)[:20_000]  # 20,000 characters; 2,000 are allowed
LIMIT_WORDS = "at most 2,000"  # what the page says about a prompt that is too long
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _native(video: np.ndarray, side: int = 32) -> np.ndarray:
    """A clip the page upscaled (nearest, factor K) back at its model's size: each block's centre."""
    k = video.shape[1] // side
    return video[:, k // 2 :: k, k // 2 :: k][:, :side, :side]


def _video_path(result) -> str:
    """The first output of /generate as a file path (gradio_client gives a str or a dict)."""
    first = result[0]
    return first["video"] if isinstance(first, dict) else first


# ---------------------------------------------------------------------------------------------
# Models and examples (no server)


def test_models_available_adds_a_teacher_when_it_appears(tmp_path, monkeypatch):
    import mvdit.demo as demo

    teacher = tmp_path / "default-teacher"
    monkeypatch.setattr(demo, "shipped_teacher_path", lambda: teacher)
    a, b = tmp_path / "runs" / "a" / "model", tmp_path / "runs" / "b" / "model"
    none = tmp_path / "runs" / "c" / NO_COMPARISON  # the compare picker's "no second model"
    for d in (a, b, none):
        d.mkdir(parents=True)
        (d / "pipeline.json").write_text("{}")  # offered by name; loaded when picked

    models = models_available([a, b, a, none])
    # named by directory, told apart by parent, the same directory once, never "none"
    assert list(models) == [SHIPPED_STUDENT, "model", "b/model", "c/none"]
    assert models[SHIPPED_STUDENT] == shipped_model_path() and models["b/model"] == b

    teacher.mkdir()
    assert (
        SHIPPED_TEACHER not in models_available()
    )  # a directory without pipeline.json is not a model
    (teacher / "pipeline.json").write_text("{}")
    assert list(models_available([a])) == [SHIPPED_STUDENT, SHIPPED_TEACHER, "model"]
    with pytest.raises(MvditError, match="neither pipeline.json"):
        models_available([teacher.parent])


def test_examples_are_in_the_shipped_vocabulary():
    from mvdit.config import default_train_config

    data = default_train_config().data
    held_out = parse_holdout(data.holdout)
    prompts = example_prompts()
    assert len(prompts) == len(EXAMPLES) >= 8 and PROMPT in prompts
    for text, (colour, shape, motion, speed, background) in zip(prompts, EXAMPLES, strict=True):
        want = parse_caption(text)  # the captions' own parser reads back every attribute
        (o,) = want.objects
        assert (o.colour, o.shape, o.motion, o.speed, want.background) == (
            colour,
            shape,
            motion,
            speed,
            background,
        ), text
        assert colour in data.colours and background in data.backgrounds, text
        for h in held_out:  # a combination the model never saw is not an example
            assert not all(
                v is None or v == w
                for v, w in ((h.colour, colour), (h.shape, shape), (h.motion, motion))
            ), text


def test_seeds_are_whole_numbers_within_the_bound():
    from mvdit import MvditError
    from mvdit.demo import _seed

    assert _seed(2**64 - 1) == 2**64 - 1 and _seed(3.0) == 3  # the page's number box gives floats
    for bad, words in (
        (1.5, "whole number"),
        (None, "empty"),
        (-1, "in 0…"),
        (float("inf"), "finite"),
    ):
        with pytest.raises(MvditError, match=words):
            _seed(bad)


def test_cli_refuses_bad_flags_in_one_line(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["demo", "--port", "70000"], capsys)
    assert code == 2 and "--port must be in 1…65535, got 70000" in err
    code, _, err = run_cli(["demo", "--model", tmp_path / "missing"], capsys)
    assert code == 2 and "no such model directory" in err and len(err.strip().splitlines()) == 1
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli(["demo", "--model", tmp_path / "empty"], capsys)
    assert code == 2 and "neither pipeline.json" in err

    # without gradio installed the command names the extra to install (before it reads the
    # port: a regression here exits on --port 0 instead of serving for ever)
    import sys

    monkeypatch.setitem(sys.modules, "gradio", None)
    code, _, err = run_cli(["demo", "--port", "0"], capsys)
    assert code == 2 and "pip install 'mvdit[demo]'" in err


# ---------------------------------------------------------------------------------------------
# The API: the server in this process, called with gradio_client


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    """The page over the shipped student, the same student under a second name (a comparison
    from the same seed must then draw the same clip) and a random model whose weights overflow
    (every clip NaN)."""
    diverging = save_tiny_pipeline(tmp_path_factory.mktemp("div") / "diverging", out_std=1e30)
    models = {
        SHIPPED_STUDENT: shipped_model_path(),
        "student again": shipped_model_path(),
        "diverging": diverging,
    }
    demo = launch(models, port=_free_port(), block=False)
    try:
        yield demo.local_url
    finally:
        demo.close()


def test_api_generates_refuses_a_long_prompt_and_goes_on(api_server):
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    client = Client(api_server, verbose=False)
    result = client.predict(PROMPT, 0, api_name="/generate")  # every other input has a default
    frames, _ = read_video(_video_path(result))
    assert frames.shape[0] >= 9 and min(frames.shape[1:3]) >= 256
    assert Path(result[1]).is_file() and "4 NFE" in result[2] and "DiT" in result[2]
    assert result[3] is None and result[5] == ""  # no comparison asked for

    with pytest.raises(AppError, match=LIMIT_WORDS):
        client.predict(LONG, 0, api_name="/generate")
    with pytest.raises(AppError, match="seed must be in 0…2\\*\\*64-1, got -1"):
        client.predict(PROMPT, -1, api_name="/generate")
    with pytest.raises(AppError, match="NaN/inf"):  # Generation.check: a message, not a clip
        client.predict(PROMPT, 0, "diverging", api_name="/generate")

    again = client.predict(PROMPT, 0, api_name="/generate")  # the server is still serving
    assert np.array_equal(read_video(_video_path(again))[0], frames)  # same seed, same clip


def test_api_compares_two_models_from_one_seed(api_server):
    from gradio_client import Client

    client = Client(api_server, verbose=False)
    a = client.predict(PROMPT, 5, SHIPPED_STUDENT, "student again", api_name="/generate")
    first, second = read_video(_video_path(a))[0], read_video(a[3])[0]
    assert np.array_equal(first, second)  # the same noise for both
    assert "**shipped student**" in a[2] and "**student again**" in a[5]

    # and the page's clip is the pipeline's own clip at that seed (up to H.264)
    direct = Pipeline.from_pretrained(shipped_model_path()).generate([PROMPT], seed=5)
    diff = np.abs(_native(first).astype(int) - direct.videos[0].numpy().astype(int)).mean()
    other = client.predict(PROMPT, 6, api_name="/generate")
    diff_other = np.abs(read_video(_video_path(other))[0].astype(int) - first.astype(int)).mean()
    assert diff < 4 < diff_other, (diff, diff_other)


# ---------------------------------------------------------------------------------------------
# The page in a real browser (-m browser): headless Chromium through Selenium

PLAYING_JS = """
const v = document.querySelector(arguments[0] + ' video');
return v && v.currentTime > 0 && !v.paused && v.readyState >= 2 ? v.currentSrc : null;
"""
SET_PROMPT_JS = """
const t = document.querySelector('#prompt textarea');
t.value = arguments[0];
t.dispatchEvent(new Event('input', {bubbles: true}));
"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """`mvdit demo`'s page (models_available(), as the command serves it) in headless Chromium."""
    if not Path(CHROMEDRIVER).is_file():
        pytest.skip(f"{CHROMEDRIVER} is missing: apt-get install chromium chromium-driver")
    pytest.importorskip("selenium")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
        "--window-size=1280,1000",
    ):
        options.add_argument(arg)
    demo = launch(models_available(), port=_free_port(), block=False)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        driver.get(demo.local_url)
        _wait(driver, lambda: driver.find_elements("css selector", "#prompt textarea"), 30)
        yield driver
    finally:
        driver.quit()
        demo.close()


def _wait(driver, condition, timeout: float, what: str = "the page"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := condition():
            return value
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _generate(driver, prompt: str, seed: int, after: str | None = None) -> str:
    """Type prompt and seed, click Generate, wait for a new clip to play; its URL."""
    from selenium.webdriver.common.by import By

    driver.execute_script(SET_PROMPT_JS, prompt)
    box = driver.find_element(By.CSS_SELECTOR, "#seed input")
    box.clear()
    box.send_keys(str(seed))
    driver.find_element(By.CSS_SELECTOR, "#generate").click()
    return _wait(
        driver,
        lambda: (src := driver.execute_script(PLAYING_JS, "#video-a")) and src != after and src,
        60,
        "the clip to play",
    )


def _fetch(url: str, out: Path) -> np.ndarray:
    assert url.startswith("http://127.0.0.1:"), url
    with urllib.request.urlopen(url, timeout=30) as r:
        out.write_bytes(r.read())
    return read_video(out)[0]


@pytest.mark.browser
def test_page_plays_a_clip_that_moves_as_asked(page, tmp_path):
    from mvdit.eval.faithfulness import score_clip

    src = _generate(page, PROMPT, 0)
    frames = _fetch(src, tmp_path / "clip.mp4")
    assert frames.shape[0] >= 9 and min(frames.shape[1:3]) >= 256
    s = score_clip(_native(frames), PROMPT)
    assert s["motion"] and s["colour"] and s["background"], s
    body = page.find_element("css selector", "body").text
    assert "4 NFE" in body and "DiT" in body and "decode" in body
    strip = page.execute_script(
        "const i = document.querySelector('#strip-a img'); return i && i.naturalWidth"
    )
    assert strip and strip > 300, strip
    time.sleep(0.5)  # let the loop come round so the picture is not mid-seek
    # the README's picture is this screenshot: MVDIT_DEMO_SCREENSHOT=docs/demo.png writes it there
    shot = Path(os.environ.get("MVDIT_DEMO_SCREENSHOT", tmp_path / "demo.png"))
    page.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000  # a rendered page, not a blank one


@pytest.mark.browser
def test_page_shows_a_too_long_prompt_and_goes_on(page, tmp_path):
    before = page.execute_script(PLAYING_JS, "#video-a")
    page.execute_script(SET_PROMPT_JS, LONG)
    page.find_element("css selector", "#generate").click()
    _wait(
        page,
        lambda: LIMIT_WORDS in page.find_element("css selector", "body").text,
        30,
        "the message about the prompt's length",
    )
    src = _generate(
        page, "a white triangle moves quickly to the right on a black background", 1, before
    )
    assert _fetch(src, tmp_path / "again.mp4").shape[0] >= 9  # the server went on serving

"""Real video folders: captions, header checks, skips, timestamp resampling and centre crops."""

import json
import logging
import struct

import av
import numpy as np
import pytest
import torch

from mvdit import MvditError
from mvdit.data.folder import VideoFolderDataset, read_captions


def write_video(path, n, fps, width=32, height=24, codec="libx264", pattern=None):
    """Frame i is a flat grey of level 4 + 5 i, so the decoded level names the source frame."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        for i in range(n):
            img = np.full((height, width, 3), 4 + 5 * i, np.uint8) if pattern is None else pattern
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def source_frames(video: torch.Tensor) -> list[int]:
    level = (video.mean(dim=(0, 2, 3)) + 1) * 127.5
    return [round(float(v - 4) / 5) for v in level]


def noisy_video(path, n, codec="libx264"):
    """Incompressible frames, so that cutting the file in half really loses frames."""
    rng = np.random.default_rng(0)
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=24)
        s.width, s.height, s.pix_fmt = 32, 24, "yuv420p"
        for _ in range(n):
            img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture
def folder(tmp_path):
    write_video(tmp_path / "good.mp4", 30, 24)
    write_video(tmp_path / "good.webm", 30, 24, codec="libvpx-vp9")
    write_video(tmp_path / "short.mp4", 4, 24)  # 0.17 s; 9 frames at 8 fps need > 1 s
    (tmp_path / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4000))
    noisy_video(tmp_path / "full.mp4", 30)
    data = (tmp_path / "full.mp4").read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 2])  # the moov atom is gone
    (tmp_path / "full.mp4").unlink()
    (tmp_path / "empty.mp4").write_bytes(b"")  # zero-length
    audio_only(tmp_path / "audio.mp4")
    still_image(tmp_path / "image.mp4")  # a PNG under a video's name
    rows = [
        ("good.mp4", "a grey fade"),
        ("good.webm", "the same fade, vp9"),
        ("short.mp4", "too short"),
        ("corrupt.mp4", "random bytes"),
        ("truncated.mp4", "half a file"),
        ("missing.mp4", "never written"),
        ("empty.mp4", "zero bytes"),
        ("audio.mp4", "sound only"),
        ("image.mp4", "one still picture"),
    ]
    return tmp_path, rows


def audio_only(path):
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), "fltp", "mono")
        frame.sample_rate = 16000
        for _ in range(20):
            for p in s.encode(frame):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def still_image(path):
    png = path.with_suffix(".png")
    with av.open(str(png), "w", format="image2") as c:
        s = c.add_stream("png")
        s.width, s.height, s.pix_fmt = 32, 24, "rgb24"
        img = av.VideoFrame.from_ndarray(np.zeros((24, 32, 3), np.uint8), format="rgb24")
        for p in [*s.encode(img), *s.encode()]:
            c.mux(p)
    png.rename(path)


def test_csv_captions_and_skips(folder, caplog):
    root, rows = folder
    lines = ["path,caption", *(f'{p},"{c}"' for p, c in rows)]
    (root / "captions.csv").write_text("\n".join(lines) + "\n")
    with caplog.at_level(logging.WARNING, logger="mvdit.data.folder"):
        ds = VideoFolderDataset(root, frames=9, height=16, width=16, fps=8)
    assert [e.path for e in ds.entries] == ["good.mp4", "good.webm"]
    assert dict(ds.skipped) == {
        "short.mp4": "too short",
        "corrupt.mp4": "unreadable",
        "truncated.mp4": "unreadable",
        "missing.mp4": "missing",
        "empty.mp4": "unreadable",
        "audio.mp4": "not a video",
        "image.mp4": "not a video",
    }
    text = caplog.text
    for name in ("short.mp4", "corrupt.mp4", "truncated.mp4", "missing.mp4", "empty.mp4"):
        assert name in text
    assert "no video stream" in text and "a still image (png_pipe)" in text
    assert "skipped 7 of 9 videos" in text
    assert "3 unreadable, 2 not a video, 1 too short, 1 missing" in text

    item = ds[1]
    assert set(item) == {"video", "caption", "path"}
    assert item["video"].shape == (3, 9, 16, 16) and item["video"].dtype == torch.float32
    assert item["caption"] == "the same fade, vp9" and item["path"] == "good.webm"
    assert -1 <= item["video"].min() and item["video"].max() <= 1


def test_jsonl_with_alias_columns_and_autodetect(folder):
    root, rows = folder
    # Hugging Face videofolder spelling: metadata.jsonl with file_name / text.
    lines = [json.dumps({"file_name": p, "text": c}) for p, c in rows[:2]]
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n\n")
    ds = VideoFolderDataset(root, frames=9, height=16, width=16, fps=8)
    assert [ds[i]["caption"] for i in range(len(ds))] == ["a grey fade", "the same fade, vp9"]
    # mp4 and webm decode to the same clip
    torch.testing.assert_close(ds[0]["video"], ds[1]["video"], atol=0.05, rtol=0)


def test_explicit_caption_file_outside_root(tmp_path):
    write_video(tmp_path / "clip.mp4", 12, 8)
    (tmp_path / "elsewhere").mkdir()
    cap = tmp_path / "elsewhere" / "list.jsonl"
    cap.write_text(json.dumps({"path": str(tmp_path / "clip.mp4"), "caption": "abs"}) + "\n")
    ds = VideoFolderDataset(
        tmp_path / "elsewhere", captions=cap, frames=9, height=8, width=8, fps=8
    )
    assert len(ds) == 1 and ds[0]["caption"] == "abs"


@pytest.mark.parametrize(
    "src_fps, n, expected",
    [
        (24, 30, [0, 3, 6, 9, 12, 15, 18, 21, 24]),  # an integer ratio: every third frame
        (10, 12, [0, 1, 2, 4, 5, 6, 7, 9, 10]),  # 1.25 source frames per target frame
        (4, 5, [0, 0, 1, 1, 2, 2, 3, 3, 4]),  # slower source: frames repeat
    ],
)
def test_resamples_by_timestamp(tmp_path, src_fps, n, expected):
    write_video(tmp_path / "v.mp4", n, src_fps)
    (tmp_path / "captions.csv").write_text("path,caption\nv.mp4,x\n")
    ds = VideoFolderDataset(tmp_path, frames=9, height=8, width=8, fps=8)
    assert source_frames(ds[0]["video"]) == expected


def test_centre_window_of_a_long_clip(tmp_path):
    write_video(tmp_path / "v.mp4", 49, 24)  # 2.04 s; a 9-frame window at 8 fps spans 1.04 s
    (tmp_path / "captions.csv").write_text("path,caption\nv.mp4,x\n")
    ds = VideoFolderDataset(tmp_path, frames=9, height=8, width=8, fps=8, window="center")
    assert source_frames(ds[0]["video"]) == list(range(12, 37, 3))


def test_too_short_boundary(tmp_path):
    # 9 frames at 8 fps need the clip to last past t = 1 s: 9 source frames do, 8 do not.
    write_video(tmp_path / "nine.mp4", 9, 8)
    write_video(tmp_path / "eight.mp4", 8, 8)
    (tmp_path / "captions.csv").write_text("path,caption\nnine.mp4,a\neight.mp4,b\n")
    ds = VideoFolderDataset(tmp_path, frames=9, height=8, width=8, fps=8)
    assert [e.path for e in ds.entries] == ["nine.mp4"] and ds.skipped == [
        ("eight.mp4", "too short")
    ]
    assert source_frames(ds[0]["video"]) == list(range(9))


def test_resize_keeps_aspect_and_centre_crops(tmp_path):
    # A 96x48 horizontal ramp (level 2.5 x column). Covering 32x32 resizes it to 64x32 and keeps
    # the middle 32 columns, i.e. source columns 24..72: levels ~62..178, not the full 0..237.
    ramp = (np.arange(96) * 2.5).astype(np.uint8)
    img = np.broadcast_to(ramp[None, :, None], (48, 96, 3)).copy()
    write_video(tmp_path / "wide.mp4", 10, 8, width=96, height=48, pattern=img)
    (tmp_path / "captions.csv").write_text("path,caption\nwide.mp4,ramp\n")
    video = VideoFolderDataset(tmp_path, frames=9, height=32, width=32, fps=8)[0]["video"]
    assert video.shape == (3, 9, 32, 32)
    level = (video.mean(dim=(0, 1)) + 1) * 127.5  # (H, W)
    assert (level.std(dim=0) < 2).all()  # every row the same: the full height is kept
    cols = level.mean(dim=0)
    assert 55 < cols[0] < 70 and 170 < cols[-1] < 185
    assert (cols.diff() > 0).all()
    # asking for the source's own aspect gives the whole ramp
    whole = VideoFolderDataset(tmp_path, frames=9, height=24, width=48, fps=8)[0]["video"]
    cols = ((whole.mean(dim=(0, 1)) + 1) * 127.5).mean(dim=0)
    assert cols[0] < 10 and cols[-1] > 225


def test_header_ok_but_stream_cut_is_replaced(tmp_path, caplog):
    # A webm cut in half keeps its header (duration 1.25 s) but loses the later frames.
    noisy_video(tmp_path / "full.webm", 30, codec="libvpx-vp9")
    data = (tmp_path / "full.webm").read_bytes()
    (tmp_path / "cut.webm").write_bytes(data[: len(data) // 2])
    write_video(tmp_path / "good.mp4", 12, 8)
    (tmp_path / "captions.csv").write_text("path,caption\ncut.webm,a\ngood.mp4,b\n")
    ds = VideoFolderDataset(tmp_path, frames=9, height=8, width=8, fps=8)
    assert len(ds) == 2  # the header check cannot tell
    with caplog.at_level(logging.WARNING, logger="mvdit.data.folder"):
        item = ds[0]
    assert item["path"] == "good.mp4" and "cut.webm" in caplog.text and "too short" in caplog.text
    assert ds.broken == {0}


def test_sidecar_txt_captions(tmp_path, caplog):
    (tmp_path / "sub").mkdir()
    write_video(tmp_path / "sub" / "a.mp4", 12, 8)
    write_video(tmp_path / "b.mov", 12, 8)
    (tmp_path / "sub" / "a.txt").write_text("caption from a sidecar\n")
    with caplog.at_level(logging.WARNING, logger="mvdit.data.folder"):
        ds = VideoFolderDataset(tmp_path, frames=9, height=8, width=8, fps=8)
    assert [(e.path, e.caption) for e in ds.entries] == [("sub/a.mp4", "caption from a sidecar")]
    assert ds.skipped == [("b.mov", "no caption")] and "skipped 1 of 2 videos" in caplog.text


def test_nothing_readable_is_an_error(folder):
    root, rows = folder
    bad = [r for r in rows if not r[0].startswith("good")]
    (root / "captions.jsonl").write_text(
        "\n".join(json.dumps({"path": p, "caption": c}) for p, c in bad)
    )
    with pytest.raises(MvditError, match="no usable videos .* all 7 were skipped"):
        VideoFolderDataset(root, frames=9, height=8, width=8, fps=8)


def test_user_mistakes(tmp_path):
    with pytest.raises(MvditError, match="does not exist"):
        VideoFolderDataset(tmp_path / "nope")
    with pytest.raises(MvditError, match="no caption file"):
        VideoFolderDataset(tmp_path)
    (tmp_path / "captions.csv").write_text("video_file,description\na.mp4,x\n")
    with pytest.raises(MvditError, match="no video path column"):
        read_captions(tmp_path / "captions.csv")
    (tmp_path / "bad.jsonl").write_text('{"path": "a.mp4", "caption": "x"}\n{oops\n')
    with pytest.raises(MvditError, match="bad.jsonl:2"):
        read_captions(tmp_path / "bad.jsonl")
    with pytest.raises(MvditError, match="must be positive"):
        VideoFolderDataset(tmp_path, frames=0)


def test_display_rotation_is_applied(tmp_path):
    # A phone's portrait clip: landscape frames (left half white) and a -90 degree display
    # matrix in the mp4 track header. Shown upright, the white half is the top.
    img = np.zeros((16, 32, 3), np.uint8)
    img[:, :16] = 255
    write_video(tmp_path / "v.mp4", 10, 8, width=32, height=16, pattern=img)
    data = bytearray((tmp_path / "v.mp4").read_bytes())
    matrix = data.index(b"tkhd") + 4 + 40  # version 0 header: fields before the 3x3 matrix
    data[matrix : matrix + 36] = struct.pack(">9i", 0, 1 << 16, 0, -(1 << 16), 0, 0, 0, 0, 1 << 30)
    (tmp_path / "v.mp4").write_bytes(bytes(data))
    (tmp_path / "captions.csv").write_text("path,caption\nv.mp4,portrait\n")
    video = VideoFolderDataset(tmp_path, frames=9, height=32, width=16, fps=8)[0]["video"]
    assert video.shape == (3, 9, 32, 16)
    assert video[:, :, :14].min() > 0.8 and video[:, :, 18:].max() < -0.8

"""Qualitative outputs: mp4 with audio decodes with the right streams, frame count and duration."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pftray.evaluation.video import (
    LABEL_HEIGHT,
    labelled_grid,
    probe_mp4,
    side_by_side,
    to_uint8,
    upscale,
    write_gif,
    write_mp4,
)


def _frames(t=10, h=32, w=32, seed=0):
    return (np.random.default_rng(seed).random((t, h, w, 3)) * 255).astype(np.uint8)


@pytest.mark.parametrize(("vcodec", "acodec"), [("h264", "aac"), ("mpeg4", "mp3")])
def test_mp4_has_one_video_and_one_audio_stream(tmp_path, vcodec, acodec):
    t = 10
    audio = (0.3 * np.sin(2 * np.pi * 220 * np.arange(t * 640) / 16000)).astype(np.float32)
    movie = side_by_side([("gt", _frames(t)), ("model", _frames(t, seed=1))], scale=2)
    path = write_mp4(tmp_path / "clip.mp4", movie, audio, video_codec=vcodec, audio_codec=acodec)
    info = probe_mp4(path)
    assert info["video_streams"] == 1 and info["audio_streams"] == 1
    assert info["frames"] == t and info["fps"] == 25.0
    assert info["video_duration_s"] == pytest.approx(t / 25)
    assert (info["width"], info["height"]) == (2 * 64, 64 + LABEL_HEIGHT)
    assert info["sample_rate"] == 16000
    # audio codecs pad to whole frames (mp3: 1152 samples); the track covers the clip and not much more
    assert t / 25 - 1e-3 <= info["audio_duration_s"] <= t / 25 + 1152 / 16000
    assert not list(tmp_path.glob(".*tmp*"))


def test_mp4_odd_size_is_padded_and_bad_input_rejected(tmp_path):
    path = write_mp4(tmp_path / "odd.mp4", _frames(3, 15, 21))
    info = probe_mp4(path)
    assert (info["width"], info["height"], info["frames"], info["audio_streams"]) == (22, 16, 3, 0)
    with pytest.raises(ValueError, match="uint8"):
        write_mp4(tmp_path / "x.mp4", _frames(3).astype(np.float32))
    with pytest.raises(ValueError, match="mono"):
        write_mp4(tmp_path / "x.mp4", _frames(3), np.zeros((2, 100), np.float32))
    assert not (tmp_path / "x.mp4").exists()


def test_gif_frames_and_timing(tmp_path):
    path = write_gif(tmp_path / "a.gif", _frames(6))
    with Image.open(path) as im:
        assert im.n_frames == 6 and im.info["duration"] == 40 and im.info["loop"] == 0


def test_panels_and_grid_layout():
    a, b = _frames(4, 8, 8), _frames(4, 8, 8, seed=2)
    sbs = side_by_side([("a", a), ("b", b)], scale=3, labels=False)
    assert sbs.shape == (4, 24, 48, 3)
    assert np.array_equal(sbs[:, ::3, 24::3], b)  # nearest-neighbour upscaling keeps the pixels
    grid = labelled_grid([("gt", a), ("round 1", b)], scale=2, label_width=40)
    assert grid.shape == (2 * 16, 40 + 4 * 16, 3)
    assert np.array_equal(grid[16:, 40:56], upscale(b, 2)[0])
    x01 = np.linspace(0, 1, 2 * 3 * 2 * 2).reshape(2, 3, 2, 2)
    u8 = to_uint8(x01)
    assert u8.shape == (2, 2, 2, 3) and u8[0, 0, 0, 0] == 0 and u8[-1, -1, -1, -1] == 255
    with pytest.raises(ValueError, match="share one shape"):
        side_by_side([("a", a), ("b", _frames(4, 8, 9))])

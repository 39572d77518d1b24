"""Qualitative outputs: side-by-side panels, mp4 with the audio track (PyAV), PNG grids and animated GIFs.

Frames here are uint8 ``[T, H, W, 3]`` RGB (the data layer's convention); the video runs at
:data:`pftray.data.types.VIDEO_FPS` = 25 fps with mono audio at 16 kHz. Every file is written to a temporary
name in its folder and moved into place, so a crash never leaves a half-written video.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

from pftray.data.types import SAMPLE_RATE, VIDEO_FPS

VIDEO_CODECS = ("h264", "mpeg4")
AUDIO_CODECS = ("aac", "mp3")
LABEL_HEIGHT = 12


def _check_frames(frames: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] < 1:
        raise ValueError(f"{name} must be uint8 [T, H, W, 3] with T >= 1, got {arr.dtype} {arr.shape}")
    return arr


def to_uint8(frames01) -> np.ndarray:
    """``[T, 3, H, W]`` floats in [0, 1] (tensor or array) -> uint8 ``[T, H, W, 3]``."""
    arr = np.asarray(frames01.detach().cpu().numpy() if hasattr(frames01, "detach") else frames01, np.float64)
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise ValueError(f"frames01 must be [T, 3, H, W], got shape {arr.shape}")
    return (arr.transpose(0, 2, 3, 1).clip(0.0, 1.0) * 255.0).round().astype(np.uint8)


def upscale(frames: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer ``factor`` (tiny synthetic frames are unreadable at 1x)."""
    if factor < 1:
        raise ValueError(f"factor must be >= 1, got {factor}")
    arr = _check_frames(frames, "frames")
    return arr if factor == 1 else arr.repeat(factor, axis=1).repeat(factor, axis=2)


def _label_strip(text: str, width: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, LABEL_HEIGHT), (0, 0, 0))
    ImageDraw.Draw(img).text((2, 0), text, fill=(255, 255, 255))
    return np.asarray(img)


def side_by_side(
    panels: Sequence[tuple[str, np.ndarray]], *, scale: int = 1, labels: bool = True
) -> np.ndarray:
    """Panels ``(label, frames [T, H, W, 3])`` of equal shape placed left to right -> ``[T, H', W', 3]``.

    With ``labels`` a black strip of :data:`LABEL_HEIGHT` pixels with each panel's name sits above it.
    """
    if not panels:
        raise ValueError("panels must not be empty")
    shapes = {_check_frames(f, f"panel {name!r}").shape for name, f in panels}
    if len(shapes) != 1:
        raise ValueError(f"all panels must share one shape [T, H, W, 3], got {sorted(shapes)}")
    cols = []
    for name, frames in panels:
        big = upscale(frames, scale)
        if labels:
            strip = _label_strip(name, big.shape[2])
            big = np.concatenate([np.broadcast_to(strip, (big.shape[0], *strip.shape)), big], axis=1)
        cols.append(big)
    return np.ascontiguousarray(np.concatenate(cols, axis=2))


def frame_grid(rows: Sequence[np.ndarray]) -> np.ndarray:
    """One image from frame stacks: row i shows ``rows[i]`` ``[T, H, W, 3]`` with frames left to right."""
    if not rows:
        raise ValueError("rows must not be empty")
    stacks = [_check_frames(r, f"rows[{i}]") for i, r in enumerate(rows)]
    if len({s.shape for s in stacks}) != 1:
        raise ValueError(f"all rows must share one shape, got {sorted({s.shape for s in stacks})}")
    return np.concatenate([np.concatenate(list(s), axis=1) for s in stacks], axis=0)


def labelled_grid(
    rows: Sequence[tuple[str, np.ndarray]], *, scale: int = 1, label_width: int = 96
) -> np.ndarray:
    """One image: row i is ``rows[i]`` = ``(label, frames [T, H, W, 3])`` upscaled by ``scale``, frames left to
    right, with its label once in a black column on the left."""
    from PIL import Image, ImageDraw

    if label_width < 1:
        raise ValueError(f"label_width must be >= 1, got {label_width}")
    grid = frame_grid([upscale(f, scale) for _, f in rows])
    row_h = grid.shape[0] // len(rows)
    col = Image.new("RGB", (label_width, grid.shape[0]), (0, 0, 0))
    draw = ImageDraw.Draw(col)
    for i, (name, _) in enumerate(rows):
        draw.text((3, i * row_h + max(0, row_h // 2 - 6)), name, fill=(255, 255, 255))
    return np.concatenate([np.asarray(col), grid], axis=1)


def label_rows(image: np.ndarray, labels: Sequence[str], *, scale: int = 1, label_width: int = 96) -> np.ndarray:
    """A grid image ``[H, W, 3]`` made of ``len(labels)`` rows of equal height, upscaled by ``scale``, with each
    row's label on its left (as :func:`labelled_grid` draws it)."""
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
    if not labels or arr.shape[0] % len(labels):
        raise ValueError(f"an image {arr.shape[0]} pixels high does not split into {len(labels)} equal rows")
    rows = np.split(arr, len(labels), axis=0)
    return labelled_grid([(name, row[None]) for name, row in zip(labels, rows)], scale=scale,
                         label_width=label_width)


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def _even(frames: np.ndarray) -> np.ndarray:
    # yuv420p (what h264/mpeg4 players expect) needs even width and height: pad with black
    t, h, w, _ = frames.shape
    if h % 2 == 0 and w % 2 == 0:
        return frames
    out = np.zeros((t, h + h % 2, w + w % 2, 3), np.uint8)
    out[:, :h, :w] = frames
    return out


def write_mp4(
    path: str | os.PathLike[str],
    frames: np.ndarray,
    audio: np.ndarray | None = None,
    *,
    fps: int = VIDEO_FPS,
    sample_rate: int = SAMPLE_RATE,
    video_codec: str = "h264",
    audio_codec: str = "aac",
) -> Path:
    """Write ``frames`` (uint8 ``[T, H, W, 3]``) at ``fps`` with mono ``audio`` (float in [-1, 1] at
    ``sample_rate``) as an mp4; odd frame sizes are padded to even. Returns the path."""
    import av

    frames = _even(_check_frames(frames, "frames"))
    if video_codec not in VIDEO_CODECS:
        raise ValueError(f"video_codec must be one of {VIDEO_CODECS}, got {video_codec!r}")
    if audio_codec not in AUDIO_CODECS:
        raise ValueError(f"audio_codec must be one of {AUDIO_CODECS}, got {audio_codec!r}")
    if fps < 1 or sample_rate < 1:
        raise ValueError(f"fps and sample_rate must be >= 1, got fps={fps}, sample_rate={sample_rate}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        with av.open(str(tmp), mode="w", format="mp4") as box:
            vs = box.add_stream(video_codec, rate=fps)
            vs.width, vs.height = frames.shape[2], frames.shape[1]
            vs.pix_fmt = "yuv420p"
            vs.time_base = Fraction(1, fps)
            as_ = None
            if audio is not None:
                wave = np.asarray(audio, dtype=np.float32)
                if wave.ndim != 1:
                    raise ValueError(f"audio must be mono 1-D, got shape {wave.shape}")
                if not np.isfinite(wave).all():
                    raise ValueError("audio contains NaN or infinite values")
                as_ = box.add_stream(audio_codec, rate=sample_rate, layout="mono")
            for i, f in enumerate(frames):
                vf = av.VideoFrame.from_ndarray(f, format="rgb24")
                vf.pts = i
                for pkt in vs.encode(vf):
                    box.mux(pkt)
            for pkt in vs.encode():
                box.mux(pkt)
            if as_ is not None:
                pcm = np.clip(wave, -1.0, 1.0)[None, :]
                af = av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
                af.sample_rate, af.pts = sample_rate, 0
                af.time_base = Fraction(1, sample_rate)
                for pkt in as_.encode(af):
                    box.mux(pkt)
                for pkt in as_.encode():
                    box.mux(pkt)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def probe_mp4(path: str | os.PathLike[str]) -> dict[str, object]:
    """Decode an mp4 fully: ``{"video_streams", "audio_streams", "frames", "width", "height", "fps",
    "video_duration_s", "audio_samples", "sample_rate", "audio_duration_s"}`` (counts from decoded frames)."""
    import av

    with av.open(str(path)) as box:
        n_video, n_audio = len(box.streams.video), len(box.streams.audio)
        vs = box.streams.video[0] if n_video else None
        fps = float(vs.average_rate) if vs is not None and vs.average_rate else float("nan")
        frames, width, height = 0, 0, 0
        if vs is not None:
            for f in box.decode(video=0):
                frames += 1
                width, height = f.width, f.height
    samples, rate = 0, 0
    if n_audio:
        with av.open(str(path)) as box:
            rate = box.streams.audio[0].rate
            for f in box.decode(audio=0):
                samples += f.samples
    return {
        "video_streams": n_video,
        "audio_streams": n_audio,
        "frames": frames,
        "width": width,
        "height": height,
        "fps": fps,
        "video_duration_s": frames / fps if fps else float("nan"),
        "audio_samples": samples,
        "sample_rate": rate,
        "audio_duration_s": samples / rate if rate else float("nan"),
    }


def write_png(path: str | os.PathLike[str], image: np.ndarray) -> Path:
    """Save a uint8 ``[H, W, 3]`` image atomically."""
    from PIL import Image

    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[-1] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {arr.dtype} {arr.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        Image.fromarray(arr).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_gif(path: str | os.PathLike[str], frames: np.ndarray, *, fps: int = VIDEO_FPS) -> Path:
    """Animated GIF of uint8 ``[T, H, W, 3]`` frames, looping forever (GIF delays are whole centiseconds:
    25 fps -> 40 ms per frame exactly)."""
    from PIL import Image

    frames = _check_frames(frames, "frames")
    if fps < 1:
        raise ValueError(f"fps must be >= 1, got {fps}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    images = [Image.fromarray(f) for f in frames]
    try:
        images[0].save(
            tmp,
            format="GIF",
            save_all=True,
            append_images=images[1:],
            duration=round(1000 / fps),
            loop=0,
            disposal=1,
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path

"""Fixtures of the ``pftray generate`` tests: one finished tiny run (made once per session) and media files that
the tests write themselves with PyAV (audio at 16 kHz and 44.1 kHz stereo, a video without audio, photos)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.tinycfg import tiny_config

RUN_OVERRIDES = {
    "fed.rounds": 1,
    "data.num_clients": 2,
    "fed.clients_per_round": 2,
    "train.local_steps": 1,
    "data.frames_per_clip": 4,
    "fed.eval_every": 0,
}


@pytest.fixture(scope="session")
def gen_run(tmp_path_factory) -> Path:
    """A finished 1-round tiny run in which both clients trained (so both have an identity adapter on disk)."""
    from pftray.runtime.driver import run_federated

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine's cores are shared
    try:
        root = tmp_path_factory.mktemp("gen")
        cfg = tiny_config(**RUN_OVERRIDES, **{"experiment.out_dir": str(root)})
        run, summary = run_federated(cfg, out=str(root / "run"), use_ray=False)
    finally:
        torch.set_num_threads(before)
    assert summary["status"] == "done"
    assert all((run.path / "clients" / str(k) / "r1.pt").exists() for k in range(2))
    return run.path


def speech_like(seconds: float, rate: int, *, channels: int = 1, seed: int = 0) -> np.ndarray:
    """float32 ``[channels, N]``: a 150 Hz buzz with harmonics, gated by a syllable-rate (4 Hz) envelope, plus a
    little noise; the channels differ (so a down-mix is not a plain copy)."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    rng = np.random.default_rng(seed)
    env = np.clip(np.sin(2 * np.pi * 4.0 * t), 0, None) ** 2
    voice = sum(np.sin(2 * np.pi * 150.0 * h * t) / h for h in range(1, 6))
    out = []
    for c in range(channels):
        out.append(0.3 * env * voice * (1.0 - 0.3 * c) + 0.01 * rng.standard_normal(n))
    return np.asarray(out, np.float32)


def write_audio(path: Path, wave: np.ndarray, rate: int, *, codec: str, container: str | None = None) -> Path:
    """Write float ``[channels, N]`` audio with PyAV (``codec`` e.g. pcm_s16le, aac, libmp3lame)."""
    import av

    channels = wave.shape[0]
    layout = "mono" if channels == 1 else "stereo"
    with av.open(str(path), mode="w", format=container) as box:
        st = box.add_stream(codec, rate=rate, layout=layout)
        fmt = "s16" if codec == "pcm_s16le" else "fltp"  # PyAV converts frames to the encoder's format
        frame_size = st.codec_context.frame_size or 1024
        pcm = np.clip(wave, -1, 1)
        if fmt == "s16":
            pcm = (pcm * 32767).astype(np.int16)
        planar = fmt == "fltp"
        for i in range(0, pcm.shape[1], frame_size):
            chunk = np.ascontiguousarray(pcm[:, i : i + frame_size])
            data = chunk if planar else chunk.T.reshape(1, -1)
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(data), format=fmt, layout=layout)
            af.sample_rate, af.pts, af.time_base = rate, i, Fraction(1, rate)
            for pkt in st.encode(af):
                box.mux(pkt)
        for pkt in st.encode():
            box.mux(pkt)
    return path


@pytest.fixture(scope="session")
def media(tmp_path_factory) -> dict[str, Path]:
    """Input files: a 16 kHz mono wav (0.73 s), a 44.1 kHz stereo m4a (AAC, 1.05 s), a video-only mp4, a grey PNG
    (no face) and scikit-image's astronaut photo (a real face) as PNG."""
    from PIL import Image
    from skimage.data import astronaut

    from pftray.evaluation.video import write_mp4

    d = tmp_path_factory.mktemp("media")
    files = {
        "wav": write_audio(d / "speech16k.wav", speech_like(0.73, 16_000), 16_000, codec="pcm_s16le"),
        "m4a": write_audio(d / "speech44k.m4a", speech_like(1.05, 44_100, channels=2), 44_100, codec="aac",
                           container="mp4"),
        "silent_video": write_mp4(d / "no_audio.mp4", np.full((5, 32, 32, 3), 90, np.uint8)),
        "grey": d / "grey.png",
        "astronaut": d / "astronaut.png",
    }
    Image.fromarray(np.full((160, 160, 3), 128, np.uint8)).save(files["grey"])
    Image.fromarray(astronaut()).save(files["astronaut"])
    return files

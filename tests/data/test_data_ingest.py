"""Real-video ingestion on small mp4 files encoded here with PyAV."""

import fractions
import json
from pathlib import Path

import av
import numpy as np
import pytest

from pftray.data.audio import frame_energy
from pftray.data.ingest import load_prepared_dataset, prepare_dataset
from pftray.data.types import DataError

FPS = 25
FRAMES = 35  # 1.4 s: two 16-frame clips per file (the first file of a speaker also gives the reference)


def sine_envelope(t: np.ndarray) -> np.ndarray:
    """Sine on for 0.4 s, off for 0.4 s, ..."""
    return ((t // 0.4) % 2 == 0).astype(np.float64)


def write_mp4(
    path: Path, *, num_frames=FRAMES, size=48, audio_rate=44100, audio=True, freq=440.0, tag=0
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=FPS)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        if audio:  # every stream must exist before the first packet is muxed
            st = out.add_stream("aac", rate=audio_rate)
            st.layout = "mono"
        for t in range(num_frames):
            img = np.full((size, size, 3), 40 + 4 * t + tag, np.uint8)  # every frame of every file differs
            x = (2 * t) % (size - 12)
            img[18:30, x : x + 12] = 230  # a moving bright square
            for packet in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if audio:
            n = int(num_frames / FPS * audio_rate)
            t = np.arange(n) / audio_rate
            wav = (0.5 * sine_envelope(t) * np.sin(2 * np.pi * freq * t)).astype(np.float32)
            for i in range(0, n, 1024):
                frame = av.AudioFrame.from_ndarray(wav[None, i : i + 1024], format="fltp", layout="mono")
                frame.sample_rate = audio_rate
                frame.pts = i
                frame.time_base = fractions.Fraction(1, audio_rate)
                for packet in st.encode(frame):
                    out.mux(packet)
            for packet in st.encode():
                out.mux(packet)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("src")
    write_mp4(root / "alice" / "a0.mp4", audio_rate=16000, tag=0)
    write_mp4(root / "alice" / "a1.mp4", audio_rate=44100, tag=1)
    write_mp4(root / "bob" / "b0.mp4", audio_rate=44100, freq=880.0, tag=2)
    write_mp4(root / "bob" / "b1.mp4", audio_rate=16000, freq=880.0, tag=3)
    write_mp4(root / "bob" / "b2_silent.mp4", audio=False)
    (root / "bob" / "b3_garbage.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    write_mp4(root / "bob" / "b4_short.mp4", num_frames=10)
    return root


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    calls = []
    report = prepare_dataset(
        source,
        out,
        resolution=32,
        frames_per_clip=16,
        heldout_clips=1,
        progress=lambda d, n, name: calls.append((d, n, name)),
    )
    return report, out, calls


def test_good_files_become_shards(prepared):
    report, out, calls = prepared
    assert [c.speaker for c in report.clients] == ["alice", "bob"]
    assert sorted(p.name for p in out.glob("*.parquet")) == ["client-0.parquet", "client-1.parquet"]
    # 2 files x 2 clips per speaker (35 frames; the first file reserves frame 0 for the reference).
    assert all(c.train_clips == 3 and c.heldout_clips == 1 and c.files == 2 for c in report.clients)
    assert report.num_clips == 8
    assert len(calls) == 7 and calls[-1][:2] == (7, 7)
    clients = load_prepared_dataset(out)
    for k, c in enumerate(clients):
        assert c.client_id == k and c.identity == ["alice", "bob"][k] and c.unreliable is None
        assert c.reference.shape == (32, 32, 3) and c.reference.dtype == np.uint8
        assert c.num_examples == 48
        for clip in c.train + c.heldout:
            clip.validate()
            assert clip.frames.shape == (16, 32, 32, 3) and clip.audio.shape == (16 * 640,)
            assert clip.audio_feats.shape == (16, 16, 32)
            assert np.all(clip.pose == 0) and np.isfinite(clip.mouth).all()
            assert np.all(clip.mouth_box == clip.mouth_box[0])
        # The moving square moves: consecutive frames differ; the reference is no clip frame.
        assert np.abs(np.diff(c.train[0].frames.astype(int), axis=0)).sum() > 0
        assert all(not np.array_equal(c.reference, f) for clip in c.train + c.heldout for f in clip.frames)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [c["shard"] for c in manifest["clients"]] == ["client-0.parquet", "client-1.parquet"]
    assert {s["path"] for s in manifest["skipped"]} == {s.path for s in report.skipped}


def test_bad_files_are_named_and_skipped(prepared):
    report, _, _ = prepared
    reasons = {s.path: s.reason for s in report.skipped}
    assert set(reasons) == {"bob/b2_silent.mp4", "bob/b3_garbage.mp4", "bob/b4_short.mp4"}
    assert "no audio stream" in reasons["bob/b2_silent.mp4"]
    assert "cannot decode" in reasons["bob/b3_garbage.mp4"]
    assert "too short" in reasons["bob/b4_short.mp4"]


def test_audio_features_track_the_sine_energy(prepared):
    _, out, _ = prepared
    for c in load_prepared_dataset(out):
        clip_files = {}
        for clip in c.train + c.heldout:
            speaker, stem, k = clip.clip_id.split("/")
            clip_files.setdefault(stem, []).append((int(k), clip))
        for stem, clips in clip_files.items():
            offset = 1 if stem.endswith("0") else 0  # first file of a speaker starts at frame 1
            for k, clip in clips:
                frame_idx = offset + 16 * k + np.arange(16)
                expected = sine_envelope((frame_idx + 0.5) / FPS)
                energy = frame_energy(clip.audio_feats, reduce="max")  # a pure tone: loudest band
                if expected.min() == expected.max():
                    continue
                assert np.corrcoef(energy, expected)[0, 1] > 0.8, (stem, k)
                # Waveform RMS: ~0.5/sqrt(2) when on, ~0 when off (AAC is lossy).
                rms = np.sqrt((clip.audio.reshape(16, 640) ** 2).mean(axis=1))
                on = rms[(expected == 1) & (np.abs(np.diff(expected, prepend=expected[0])) == 0)]
                assert np.all(np.abs(on - 0.5 / np.sqrt(2)) < 0.08)


def test_max_clips_and_errors(source, tmp_path):
    report = prepare_dataset(source, tmp_path / "o", resolution=32, max_clips_per_speaker=2)
    assert all(c.train_clips + c.heldout_clips == 2 for c in report.clients)
    with pytest.raises(DataError, match="nope"):
        prepare_dataset(tmp_path / "nope", tmp_path / "o2")
    with pytest.raises(DataError, match="manifest"):
        load_prepared_dataset(tmp_path / "empty")
    (tmp_path / "o" / "client-1.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(DataError, match="client-1.parquet"):
        load_prepared_dataset(tmp_path / "o")

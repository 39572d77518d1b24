"""Real-video ingestion on small mp4 files encoded here with PyAV: a moving astronaut (scikit-image) at 25 and
30 fps, mono and stereo audio at several rates, landscape, portrait and square frames, and broken files."""

import fractions
import json
import os
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from pftray import faces
from pftray.data import landmarks
from pftray.data.audio import frame_energy
from pftray.data.ingest import decode_video, load_prepared_dataset, prepare_dataset
from pftray.data.landmarks import FACE_FRACTION
from pftray.data.types import DataError
from pftray.errors import InputError

pytestmark = pytest.mark.skipif(faces.available() is not None, reason=f"face models: {faces.available()}")

RES = 64
BACKGROUND = (90, 110, 120)
REAL_FACES = Path(os.environ.get("PFTRAY_REAL_FACES", Path(__file__).resolve().parents[3] / "shared/data/real-faces"))


def sine_envelope(t: np.ndarray) -> np.ndarray:
    """Sine on for 0.4 s, off for 0.4 s, ..."""
    return ((t // 0.4) % 2 == 0).astype(np.float64)


@pytest.fixture(scope="module")
def photo():
    skdata = pytest.importorskip("skimage.data")
    return np.ascontiguousarray(skdata.astronaut())


def astronaut_frames(img, width, height, num, fps, *, scale=0.5, tag=0):
    """The photo scaled by ``scale`` with its face (at ~(222, 126) in the photo) moving slowly around the canvas
    centre, one frame per ``1 / fps`` s; the face centre of each frame."""
    pil = Image.fromarray(img)
    frames, centres = [], []
    for i in range(num):
        t = i / fps
        c = np.array([width / 2 + 0.06 * width * np.sin(2 * np.pi * t / 1.5), height / 2 + 0.04 * height * np.cos(2 * np.pi * t)])
        off = c - scale * np.array([222.0, 126.0])
        affine = (1 / scale, 0, -off[0] / scale, 0, 1 / scale, -off[1] / scale)
        f = np.asarray(pil.transform((width, height), Image.Transform.AFFINE, affine, Image.Resampling.BILINEAR,
                                     fillcolor=BACKGROUND)).copy()
        f[:4, :4] = tag  # every file differs
        frames.append(f)
        centres.append(c)
    return frames, np.array(centres)


def write_mp4(path: Path, frames, *, fps=25, audio_rate=44100, channels=1, audio=True, freq=440.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps)
        vs.width, vs.height = w, h
        vs.pix_fmt = "yuv420p"
        if audio:  # every stream must exist before the first packet is muxed
            st = out.add_stream("aac", rate=audio_rate)
            st.layout = "stereo" if channels == 2 else "mono"
        for img in frames:
            for packet in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                out.mux(packet)
        for packet in vs.encode():
            out.mux(packet)
        if audio:
            n = int(len(frames) / fps * audio_rate)
            t = np.arange(n) / audio_rate
            wav = (0.5 * sine_envelope(t) * np.sin(2 * np.pi * freq * t)).astype(np.float32)
            wav = np.repeat(wav[None], channels, axis=0)
            for i in range(0, n, 1024):
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(wav[:, i : i + 1024]), format="fltp",
                                                   layout=st.layout.name)
                frame.sample_rate = audio_rate
                frame.pts = i
                frame.time_base = fractions.Fraction(1, audio_rate)
                for packet in st.encode(frame):
                    out.mux(packet)
            for packet in st.encode():
                out.mux(packet)


@pytest.fixture(scope="module")
def source(tmp_path_factory, photo) -> Path:
    root = tmp_path_factory.mktemp("src")
    # 1.4 s each: 35 frames at 25 fps, two 16-frame clips per file (a speaker's first file gives the reference).
    land, _ = astronaut_frames(photo, 256, 192, 42, 30, tag=1)
    write_mp4(root / "alice" / "a0.mp4", land, fps=30, audio_rate=44100, channels=2)  # 30 fps, stereo
    port, _ = astronaut_frames(photo, 192, 288, 35, 25, tag=2)
    write_mp4(root / "alice" / "a1.mp4", port, fps=25, audio_rate=16000)  # portrait, 16 kHz mono
    square, _ = astronaut_frames(photo, 224, 224, 35, 25, scale=0.55, tag=3)
    write_mp4(root / "bob" / "b0.mp4", square, audio_rate=48000, channels=2, freq=880.0)
    land2, _ = astronaut_frames(photo, 256, 192, 42, 30, scale=0.45, tag=4)
    write_mp4(root / "bob" / "b1.mp4", land2, fps=30, audio_rate=22050, freq=880.0)
    write_mp4(root / "bob" / "b2_silent.mp4", square, audio=False)
    noface = [np.full((96, 128, 3), 40 + 4 * t, np.uint8) for t in range(35)]
    for t, f in enumerate(noface):
        f[30:50, 2 * t : 2 * t + 20] = 230  # a moving bright square, no face
    write_mp4(root / "bob" / "b3_noface.mp4", noface)
    (root / "bob" / "b4_garbage.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    write_mp4(root / "bob" / "b5_short.mp4", square[:10])
    (root / "notes").mkdir()
    (root / "notes" / "readme.txt").write_text("not a video")
    return root


@pytest.fixture(scope="module")
def prepared(source, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    calls = []
    report = prepare_dataset(
        source, out, resolution=RES, frames_per_clip=16, heldout_clips=1,
        progress=lambda d, n, name: calls.append((d, n, name)),
    )
    return report, out, calls


def test_good_files_become_shards_of_face_centred_crops(prepared):
    report, out, calls = prepared
    assert [c.speaker for c in report.clients] == ["alice", "bob"]
    assert sorted(p.name for p in out.glob("*.parquet")) == ["client-0.parquet", "client-1.parquet"]
    # 2 files x 2 clips per speaker (35 frames; the first file reserves frame 0 for the reference).
    assert all(c.train_clips == 3 and c.heldout_clips == 1 and c.files == 2 for c in report.clients)
    assert report.num_clips == 8
    assert len(calls) == 8 and calls[-1][:2] == (8, 8)
    for k, c in enumerate(load_prepared_dataset(out)):
        assert c.client_id == k and c.identity == ["alice", "bob"][k] and c.unreliable is None
        assert c.reference.shape == (RES, RES, 3) and c.reference.dtype == np.uint8
        assert c.num_examples == 48
        for clip in c.train + c.heldout:
            clip.validate()
            assert clip.frames.shape == (16, RES, RES, 3) and clip.audio.shape == (16 * 640,)
            lm = clip.extras["landmarks"]
            assert lm.shape == (16, 68, 2) and lm.dtype == np.float32
            # The face is centred in every crop and has the size the landmark code expects.
            assert np.abs(lm.mean(axis=1) - RES / 2).max() < 0.1 * RES
            jaw = np.linalg.norm(lm[:, 16] - lm[:, 0], axis=1) / RES
            assert np.abs(jaw / FACE_FRACTION - 1).max() < 0.25
            # Signals from the landmarks: a still, frontal, closed-eyes-never astronaut.
            assert np.all(np.abs(clip.pose[:, :3]) < 0.5) and np.all(clip.pose[:, 3] < 0.5)
            # the head pose is relative to the reference frame's: recomputed from the stored landmarks
            ref_pose = np.asarray(report.clients[k].reference_pose, np.float32)
            absolute = landmarks.pose_to_unit(landmarks.head_pose(lm, RES))
            np.testing.assert_allclose(clip.pose[:, :3], np.clip(absolute - ref_pose[:3], -1, 1), atol=1e-4)
            assert np.all((clip.mouth >= 0) & (clip.mouth <= 1)) and np.ptp(clip.mouth) < 0.2
            y0, y1, x0, x1 = clip.mouth_box.T
            mouth = lm[:, 48:68]
            assert np.all(y0 <= mouth[..., 1].min(1)) and np.all(y1 >= mouth[..., 1].max(1))
            assert np.all(x0 <= mouth[..., 0].min(1)) and np.all(x1 >= mouth[..., 0].max(1))
            assert np.all((y0 + y1) / 2 > 0.55 * RES) and np.all(y1 <= RES)  # below the face centre
        assert all(not np.array_equal(c.reference, f) for clip in c.train + c.heldout for f in clip.frames)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["version"] == 3 and manifest["crop"] == "face" and manifest["pose_frame"] == "reference"
    assert all(len(c["reference_pose"]) == 4 for c in manifest["clients"])
    assert "reference_pose" in manifest["fields"]["pose"]
    assert [c["shard"] for c in manifest["clients"]] == ["client-0.parquet", "client-1.parquet"]
    assert {s["path"] for s in manifest["skipped"]} == {s.path for s in report.skipped}
    assert set(manifest["fields"]) >= {"frames", "audio", "audio_feats", "pose", "mouth", "mouth_box",
                                       "extras.landmarks"}
    assert "PnP" in manifest["fields"]["pose"] and "inner-lip" in manifest["fields"]["mouth"]
    assert manifest["methods"]["landmarks"] >= 1 and manifest["methods"]["facetrack"] >= 1
    files = {f["path"]: f for f in manifest["files"]}
    assert len(files) == 8
    a0 = files["alice/a0.mp4"]
    assert a0["status"] == "kept" and a0["source_fps"] == 30 and a0["frames_decoded"] == 42
    assert a0["frames_25fps"] == 35 and a0["audio_rate"] == 44100 and a0["audio_channels"] == 2
    assert a0["face"]["frames"] == 35 and a0["face"]["interpolated"] == 0
    assert files["alice/a1.mp4"]["source_size"] == [192, 288] and files["alice/a1.mp4"]["frames_25fps"] == 35
    assert files["bob/b3_noface.mp4"]["status"] == "skipped"


def test_bad_files_are_named_and_skipped(prepared):
    report, _, _ = prepared
    reasons = {s.path: s.reason for s in report.skipped}
    assert set(reasons) == {"bob/b2_silent.mp4", "bob/b3_noface.mp4", "bob/b4_garbage.mp4", "bob/b5_short.mp4",
                            "notes"}
    assert reasons["notes"] == "no .mp4 files"
    assert "no audio stream" in reasons["bob/b2_silent.mp4"]
    assert "no face detected" in reasons["bob/b3_noface.mp4"]
    assert "cannot decode" in reasons["bob/b4_garbage.mp4"]
    assert "too short" in reasons["bob/b5_short.mp4"]


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
                expected = sine_envelope((frame_idx + 0.5) / 25)
                energy = frame_energy(clip.audio_feats, reduce="max")  # a pure tone: loudest band
                if expected.min() == expected.max():
                    continue
                assert np.corrcoef(energy, expected)[0, 1] > 0.8, (stem, k)
                # Waveform RMS: ~0.5/sqrt(2) when on, ~0 when off (AAC is lossy; stereo is averaged).
                rms = np.sqrt((clip.audio.reshape(16, 640) ** 2).mean(axis=1))
                on = rms[(expected == 1) & (np.abs(np.diff(expected, prepend=expected[0])) == 0)]
                assert np.all(np.abs(on - 0.5 / np.sqrt(2)) < 0.08)


def test_30fps_is_resampled_to_25fps_by_nearest_frame(tmp_path):
    # Every 30-fps frame has its own grey level: the 25-fps frame k must show source frame round(k * 30 / 25).
    levels = 20 + 6 * np.arange(36)
    frames = [np.full((64, 64, 3), v, np.uint8) for v in levels]
    write_mp4(tmp_path / "clock.mp4", frames, fps=30, audio_rate=16000)
    dec = decode_video(tmp_path / "clock.mp4", resolution=32, crop="center")
    assert dec.frames.shape == (30, 32, 32, 3) and dec.audio.shape == (30 * 640,)
    assert dec.info["source_fps"] == 30 and dec.info["frames_25fps"] == 30
    got = dec.frames.reshape(30, -1).mean(axis=1)
    expected = levels[np.minimum(np.round(np.arange(30) * 30 / 25).astype(int), 35)]
    assert np.abs(got - expected).max() < 2.5, np.c_[got, expected]


def test_centre_crop_mode_max_clips_and_progress_bar(source, tmp_path, capsys):
    report = prepare_dataset(source, tmp_path / "c", resolution=RES, crop="center", progress_bar=True,
                             max_clips_per_speaker=2)
    err = capsys.readouterr().err
    assert "prepare" in err and "/8 [" in err
    assert all(c.train_clips + c.heldout_clips == 2 for c in report.clients)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert manifest["crop"] == "center" and "centre square crop" in manifest["fields"]["frames"]
    reasons = {s.path: s.reason for s in report.skipped}
    assert "max_clips_per_speaker=2" in reasons["alice/a1.mp4"] and "max_clips_per_speaker=2" in reasons["bob/b1.mp4"]
    # Centre crops detect nothing, so a file without a face is kept.
    one = tmp_path / "one" / "carol"
    one.mkdir(parents=True)
    shutil.copy(source / "alice" / "a1.mp4", one / "c0.mp4")
    shutil.copy(source / "bob" / "b3_noface.mp4", one / "c1.mp4")
    rep = prepare_dataset(one.parent, tmp_path / "q", resolution=RES, crop="center", heldout_clips=0)
    assert rep.skipped == [] and rep.clients[0].files == 2
    assert capsys.readouterr().err == ""  # no bar when stderr is not a terminal
    with pytest.raises(InputError, match="crop must be one of face, center"):
        prepare_dataset(source, tmp_path / "x", crop="fcae")


def test_errors(tmp_path):
    with pytest.raises(DataError, match="nope"):
        prepare_dataset(tmp_path / "nope", tmp_path / "o2")
    with pytest.raises(DataError, match="manifest"):
        load_prepared_dataset(tmp_path / "empty")


def test_corrupt_shard_is_named(prepared, tmp_path):
    _, out, _ = prepared
    copy = tmp_path / "o"
    shutil.copytree(out, copy)
    (copy / "client-1.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(DataError, match="client-1.parquet"):
        load_prepared_dataset(copy)


def trim(src: Path, dst: Path, seconds: float) -> None:
    """Re-encode the first ``seconds`` of a video with its audio (PyAV), keeping size, frame rate and audio format."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        vin, ain = inp.streams.video[0], inp.streams.audio[0]
        vs = out.add_stream("libx264", rate=vin.average_rate)
        vs.width, vs.height, vs.pix_fmt = vin.width, vin.height, "yuv420p"
        st = out.add_stream("aac", rate=ain.rate)
        st.layout = ain.layout.name
        n_video = n_audio = 0
        for frame in inp.decode(vin, ain):
            if frame.time is None or frame.time > seconds:
                continue
            if isinstance(frame, av.VideoFrame):
                frame = av.VideoFrame.from_ndarray(frame.to_ndarray(format="rgb24"), format="rgb24")
                frame.pts, frame.time_base = n_video, fractions.Fraction(1) / vin.average_rate
                n_video += 1
                out.mux(vs.encode(frame))
            else:
                frame.pts, frame.time_base = n_audio, fractions.Fraction(1, ain.rate)
                n_audio += frame.samples
                out.mux(st.encode(frame))
        out.mux(vs.encode())
        out.mux(st.encode())


@pytest.mark.skipif(not REAL_FACES.is_dir(), reason=f"no real-faces folder at {REAL_FACES}")
def test_real_full_body_and_cropped_clips(tmp_path):
    src = tmp_path / "src"
    for speaker in ("speaker_s20_fullbody", "speaker_d19"):
        path = REAL_FACES / speaker / "clip0.mp4"
        if not path.is_file():
            pytest.skip(f"{path} missing")
        trim(path, src / speaker / "clip0.mp4", 2.6)
    shutil.copy(REAL_FACES / "README.md", src / "README.md")  # a stray file is ignored
    report = prepare_dataset(src, tmp_path / "out", resolution=RES, frames_per_clip=16, heldout_clips=1)
    assert [c.speaker for c in report.clients] == ["speaker_d19", "speaker_s20_fullbody"], report.skipped
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    files = {f["path"]: f for f in manifest["files"]}
    full = files["speaker_s20_fullbody/clip0.mp4"]
    assert full["source_size"] == [480, 908] and full["source_fps"] == 30
    assert full["face"]["detected_hog"] + full["face"]["detected_hog-upsampled"] >= 0.9 * full["frames_25fps"]
    # The crop is a face crop: a fraction of the 480-px-wide frame, in its upper part.
    assert full["face"]["crop_side"] < 0.75 * 480 and full["face"]["crop_centre"][1] < 0.5 * 908
    for c in load_prepared_dataset(tmp_path / "out"):
        for clip in c.train + c.heldout:
            lm = clip.extras["landmarks"]
            assert np.abs(lm.mean(axis=1) - RES / 2).max() < 0.12 * RES, c.identity
            jaw = np.linalg.norm(lm[:, 16] - lm[:, 0], axis=1) / RES
            assert np.abs(jaw / FACE_FRACTION - 1).max() < 0.3, c.identity

"""``pftray generate`` and :class:`pftray.pipeline.TalkingHeadPipeline`: any audio file drives a trained run's
generator into an mp4 as long as the audio, with the identity of a client (its adapter and frame) or of a photo
(face-cropped, neutral identity adapter); bad inputs are one line, exit 2, and leave no file behind."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.generate.conftest import speech_like, write_audio

FRAME_S = 1 / 25


def _faces_or_skip():
    from pftray import faces

    why = faces.available()
    if why is not None:
        pytest.skip(f"dlib face models unavailable: {why}")


@pytest.fixture(scope="module")
def pipes(gen_run):
    """``{"client0": ..., "new": ...}`` pipelines of the tiny run (model built once per module)."""
    from pftray.pipeline import TalkingHeadPipeline

    torch.set_num_threads(1)
    return {"client0": TalkingHeadPipeline.from_run(gen_run, client=0),
            "new": TalkingHeadPipeline.from_run(gen_run)}


def _mp4_facts(path: Path) -> dict:
    """Decoded video frames, frame size, fps, and the audio stream's declared duration (PyAV)."""
    import av

    with av.open(str(path)) as box:
        assert len(box.streams.video) == 1
        vs = box.streams.video[0]
        fps = float(vs.average_rate)
        frames = [f.to_ndarray(format="rgb24") for f in box.decode(video=0)]
    with av.open(str(path)) as box:
        audio = list(box.streams.audio)
        a_dur = float(audio[0].duration * audio[0].time_base) if audio and audio[0].duration else float("nan")
        rate = audio[0].rate if audio else 0
    return {"frames": np.stack(frames), "fps": fps, "audio_streams": len(audio), "audio_duration_s": a_dur,
            "sample_rate": rate}


# ---------------------------------------------------------------------------------------------- audio input


def test_audio_features_are_the_training_datas(gen_run):
    """A clip of training length gets exactly its stored features; longer audio gets, for each frame, the window
    of the training-length clip centred on it."""
    from pftray.data.audio import log_mel_features
    from pftray.fed.host import ClientProvider
    from pftray.pipeline import audio_features, read_run_config

    cfg = read_run_config(gen_run)
    d = cfg.data
    clip = ClientProvider(cfg).get(1).train[0]
    got = audio_features(clip.audio, num_frames=clip.num_frames, n_mels=d.n_mels, audio_window=d.audio_window,
                         clip_frames=d.frames_per_clip)
    np.testing.assert_array_equal(got, clip.audio_feats)

    wave = speech_like(1.0, 16_000)[0]
    t_len, clip_frames = 25, 8
    feats = audio_features(wave, num_frames=t_len, n_mels=16, audio_window=8, clip_frames=clip_frames)
    assert feats.shape == (t_len, 8, 16) and feats.dtype == np.float32
    for t in (0, 3, 12, 24):
        s = min(max(0, t - clip_frames // 2), t_len - clip_frames)
        ref = log_mel_features(wave[s * 640 : (s + clip_frames) * 640], n_mels=16, window=8, num_frames=clip_frames)
        np.testing.assert_array_equal(feats[t], ref[t - s])
    # whole-file standardisation (norm="file") is a different function of the audio
    whole = log_mel_features(wave, n_mels=16, window=8, num_frames=t_len)
    assert np.abs(whole - feats).max() > 0.1
    np.testing.assert_array_equal(
        audio_features(wave, num_frames=t_len, n_mels=16, audio_window=8, clip_frames=clip_frames, norm="file"),
        whole)


def test_any_rate_and_layout_becomes_16k_mono_of_the_same_duration(media, tmp_path):
    from pftray.pipeline import load_audio, num_video_frames

    w16, dur16 = load_audio(media["wav"])
    assert w16.dtype == np.float32 and w16.ndim == 1 and w16.size == 11_680 and dur16 == pytest.approx(0.73)
    w44, dur44 = load_audio(media["m4a"])  # AAC pads its last frame: the container's duration is the truth
    assert dur44 == pytest.approx(1.05, abs=1e-3) and w44.size == pytest.approx(16_800, abs=2)
    assert num_video_frames(dur16) == 18 and num_video_frames(dur44) == 26  # round(0.73*25), round(1.05*25)
    # the down-mix is the channel mean and the resampling keeps the pitch: a 440 Hz tone stays at 440 Hz
    t = np.arange(44_100) / 44_100
    tone = np.stack([0.5 * np.sin(2 * np.pi * 440 * t), 0.1 * np.sin(2 * np.pi * 440 * t)]).astype(np.float32)
    w, dur = load_audio(write_audio(tmp_path / "tone.wav", tone, 44_100, codec="pcm_s16le"))
    assert dur == pytest.approx(1.0) and w.size == 16_000
    spec = np.abs(np.fft.rfft(w * np.hanning(w.size)))
    assert np.argmax(spec) == pytest.approx(440, abs=1)  # 1 Hz bins
    assert np.abs(w[2000:-2000]).max() == pytest.approx(0.3, abs=0.01)  # mean of 0.5 and 0.1


def test_pose_tracks_are_cut_or_played_back_and_forth():
    from pftray.errors import InputError
    from pftray.pipeline import fit_track, make_pose

    track = np.arange(4, dtype=np.float32)[:, None].repeat(4, axis=1)
    np.testing.assert_array_equal(fit_track(track, 3)[:, 0], [0, 1, 2])
    np.testing.assert_array_equal(fit_track(track, 11)[:, 0], [0, 1, 2, 3, 2, 1, 0, 1, 2, 3, 2])
    np.testing.assert_array_equal(fit_track(track[:1], 3)[:, 0], [0, 0, 0])
    assert not make_pose(None, 7).any() and make_pose(None, 7).shape == (7, 4)
    with pytest.raises(InputError, match=r"\[N, 4\]"):
        make_pose(np.zeros((5, 3)), 7)


# --------------------------------------------------------------------------------------------- generation


def test_cli_generates_an_mp4_as_long_as_the_audio(gen_run, media, tmp_path, capsys):
    from pftray.cli import main

    out = tmp_path / "out" / "client0.mp4"
    rc = main(["generate", str(gen_run), "--client", "0", "--audio", str(media["wav"]), "--out", str(out),
               "--steps", "1", "--seed", "3"])
    assert rc == 0, capsys.readouterr().err
    assert "18 frames" in capsys.readouterr().out
    facts = _mp4_facts(out)
    assert facts["frames"].shape == (18, 32, 32, 3)  # the run's resolution
    assert facts["fps"] == 25.0
    assert abs(len(facts["frames"]) / facts["fps"] - 0.73) <= FRAME_S
    assert facts["audio_streams"] == 1 and facts["sample_rate"] == 16_000
    assert abs(facts["audio_duration_s"] - 0.73) <= FRAME_S
    assert [p.name for p in out.parent.iterdir()] == ["client0.mp4"]  # no temporary file left


def test_a_photo_and_a_44k_stereo_m4a(gen_run, media, tmp_path, capsys):
    _faces_or_skip()
    from pftray.cli import main

    out = tmp_path / "photo.mp4"
    rc = main(["generate", str(gen_run), "--reference", str(media["astronaut"]), "--audio", str(media["m4a"]),
               "--out", str(out), "--steps", "1"])
    assert rc == 0, capsys.readouterr().err
    facts = _mp4_facts(out)
    assert facts["frames"].shape == (26, 32, 32, 3)
    assert abs(len(facts["frames"]) / 25 - 1.05) <= FRAME_S
    assert facts["audio_streams"] == 1 and abs(facts["audio_duration_s"] - 1.05) <= FRAME_S


def test_a_photo_is_face_cropped_to_the_runs_resolution():
    _faces_or_skip()
    from skimage.data import astronaut

    from pftray.data import facetrack
    from pftray.pipeline import crop_face

    img = astronaut()
    crop = crop_face(img, 32)
    assert crop.shape == (32, 32, 3) and crop.dtype == np.uint8
    # the crop is the face's square, not the whole photo: it matches the face box region, not a resized photo
    det = facetrack.detect_faces([img])
    box = facetrack.crop_boxes(det.boxes[:1], img.shape[:2])[0]
    side = box[2] - box[0]
    assert box[3] - box[1] == pytest.approx(side) and side < 0.8 * min(img.shape[:2])
    np.testing.assert_array_equal(crop, facetrack.crop_frame(img, box, 32))
    whole = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(img).resize((32, 32)))
    assert np.abs(crop.astype(int) - whole.astype(int)).mean() > 10


def test_same_seed_same_frames_and_batching_does_not_change_them(pipes):
    pipe = pipes["client0"]
    wave = speech_like(0.48, 16_000)[0]
    a = pipe(wave, steps=2, seed=5)
    b = pipe(wave, steps=2, seed=5, batch_frames=3)  # frames are denoised independently: batches are exact
    c = pipe(wave, steps=2, seed=6)
    assert a.frames.shape == (12, 32, 32, 3) and a.audio.shape == (12 * 640,)
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 1
    assert np.abs(a.frames.astype(int) - c.frames.astype(int)).mean() > 1.0
    np.testing.assert_array_equal(a.reference, pipe.reference)


def test_a_client_uses_its_own_adapter_and_a_new_person_a_zero_one(gen_run, pipes, tmp_path):
    from pftray.fed.client import ClientState
    from pftray.pipeline import TalkingHeadPipeline

    stored = ClientState.load(gen_run / "clients" / "0" / "r1.pt").identity
    used = pipes["client0"].identity_state
    assert set(used) == set(stored)
    for k in stored:
        torch.testing.assert_close(used[k], stored[k])
    b_keys = [k for k in used if ".lora_B." in k]
    assert b_keys and max(float(used[k].abs().max()) for k in b_keys) > 0  # trained: B moved off zero
    assert all(float(pipes["new"].identity_state[k].abs().max()) == 0 for k in b_keys)

    # a client whose identity adapter is large enough to show: its frames differ from the neutral adapter's
    # with the same reference, audio, pose and seed
    run = tmp_path / "run"
    shutil.copytree(gen_run, run)
    state = ClientState.load(run / "clients" / "0" / "r1.pt")
    state.identity = {k: v * 300 if ".lora_B." in k else v for k, v in state.identity.items()}
    state.save(run / "clients" / "0" / "r1.pt")
    strong = TalkingHeadPipeline.from_run(run, client=0)
    wave = speech_like(0.3, 16_000)[0]
    ref = strong.reference
    mine = strong(wave, steps=2, seed=1)
    neutral = pipes["new"](wave, reference=ref, crop_reference=False, steps=2, seed=1)
    same_as_new = pipes["new"](wave, reference=ref, crop_reference=False, steps=2, seed=1)
    np.testing.assert_array_equal(neutral.frames, same_as_new.frames)
    assert np.abs(mine.frames.astype(int) - neutral.frames.astype(int)).mean() > 1.0


def test_pose_from_a_driving_video_follows_the_head(tmp_path):
    """A video of the astronaut photo rotated in the image plane: the pose track's roll follows the rotation."""
    _faces_or_skip()
    from PIL import Image
    from skimage.data import astronaut

    from pftray.evaluation.video import write_mp4
    from pftray.pipeline import pose_from_video

    img = Image.fromarray(astronaut())  # 512 px, the face about 100 px
    angles = np.array([-12, -6, 0, 6, 12, 6], float)  # PIL rotates counter-clockwise for positive angles
    video = np.stack([np.asarray(img.rotate(a, resample=Image.Resampling.BILINEAR)) for a in angles])
    path = write_mp4(tmp_path / "drive.mp4", video)
    pose = pose_from_video(path, 9)
    assert pose.shape == (9, 4) and pose.dtype == np.float32 and np.isfinite(pose).all()
    assert np.abs(pose[:, :3]).max() <= 1.0 and (pose[:, 3] >= 0).all() and (pose[:, 3] <= 1).all()
    roll = pose[:6, 2]
    assert np.corrcoef(roll, angles)[0, 1] < -0.9  # roll > 0 is clockwise as displayed
    assert np.median(roll) == pytest.approx(0.0, abs=1e-6)  # relative to the driving head's median pose
    np.testing.assert_array_equal(pose[6:, 2], pose[[4, 3, 2], 2])  # played back after the end


# ------------------------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("case", ["missing_audio", "no_audio_stream", "not_media", "no_face", "unknown_client",
                                  "missing_run", "no_identity_source"])
def test_bad_input_is_one_line_exit_2_and_no_file(case, gen_run, media, tmp_path, capsys):
    from pftray.cli import main

    if case == "no_face":
        _faces_or_skip()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.mp4"
    run, who, audio = str(gen_run), ["--client", "1"], str(media["wav"])
    expect = {"missing_audio": "no such file", "no_audio_stream": "no audio stream", "not_media": "cannot decode",
              "no_face": "no face",
              "unknown_client": "not a client of the run", "missing_run": "not a pftray run directory",
              "no_identity_source": "one of the arguments --client --reference is required"}[case]
    if case == "missing_audio":
        audio = str(tmp_path / "nope.wav")
    elif case == "no_audio_stream":
        audio = str(media["silent_video"])
    elif case == "not_media":
        audio = str(tmp_path / "notes.wav")
        Path(audio).write_text("not a sound file\n")
    elif case == "no_face":
        who = ["--reference", str(media["grey"])]
    elif case == "unknown_client":
        who = ["--client", "7"]
    elif case == "missing_run":
        run = str(tmp_path / "no-run")
    argv = ["generate", run, *who, "--audio", audio, "--out", str(out), "--steps", "1"]
    if case == "no_identity_source":
        argv = ["generate", run, "--audio", audio, "--out", str(out)]
        with pytest.raises(SystemExit) as exc:
            main(argv)
        rc = exc.value.code
    else:
        rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and expect in lines[0], err
    assert lines[0].startswith("pftray")
    assert list(out_dir.iterdir()) == []  # neither the mp4 nor a temporary file


def test_a_missing_round_is_an_input_error(gen_run, media, tmp_path, capsys):
    from pftray.cli import main

    out = tmp_path / "x.mp4"
    rc = main(["generate", str(gen_run), "--client", "0", "--audio", str(media["wav"]), "--out", str(out),
               "--round", "9"])
    err = capsys.readouterr().err
    assert rc == 2 and "round 9" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_manual_check_material_is_located_relative_to_the_repo():
    """The real-speech file of the manual check lives next to the repository; the tests never need it."""
    here = Path(__file__).resolve().parents[2]
    speech = here.parent / "shared" / "data" / "real-faces" / "audio" / "speech_radio34.wav"
    if not speech.exists():
        pytest.skip("real-faces data absent")
    from pftray.pipeline import load_audio

    wave, dur = load_audio(speech)
    assert dur == pytest.approx(8.0, abs=0.05) and wave.ndim == 1 and np.abs(wave).max() > 0.05

"""Synthetic talking heads: determinism, contracts, lip sync, the mouth estimator, corruptions."""

import dataclasses
import time

import numpy as np
import pytest

from pftray.data.audio import frame_energy
from pftray.data.synthetic import (
    corrupt_clip,
    estimate_mouth_openness,
    reference_frame,
    render_clip,
    render_frames,
    sample_identity,
)
from pftray.data.types import Clip, DataError


def _clip(index=0, *, frames=16, res=32, seed=0, stream="client"):
    return render_clip(sample_identity(0, index, stream=stream), num_frames=frames, resolution=res, seed=seed)


def _arrays(c: Clip):
    return [c.frames, c.audio, c.audio_feats, c.pose, c.mouth, c.mouth_box]


def test_shapes_dtypes_and_ranges():
    for res in (32, 64, 128):
        c = _clip(frames=8, res=res)
        c.validate()
        assert c.frames.shape == (8, res, res, 3) and c.frames.dtype == np.uint8
        assert c.audio.shape == (8 * 640,) and c.audio.dtype == np.float32
        assert c.audio_feats.shape == (8, 16, 32) and c.audio_feats.dtype == np.float32
        assert c.pose.shape == (8, 4) and c.mouth.shape == (8,) and c.mouth_box.dtype == np.int32
        assert np.abs(c.pose[:, :3]).max() <= 1 and c.pose[:, 3].min() >= 0 and c.pose[:, 3].max() <= 1
        assert c.mouth.min() >= 0 and c.mouth.max() <= 1
        b = c.mouth_box
        assert np.all((b[:, 0] < b[:, 1]) & (b[:, 2] < b[:, 3])) and b.min() >= 0 and b.max() <= res
    c = render_clip(sample_identity(0, 0), num_frames=4, resolution=32, seed=0, n_mels=20, audio_window=8)
    assert c.audio_feats.shape == (4, 8, 20)


def test_determinism_and_seed_sensitivity():
    a, b, c = _clip(seed=3), _clip(seed=3), _clip(seed=4)
    for x, y in zip(_arrays(a), _arrays(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a.audio, c.audio)
    assert not np.array_equal(a.frames, c.frames)
    assert not np.array_equal(a.mouth, c.mouth)


def test_identities_differ_and_streams_are_disjoint():
    ids = [sample_identity(0, k) for k in range(20)]
    assert sample_identity(0, 5) == ids[5]
    for field in (
        "face_axes",
        "skin",
        "hair",
        "lip",
        "background",
        "eye_spacing",
        "mouth_width",
        "f0",
        "speaking_rate",
    ):
        values = [getattr(p, field) for p in ids]
        assert len(set(values)) == len(values), field
    assert all(90 <= p.f0 <= 250 and 2.5 <= p.speaking_rate <= 6 for p in ids)
    pub = sample_identity(0, 3, stream="public")
    assert pub.name == "pub-3" and ids[3].name == "client-3"
    assert dataclasses.replace(pub, name="client-3") != ids[3]
    assert sample_identity(1, 3) != ids[3]
    # Identity is visible: reference frames of different identities differ substantially.
    refs = [reference_frame(p, 32).astype(float) for p in ids[:5]]
    assert min(np.abs(refs[i] - refs[j]).mean() for i in range(5) for j in range(i)) > 5


def test_reference_is_neutral_and_not_a_clip_frame():
    ident = sample_identity(0, 2)
    ref = reference_frame(ident, 64)
    frames, box = render_frames(ident, pose=np.zeros((1, 4)), mouth=np.zeros(1), resolution=64)
    np.testing.assert_array_equal(ref, frames[0])
    assert estimate_mouth_openness(ref[None], box)[0] < 0.01
    c = render_clip(ident, num_frames=16, resolution=64, seed=0)
    assert all(not np.array_equal(ref, f) for f in c.frames)


def test_audio_features_track_mouth_on_clean_clips_and_not_on_offset():
    rng = np.random.default_rng(0)
    clean, offset = [], []
    for k in range(4):
        c = _clip(k, frames=100, seed=k)
        clean.append(np.corrcoef(frame_energy(c.audio_feats), c.mouth)[0, 1])
        o = corrupt_clip(c, "offset", rng)
        offset.append(np.corrcoef(frame_energy(o.audio_feats), o.mouth)[0, 1])
    assert min(clean) > 0.7, clean
    assert np.mean(offset) < np.mean(clean) - 0.4, (clean, offset)


def test_mouth_opening_is_a_function_of_audio_energy():
    # Openness is the frame-mean envelope; the audio is 0.3 * envelope * unit-power source + small noise.
    c = _clip(1, frames=60, seed=5)
    rms = np.sqrt((c.audio.reshape(60, 640).astype(np.float64) ** 2).mean(axis=1))
    assert np.corrcoef(rms, c.mouth)[0, 1] > 0.95
    silent = c.mouth < 0.02
    if silent.any():
        assert rms[silent].max() < 0.03


def test_mouth_estimator_correlates_with_truth_and_is_constant_on_frozen_frames():
    for res in (32, 64):
        for k in range(3):
            c = _clip(k, frames=60, res=res, seed=10 + k)
            est = estimate_mouth_openness(c.frames, c.mouth_box)
            assert est.shape == (60,) and est.dtype == np.float32
            assert np.corrcoef(est, c.mouth)[0, 1] > 0.9
    c = _clip(0, frames=30, res=64, seed=1)
    still = np.repeat(c.frames[np.argmax(c.mouth)][None], 30, axis=0)
    est = estimate_mouth_openness(still, np.repeat(c.mouth_box[:1], 30, axis=0))
    assert np.ptp(est) == 0 and est[0] > 0.05
    # Float frames in [0, 1] and [-1, 1] give the same estimate as uint8.
    f = c.frames.astype(np.float32) / 255.0
    np.testing.assert_allclose(
        estimate_mouth_openness(f, c.mouth_box), estimate_mouth_openness(c.frames, c.mouth_box), atol=1e-5
    )
    np.testing.assert_allclose(
        estimate_mouth_openness(2 * f - 1, c.mouth_box, value_range=(-1, 1)),
        estimate_mouth_openness(c.frames, c.mouth_box),
        atol=1e-5,
    )


def test_mouth_box_contains_the_mouth_interior():
    c = _clip(4, frames=40, res=64, seed=2)
    t = int(np.argmax(c.mouth))
    y0, y1, x0, x1 = c.mouth_box[t]
    luma = c.frames[t].astype(float) @ [0.299, 0.587, 0.114]
    dark = luma < 40
    inside = dark[y0:y1, x0:x1].sum()
    # Every very dark pixel near the box belongs to the mouth, which lies fully inside the box.
    ring = dark[max(0, y0 - 3) : y1 + 3, max(0, x0 - 3) : x1 + 3].sum()
    assert inside > 3 and inside == ring


def test_pose_moves_the_face_and_blinks_close_the_eyes():
    ident = sample_identity(0, 1)
    pose = np.zeros((3, 4), np.float32)
    pose[1, 0] = 0.8  # yaw
    pose[2, 3] = 1.0  # blink
    frames, boxes = render_frames(ident, pose=pose, mouth=np.zeros(3), resolution=64)
    assert boxes[1, 2] > boxes[0, 2]  # yaw moves the mouth to the right
    diff = np.abs(frames[2].astype(int) - frames[0].astype(int)).sum(-1)
    rows = np.nonzero(diff.max(axis=1) > 30)[0]
    assert rows.size > 0 and rows.max() < boxes[0, 0]  # blink only changes pixels above the mouth


def test_corruptions():
    rng = np.random.default_rng(0)
    c = _clip(0, frames=32, seed=1)
    before = [a.copy() for a in _arrays(c)]
    o = corrupt_clip(c, "offset", rng)
    shifts = [s for s in range(-8, 9) if np.array_equal(np.roll(c.audio_feats, s, axis=0), o.audio_feats)]
    assert len(shifts) == 1 and 3 <= abs(shifts[0]) <= 8
    np.testing.assert_array_equal(o.audio, np.roll(c.audio, shifts[0] * 640))
    np.testing.assert_array_equal(o.frames, c.frames)
    np.testing.assert_array_equal(o.mouth, c.mouth)
    n = corrupt_clip(c, "noise", rng)
    assert 30 < np.std(n.frames.astype(float) - c.frames.astype(float)) < 90
    np.testing.assert_array_equal(n.audio, c.audio)
    f = corrupt_clip(c, "frozen", rng)
    repeats = np.mean([np.array_equal(f.frames[t], f.frames[t - 1]) for t in range(1, 32)])
    assert repeats >= 0.4
    np.testing.assert_array_equal(f.audio, c.audio)
    same = [t for t in range(1, 32) if np.array_equal(f.frames[t], f.frames[t - 1])]
    assert all(f.mouth[t] == f.mouth[t - 1] for t in same)  # labels follow the frozen video
    for x, y in zip(before, _arrays(c)):
        np.testing.assert_array_equal(x, y)  # the input clip is untouched
    with pytest.raises(ValueError, match="kind"):
        corrupt_clip(c, "blur", rng)


def test_validation_errors():
    with pytest.raises(ValueError, match="resolution"):
        _clip(res=40)
    with pytest.raises(ValueError, match="stream"):
        sample_identity(0, 0, stream="private")
    c = _clip(frames=4)
    bad = dataclasses.replace(c, mouth=c.mouth.astype(np.float64))
    with pytest.raises(DataError, match="mouth"):
        bad.validate()


def test_render_speed():
    ident = sample_identity(0, 0)
    render_clip(ident, num_frames=16, resolution=64, seed=0)
    t0 = time.perf_counter()
    for s in range(5):
        render_clip(ident, num_frames=16, resolution=64, seed=s)
    per_clip = (time.perf_counter() - t0) / 5
    pose = np.zeros((16, 4), np.float32)
    t0 = time.perf_counter()
    for _ in range(5):
        render_frames(ident, pose=pose, mouth=np.full(16, 0.5), resolution=64)
    per_render = (time.perf_counter() - t0) / 5
    print(f"16x64x64: render_frames {per_render * 1e3:.1f} ms, full render_clip {per_clip * 1e3:.1f} ms")


def test_preview_grid_layout():
    from pftray.data.preview import preview_grid

    grid = preview_grid(num_identities=2, num_frames=10, stride=5, resolution=32)
    assert grid.shape == (64, 4 * 32, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[:32, :32], reference_frame(sample_identity(0, 0), 32))
    assert (grid[:32, 96:128] == 255).all(axis=-1).sum() > 10  # the outlined mouth box


def test_ellipse_coverage_is_area_accurate_and_has_no_streaks():
    from pftray.data.synthetic import _ellipse

    px = 2.0 / 256
    c = (np.arange(256) + 0.5) * px - 1.0
    v, u = np.meshgrid(c, c, indexing="ij")
    for a, b in ((0.5, 0.5), (0.6, 0.2), (0.3, 0.05)):
        area = _ellipse(u, v, 0.013, -0.021, a, b, px).sum() * px * px
        assert area == pytest.approx(np.pi * a * b, rel=0.01)
    # A very thin ellipse (the closed-mouth line): no coverage more than half a pixel outside its box.
    thin = _ellipse(u, v, 0.0, 0.0, 0.4, 0.2 * px, px)
    outside = (np.abs(u) > 0.4 + 0.5 * px) | (np.abs(v) > 0.2 * px + 0.5 * px)
    assert thin[outside].max() == 0
    assert thin.sum() * px * px == pytest.approx(np.pi * 0.4 * 0.2 * px, rel=0.2)  # sub-pixel: coarser

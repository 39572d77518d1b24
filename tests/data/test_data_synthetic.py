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
        corrupt_clip(c, "smudge", rng)


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


# ------------------------------------------------------------------ the "shifted" scenario (issue #13)

_FED = dict(num_clients=6, clips_per_client=2, heldout_clips=1, frames_per_clip=16, resolution=32, seed=3)


def _luma(frames):
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _teeth_distance(patch, rgb):
    """Smallest max-channel distance (grey levels) of a pixel of ``patch`` to the teeth colour ``rgb`` in [0, 1]."""
    return np.abs(patch.astype(np.float64) - 255 * np.asarray(rgb)).max(axis=-1).min()


def test_severity_zero_is_bit_for_bit_the_iid_data_and_consumes_no_randomness():
    from pftray.data.partition import make_client, make_public_clips
    from pftray.data.synthetic import sample_shift

    assert sample_shift(3, 0, 0.0) is None
    kw = dict(_FED, quantity_skew=0.5, unreliable_fraction=0.5, unreliable_kinds=("offset", "noise", "frozen"))
    for k in range(_FED["num_clients"]):
        old, new = make_client(k, **kw), make_client(k, **kw, shift_severity=0.0)
        assert old == new  # exact: metadata, reference, every array of every clip, and the extras
        assert all(c.extras == {} for c in new.train + new.heldout)
    # The default kinds are still the original three: the unreliable clients of an old run get the old data.
    default = [make_client(k, **_FED, quantity_skew=0.5, unreliable_fraction=0.5) for k in range(6)]
    assert default == [make_client(k, **kw) for k in range(6)]
    assert {c.unreliable for c in default} == {None, "offset", "noise", "frozen"}
    # render_clip without the new argument and with shift=None are the same call.
    ident = sample_identity(3, 1)
    a = render_clip(ident, num_frames=8, resolution=32, seed=[3, 14, 1, 0], supersample=2)
    b = render_clip(ident, num_frames=8, resolution=32, seed=[3, 14, 1, 0], supersample=2, shift=None)
    assert a == b and a.extras == {}
    pub = make_public_clips(num_identities=2, clips_per_identity=1, frames_per_clip=8, resolution=32, seed=3)
    assert all(c.extras == {} for c in pub)


def test_shift_keeps_every_random_stream_and_scales_fixed_traits():
    from pftray.data.synthetic import sample_shift

    ident = sample_identity(0, 2)
    base = render_clip(ident, num_frames=24, resolution=32, seed=7)
    for s in (0.3, 1.0):
        c = render_clip(ident, num_frames=24, resolution=32, seed=7, shift=sample_shift(0, 2, s))
        # audio, features and pose come from the same streams; the rendered mouth is the gained base openness
        for f in ("audio", "audio_feats", "pose"):
            np.testing.assert_array_equal(getattr(c, f), getattr(base, f))
        np.testing.assert_array_equal(c.extras["mouth_base"], base.mouth)
        sh = sample_shift(0, 2, s)
        assert c.extras["mouth_lead"][0] == pytest.approx(1.5 * s) and np.ptp(c.extras["mouth_lead"]) == 0
        ungained = render_clip(ident, num_frames=24, resolution=32, seed=7, shift=dataclasses.replace(sh, mouth_gain=1.0))
        g = c.extras["mouth_gain"]
        np.testing.assert_allclose(c.mouth, np.clip(g * ungained.mouth, 0, 1), atol=1e-6)
        c.validate()
    # The shared lead: with a lead of exactly one frame the mouth shows the next frame's audio openness.
    one = dataclasses.replace(sample_shift(0, 2, 1.0), mouth_gain=1.0, mouth_lead=1.0)
    led = render_clip(ident, num_frames=24, resolution=32, seed=7, shift=one)
    np.testing.assert_array_equal(led.mouth[:-1], base.mouth[1:])
    # and at severity 1 (1.5 frames) the mouth correlates better with the audio ahead than with the audio now
    long = [render_clip(sample_identity(0, k), num_frames=100, resolution=32, seed=k, shift=sample_shift(0, k, 1.0))
            for k in range(3)]
    rms = [np.sqrt((c.audio.reshape(100, 640).astype(np.float64) ** 2).mean(axis=1)) for c in long]
    now = np.mean([np.corrcoef(r, c.mouth)[0, 1] for r, c in zip(rms, long)])
    ahead = np.mean([np.corrcoef(r[1:], c.mouth[:-1])[0, 1] for r, c in zip(rms, long)])
    assert ahead > now + 0.05, (ahead, now)
    # One client keeps its traits at every severity, scaled by it: ln g is linear in s.
    for k in range(5):
        g_half, g_one = sample_shift(0, k, 0.5).mouth_gain, sample_shift(0, k, 1.0).mouth_gain
        assert np.log(g_half) == pytest.approx(np.log(g_one) / 2, rel=1e-9)
        assert 0.63 < g_one < 1.58
    with pytest.raises(ValueError, match="severity"):
        sample_shift(0, 0, 1.5)
    with pytest.raises(ValueError, match="severity"):
        sample_shift(0, 0, -0.1)


def test_shared_shift_is_in_the_ground_truth_and_the_pixels_and_grows_with_severity():
    from pftray.data.synthetic import sample_shift

    ident = sample_identity(0, 1)
    base = render_clip(ident, num_frames=40, resolution=64, seed=1)
    inside = []
    for s in (0.25, 0.5, 1.0):
        # teeth only (gain 1, no lead) so that the same mouth motion is compared
        sh = dataclasses.replace(sample_shift(0, 1, s), mouth_gain=1.0, mouth_lead=0.0)
        c = render_clip(ident, num_frames=40, resolution=64, seed=1, shift=sh)
        np.testing.assert_array_equal(c.mouth, base.mouth)
        box, area = c.extras["shift_box"], c.extras["shift_area"]
        assert box.shape == (40, 4) and box.dtype == np.int32 and area.shape == (40,) and area.dtype == np.float32
        has = box[:, 1] > box[:, 0]
        # teeth exactly where the mouth is open (visibly), none when it is closed
        assert np.all(has[c.mouth > 0.2]) and not np.any(has[c.mouth == 0]) and np.all((area > 0) == has)
        assert np.all(box[~has] == 0)
        diff = np.abs(c.frames.astype(int) - base.frames.astype(int)).max(axis=-1)
        per = []
        for t in range(40):
            y0, y1, x0, x1 = box[t]
            my0, my1, mx0, mx1 = c.mouth_box[t]
            if has[t]:
                assert my0 <= y0 and y1 <= my1 and mx0 <= x0 and x1 <= mx1  # the teeth lie in the mouth box
                per.append(np.abs(c.frames[t, y0:y1, x0:x1].astype(float) - base.frames[t, y0:y1, x0:x1]).mean())
            diff[t, y0:y1, x0:x1] = 0
        assert diff.max() == 0  # nothing changes outside the shift boxes
        inside.append(np.mean(per))
    # mean |difference| in the shift region: ~16, 33, 57 grey levels, linear in the severity
    assert inside[0] > 8 and inside[2] > 40, inside
    assert inside[0] < inside[1] < inside[2] and inside[2] / inside[0] == pytest.approx(4, rel=0.25), inside
    # the teeth are bright where the i.i.d. mouth interior is dark
    t = int(np.argmax(base.mouth))
    y0, y1, x0, x1 = c.extras["shift_box"][t]
    rgb = c.extras["teeth_rgb"][t]
    assert _teeth_distance(c.frames[t, y0:y1, x0:x1], rgb) < 6 < 30 < _teeth_distance(base.frames[t, y0:y1, x0:x1], rgb)
    assert _luma(c.frames[t, y0:y1, x0:x1]).mean() > _luma(base.frames[t, y0:y1, x0:x1]).mean() + 25
    # the teeth stay below the skin's brightness (so the mouth estimator keeps working) ...
    assert _luma(255 * c.extras["teeth_rgb"][0]) <= _luma(255 * np.array(ident.skin)) + 1e-6
    # ... which it does: its correlation with the shown openness stays high on shifted clips
    from pftray.data.synthetic import sample_shift as shift_of

    for k in range(4):
        x = render_clip(sample_identity(0, k), num_frames=60, resolution=64, seed=k, shift=shift_of(0, k, 1.0))
        assert np.corrcoef(estimate_mouth_openness(x.frames, x.mouth_box), x.mouth)[0, 1] > 0.93


def test_per_client_traits_differ_between_clients_are_constant_within_and_invisible_in_the_reference():
    from pftray.data.partition import make_synthetic_federation

    fed = make_synthetic_federation(**_FED, shift_severity=1.0)
    iid = make_synthetic_federation(**_FED)
    gains, teeth = [], []
    for c, c0 in zip(fed, iid):
        clips = c.train + c.heldout
        g = np.concatenate([x.extras["mouth_gain"] for x in clips])
        rgb = np.concatenate([x.extras["teeth_rgb"] for x in clips])
        assert np.ptp(g) == 0 and np.ptp(rgb, axis=0).max() == 0  # constant within the client
        gains.append(g[0])
        teeth.append(rgb[0])
        np.testing.assert_array_equal(c.reference, c0.reference)  # the reference (mouth closed) reveals nothing
        for x in clips:
            assert set(x.extras) == {"mouth_base", "mouth_lead", "mouth_gain", "teeth_rgb", "shift_box", "shift_area"}
            x.validate()
    gains, teeth = np.array(gains), np.array(teeth)
    assert min(abs(a - b) for i, a in enumerate(gains) for b in gains[:i]) > 1e-3
    assert gains.max() / gains.min() > 1.5
    assert min(np.abs(a - b).max() for i, a in enumerate(teeth) for b in teeth[:i]) > 0.02
    # The gain is visible in the pixels: estimated openness per unit of audio openness grows with the gain.
    from pftray.data.synthetic import sample_shift

    slopes = []
    for k in (int(np.argmin(gains)), int(np.argmax(gains))):
        sh = sample_shift(3, k, 1.0)
        c = render_clip(sample_identity(3, k), num_frames=60, resolution=64, seed=9, shift=sh)
        audio_open = render_clip(sample_identity(3, k), num_frames=60, resolution=32, seed=9,
                                 shift=dataclasses.replace(sh, mouth_gain=1.0)).mouth  # lead, no gain
        est = estimate_mouth_openness(c.frames, c.mouth_box)
        slopes.append(np.polyfit(audio_open, est, 1)[0])
    assert slopes[1] > 1.3 * slopes[0], slopes


def test_public_clips_have_no_shift():
    from pftray.data.partition import _PUBLIC, make_public_clips
    from pftray.data.synthetic import sample_shift

    pub = make_public_clips(num_identities=3, clips_per_identity=1, frames_per_clip=40, resolution=64, seed=0)
    for i, clip in enumerate(pub):
        assert clip.extras == {}
        # where a shifted render of the same identity and motion shows teeth, the public clip is dark interior
        ident = sample_identity(0, i, stream="public")
        sh = dataclasses.replace(sample_shift(0, i, 1.0, identity=ident), mouth_gain=1.0, mouth_lead=0.0)
        shifted = render_clip(ident, num_frames=40, resolution=64, seed=[0, _PUBLIC, i, 0], shift=sh)
        np.testing.assert_array_equal(shifted.audio, clip.audio)
        open_ = np.nonzero(clip.mouth > 0.5)[0]
        assert open_.size > 2
        for t in open_:
            y0, y1, x0, x1 = shifted.extras["shift_box"][t]
            assert _luma(clip.frames[t, y0:y1, x0:x1]).mean() + 15 < _luma(shifted.frames[t, y0:y1, x0:x1]).mean()


def _env_corr(c):
    rms = np.sqrt((c.audio.reshape(c.num_frames, 640).astype(np.float64) ** 2).mean(axis=1))
    return np.corrcoef(rms, c.mouth)[0, 1]


def test_heavy_offset_and_swapped_audio_break_the_audio_mouth_link():
    from pftray.data.audio import log_mel_features

    rng = np.random.default_rng(0)
    clean, heavy, swapped = [], [], []
    for k in range(6):
        c = _clip(k, frames=100, seed=20 + k)
        clean.append(_env_corr(c))
        h = corrupt_clip(c, "heavy_offset", rng)
        lags = [s for s in range(100) if np.array_equal(np.roll(c.audio_feats, s, axis=0), h.audio_feats)]
        assert len(lags) == 1 and 40 <= lags[0] <= 60, lags
        np.testing.assert_array_equal(h.audio, np.roll(c.audio, lags[0] * 640))
        np.testing.assert_array_equal(h.frames, c.frames)
        heavy.append(_env_corr(h))
        s = corrupt_clip(c, "swapped_audio", rng)
        for f in ("frames", "mouth", "pose", "mouth_box"):
            np.testing.assert_array_equal(getattr(s, f), getattr(c, f))
        assert s.audio.shape == c.audio.shape and s.audio.dtype == np.float32
        assert s.audio_feats.shape == c.audio_feats.shape and s.audio_feats.dtype == np.float32
        np.testing.assert_array_equal(s.audio_feats, log_mel_features(s.audio, num_frames=100))
        assert not np.allclose(s.audio, c.audio)
        swapped.append(_env_corr(s))
        s.validate()
    assert min(clean) > 0.9, clean
    assert np.mean(np.abs(swapped)) < 0.25 and max(swapped) < 0.5, swapped
    assert np.mean(heavy) < 0.3, heavy
    short = corrupt_clip(_clip(frames=16), "heavy_offset", rng)  # 16 frames: a lag of 7-9 frames
    c16 = _clip(frames=16)
    lags = [s for s in range(16) if np.array_equal(np.roll(c16.audio_feats, s, axis=0), short.audio_feats)]
    assert len(lags) == 1 and 7 <= lags[0] <= 9


def test_wrong_identity_shows_another_face_with_the_same_motion():
    from pftray.data.synthetic import sample_shift

    rng = np.random.default_rng(1)
    ident = sample_identity(0, 3)
    ref = reference_frame(ident, 64).astype(float)
    for shift in (None, sample_shift(0, 3, 1.0)):
        c = render_clip(ident, num_frames=40, resolution=64, seed=4, shift=shift)
        w = corrupt_clip(c, "wrong_identity", rng, shift=shift)
        for f in ("audio", "audio_feats", "mouth", "pose"):
            np.testing.assert_array_equal(getattr(w, f), getattr(c, f))
        # the frames are far from the client's own reference, the clean ones close to it
        assert np.abs(w.frames - ref).mean() > 3 * np.abs(c.frames - ref).mean()
        # ... and still move their mouth with the ground truth (the lip-sync labels stay valid)
        assert np.corrcoef(estimate_mouth_openness(w.frames, w.mouth_box), w.mouth)[0, 1] > 0.9
        if shift is not None:
            assert not np.array_equal(w.extras["shift_box"], c.extras["shift_box"])
            dist = []
            for t in np.nonzero(w.mouth > 0.5)[0]:
                y0, y1, x0, x1 = w.extras["shift_box"][t]
                dist.append(_teeth_distance(w.frames[t, y0:y1, x0:x1], w.extras["teeth_rgb"][t]))
            assert min(dist) < 6  # the donor shows the client's teeth
            np.testing.assert_array_equal(w.extras["mouth_gain"], c.extras["mouth_gain"])
            w.validate()
    with pytest.raises(ValueError, match="shift"):
        corrupt_clip(c, "wrong_identity", rng)



def test_channel_swap_shows_bgr_frames_under_the_rgb_reference():
    from pftray.data.synthetic import sample_shift

    ident = sample_identity(0, 5)
    ref = reference_frame(ident, 64).astype(float)
    c = render_clip(ident, num_frames=24, resolution=64, seed=6, shift=sample_shift(0, 5, 1.0))
    w = corrupt_clip(c, "channel_swap", np.random.default_rng(0))
    np.testing.assert_array_equal(w.frames[..., 0], c.frames[..., 2])  # red shows what was blue
    np.testing.assert_array_equal(w.frames[..., 1], c.frames[..., 1])
    np.testing.assert_array_equal(w.frames[..., 2], c.frames[..., 0])
    for f in ("audio", "audio_feats", "mouth", "pose", "mouth_box"):
        np.testing.assert_array_equal(getattr(w, f), getattr(c, f))
    for k, v in c.extras.items():
        np.testing.assert_array_equal(w.extras[k], v)
    # a skin-coloured face (red > blue) no longer matches its reference: every frame is far from it
    assert ref[..., 0].mean() > ref[..., 2].mean() + 20
    assert np.abs(w.frames - ref).mean() > 3 * np.abs(c.frames - ref).mean()
    assert w.frames.flags["C_CONTIGUOUS"] and c.frames[0, 0, 0, 0] == render_clip(
        ident, num_frames=24, resolution=64, seed=6, shift=sample_shift(0, 5, 1.0)).frames[0, 0, 0, 0]
    w.validate()

def _same_except_frames(w, c):
    for f in ("audio", "audio_feats", "mouth", "pose", "mouth_box"):
        np.testing.assert_array_equal(getattr(w, f), getattr(c, f))
    for k, v in c.extras.items():
        np.testing.assert_array_equal(w.extras[k], v)


def test_blur_smears_every_frame_into_a_biased_target():
    from pftray.data.synthetic import sample_shift

    ident = sample_identity(0, 2)
    c = render_clip(ident, num_frames=24, resolution=64, seed=3, shift=sample_shift(0, 2, 1.0))
    w = corrupt_clip(c, "blur", np.random.default_rng(0))
    _same_except_frames(w, c)

    def edges(x):
        x = x.astype(np.float64)
        return (np.diff(x, axis=0) ** 2).mean() + (np.diff(x, axis=1) ** 2).mean()  # gradient energy, [H, W, 3]

    for t in range(24):  # every frame loses most of its edge energy, but not its mean colour
        assert edges(w.frames[t]) < 0.2 * edges(c.frames[t])
        assert np.abs(w.frames[t].astype(float).mean(axis=(0, 1)) - c.frames[t].mean(axis=(0, 1))).max() < 3
    # unlike zero-mean noise, blur biases the target where the model must learn the mouth: the contrast of lips,
    # teeth and mouth interior in the mouth box falls to under half in every frame
    for t in range(24):
        y0, y1, x0, x1 = c.mouth_box[t]
        assert np.ptp(_luma(w.frames[t, y0:y1, x0:x1])) < 0.5 * np.ptp(_luma(c.frames[t, y0:y1, x0:x1]))
    again = corrupt_clip(c, "blur", np.random.default_rng(0))
    np.testing.assert_array_equal(again.frames, w.frames)
    w.validate()


def test_occluded_hides_mouth_and_teeth_in_every_frame_and_nothing_else():
    from pftray.data.synthetic import sample_shift

    ident = sample_identity(0, 4)
    c = render_clip(ident, num_frames=24, resolution=64, seed=5, shift=sample_shift(0, 4, 1.0))
    w = corrupt_clip(c, "occluded", np.random.default_rng(1))
    _same_except_frames(w, c)
    changed = (w.frames != c.frames).any(axis=-1)  # [T, H, W]
    grey = w.frames[0, (c.mouth_box[0, 0] + c.mouth_box[0, 1]) // 2, (c.mouth_box[0, 2] + c.mouth_box[0, 3]) // 2]
    assert 40 <= int(grey[0]) <= 70 and (grey == grey[0]).all()
    for t in range(24):
        y0, y1, x0, x1 = c.mouth_box[t]
        assert (w.frames[t, y0:y1, x0:x1] == grey).all(axis=-1).mean() > 0.6  # the mouth box is mostly the disc
        ys, xs = np.nonzero(changed[t])  # ... and only pixels near the mouth changed
        assert ys.size and ys.min() >= y0 - (y1 - y0) and xs.min() >= x0 - (x1 - x0) and xs.max() < x1 + (x1 - x0)
        if c.extras["shift_area"][t] > 4:  # the teeth the clean frame shows are under the disc
            ty0, ty1, tx0, tx1 = c.extras["shift_box"][t]
            assert (w.frames[t, ty0:ty1, tx0:tx1] == grey).all()
    assert changed.reshape(24, -1).mean(axis=1).max() < 0.1  # a microphone, not a mask over the face
    w.validate()


def test_frozen_extras_follow_the_frozen_frames():
    from pftray.data.synthetic import sample_shift

    c = render_clip(sample_identity(0, 0), num_frames=32, resolution=32, seed=2, shift=sample_shift(0, 0, 1.0))
    f = corrupt_clip(c, "frozen", np.random.default_rng(0))
    same = [t for t in range(1, 32) if np.array_equal(f.frames[t], f.frames[t - 1])]
    assert len(same) >= 12
    for t in same:
        for v in f.extras.values():
            np.testing.assert_array_equal(v[t], v[t - 1])
    f.validate()


def test_unreliable_clients_record_their_kind_and_new_kinds_corrupt_only_training_clips():
    from pftray.data.partition import make_client, make_synthetic_federation, unreliable_assignment
    from pftray.data.types import UNRELIABLE_KINDS

    kinds = ("heavy_offset", "swapped_audio", "wrong_identity")
    kw = dict(_FED, unreliable_fraction=0.5, unreliable_kinds=kinds, shift_severity=0.5)
    fed = make_synthetic_federation(**kw)
    clean = make_synthetic_federation(**{**kw, "unreliable_fraction": 0.0})
    expect = unreliable_assignment(num_clients=6, unreliable_fraction=0.5, unreliable_kinds=kinds, seed=3)
    assert sorted(expect.values()) == sorted(kinds)
    for c, c0 in zip(fed, clean):
        assert c.unreliable == expect.get(c.client_id)
        assert c == make_client(c.client_id, **kw)
        assert c.heldout == c0.heldout  # held-out clips are never corrupted
        assert (c.train == c0.train) == (c.unreliable is None)
        for x, x0 in zip(c.train, c0.train):
            if c.unreliable == "wrong_identity":
                np.testing.assert_array_equal(x.audio, x0.audio)
                assert not np.array_equal(x.frames, x0.frames)
            elif c.unreliable is not None:
                np.testing.assert_array_equal(x.frames, x0.frames)
                assert not np.array_equal(x.audio, x0.audio)
    assert set(kinds) <= set(UNRELIABLE_KINDS)
    with pytest.raises(ValueError, match="unreliable_kinds"):
        make_client(0, **{**kw, "unreliable_kinds": ("smudge",)})
    with pytest.raises(ValueError, match="shift_severity"):
        make_client(0, **{**kw, "shift_severity": 2.0})


def test_shifted_client_round_trips_through_a_shard(tmp_path):
    from pftray.data import load_client_shard, save_client_shard
    from pftray.data.partition import make_client

    c = make_client(1, **_FED, shift_severity=0.7, unreliable_fraction=1.0, unreliable_kinds=("frozen",))
    back = load_client_shard(save_client_shard(c, tmp_path / "client-1.parquet"))
    assert back == c and back.unreliable == "frozen" and back.train[0].extras["shift_box"].dtype == np.int32


def test_config_keys_of_the_scenario_and_the_kinds():
    from pftray import config as cfgmod
    from pftray.config import ConfigError, config_from_dict
    from pftray.data.types import UNRELIABLE_KINDS

    assert cfgmod.UNRELIABLE_KINDS == UNRELIABLE_KINDS
    d = config_from_dict({}).data
    assert d.shift_severity == 0.0 and d.unreliable_kinds == ("offset", "noise", "frozen")
    ok = config_from_dict({"data": {"shift_severity": 0.5, "unreliable_kinds": list(UNRELIABLE_KINDS)}}).data
    assert ok.shift_severity == 0.5 and ok.unreliable_kinds == UNRELIABLE_KINDS
    for data, msg in (
        ({"shift_severity": 1.5}, "data.shift_severity: 1.5 is out of range"),
        ({"shift_severity": -0.1}, "data.shift_severity: -0.1 is out of range"),
        ({"shift_severity": "strong"}, "data.shift_severity: expected a number"),
        ({"unreliable_kinds": ["offset", "swap"]}, "data.unreliable_kinds: 'swap' is not allowed"),
        ({"unreliable_kinds": []}, "data.unreliable_kinds: empty with unreliable_fraction"),
        ({"source": "some/folder", "shift_severity": 0.5}, "data.shift_severity: 0.5 with source"),
    ):
        with pytest.raises(ConfigError, match=msg.replace("(", r"\(")):
            config_from_dict({"data": data})

"""Face metrics with dlib (csim, lmd_face, lmd_mouth, lip_sync_lmk, ISFA's identity scalar) on a real face.

The face is scikit-image's ``astronaut()`` (Eileen Collins), cropped as :mod:`pftray.data.facetrack` crops a
track (1.8 x the HOG box); a different person comes from a frame of the shared real-face clips when present.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from pftray import faces
from pftray.metrics import face as fm
from pftray.metrics.identity import IdentityEmbedder
from pftray.metrics.sync import mouth_sync_correlation

needs_dlib = pytest.mark.skipif(faces.available() is not None, reason=f"dlib face models: {faces.available()}")
REAL_FACES = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-faces"
CROP_MARGIN = 1.8  # facetrack crop side / HOG box side


@functools.lru_cache(maxsize=1)
def _astronaut() -> tuple[np.ndarray, tuple[int, int, int]]:
    """The astronaut image and her face crop's (centre x, centre y, side) from dlib's HOG detection."""
    from skimage import data

    img = data.astronaut()
    boxes = sorted(faces.hog_detector()(img, 1), key=lambda r: r.top())  # her face is the top-most detection
    r = boxes[0]
    side = int(round(CROP_MARGIN * (r.right() - r.left())))
    return img, ((r.left() + r.right()) // 2, (r.top() + r.bottom()) // 2, side)


def _crop(dx: int = 0, dy: int = 0) -> np.ndarray:
    """The face crop with its window moved by (dx, dy): the face moves by (-dx, -dy) inside the crop."""
    img, (cx, cy, side) = _astronaut()
    x0, y0 = cx - side // 2 + dx, cy - side // 2 + dy
    return img[y0 : y0 + side, x0 : x0 + side]


def _t01(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True).clamp(0, 1)


def _other_person(n: int, side: int) -> torch.Tensor:
    """``n`` frames of another real person (the HDTF clip), resized to ``side``; skips without the clip."""
    clip = REAL_FACES / "hdtf_katiehill" / "clip0.mp4"
    if not clip.is_file():
        pytest.skip(f"no second real face here ({clip} absent)")
    import av

    with av.open(str(clip)) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(n), container.decode(video=0))]
    return _resize(_t01(np.stack(frames)), side)


def _mouth_warp(base: np.ndarray, amplitudes: np.ndarray) -> np.ndarray:
    """Frames of ``base`` with the lower lip and jaw pushed down by ``amplitudes`` px (a smooth warp that fades
    out sideways and below the chin): the mouth opens by about that much."""
    lm = fm.predict_landmarks(_t01(base[None]))[0]
    cx, cy = lm[60:68].mean(axis=0)
    width = float(np.linalg.norm(lm[54] - lm[48]))
    h, w = base.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    sideways = np.exp(-0.5 * ((xx - cx) / (0.55 * width)) ** 2)
    below = np.clip((yy - cy) / (0.15 * width), 0, 1)
    chin = np.exp(-0.5 * (np.clip(yy - cy - 0.9 * width, 0, None) / (0.5 * width)) ** 2)
    out = []
    for a in amplitudes:
        src_y = yy - a * sideways * below * chin
        warped = [map_coordinates(base[..., c].astype(np.float64), [src_y, xx], order=1, mode="nearest")
                  for c in range(3)]  # fmt: skip
        out.append(np.clip(np.rint(np.stack(warped, axis=-1)), 0, 255).astype(np.uint8))
    return np.stack(out)


# ------------------------------------------------------------------------------------------------- csim


@needs_dlib
def test_csim_same_face_high_other_face_lower():
    gen = torch.Generator().manual_seed(0)
    gt = _t01(np.stack([_crop(), _crop(0, 1), _crop(1, 0)]))
    moved = _t01(np.stack([_crop(2, 1), _crop(1, 2), _crop(-1, 0)]))
    noisy = (moved + 0.03 * torch.randn(moved.shape, generator=gen)).clamp(0, 1)
    emb = fm.DlibFaceEmbedder()
    assert isinstance(emb, IdentityEmbedder)
    e = emb.embed(gt[:2])
    assert e.shape == (2, 128) and e.dtype == torch.float32
    assert 1.2 < float(e.norm(dim=1).mean()) < 1.7  # dlib's descriptors are not unit vectors
    same = fm.csim(noisy, gt)
    assert same > 0.97
    assert fm.csim(gt[:1], gt[:1]) == pytest.approx(1.0, abs=1e-9)
    small = 64  # generator-sized crops are upsampled before landmarking and embedding
    same_small = fm.csim(_resize(noisy, small), _resize(gt, small), max_frames=2)
    assert same_small > 0.95

    other = _other_person(3, gt.shape[-1])
    diff = fm.csim(other, gt)
    assert diff < 0.92 and diff < same - 0.06  # measured 0.87 vs 0.998
    assert fm.csim(_resize(other, small), _resize(gt, small), max_frames=2) < same_small - 0.06


# -------------------------------------------------------------------------------------------------- lmd


@needs_dlib
def test_lmd_zero_on_identical_and_grows_with_a_known_shift():
    shifts = (0, 2, 4, 8)
    gt_lm = fm.predict_landmarks(_t01(_crop()[None]))
    iod = float(fm.inter_ocular_distance(gt_lm)[0])
    assert 40 < iod < 90  # eye corners about 0.4 of the crop apart
    assert fm.landmark_distance(gt_lm, gt_lm) == 0.0
    face, mouth = [], []
    for s in shifts:
        lm = fm.predict_landmarks(_t01(_crop(-s, 0)[None]))  # the face moves s px to the right
        assert float(np.mean(lm[0, :, 0] - gt_lm[0, :, 0])) == pytest.approx(s, abs=max(0.6, 0.15 * s))
        face.append(fm.landmark_distance(lm, gt_lm))
        mouth.append(fm.landmark_distance(lm, gt_lm, points=fm.MOUTH_POINTS))
    assert face[0] == 0.0 and mouth[0] == 0.0
    assert all(a < b for a, b in zip(face, face[1:])) and all(a < b for a, b in zip(mouth, mouth[1:]))
    for s, f, m in zip(shifts[1:], face[1:], mouth[1:]):  # measured within 10 % of s / IOD
        assert f == pytest.approx(s / iod, rel=0.25)
        assert m == pytest.approx(s / iod, rel=0.25)


def test_landmark_distance_definition():
    g = np.zeros((2, 68, 2))
    g[:, 36] = (10.0, 20.0)
    g[:, 45] = (50.0, 20.0)  # IOD 40
    p = g.copy()
    p[0, 48:68, 1] += 4.0  # frame 0: lips 4 px down
    assert fm.landmark_distance(p, g, points=fm.MOUTH_POINTS) == pytest.approx((4 / 40 + 0) / 2)
    assert fm.landmark_distance(p, g) == pytest.approx((20 * 4 / 68 / 40) / 2)
    bad = g.copy()
    bad[1, 45] = bad[1, 36]
    assert "inter-ocular" in fm.landmark_distance(p, bad).reason
    with pytest.raises(ValueError, match="68, 2"):
        fm.landmark_distance(p[:, :20], g[:, :20])
    with pytest.raises(ValueError, match="differ"):
        fm.landmark_distance(p[:1], g)


# ---------------------------------------------------------------------------------------- lip_sync_lmk


@needs_dlib
def test_lip_sync_lmk_follows_the_mouth_curve():
    t = np.arange(20)
    curve = 5 + 5 * np.sin(2 * np.pi * 2 * t / len(t))  # px of mouth opening
    independent = 5 + 5 * np.sin(2 * np.pi * 3 * t / len(t))  # orthogonal to `curve` over these frames
    assert abs(np.corrcoef(curve, independent)[0, 1]) < 1e-9
    gt_lm = fm.predict_landmarks(_t01(_mouth_warp(_crop(), curve)))
    # the generated clip: the same mouth motion on a face 1 px off and noised
    gen = torch.Generator().manual_seed(1)
    moved = _t01(_mouth_warp(_crop(1, 1), curve))
    same_lm = fm.predict_landmarks((moved + 0.02 * torch.randn(moved.shape, generator=gen)).clamp(0, 1))
    other_lm = fm.predict_landmarks(_t01(_mouth_warp(_crop(1, 1), independent)))
    from pftray.data.landmarks import mouth_ratio

    assert mouth_sync_correlation(mouth_ratio(gt_lm), curve) > 0.9  # the landmarks see the warp
    r_same = fm.lip_sync_landmarks(same_lm, gt_lm)
    r_other = fm.lip_sync_landmarks(other_lm, gt_lm)
    assert r_same >= 0.9
    assert abs(r_other) < 0.35
    frozen = np.repeat(gt_lm[:1], len(t), axis=0)
    assert "constant" in fm.lip_sync_landmarks(frozen, gt_lm).reason  # the `copy` baseline


# ------------------------------------------------------------------------------------- FaceMetrics, ISFA


@needs_dlib
def test_face_metrics_of_a_clip_and_the_ground_truth_cache(monkeypatch):
    gt = _t01(np.stack([_crop(0, i % 2) for i in range(5)]))
    pred = _t01(np.stack([_crop(-3, i % 2) for i in range(5)]))  # face 3 px to the right
    metrics = fm.FaceMetrics(max_embed_frames=2)
    calls = []
    real = fm.face_track
    monkeypatch.setattr(fm, "face_track", lambda x, **kw: calls.append(x.shape[0]) or real(x, **kw))
    out = metrics(pred, gt)
    assert set(out) == set(fm.FACE_METRIC_NAMES)
    assert out["csim"] > 0.95
    iod = float(fm.inter_ocular_distance(fm.predict_landmarks(gt[:1]))[0])
    assert out["lmd_face"] == pytest.approx(3 / iod, rel=0.3)
    assert out["lmd_mouth"] == pytest.approx(3 / iod, rel=0.3)
    assert isinstance(out["lip_sync_lmk"], float) or "constant" in out["lip_sync_lmk"].reason
    again = metrics(gt.clone(), gt)  # same ground-truth tensor: read once
    assert again["lmd_face"] == 0.0 and again["csim"] == pytest.approx(1.0, abs=1e-9)
    assert calls == [5, 5, 5]
    gt.mul_(1.0)  # an in-place change invalidates the cached reading
    metrics(gt, gt)
    assert len(calls) == 5


@needs_dlib
def test_face_metrics_of_a_non_face():
    gt = _t01(np.stack([_crop(0, i % 2) for i in range(3)]))
    out = fm.FaceMetrics(max_embed_frames=2)(torch.full_like(gt, 0.5), gt)
    assert out["csim"] < 0.9  # measured 0.84: dlib's descriptors are not centred, the floor is far above 0
    assert out["lmd_face"] > 0.1 and out["lmd_mouth"] > 0.08  # measured 0.21 / 0.15: the predictor's mean face
    assert "constant generated series" in out["lip_sync_lmk"].reason


@needs_dlib
def test_isfa_identity_consistency_scalar():
    ref = _t01(_crop()[None])
    own = _t01(np.stack([_crop(1, 0), _crop(0, 2), _crop(-2, -1)]))
    s_own = fm.isfa_identity_consistency(own, ref)
    assert 0.97 < s_own <= 1.0
    assert fm.isfa_identity_consistency(ref, ref) == pytest.approx(1.0, abs=1e-9)
    e = fm.descriptors(torch.cat([own, ref]))
    cos = (e[:3] @ e[3]) / (np.linalg.norm(e[:3], axis=1) * np.linalg.norm(e[3]))
    assert s_own == pytest.approx((1 + cos.mean()) / 2, abs=1e-9)  # the client's (1 + cos) / 2 formula
    with pytest.raises(ValueError, match="1 or 3 frames"):
        fm.isfa_identity_consistency(own, torch.cat([ref, ref]))
    other = _other_person(3, own.shape[-1])
    assert fm.isfa_identity_consistency(other, ref) < s_own - 0.03  # measured 0.934 vs 0.999


# ---------------------------------------------------------------------------------------------- missing


@pytest.mark.parametrize("how", ["no-dlib", "empty-models-folder"])
def test_missing_with_reason_without_dlib(monkeypatch, tmp_path, how):
    if how == "no-dlib":
        monkeypatch.setattr(faces, "available", lambda: "dlib is not installed (pip install dlib-bin): test")
        for loader in ("landmark_predictor", "face_embedder"):
            monkeypatch.setattr(faces, loader, lambda: pytest.fail("a model was loaded although dlib is absent"))
        expect = "dlib is not installed"
    else:
        monkeypatch.setenv("PFTRAY_FACE_MODELS", str(tmp_path))
        expect = "not found"
    frames = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = fm.FaceMetrics()(frames, frames)
    assert set(out) == set(fm.FACE_METRIC_NAMES)
    for value in out.values():
        assert isinstance(value, fm.Missing) and expect in value.reason and "dlib face models" in value.reason
    assert expect in fm.DlibFaceEmbedder().embed(frames).reason
    assert expect in fm.csim(frames, frames).reason
    assert expect in fm.isfa_identity_consistency(frames, frames[:1]).reason

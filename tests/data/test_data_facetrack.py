"""Face tracking on scikit-image's astronaut photo moved and zoomed along a known path, and the smoother alone."""

import numpy as np
import pytest
from PIL import Image

from pftray import faces
from pftray.data import facetrack as ft
from pftray.data.landmarks import FACE_FRACTION, landmarks_for_frames

needs_models = pytest.mark.skipif(faces.available() is not None, reason=f"face models: {faces.available()}")
BACKGROUND = (90, 110, 120)


def centre(b: np.ndarray) -> np.ndarray:
    return (b[..., :2] + b[..., 2:]) / 2


def jitter(b: np.ndarray, size: np.ndarray) -> float:
    """Std of the centre's second difference over frames, in face sizes."""
    return float(np.std(np.diff(centre(b), 2, axis=0) / size[1:-1, None]))


@pytest.fixture(scope="module")
def photo():
    """The astronaut photo and its face box (refined detection on the untransformed photo)."""
    skdata = pytest.importorskip("skimage.data")
    img = np.ascontiguousarray(skdata.astronaut())
    det = ft.detect_faces(img[None])
    assert det.found.all()
    return img, det.boxes[0]


def moving_video(img, box0, width, height, *, frames=60, period=60, amp=0.12, zoom=(1.1, 0.2), blank=()):
    """The photo scaled by ``s(t)`` and shifted so its face centre follows a Lissajous path; the true boxes."""
    pil = Image.fromarray(img)
    c0 = centre(box0)
    video, truth = [], []
    for t in range(frames):
        ph = 2 * np.pi * t / period
        s = zoom[0] + zoom[1] * np.sin(ph)
        c = np.array([width / 2 + amp * width * np.cos(ph), height / 2 + 0.7 * amp * height * np.sin(2 * ph)])
        off = c - s * c0  # canvas = s * photo + off
        affine = (1 / s, 0, -off[0] / s, 0, 1 / s, -off[1] / s)
        frame = pil.transform((width, height), Image.Transform.AFFINE, affine, Image.Resampling.BILINEAR,
                              fillcolor=BACKGROUND)
        frame = np.asarray(frame)
        if t in blank:
            frame = np.full_like(frame, BACKGROUND)
        video.append(frame)
        truth.append(np.concatenate([s * box0[:2] + off, s * box0[2:] + off]))
    return np.stack(video), np.array(truth)


@needs_models
@pytest.mark.parametrize("width,height", [(640, 360), (360, 640)])
def test_track_follows_a_known_path_and_is_smoother_than_detections(photo, width, height):
    img, box0 = photo
    blank = (20, 21, 22, 23, 40)  # frames with no face: bridged by the smoother
    video, truth = moving_video(img, box0, width, height, blank=blank)
    track = ft.track_faces(video)
    det = track.detections
    size = truth[:, 2] - truth[:, 0]
    assert not det.found[list(blank)].any() and det.found.sum() == len(video) - len(blank)
    err = np.linalg.norm(centre(track.boxes) - centre(truth), axis=1) / size
    assert err.max() <= 0.05, err.max()
    side = (track.boxes[:, 2] - track.boxes[:, 0]) / size
    assert np.abs(side - 1).max() < 0.06
    # Jitter: raw detections (where present) vs the track over the same frames, and both against the truth.
    span = slice(0, 19)
    raw_jit, smooth_jit = jitter(det.boxes[span], size[span]), jitter(track.boxes[span], size[span])
    assert smooth_jit < raw_jit
    # The error's own jitter (the path's motion removed) falls by more than half.
    assert jitter(track.boxes[span] - truth[span], size[span]) < 0.5 * jitter(det.boxes[span] - truth[span], size[span])
    summary = track.summary()
    assert summary["frames"] == 60 and summary["interpolated"] >= len(blank)


@needs_models
def test_small_face_in_a_tall_full_body_frame(photo):
    img, box0 = photo
    # Portrait 360x760 frame, face ~ 56 px (below HOG's 80 px at detection scale): found by the upsampled HOG.
    video, truth = moving_video(img, box0, 360, 760, frames=12, amp=0.05, zoom=(0.62, 0.02))
    track = ft.track_faces(video)
    assert track.detections.found.all()
    assert (track.detections.method == 2).all()
    size = truth[:, 2] - truth[:, 0]
    err = np.linalg.norm(centre(track.boxes) - centre(truth), axis=1) / size
    assert err.max() <= 0.05
    crops = ft.crop_frames(video, ft.crop_boxes(track.boxes, video.shape[1:3]), 96)
    assert crops.shape == (12, 96, 96, 3)
    lm = landmarks_for_frames(crops[:3])
    # The face sits in the middle of the crop at the size the landmark code expects.
    assert np.abs(lm.mean(axis=1) - 48).max() < 0.1 * 96
    jaw = np.linalg.norm(lm[:, 16] - lm[:, 0], axis=1)
    assert np.abs(jaw / 96 / FACE_FRACTION - 1).max() < 0.2


@needs_models
def test_no_face_gives_no_detections():
    video = np.full((6, 120, 160, 3), 128, np.uint8)
    video[:, 40:80, 60:100] = 30
    det = ft.detect_faces(video, max_cnn=2)
    assert not det.found.any() and (det.method == 0).all()
    assert (det.method == 0).all() and np.isnan(det.score).all()
    with pytest.raises(ValueError, match="no face"):
        ft.smooth_track(det.boxes)


def test_smoother_rejects_outliers_and_bridges_gaps():
    rng = np.random.default_rng(0)
    t = np.arange(80)
    c = np.column_stack([200 + 40 * np.sin(2 * np.pi * t / 80), 150 + 20 * np.cos(2 * np.pi * t / 40)])
    side = 100 + 10 * np.sin(2 * np.pi * t / 80)
    truth = np.column_stack([c - side[:, None] / 2, c + side[:, None] / 2])
    noisy = truth + rng.normal(0, 2.0, truth.shape)  # 2 % of the face size
    noisy[[10, 50]] += np.array([90, -60, 90, -60])  # a detection of someone else
    noisy[[30]] = np.array([[180, 130, 400, 350]])  # a much too big box
    noisy[60:68] = np.nan  # a gap
    boxes, used = ft.smooth_track(noisy)
    assert not used[[10, 30, 50]].any() and not used[60:68].any() and used.sum() == 80 - 3 - 8
    err = np.linalg.norm(centre(boxes) - c, axis=1) / side
    assert err.max() < 0.05, err.max()
    assert jitter(boxes, side) < 0.5 * jitter(np.delete(noisy, [10, 30, 50] + list(range(60, 68)), 0),
                                              np.delete(side, [10, 30, 50] + list(range(60, 68))))
    # Frames before the first / after the last detection hold the nearest tracked box.
    lead = noisy.copy()
    lead[:5] = np.nan
    b2, _ = ft.smooth_track(lead)
    np.testing.assert_allclose(b2[:5], np.repeat(b2[5:6], 5, axis=0))
    with pytest.raises(ValueError, match=r"\[T, 4\]"):
        ft.smooth_track(np.zeros((3, 5)))


def test_crop_boxes_and_edge_padding():
    frame = np.zeros((100, 60, 3), np.uint8)
    frame[..., 0] = np.arange(60)[None, :]  # red = x
    frame[..., 1] = np.arange(100)[:, None]  # green = y
    face = np.array([[20.0, 40.0, 40.0, 60.0], [0.0, 0.0, 50.0, 50.0]])
    boxes = ft.crop_boxes(face, frame.shape[:2], margin=1.5)
    np.testing.assert_allclose(boxes[0], [15, 35, 45, 65])
    # Capped at the shorter side (60); where it leaves the frame it moves back in by at most 15 % of its side.
    np.testing.assert_allclose(boxes[1], [0, 0, 60, 60])
    np.testing.assert_allclose(ft.crop_boxes(face[1:] - 10, frame.shape[:2], margin=1.5), [[-6, -6, 54, 54]])
    np.testing.assert_allclose(ft.crop_boxes(face[1:] - 10, frame.shape[:2], margin=1.5, max_shift=0), [[-15, -15, 45, 45]])
    boxes[1] = [-5, -5, 55, 55]
    crop = ft.crop_frame(frame, boxes[0], 30)
    np.testing.assert_allclose(crop[..., 0].mean(axis=0), np.arange(15, 45), atol=1)
    np.testing.assert_allclose(crop[..., 1].mean(axis=1), np.arange(35, 65), atol=1)
    edge = ft.crop_frame(frame, boxes[1], 60)
    assert edge.shape == (60, 60, 3)
    assert (edge[:5, :, 1] == 0).all() and (edge[:, :5, 0] == 0).all()  # repeated first row / column
    outside = ft.crop_frame(frame, np.array([100.0, 200.0, 120.0, 220.0]), 8)
    assert (outside[..., 0] == 59).all() and (outside[..., 1] == 99).all()


@needs_models
def test_cnn_fallback_finds_a_strongly_rolled_face(photo):
    from skimage.transform import rotate

    img, box0 = photo
    sub = np.ascontiguousarray(img[:300, 80:380])  # face centre at (c0x - 80, c0y)
    angle = np.radians(50)
    rolled = np.rint(rotate(sub, 50, mode="edge") * 255).astype(np.uint8)  # counter-clockwise as displayed
    d = centre(box0) - np.array([80.0, 0.0]) - 149.5
    truth = 149.5 + np.array([d[0] * np.cos(angle) + d[1] * np.sin(angle), -d[0] * np.sin(angle) + d[1] * np.cos(angle)])
    assert not ft.detect_faces(rolled[None], max_cnn=0).found.any()  # both HOG passes miss it
    det = ft.detect_faces(rolled[None], max_cnn=1, refine=False)
    assert det.method[0] == 3 and det.score[0] > 0
    assert np.linalg.norm(centre(det.boxes[0]) - truth) < 0.25 * (box0[2] - box0[0])

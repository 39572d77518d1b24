"""Landmark signals on scikit-image's astronaut photo: landmarks on crops, mouth openness, roll, pose fit, boxes."""

import numpy as np
import pytest
from PIL import Image

from pftray import faces
from pftray.data import landmarks as L

pytestmark = pytest.mark.skipif(faces.available() is not None, reason=f"face models: {faces.available()}")

RES = 128


@pytest.fixture(scope="module")
def photo():
    """The astronaut photo, its HOG face box (x0, y0, x1, y1) and the landmarks predicted in that box."""
    skdata = pytest.importorskip("skimage.data")
    img = np.ascontiguousarray(skdata.astronaut())
    rects = faces.hog_detector()(img, 0)
    assert len(rects) == 1
    r = rects[0]
    box = np.array([r.left(), r.top(), r.right(), r.bottom()], float)
    return img, box, L.landmarks_in_rect(img, tuple(box))


def facetrack_style_crop(img: np.ndarray, box: np.ndarray, res: int = RES, margin: float = 1.8):
    """Square crop of ``margin`` x the face box side around its centre, resized to ``res``; and the mapping."""
    c = (box[:2] + box[2:]) / 2
    half = margin * (box[2] - box[0]) / 2
    x0, y0 = c - half
    crop = Image.fromarray(img).resize((res, res), Image.Resampling.BILINEAR, box=(x0, y0, x0 + 2 * half, y0 + 2 * half))
    scale = res / (2 * half)
    return np.asarray(crop), lambda pts: (pts + 0.5 - np.array([x0, y0])) * scale - 0.5


def test_landmarks_on_crop_match_landmarks_in_the_photo(photo):
    img, box, lm_full = photo
    crop, to_crop = facetrack_style_crop(img, box)
    lm = L.landmarks_for_frames(crop[None])
    assert lm.shape == (1, 68, 2) and lm.dtype == np.float32
    expected = to_crop(lm_full.astype(np.float64))
    inter_ocular = np.linalg.norm(expected[45] - expected[36])
    err = np.linalg.norm(lm[0] - expected, axis=1)
    assert err.mean() < 0.06 * inter_ocular, err.mean() / inter_ocular
    # Also at 64 px (upsampled inside) and with a different margin (the refinement re-places the rectangle).
    small, to_small = facetrack_style_crop(img, box, res=64, margin=2.1)
    e_small = to_small(lm_full.astype(np.float64))
    err_small = np.linalg.norm(L.landmarks_for_frames(small[None])[0] - e_small, axis=1).mean()
    assert err_small < 0.1 * np.linalg.norm(e_small[45] - e_small[36])
    # The face rectangle predicted from landmarks is close to the detector's box.
    rect = L.face_rect_from_landmarks(lm_full)
    assert np.abs(rect - box).max() < 0.1 * (box[2] - box[0])


def open_mouth(crop: np.ndarray, lm: np.ndarray, factor: float) -> np.ndarray:
    """Stretch everything below the upper inner lip vertically by ``factor`` (bilinear resampling)."""
    from scipy.ndimage import map_coordinates

    split = float(lm[61:64, 1].mean())
    h, w = crop.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    src_y = np.where(yy > split, split + (yy - split) / factor, yy)
    out = np.stack(
        [map_coordinates(crop[..., c].astype(np.float64), [src_y, xx], order=1, mode="nearest") for c in range(3)],
        axis=-1,
    )
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def test_mouth_openness_tracks_a_known_opening(photo):
    img, box, _ = photo
    crop, _ = facetrack_style_crop(img, box)
    lm0 = L.landmarks_for_frames(crop[None])[0]
    t = np.arange(24)
    curve = 1.0 + 0.6 * (0.5 - 0.5 * np.cos(2 * np.pi * t / 12))  # stretch factor 1 ... 1.6, two cycles
    video = np.stack([open_mouth(crop, lm0, f) for f in curve])
    lm = L.landmarks_for_frames(video)
    m = L.mouth_openness(lm)
    assert m.shape == (24,) and m.dtype == np.float32 and np.all((m >= 0) & (m <= 1))
    r = np.corrcoef(m, curve)[0, 1]
    assert r >= 0.9, r
    assert m[curve.argmax()] > m[curve.argmin()] + 0.1
    # A vertical stretch of the lower face leaves the eyes alone.
    ear = L.eye_aspect_ratio(lm)
    assert np.ptp(ear) < 0.25 * ear.mean()


def test_roll_tracks_in_plane_rotation(photo):
    from skimage.transform import rotate

    img, box, _ = photo
    crop, _ = facetrack_style_crop(img, box, margin=2.2)
    angles = np.linspace(-24, 24, 9)
    # skimage rotates counter-clockwise for positive angles; roll > 0 is clockwise, so roll ~ -angle + roll0.
    video = np.stack([np.rint(rotate(crop, a, mode="edge") * 255).astype(np.uint8) for a in angles])
    lm = L.landmarks_for_frames(video, face_fraction=1 / 2.2)
    pose = np.degrees(L.head_pose(lm, RES))
    roll = pose[:, 2]
    assert np.corrcoef(roll, -angles)[0, 1] > 0.98
    slope = np.polyfit(angles, roll, 1)[0]
    assert -1.2 < slope < -0.8, slope
    err = roll - roll[len(angles) // 2] + angles
    assert np.abs(err).max() < 5.0, err
    # Yaw and pitch follow the geometry of an in-plane rotation of the unrotated head R0: R = Rz(-angle) R0
    # (the photo's head is pitched, so yaw and pitch mix a little as it rolls).
    from scipy.spatial.transform import Rotation

    y0, p0, r0 = np.radians(pose[len(angles) // 2])
    rot0 = Rotation.from_euler("YXZ", [-y0, -p0, r0])
    for a, got in zip(angles, pose):
        ey, ep, er = (Rotation.from_euler("z", -a, degrees=True) * rot0).as_euler("YXZ", degrees=True)
        assert abs(-ey - got[0]) < 5 and abs(-ep - got[1]) < 5 and abs(er - got[2]) < 5, (a, got, (-ey, -ep, er))
    unit = L.pose_to_unit(np.radians(pose))
    assert unit.dtype == np.float32 and np.all(np.abs(unit) <= 1)


@pytest.mark.parametrize("angles", [(0, 0, 0), (20, 0, 0), (0, -15, 0), (0, 0, 25), (-25, 12, -8)])
def test_head_pose_recovers_a_projected_model(angles):
    from scipy.spatial.transform import Rotation

    # Project the mean face at known yaw/pitch/roll; the fit recovers them (up to the documented signs).
    yaw, pitch, roll = np.radians(angles)
    rot = Rotation.from_euler("YXZ", [-yaw, -pitch, roll]).as_matrix()
    cam = L._MODEL_CAM @ rot.T
    lm = np.full((68, 2), 50.0)
    lm[L.MODEL_INDICES] = 0.2 * cam[:, :2] + np.array([64.0, 70.0])
    got = np.degrees(L.head_pose(lm[None], (128, 128))[0])
    np.testing.assert_allclose(got, angles, atol=0.5)
    # Mirroring the image flips yaw and roll, keeps pitch.
    mirrored = lm[L.MIRROR].copy()
    mirrored[:, 0] = 128 - mirrored[:, 0]
    m = np.degrees(L.head_pose(mirrored, 128))
    np.testing.assert_allclose(m, [-angles[0], angles[1], -angles[2]], atol=0.5)


def test_eye_aspect_ratio_blink_and_mouth_box(photo):
    _, _, lm = photo
    lm = lm.astype(np.float64)
    ear_open = L.eye_aspect_ratio(lm)
    assert 0.2 < ear_open < 0.45
    closed = lm.copy()
    for eye in (L.RIGHT_EYE, L.LEFT_EYE):  # squash the eyes vertically onto their corner line
        pts = closed[eye]
        pts[:, 1] = pts[[0, 3], 1].mean() + 0.1 * (pts[:, 1] - pts[[0, 3], 1].mean())
        closed[eye] = pts
    seq = np.stack([lm, lm, closed, lm, lm])
    ear = L.eye_aspect_ratio(seq)
    assert ear[2] < 0.2 * ear_open
    blink = L.blink_from_ear(ear)
    np.testing.assert_allclose(blink, [0, 0, 1, 0, 0], atol=1e-6)
    assert L.blink_from_ear(np.array([0.7 * ear_open]), open_ear=ear_open)[0] == pytest.approx(0.3 / 0.55, abs=1e-3)

    box = L.mouth_box_from_landmarks(lm, (512, 512))
    y0, y1, x0, x1 = box
    mouth = lm[L.MOUTH]
    assert box.dtype == np.int32
    assert y0 < mouth[:, 1].min() and y1 > mouth[:, 1].max() and x0 < mouth[:, 0].min() and x1 > mouth[:, 0].max()
    assert (y1 - y0) >= 0.6 * (x1 - x0) - 1 and (x1 - x0) < 2.2 * np.ptp(mouth[:, 0])
    # Clipped to the image, never empty.
    edge = L.mouth_box_from_landmarks(lm - lm[L.MOUTH].mean(axis=0), 32)
    assert edge[0] == 0 and edge[2] == 0 and edge[1] > edge[0] and edge[3] > edge[2]
    with pytest.raises(ValueError, match="68, 2"):
        L.mouth_openness(np.zeros((3, 5, 2)))

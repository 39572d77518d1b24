"""Face signals from dlib's 68 iBUG-300W landmarks on face crops: head pose, blink, mouth openness, mouth box.

Inputs are **face crops** (what :mod:`pftray.data.facetrack` writes, a generator's outputs, or pre-cropped face
tracks), so no detector runs here: :func:`landmarks_for_frames` places dlib's face rectangle in the centre of the
crop (a square of :data:`FACE_FRACTION` of the side, the size of a dlib HOG box inside a facetrack crop), predicts
the 68 points, then re-places the rectangle where those points say the face is (:func:`face_rect_from_landmarks`)
and predicts again (:data:`REFINE_PASSES`), which makes the result insensitive to the exact crop margin.

Index convention (0-based, iBUG-300W): jaw 0-16, brows 17-26, nose 27-35 (tip 30), right eye 36-41 and left
eye 42-47 (subject's), outer lips 48-59 (corners 48, 54), inner lips 60-67 (corners 60, 64).

Signals (all per frame, vectorised over ``[..., 68, 2]`` arrays in pixel coordinates):

* :func:`mouth_openness` -- inner-lip gap (mean of the three vertical inner-lip distances 61-67, 62-66, 63-65)
  over the mouth width (outer corners 48-54), mapped linearly to [0, 1] by :data:`MOUTH_RATIO_OPEN` (ratio of
  a wide-open mouth) and clipped.
* :func:`eye_aspect_ratio` -- EAR of Soukupová & Čech (2016), ``(|p2-p6| + |p3-p5|) / (2 |p1-p4|)`` averaged
  over both eyes; :func:`blink_from_ear` maps it to a blink value in [0, 1] relative to the open-eye level.
* :func:`head_pose` -- yaw, pitch, roll (radians) of a weak-perspective fit of a mean 3-D face model
  (:data:`MODEL_POINTS_3D`) to 12 rigid landmarks, solved with :func:`scipy.optimize.least_squares`;
  :func:`pose_to_unit` scales them to ``Clip.pose``'s roughly-[-1, 1] range (``angle / 45 deg``).
* :func:`mouth_box_from_landmarks` -- the mouth landmarks' bounding box with a margin, as ``y0, y1, x0, x1``.
"""

from __future__ import annotations

import numpy as np

from pftray import faces

METHOD_VERSION = 1
FACE_FRACTION = 1.0 / 1.8  # side of dlib's face box / side of a facetrack crop (facetrack.CROP_MARGIN = 1.8)
REFINE_PASSES = 1  # re-predictions with the rectangle re-placed from the previous landmarks
MIN_PREDICT_SIDE = 192  # crops smaller than this are upsampled before prediction (dlib's features are pixels)
MOUTH_RATIO_OPEN = 0.6  # inner-lip gap / mouth width of a wide-open mouth (maps to mouthness 1)
POSE_SCALE = np.pi / 4  # radians that map to 1.0 in Clip.pose (45 degrees)

# Face box of dlib's HOG detector relative to the 68 landmarks, measured on detections (see
# face_rect_from_landmarks): box centre = landmark-bbox centre + offset * jaw width, side = ratio * jaw width.
RECT_CENTRE_OFFSET = (-0.03, -0.07)
RECT_SIDE_RATIO = 1.04

# Mean face for the PnP fit: the anthropometric 3-D model of the ISR Coimbra (glAnthropometric3DModel), centimetres,
# at the 12 most rigid of its 14 points (the lower lip and chin move with speech and are left out): brow corners,
# eye corners, nostrils, mouth corners. Axes here: x towards the image's right for a frontal face (the subject's
# left), y up, z towards the camera.
MODEL_INDICES = np.array([17, 21, 22, 26, 36, 39, 42, 45, 31, 35, 48, 54])
MODEL_POINTS_3D = np.array(
    [
        [-6.825897, 6.760612, 4.402142],  # 17 right brow, outer end
        [-1.330353, 7.122144, 6.903745],  # 21 right brow, inner end
        [1.330353, 7.122144, 6.903745],  # 22 left brow, inner end
        [6.825897, 6.760612, 4.402142],  # 26 left brow, outer end
        [-5.311432, 5.485328, 3.987654],  # 36 right eye, outer corner
        [-1.789930, 5.393625, 4.413414],  # 39 right eye, inner corner
        [1.789930, 5.393625, 4.413414],  # 42 left eye, inner corner
        [5.311432, 5.485328, 3.987654],  # 45 left eye, outer corner
        [-2.005628, 1.409845, 6.165652],  # 31 right nostril
        [2.005628, 1.409845, 6.165652],  # 35 left nostril
        [-2.774015, -2.080775, 5.048531],  # 48 right mouth corner
        [2.774015, -2.080775, 5.048531],  # 54 left mouth corner
    ]
)
# The same points in camera axes (x right, y down, z away from the camera), centred.
_MODEL_CAM = MODEL_POINTS_3D * np.array([1.0, -1.0, -1.0])
_MODEL_CAM = _MODEL_CAM - _MODEL_CAM.mean(axis=0)

# MIRROR[k]: the landmark that takes the place of landmark k when the image is flipped left-right.
MIRROR = np.array(
    [*range(16, -1, -1), *range(26, 16, -1), 27, 28, 29, 30, *range(35, 30, -1), 45, 44, 43, 42, 47, 46,
     39, 38, 37, 36, 41, 40, *range(54, 47, -1), 59, 58, 57, 56, 55, 64, 63, 62, 61, 60, 67, 66, 65]
)
RIGHT_EYE = slice(36, 42)
LEFT_EYE = slice(42, 48)
MOUTH = slice(48, 68)


def _check(landmarks: np.ndarray) -> np.ndarray:
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim < 2 or lm.shape[-2:] != (68, 2):
        raise ValueError(f"landmarks must have shape [..., 68, 2], got {lm.shape}")
    return lm


def face_rect_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """Where dlib's HOG detector would put its (square) face box for these landmarks: ``[..., 4]`` x0, y0, x1, y1.

    The box is centred on the landmarks' bounding-box centre shifted by :data:`RECT_CENTRE_OFFSET` jaw widths,
    with a side of :data:`RECT_SIDE_RATIO` jaw widths (jaw width = ``|p16 - p0|``), as measured on detections.
    """
    lm = _check(landmarks)
    lo, hi = lm.min(axis=-2), lm.max(axis=-2)
    jaw = np.linalg.norm(lm[..., 16, :] - lm[..., 0, :], axis=-1)
    centre = (lo + hi) / 2 + np.asarray(RECT_CENTRE_OFFSET) * jaw[..., None]
    half = RECT_SIDE_RATIO * jaw / 2
    return np.concatenate([centre - half[..., None], centre + half[..., None]], axis=-1)


def _predict(gray: np.ndarray, rect: tuple[float, float, float, float]) -> np.ndarray:
    shape = faces.landmark_predictor()(gray, faces.rectangle(*rect))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def _to_gray(frame: np.ndarray) -> np.ndarray:
    f = frame.astype(np.float32)
    return np.ascontiguousarray(np.clip(f @ np.array([0.299, 0.587, 0.114], np.float32) + 0.5, 0, 255), np.uint8)


def landmarks_in_rect(frame: np.ndarray, rect: tuple[float, float, float, float]) -> np.ndarray:
    """The 68 landmarks (float32 ``[68, 2]``, pixel x, y) of the face in ``rect`` (x0, y0, x1, y1) of one frame.

    ``frame`` is uint8 ``[H, W, 3]`` RGB or ``[H, W]`` grey. Raises :class:`pftray.faces.FaceModelsMissing`
    when dlib or its models are absent.
    """
    gray = frame if frame.ndim == 2 else _to_gray(frame)
    return _predict(np.ascontiguousarray(gray, dtype=np.uint8), rect).astype(np.float32)


def landmarks_for_frames(
    frames: np.ndarray,
    *,
    face_fraction: float = FACE_FRACTION,
    refine: int = REFINE_PASSES,
    rects: np.ndarray | None = None,
) -> np.ndarray:
    """The 68 dlib landmarks of each face crop: float32 ``[T, 68, 2]`` (x, y in the crop's pixel coordinates).

    ``frames`` is uint8 ``[T, H, W, 3]`` RGB (float frames in [0, 1] are accepted and scaled). No detection:
    the face is assumed to fill the centre of the crop, a square of ``face_fraction`` of the shorter side
    (:data:`FACE_FRACTION` fits :mod:`pftray.data.facetrack` crops; pass ``1.0`` for a crop that is exactly a
    dlib face box), unless ``rects`` (``[T, 4]`` x0, y0, x1, y1 in the frames' pixels) gives each frame's face
    box; ``refine`` further passes re-place the rectangle from the landmarks found. Crops smaller than
    :data:`MIN_PREDICT_SIDE` are upsampled (bilinear) first. Raises
    :class:`pftray.faces.FaceModelsMissing` when dlib or its models are absent.
    """
    from PIL import Image

    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"frames must have shape [T, H, W, 3], got {f.shape}")
    if not 0.1 <= face_fraction <= 1.5:
        raise ValueError(f"face_fraction must be in [0.1, 1.5], got {face_fraction}")
    if f.dtype != np.uint8:
        f = np.clip(np.rint(f.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    t, h, w = f.shape[:3]
    scale = max(1.0, MIN_PREDICT_SIDE / min(h, w))
    sh, sw = int(round(h * scale)), int(round(w * scale))
    side = face_fraction * min(sh, sw)
    rect0 = ((sw - side) / 2, (sh - side) / 2, (sw + side) / 2, (sh + side) / 2)
    if rects is not None:
        rects = np.asarray(rects, dtype=np.float64)
        if rects.shape != (t, 4):
            raise ValueError(f"rects must have shape [{t}, 4], got {rects.shape}")
        rects = (rects + 0.5) * np.array([sw / w, sh / h, sw / w, sh / h]) - 0.5
    out = np.zeros((t, 68, 2), np.float32)
    for i in range(t):
        gray = _to_gray(f[i])
        if scale > 1.0:
            gray = np.asarray(Image.fromarray(gray).resize((sw, sh), Image.Resampling.BILINEAR))
        lm = _predict(gray, rect0 if rects is None else tuple(rects[i]))
        for _ in range(refine):
            lm = _predict(gray, tuple(face_rect_from_landmarks(lm)))
        out[i] = ((lm + 0.5) / np.array([sw / w, sh / h]) - 0.5).astype(np.float32)
    return out


def mouth_ratio(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap over mouth width, ``[...]`` float64 (0 closed, about 0.5-0.7 for a wide-open mouth)."""
    lm = _check(landmarks)
    gap = (
        np.linalg.norm(lm[..., 61, :] - lm[..., 67, :], axis=-1)
        + np.linalg.norm(lm[..., 62, :] - lm[..., 66, :], axis=-1)
        + np.linalg.norm(lm[..., 63, :] - lm[..., 65, :], axis=-1)
    ) / 3
    width = np.linalg.norm(lm[..., 54, :] - lm[..., 48, :], axis=-1)
    return gap / np.maximum(width, 1e-6)


def mouth_openness(landmarks: np.ndarray) -> np.ndarray:
    """Mouth openness in [0, 1] per frame, float32 ``[...]``, from ``[..., 68, 2]`` landmarks.

    ``clip(mouth_ratio / MOUTH_RATIO_OPEN, 0, 1)``: linear in the inner-lip gap normalised by the mouth width
    (so it does not depend on the face's size in the image), 0 for closed lips, 1 for a wide-open mouth.
    """
    return np.clip(mouth_ratio(landmarks) / MOUTH_RATIO_OPEN, 0.0, 1.0).astype(np.float32)


def eye_aspect_ratio(landmarks: np.ndarray) -> np.ndarray:
    """Eye aspect ratio averaged over both eyes, float64 ``[...]`` (about 0.3 open, below 0.15 closed).

    EAR = ``(|p2 - p6| + |p3 - p5|) / (2 |p1 - p4|)`` with p1..p6 the six points of an eye (Soukupová & Čech,
    "Real-Time Eye Blink Detection using Facial Landmarks", CVWW 2016).
    """
    lm = _check(landmarks)

    def ear(e: np.ndarray) -> np.ndarray:
        v = np.linalg.norm(e[..., 1, :] - e[..., 5, :], axis=-1) + np.linalg.norm(e[..., 2, :] - e[..., 4, :], axis=-1)
        return v / np.maximum(2 * np.linalg.norm(e[..., 0, :] - e[..., 3, :], axis=-1), 1e-6)

    return (ear(lm[..., RIGHT_EYE, :]) + ear(lm[..., LEFT_EYE, :])) / 2


def blink_from_ear(ear: np.ndarray, *, open_ear: float | None = None, closed_fraction: float = 0.45) -> np.ndarray:
    """Blink value in [0, 1] (0 eyes open, 1 closed), float32, from eye aspect ratios.

    Linear between the open-eye level ``open_ear`` (default: the median of ``ear``, since eyes are open most of
    the time; pass a fixed value for short sequences) and ``closed_fraction * open_ear`` (eyes shut), clipped.
    """
    e = np.asarray(ear, dtype=np.float64)
    level = float(np.median(e)) if open_ear is None else float(open_ear)
    if not level > 0:
        raise ValueError(f"open_ear must be positive, got {level}")
    closed = closed_fraction * level
    return np.clip((level - e) / (level - closed), 0.0, 1.0).astype(np.float32)


def _rotation(rvec: np.ndarray) -> np.ndarray:
    from scipy.spatial.transform import Rotation

    return Rotation.from_rotvec(rvec).as_matrix()


def _weak_perspective_init(x2: np.ndarray) -> tuple[np.ndarray, float]:
    """Closed-form start: affine fit of the centred model to the centred points, nearest scaled rotation."""
    a, *_ = np.linalg.lstsq(_MODEL_CAM, x2, rcond=None)  # [3, 2]: x2 ~ model @ a
    m = a.T  # rows: scaled first two rows of R
    u, s, vt = np.linalg.svd(m, full_matrices=False)
    r2 = u @ vt
    r = np.vstack([r2, np.cross(r2[0], r2[1])])
    if np.linalg.det(r) < 0:
        r[2] = -r[2]
    from scipy.spatial.transform import Rotation

    return Rotation.from_matrix(r).as_rotvec(), float(s.mean())


def _pose_residual(p: np.ndarray, xc: np.ndarray) -> np.ndarray:
    proj = p[3] * (_MODEL_CAM @ _rotation(p[:3]).T)[:, :2] + p[4:6]
    return (proj - xc).ravel()


def head_pose(landmarks: np.ndarray, image_size: tuple[int, int] | int | None = None) -> np.ndarray:
    """Head yaw, pitch, roll in radians, float64 ``[..., 3]``, from ``[..., 68, 2]`` landmarks.

    Weak-perspective PnP: find the rotation ``R``, scale ``s`` and shift ``t`` minimising
    ``sum_i |s (R X_i)_xy + t - x_i|^2`` over the mean-face points :data:`MODEL_POINTS_3D` and the matching
    landmarks (:data:`MODEL_INDICES`), started from the closed-form affine solution (and its depth-reversed
    twin) and solved with :func:`scipy.optimize.least_squares`. Noise: about 2 degrees frame to frame on real
    talking heads (yaw is the least well determined near frontal views). Camera axes: x right, y down, z into the scene. Angles are the
    intrinsic ``"YXZ"`` Euler angles of ``R``: **yaw** about the vertical axis (> 0: the face turns towards
    the image's right), **pitch** about the horizontal axis (> 0: the face tilts up, chin up), **roll** in the image plane
    (> 0: clockwise as displayed). ``image_size`` (``H, W`` or a side) only normalises the residuals so the
    solver's tolerances are resolution-independent (default: the landmarks' spread).
    """
    from scipy.optimize import least_squares
    from scipy.spatial.transform import Rotation

    lm = _check(landmarks)
    flat = lm.reshape(-1, 68, 2)
    if image_size is None:
        norm = None
    else:
        norm = float(min(image_size) if isinstance(image_size, (tuple, list)) else image_size)
    out = np.zeros((flat.shape[0], 3))
    for i, pts in enumerate(flat):
        x2 = pts[MODEL_INDICES]
        centre = x2.mean(axis=0)
        unit = norm if norm is not None else max(float(np.ptp(x2, axis=0).max()), 1e-6)
        xc = (x2 - centre) / unit
        rvec, s = _weak_perspective_init(xc)
        # Near a frontal view, weak perspective leaves a (yaw, pitch) -> (-yaw, -pitch) near-ambiguity: start
        # from both and keep the better fit.
        e = Rotation.from_rotvec(rvec).as_euler("YXZ")
        best = None
        for start in (rvec, Rotation.from_euler("YXZ", [-e[0], -e[1], e[2]]).as_rotvec()):
            sol = least_squares(_pose_residual, np.concatenate([start, [s, 0.0, 0.0]]), args=(xc,), method="lm")
            if best is None or sol.cost < best.cost:
                best = sol
        yaw, pitch, roll = Rotation.from_rotvec(best.x[:3]).as_euler("YXZ")
        out[i] = (-yaw, -pitch, roll)
    return out.reshape(lm.shape[:-2] + (3,))


def pose_to_unit(angles: np.ndarray) -> np.ndarray:
    """Radians -> ``Clip.pose`` units: ``angle / POSE_SCALE`` (45 degrees = 1), clipped to [-1, 1], float32."""
    return np.clip(np.asarray(angles) / POSE_SCALE, -1.0, 1.0).astype(np.float32)


def mouth_box_from_landmarks(
    landmarks: np.ndarray, size: tuple[int, int] | int, *, margin: float = 0.35, min_aspect: float = 0.6
) -> np.ndarray:
    """Mouth box ``y0, y1, x0, x1`` (int32 ``[..., 4]``, half-open, inside the image) from the 20 lip points.

    The lips' bounding box grown by ``margin`` of the mouth width on every side; its height is at least
    ``min_aspect`` times its width (a closed mouth still gets a box with some chin and upper lip in it).
    ``size`` is the image ``(H, W)`` or a square side.
    """
    lm = _check(landmarks)
    h, w = (size, size) if isinstance(size, (int, np.integer)) else size
    mouth = lm[..., MOUTH, :]
    lo, hi = mouth.min(axis=-2), mouth.max(axis=-2)
    width = hi[..., 0] - lo[..., 0]
    pad = margin * width
    x0, x1 = lo[..., 0] - pad, hi[..., 0] + pad
    cy = (lo[..., 1] + hi[..., 1]) / 2
    half_h = np.maximum((hi[..., 1] - lo[..., 1]) / 2 + pad, min_aspect * (x1 - x0) / 2)
    y0, y1 = cy - half_h, cy + half_h
    box = np.stack([np.floor(y0), np.ceil(y1), np.floor(x0), np.ceil(x1)], axis=-1)
    box[..., 0:2] = np.clip(box[..., 0:2], 0, h)
    box[..., 2:4] = np.clip(box[..., 2:4], 0, w)
    box[..., 1] = np.maximum(box[..., 1], np.minimum(box[..., 0] + 1, h))
    box[..., 0] = np.minimum(box[..., 0], box[..., 1] - 1)
    box[..., 3] = np.maximum(box[..., 3], np.minimum(box[..., 2] + 1, w))
    box[..., 2] = np.minimum(box[..., 2], box[..., 3] - 1)
    return box.astype(np.int32)

"""Face tracking for real videos: per-frame dlib detection, a smoothed track, square face crops.

The pipeline, each step a plain function over arrays:

1. :func:`detect_faces` -- dlib's HOG detector on each frame scaled so its shorter side is ``detect_side``
   (:data:`DETECT_SIDE`; faces down to ~80 px at that scale, i.e. a quarter of the shorter side). Where it finds
   nothing it retries with the frame upsampled 2x (faces down to ~40 px), then, on at most ``max_cnn`` frames
   spread over the video, with the MMOD CNN detector. Frames still without a face stay missing (NaN). With
   several faces, the one overlapping the previous detection most (at the start: the largest) is kept. Each
   box is then re-placed from the 68 landmarks predicted in it (continuous, where HOG boxes snap to 8-px cells
   and pyramid steps: on the test videos this brings the raw centre error from ~5 % to ~1 % of the face size).
   :class:`FaceDetector` is the same, one frame at a time (ingestion runs it while decoding).
2. :func:`smooth_track` -- the boxes' centre and log side are tracked by a constant-velocity Kalman filter with a
   Rauch-Tung-Striebel smoother (in units of the median face size, so the noise levels are scale-free).
   Outliers are rejected twice: against a running median of the detections (centre off by more than
   :data:`OUTLIER_CENTRE` face sizes or side off by more than a factor ``exp(OUTLIER_LOG_SIDE)``) and by a
   10-sigma innovation gate in the filter. Missing frames are bridged by the smoother (linear motion) and frames
   before the first or after the last detection hold the nearest tracked box.
3. :func:`crop_boxes` -- a square crop of ``margin`` (:data:`CROP_MARGIN`) times the face box side around its
   centre, no larger than the frame's shorter side, moved back into the frame by up to :data:`MAX_CROP_SHIFT`
   of its side; :func:`crop_frame` cuts it out (edge pixels repeat where it still leaves the frame) and
   resizes it.

:func:`track_faces` chains 1 and 2. Boxes are ``x0, y0, x1, y1`` float pixel coordinates of the full frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pftray import faces
from pftray.data.landmarks import face_rect_from_landmarks, landmarks_in_rect

METHOD_VERSION = 1
DETECT_SIDE = 320  # shorter side of the frame the detector sees (frames are never upscaled for it)
CROP_MARGIN = 1.8  # crop side / dlib face box side (landmarks.FACE_FRACTION is its inverse)
MAX_CNN = 12  # CNN detector calls per video at most (about 0.8 s each at 320 px on one CPU core)
OUTLIER_CENTRE = 0.35  # face sizes a detection's centre may be off the running median
OUTLIER_LOG_SIDE = 0.3  # |log(side / median side)| a detection may have
MEDIAN_WINDOW = 9  # frames in the running median used for outlier rejection
MEASUREMENT_STD = (0.015, 0.015, 0.018)  # landmark-refined detector noise: centre x, y (face sizes), log side
ACCELERATION_STD = (0.01, 0.01, 0.01)  # process noise per frame^2 at 25 fps (face sizes, log side)
MAX_CROP_SHIFT = 0.15  # fraction of the crop side a crop may move to stay inside the frame
GATE_SIGMA = 10.0  # loose: the running median already removed the outliers; this catches the rest, not fast heads
REACQUIRE = 3  # consecutive gated detections after which the filter accepts the next one

METHOD_NAMES = ("none", "hog", "hog-upsampled", "cnn")


@dataclass(frozen=True)
class FaceDetections:
    """Raw per-frame detections: ``boxes`` float64 ``[T, 4]`` (NaN rows where no face), ``method`` int8 ``[T]``
    (index into :data:`METHOD_NAMES`), ``score`` float64 ``[T]`` (detector confidence, NaN where none)."""

    boxes: np.ndarray
    method: np.ndarray
    score: np.ndarray

    @property
    def found(self) -> np.ndarray:
        return np.isfinite(self.boxes[:, 0])


@dataclass(frozen=True)
class FaceTrack:
    """A smoothed face track.

    Attributes:
        boxes: float64 ``[T, 4]`` smoothed square face boxes ``x0, y0, x1, y1`` (frame pixels).
        detections: the raw :class:`FaceDetections` the track was fitted to.
        inlier: bool ``[T]``, detections the smoother used (found and not rejected as outliers).
    """

    boxes: np.ndarray
    detections: FaceDetections
    inlier: np.ndarray

    @property
    def detected_fraction(self) -> float:
        return float(self.detections.found.mean()) if len(self.inlier) else 0.0

    def summary(self) -> dict:
        """Counts for a manifest: frames, detections per method, outliers rejected, frames interpolated."""
        m = self.detections.method
        found = self.detections.found
        return {
            "frames": int(len(m)),
            **{f"detected_{name}": int((m == k).sum()) for k, name in enumerate(METHOD_NAMES) if k},
            "outliers_rejected": int((found & ~self.inlier).sum()),
            "interpolated": int((~self.inlier).sum()),
        }


def detection_scale(height: int, width: int, detect_side: int = DETECT_SIDE) -> float:
    """Factor (<= 1) that brings the frame's shorter side down to ``detect_side``."""
    return min(1.0, detect_side / min(height, width))


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    if scale == 1.0:
        return np.ascontiguousarray(img)
    h, w = img.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    return np.asarray(Image.fromarray(img).resize(size, Image.Resampling.BILINEAR))


def _gray(rgb: np.ndarray) -> np.ndarray:
    if rgb.ndim == 2:
        return np.ascontiguousarray(rgb, dtype=np.uint8)
    g = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.ascontiguousarray(np.clip(g + 0.5, 0, 255), dtype=np.uint8)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _pick(cands: list[tuple[np.ndarray, float]], prev: np.ndarray | None) -> tuple[np.ndarray, float]:
    """The candidate overlapping ``prev`` most, else (or at the start) the largest."""
    if prev is not None:
        ious = [_iou(b, prev) for b, _ in cands]
        if max(ious) > 0.1:
            return cands[int(np.argmax(ious))]
    return max(cands, key=lambda c: (c[0][2] - c[0][0]) * (c[0][3] - c[0][1]))


def _hog(gray: np.ndarray, upsample: int) -> list[tuple[np.ndarray, float]]:
    rects, scores, _ = faces.hog_detector().run(gray, upsample, 0.0)
    return [(np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], float), float(s))
            for r, s in zip(rects, scores)]


def _cnn(rgb: np.ndarray) -> list[tuple[np.ndarray, float]]:
    out = []
    for d in faces.cnn_detector()(np.ascontiguousarray(rgb), 0):
        r = d.rect
        out.append((np.array([r.left(), r.top(), r.right() + 1, r.bottom() + 1], float), float(d.confidence)))
    return out


class FaceDetector:
    """Streaming per-frame detector (the state of :func:`detect_faces`): feed frames in order with
    :meth:`detect`; it remembers the previous face (to follow one person) and its CNN budget.

    ``cnn_every``: a CNN attempt happens on a missed frame at least this many frames after the previous one.
    """

    def __init__(
        self, *, detect_side: int = DETECT_SIDE, upsample_fallback: bool = True, max_cnn: int = MAX_CNN,
        cnn_every: int = 25, refine: bool = True,
    ) -> None:
        self.detect_side, self.upsample_fallback, self.refine = detect_side, upsample_fallback, refine
        self.cnn_left, self.cnn_every = max_cnn, max(1, int(cnn_every))
        self._prev: np.ndarray | None = None
        self._last_cnn = -(10**9)
        self._t = 0

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, int, float]:
        """``(box [4] in frame pixels or NaNs, method index, score or NaN)`` for the next uint8 RGB frame."""
        t, self._t = self._t, self._t + 1
        frame = np.asarray(frame)
        scale = detection_scale(frame.shape[0], frame.shape[1], self.detect_side)
        small = _resize(frame, scale)
        gray = _gray(small)
        cands, how = _hog(gray, 0), 1
        if not cands and self.upsample_fallback:
            cands, how = _hog(gray, 1), 2
        if not cands and self.cnn_left > 0 and t - self._last_cnn >= self.cnn_every and small.ndim == 3:
            self.cnn_left, self._last_cnn = self.cnn_left - 1, t
            cands, how = _cnn(small), 3
        if not cands:
            return np.full(4, np.nan), 0, float("nan")
        box, s = _pick(cands, self._prev)
        self._prev = box
        if self.refine:
            box = face_rect_from_landmarks(landmarks_in_rect(gray, tuple(box)))
        return box / scale, how, s


def detections_from(results: Sequence[tuple[np.ndarray, int, float]]) -> FaceDetections:
    """Collect :meth:`FaceDetector.detect` results into :class:`FaceDetections`."""
    if not results:
        return FaceDetections(np.zeros((0, 4)), np.zeros(0, np.int8), np.zeros(0))
    boxes, method, score = zip(*results)
    return FaceDetections(np.stack(boxes), np.asarray(method, np.int8), np.asarray(score, np.float64))


def detect_faces(
    frames: Sequence[np.ndarray] | np.ndarray,
    *,
    detect_side: int = DETECT_SIDE,
    upsample_fallback: bool = True,
    max_cnn: int = MAX_CNN,
    refine: bool = True,
) -> FaceDetections:
    """Per-frame face boxes (frame pixels) of uint8 RGB frames ``[T, H, W, 3]`` (or a list of them).

    HOG on the frame scaled to ``detect_side``; on a miss HOG on the 2x-upsampled frame
    (``upsample_fallback``); on a further miss the CNN detector, on at most ``max_cnn`` frames (the first miss,
    then misses at least ``T / max_cnn`` frames after the previous CNN attempt). With ``refine`` each box is
    replaced by the box the 68 landmarks predicted in it imply
    (:func:`pftray.data.landmarks.face_rect_from_landmarks`): continuous instead of quantised to the detector's
    8-pixel HOG cells and pyramid steps, about 2 ms per frame. Raises
    :class:`pftray.faces.FaceModelsMissing` when dlib or its models are absent.
    """
    det = FaceDetector(
        detect_side=detect_side, upsample_fallback=upsample_fallback, max_cnn=max_cnn,
        cnn_every=max(1, len(frames) // max(1, max_cnn)), refine=refine,
    )
    return detections_from([det.detect(f) for f in frames])


def _rolling_nanmedian(x: np.ndarray, window: int) -> np.ndarray:
    """Running median over ``window`` frames ignoring NaNs; the ends are padded by point reflection about the
    first / last finite value (``2 x_first - x_{first+k}``), so a steady motion is not flattened there."""
    import warnings

    half = window // 2
    rows = np.flatnonzero(np.isfinite(x).all(axis=1))
    pad = np.full((len(x) + 2 * half, x.shape[1]), np.nan)
    pad[half : half + len(x)] = x
    if len(rows):
        first, last = rows[0], rows[-1]
        for k in range(1, half + 1):
            if first + k < len(x):
                pad[half + first - k] = 2 * x[first] - x[first + k]
            if last - k >= 0:
                pad[half + last + k] = 2 * x[last] - x[last - k]
    view = np.lib.stride_tricks.sliding_window_view(pad, window, axis=0)  # [T, C, window]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(view, axis=-1)


def _to_state(boxes: np.ndarray) -> np.ndarray:
    """Boxes -> ``[T, 3]`` centre x, centre y, log side (side = mean of width and height)."""
    c = (boxes[:, :2] + boxes[:, 2:]) / 2
    side = ((boxes[:, 2] - boxes[:, 0]) + (boxes[:, 3] - boxes[:, 1])) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.column_stack([c, np.log(side)])


def reject_outliers(boxes: np.ndarray, *, window: int = MEDIAN_WINDOW) -> np.ndarray:
    """Bool ``[T]``: detections (finite rows) within :data:`OUTLIER_CENTRE` / :data:`OUTLIER_LOG_SIDE` of the
    running median of the detections around them."""
    z = _to_state(boxes)
    med = _rolling_nanmedian(z, window)
    size = np.exp(med[:, 2])
    with np.errstate(invalid="ignore"):
        ok = (
            (np.hypot(z[:, 0] - med[:, 0], z[:, 1] - med[:, 1]) <= OUTLIER_CENTRE * size)
            & (np.abs(z[:, 2] - med[:, 2]) <= OUTLIER_LOG_SIDE)
        )
    return ok & np.isfinite(z).all(axis=1)


def kalman_smooth(
    z: np.ndarray, observed: np.ndarray, *, measurement_std: np.ndarray, acceleration_std: np.ndarray,
    gate_sigma: float = GATE_SIGMA, reacquire: int = REACQUIRE,
) -> tuple[np.ndarray, np.ndarray]:
    """Constant-velocity Kalman filter + RTS smoother over ``C`` independent coordinates.

    ``z`` float ``[T, C]`` measurements (ignored where ``observed`` is False), noise levels ``[C]`` in the same
    units per frame. A measurement whose innovation exceeds ``gate_sigma`` standard deviations in any coordinate
    is rejected (all coordinates of that frame), unless the ``reacquire`` measurements before it were all
    rejected (the target moved faster than the motion model allows: the track follows it again). Returns the smoothed positions ``[T, C]`` and the bool ``[T]``
    mask of measurements used.
    """
    t_len, c = z.shape
    f = np.array([[1.0, 1.0], [0.0, 1.0]])
    q = np.array([[0.25, 0.5], [0.5, 1.0]])  # discrete white-acceleration model, dt = 1 frame
    r = np.asarray(measurement_std, float) ** 2
    qa = np.asarray(acceleration_std, float) ** 2
    xs_f = np.zeros((t_len, c, 2))
    ps_f = np.zeros((t_len, c, 2, 2))
    xs_p = np.zeros((t_len, c, 2))
    ps_p = np.zeros((t_len, c, 2, 2))
    used = np.zeros(t_len, bool)
    rejected = 0  # consecutive gated measurements: after `reacquire` of them the track follows the detector
    first = int(np.argmax(observed))
    x = np.stack([z[first], np.zeros(c)], axis=-1)  # [C, 2]
    p = np.zeros((c, 2, 2))
    p[:, 0, 0] = r
    p[:, 1, 1] = (10 * np.sqrt(qa) + np.sqrt(r)) ** 2  # unknown initial velocity
    for t in range(t_len):
        if t > 0:
            x = x @ f.T
            p = f @ p @ f.T + qa[:, None, None] * q
        xs_p[t], ps_p[t] = x, p
        if observed[t]:
            s = p[:, 0, 0] + r
            innov = z[t] - x[:, 0]
            if np.all(np.abs(innov) <= gate_sigma * np.sqrt(s)) or not used.any() or rejected >= reacquire:
                k = p[:, :, 0] / s[:, None]  # [C, 2]
                x = x + k * innov[:, None]
                p = p - k[:, :, None] * p[:, 0:1, :]
                used[t], rejected = True, 0
            else:
                rejected += 1
        xs_f[t], ps_f[t] = x, p
    xs = xs_f.copy()
    for t in range(t_len - 2, -1, -1):
        g = ps_f[t] @ f.T @ np.linalg.inv(ps_p[t + 1])  # [C, 2, 2]
        xs[t] = xs_f[t] + np.einsum("cij,cj->ci", g, xs[t + 1] - xs_p[t + 1])
    return xs[:, :, 0], used


def smooth_track(boxes: np.ndarray, *, fps: float = 25.0) -> tuple[np.ndarray, np.ndarray]:
    """Smoothed square boxes ``[T, 4]`` and the bool ``[T]`` inlier mask from raw boxes (NaN rows = missing).

    See the module docstring. ``fps`` scales the process noise (given per frame at 25 fps). Raises
    ``ValueError`` when no frame has a detection.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape [T, 4], got {boxes.shape}")
    ok = reject_outliers(boxes)
    if not ok.any():
        raise ValueError("no face detected in any frame")
    z = _to_state(boxes)
    unit = float(np.exp(np.median(z[ok, 2])))  # the median face size: noise levels are in its units
    zn = np.where(ok[:, None], z / np.array([unit, unit, 1.0]), 0.0)
    accel = np.asarray(ACCELERATION_STD) * (25.0 / fps) ** 2
    xs, used = kalman_smooth(zn, ok, measurement_std=np.asarray(MEASUREMENT_STD), acceleration_std=accel)
    idx = np.flatnonzero(used)
    xs[: idx[0]] = xs[idx[0]]  # hold the first / last tracked box outside the detected span
    xs[idx[-1] + 1 :] = xs[idx[-1]]
    cx, cy, half = xs[:, 0] * unit, xs[:, 1] * unit, np.exp(xs[:, 2]) / 2
    return np.column_stack([cx - half, cy - half, cx + half, cy + half]), used


def track_faces(
    frames: Sequence[np.ndarray] | np.ndarray, *, fps: float = 25.0, detect_side: int = DETECT_SIDE,
    max_cnn: int = MAX_CNN,
) -> FaceTrack:
    """Detect (:func:`detect_faces`) and smooth (:func:`smooth_track`) the face track of a video.

    Raises ``ValueError`` when no frame has a face.
    """
    det = detect_faces(frames, detect_side=detect_side, max_cnn=max_cnn)
    boxes, inlier = smooth_track(det.boxes, fps=fps)
    return FaceTrack(boxes=boxes, detections=det, inlier=inlier)


def crop_boxes(
    face_boxes: np.ndarray, frame_size: tuple[int, int], *, margin: float = CROP_MARGIN,
    max_shift: float = MAX_CROP_SHIFT,
) -> np.ndarray:
    """Square crop boxes ``[T, 4]`` (x0, y0, x1, y1): ``margin`` x the face side around the face centre, the
    side capped at the frame's shorter side ``min(frame_size)`` (``frame_size`` = H, W).

    A crop that leaves the frame is moved back in by up to ``max_shift`` of its side (the face then sits a little
    off-centre rather than next to a band of repeated edge pixels); what still lies outside is edge-padded by
    :func:`crop_frame`. The shift is a continuous function of the box, so a smooth track gives smooth crops.
    """
    b = np.asarray(face_boxes, dtype=np.float64)
    c = (b[:, :2] + b[:, 2:]) / 2
    side = np.minimum(margin * ((b[:, 2] - b[:, 0]) + (b[:, 3] - b[:, 1])) / 2, float(min(frame_size)))
    limit = np.array([frame_size[1], frame_size[0]], dtype=np.float64)  # x, y
    half, room = side[:, None] / 2, max_shift * side[:, None]
    over_lo = np.clip(half - c, 0.0, None)  # how far the crop sticks out before 0
    over_hi = np.clip(c + half - limit, 0.0, None)  # ... and past the far edge
    c = c + np.minimum(over_lo, room) - np.minimum(over_hi, room)
    return np.column_stack([c - half, c + half])


def crop_frame(frame: np.ndarray, box: np.ndarray, resolution: int) -> np.ndarray:
    """Cut the float box ``x0, y0, x1, y1`` out of a uint8 ``[H, W, 3]`` frame (edge pixels repeated outside the
    frame) and resize it (bilinear) to ``[resolution, resolution, 3]``."""
    h, w = frame.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    ix0, iy0 = int(np.floor(x0)), int(np.floor(y0))
    ix1, iy1 = int(np.ceil(x1)), int(np.ceil(y1))
    sub = frame[max(0, iy0) : min(h, iy1), max(0, ix0) : min(w, ix1)]
    pads = ((max(0, -iy0), max(0, iy1 - h)), (max(0, -ix0), max(0, ix1 - w)), (0, 0))
    if any(p for pair in pads[:2] for p in pair):
        if sub.size == 0:  # the box lies wholly outside the frame: repeat the nearest edge pixel
            yy = np.clip(np.arange(iy0, iy1), 0, h - 1)
            xx = np.clip(np.arange(ix0, ix1), 0, w - 1)
            sub = frame[yy][:, xx]
        else:
            sub = np.pad(sub, pads, mode="edge")
    img = Image.fromarray(np.ascontiguousarray(sub))
    out = img.resize(
        (resolution, resolution), Image.Resampling.BILINEAR, box=(x0 - ix0, y0 - iy0, x1 - ix0, y1 - iy0)
    )
    return np.asarray(out, dtype=np.uint8)


def crop_frames(frames: Sequence[np.ndarray] | np.ndarray, boxes: np.ndarray, resolution: int) -> np.ndarray:
    """:func:`crop_frame` over a video: uint8 ``[T, resolution, resolution, 3]``."""
    return np.stack([crop_frame(np.asarray(f), b, resolution) for f, b in zip(frames, boxes)])

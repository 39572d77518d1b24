"""Metrics on real faces from dlib's 68 landmarks and 128-D face descriptors (:mod:`pftray.faces`).

Inputs are **face crops** ``[T, 3, H, W]`` in [0, 1] (a generated clip and its ground truth, pixel-aligned). No
detector runs: the landmarks come from :func:`pftray.data.landmarks.landmarks_for_frames`, which places dlib's
face rectangle in the centre of the crop (the size a HOG box has inside a facetrack crop) and re-places it from
the landmarks once; crops smaller than :data:`pftray.data.landmarks.MIN_PREDICT_SIDE` (192 px) are upsampled
(bilinear) first, since dlib's features and its embedder's 150 px face chip are pixel-based.

=================  ===========================================================================================
name               definition (per clip; higher is better unless marked "lower")
=================  ===========================================================================================
csim               mean over frames t of cos(e(pred_t), e(gt_t)), e = dlib ResNet descriptor (128-D): the
                   generated frame against the ground-truth frame *of the same time step*. Not ``id_sim``
                   (which compares every generated frame with the prototype of reference frames under a
                   user's recogniser). Raw dlib descriptors are not centred, so the scale is compressed:
                   measured on the shared real clips, the same person 1.6 s apart 0.91-0.998 (0.998 for a
                   2 px shift plus noise), different people 0.80-0.91, and 0.90-0.95 for two Asian men with
                   glasses (dlib's same-person rule, Euclidean distance < 0.6, is cos > ~0.91 at the
                   descriptors' norm ~1.45); a uniform grey frame scores 0.84 and noise 0.85 against a real
                   face. Compare models by their csim; do not read one value as a verdict on identity.
                   Embeddings on at most ``max_embed_frames`` evenly spaced frames.
lmd_face (lower)   landmark distance: mean over frames of (mean over the 68 points of |p_i - g_i|) / IOD_t,
                   IOD_t = ground-truth inter-ocular distance |g_36 - g_45| (outer eye corners, as 300-W's
                   normalised mean error). Resolution-free: 0.05 = 5 % of the eye distance; a uniform shift of
                   s px gives about s / IOD. The predictor always answers (no detection), with a shape near its
                   mean face on a non-face: a grey or noise frame scores about 0.2, not "infinitely far".
lmd_mouth (lower)  the same over the 20 lip points 48-67 (still normalised by the IOD, not the mouth width).
lip_sync_lmk       Pearson r over the clip's frames of the landmark mouth ratio (inner-lip gap / mouth width,
                   :func:`pftray.data.landmarks.mouth_ratio`, unclipped) of generated vs ground-truth frames,
                   as :func:`pftray.metrics.sync.mouth_sync_correlation` (``Missing`` for < 3 frames or a
                   constant series, e.g. the ``copy`` baseline).
=================  ===========================================================================================

Every value is ``Missing(reason)`` when dlib or the face-recognition-models weights are absent
(:func:`pftray.faces.available`). On the synthetic cartoon faces dlib's landmarks mean nothing: the metric
suite computes these only for real data (:func:`pftray.metrics.suite.face_metrics_for_source`).

:func:`isfa_identity_consistency` is ISFA's on-device identity scalar ``IDSim_k`` in [0, 1] computed with
dlib descriptors instead of the backbone's identity-token encoder, for real data.

Cost on one (shared) CPU core: about 3-10 ms per frame for the landmarks (two predictor passes at 192 px) and
80-150 ms per embedded frame (the ResNet on a 150 px chip), hence the cap on embedded frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pftray import faces
from pftray.metrics.base import Missing, check_frames, check_pair
from pftray.metrics.sync import mouth_sync_correlation

FACE_METRIC_NAMES = ("csim", "lmd_face", "lmd_mouth", "lip_sync_lmk")
#: lower is better for these (landmark distances); higher for ``csim`` and ``lip_sync_lmk``
LOWER_IS_BETTER = ("lmd_face", "lmd_mouth")
MOUTH_POINTS = slice(48, 68)
EYE_OUTER_CORNERS = (36, 45)  # subject's right eye outer corner, left eye outer corner
MAX_EMBED_FRAMES = 8  # ~80 ms each: a clip's identity is well estimated from a few frames
MAX_LANDMARK_FRAMES = 128  # ~6 ms each: all frames of the usual evaluation clips


def face_models_missing() -> Missing | None:
    """``Missing(reason)`` when dlib's landmark predictor or embedder cannot be loaded, else None."""
    reason = faces.available()
    return None if reason is None else Missing(f"dlib face models unavailable: {reason}")


def evenly_spaced(n: int, k: int | None) -> np.ndarray:
    """Indices of at most ``k`` evenly spaced items of ``n`` (all of them when ``k`` is None or >= n)."""
    if k is not None and k < 1:
        raise ValueError(f"the number of frames to keep must be >= 1, got {k}")
    if k is None or k >= n:
        return np.arange(n)
    return np.unique(np.round(np.linspace(0, n - 1, k)).astype(np.int64))


def _to_uint8(frames01: torch.Tensor) -> np.ndarray:
    """``[N, 3, H, W]`` in [0, 1] -> uint8 ``[N, H, W, 3]`` (rounded)."""
    x = frames01.detach().float().cpu().clamp(0, 1).mul(255).round().to(torch.uint8)
    return np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())


def predict_landmarks(frames01: torch.Tensor) -> np.ndarray:
    """dlib's 68 landmarks of each face crop, float64 ``[N, 68, 2]`` (x, y in the crop's pixels).

    Raises :class:`pftray.faces.FaceModelsMissing` when dlib or its models are absent.
    """
    from pftray.data.landmarks import landmarks_for_frames

    frames01 = check_frames(frames01, "frames")
    return landmarks_for_frames(_to_uint8(frames01)).astype(np.float64)


def _upsampled(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The RGB crop upsampled as :func:`landmarks_for_frames` does, and its (sx, sy) scale."""
    from PIL import Image

    from pftray.data.landmarks import MIN_PREDICT_SIDE

    h, w = frame.shape[:2]
    scale = max(1.0, MIN_PREDICT_SIDE / min(h, w))
    if scale == 1.0:
        return frame, np.ones(2)
    sh, sw = int(round(h * scale)), int(round(w * scale))
    up = np.asarray(Image.fromarray(frame).resize((sw, sh), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(up), np.array([sw / w, sh / h])


def descriptors(frames01: torch.Tensor, landmarks: np.ndarray | None = None) -> np.ndarray:
    """dlib face descriptors, float64 ``[N, 128]``, of face crops ``[N, 3, H, W]`` in [0, 1].

    Each crop is upsampled to >= 192 px; its face is aligned by dlib's predictor in the rectangle that the
    crop's landmarks (``landmarks`` ``[N, 68, 2]``, else predicted) give
    (:func:`pftray.data.landmarks.face_rect_from_landmarks`), cut to dlib's 150 px chip (padding 0.25) and
    embedded by the ResNet. Raises :class:`pftray.faces.FaceModelsMissing` when dlib or its models are absent.
    """
    from pftray.data.landmarks import face_rect_from_landmarks

    frames01 = check_frames(frames01, "frames")
    lm = predict_landmarks(frames01) if landmarks is None else np.asarray(landmarks, np.float64)
    if lm.shape != (frames01.shape[0], 68, 2):
        raise ValueError(f"landmarks must have shape [{frames01.shape[0]}, 68, 2], got {lm.shape}")
    predictor, embedder = faces.landmark_predictor(), faces.face_embedder()
    out = np.zeros((frames01.shape[0], 128))
    for i, frame in enumerate(_to_uint8(frames01)):
        up, scale = _upsampled(frame)
        rect = face_rect_from_landmarks((lm[i] + 0.5) * scale - 0.5)
        shape = predictor(up, faces.rectangle(*rect))
        out[i] = np.asarray(embedder.compute_face_descriptor(up, shape, 0, 0.25))
    return out


class DlibFaceEmbedder:
    """:class:`pftray.metrics.identity.IdentityEmbedder` of dlib's ResNet face recogniser: frames
    ``[N, 3, H, W]`` in [0, 1] (face crops) -> descriptors ``[N, 128]`` (float32, not normalised; their norm is
    about 1.45). ``Missing`` when dlib or its weights are absent. See :func:`descriptors`."""

    def embed(self, frames: torch.Tensor) -> torch.Tensor | Missing:
        missing = face_models_missing()
        if missing is not None:
            return missing
        try:
            return torch.from_numpy(descriptors(frames)).float()
        except faces.FaceModelsMissing as err:
            return Missing(f"dlib face models unavailable: {err}")


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.sum(a * b, axis=1)


def csim(
    pred: torch.Tensor, target: torch.Tensor, *, embedder=None, max_frames: int | None = MAX_EMBED_FRAMES
) -> float | Missing:
    """CSIM: mean over frames t of cos(e(pred_t), e(target_t)) in [-1, 1], frame-wise against the ground truth.

    ``embedder``: an :class:`~pftray.metrics.identity.IdentityEmbedder` (default :class:`DlibFaceEmbedder`);
    ``max_frames`` evenly spaced frames are used (None: all).
    """
    pred, target = check_pair(pred, target)
    idx = torch.from_numpy(evenly_spaced(pred.shape[0], max_frames))
    embedder = DlibFaceEmbedder() if embedder is None else embedder
    e_pred = embedder.embed(pred[idx])
    if isinstance(e_pred, Missing):
        return e_pred
    e_gt = embedder.embed(target[idx])
    if isinstance(e_gt, Missing):
        return e_gt
    return float(F.cosine_similarity(e_pred.double(), e_gt.double(), dim=1).mean())


def _check_landmarks(x: np.ndarray, name: str) -> np.ndarray:
    lm = np.asarray(x, dtype=np.float64)
    if lm.ndim != 3 or lm.shape[1:] != (68, 2):
        raise ValueError(f"{name} must have shape [T, 68, 2], got {lm.shape}")
    if not np.isfinite(lm).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return lm


def inter_ocular_distance(landmarks: np.ndarray) -> np.ndarray:
    """|p_36 - p_45| per frame ``[T]``: the distance of the outer eye corners (300-W's normaliser)."""
    lm = _check_landmarks(landmarks, "landmarks")
    return np.linalg.norm(lm[:, EYE_OUTER_CORNERS[0]] - lm[:, EYE_OUTER_CORNERS[1]], axis=-1)


def landmark_distance(
    pred_landmarks: np.ndarray, gt_landmarks: np.ndarray, *, points: slice | None = None
) -> float | Missing:
    """LMD: mean over frames of (mean over ``points`` of |p_i - g_i|) / IOD(g), IOD = :func:`inter_ocular_distance`.

    ``points``: a slice of the 68 indices (None: all; :data:`MOUTH_POINTS` for the lips). ``Missing`` when a
    ground-truth frame has a degenerate IOD (< 1 px).
    """
    p = _check_landmarks(pred_landmarks, "pred_landmarks")
    g = _check_landmarks(gt_landmarks, "gt_landmarks")
    if p.shape != g.shape:
        raise ValueError(f"pred and ground-truth landmark shapes differ: {p.shape} vs {g.shape}")
    iod = inter_ocular_distance(g)
    if (iod < 1.0).any():
        return Missing(f"ground-truth inter-ocular distance below 1 px in {int((iod < 1.0).sum())} frame(s)")
    sel = slice(None) if points is None else points
    dist = np.linalg.norm(p[:, sel] - g[:, sel], axis=-1).mean(axis=1)
    return float((dist / iod).mean())


def lip_sync_landmarks(pred_landmarks: np.ndarray, gt_landmarks: np.ndarray) -> float | Missing:
    """Pearson r of the landmark mouth ratio (inner-lip gap / mouth width) of generated vs ground-truth frames."""
    from pftray.data.landmarks import mouth_ratio

    p = _check_landmarks(pred_landmarks, "pred_landmarks")
    g = _check_landmarks(gt_landmarks, "gt_landmarks")
    if p.shape != g.shape:
        raise ValueError(f"pred and ground-truth landmark shapes differ: {p.shape} vs {g.shape}")
    return mouth_sync_correlation(mouth_ratio(p), mouth_ratio(g))


@dataclass(frozen=True)
class FaceTrack:
    """dlib's reading of one clip: ``landmarks`` ``[L, 68, 2]`` at frames ``landmark_frames`` and descriptors
    ``[E, 128]`` at frames ``embed_frames`` (a subset of the landmark frames)."""

    landmark_frames: np.ndarray
    landmarks: np.ndarray
    embed_frames: np.ndarray
    embeddings: np.ndarray


def face_track(
    frames01: torch.Tensor,
    *,
    max_landmark_frames: int | None = MAX_LANDMARK_FRAMES,
    max_embed_frames: int | None = MAX_EMBED_FRAMES,
) -> FaceTrack:
    """Landmarks on at most ``max_landmark_frames`` evenly spaced frames of a clip and descriptors on at most
    ``max_embed_frames`` evenly spaced ones among those. Raises :class:`pftray.faces.FaceModelsMissing`."""
    frames01 = check_frames(frames01, "frames")
    lm_idx = evenly_spaced(frames01.shape[0], max_landmark_frames)
    lm = predict_landmarks(frames01[torch.from_numpy(lm_idx)])
    pick = evenly_spaced(len(lm_idx), max_embed_frames)
    emb = descriptors(frames01[torch.from_numpy(lm_idx[pick])], lm[pick])
    return FaceTrack(lm_idx, lm, lm_idx[pick], emb)


class FaceMetrics:
    """``csim``, ``lmd_face``, ``lmd_mouth`` and ``lip_sync_lmk`` of a generated clip against its ground truth.

    Landmarks on at most ``max_landmark_frames`` and descriptors on at most ``max_embed_frames`` evenly spaced
    frames (the same frames in both clips). The ground truth's reading is kept for the next call with the same
    (unchanged) tensor, so scoring several models against one clip reads its ground truth once.
    """

    names = FACE_METRIC_NAMES

    def __init__(
        self,
        *,
        max_landmark_frames: int | None = MAX_LANDMARK_FRAMES,
        max_embed_frames: int | None = MAX_EMBED_FRAMES,
    ):
        for cap in (max_landmark_frames, max_embed_frames):
            evenly_spaced(1, cap)  # raises on a cap < 1
        self.max_landmark_frames = max_landmark_frames
        self.max_embed_frames = max_embed_frames
        self._cached: tuple[torch.Tensor, int, FaceTrack] | None = None

    def _track(self, frames: torch.Tensor) -> FaceTrack:
        return face_track(
            frames, max_landmark_frames=self.max_landmark_frames, max_embed_frames=self.max_embed_frames
        )

    def _gt_track(self, target: torch.Tensor) -> FaceTrack:
        c = self._cached
        if c is not None and c[0] is target and c[1] == target._version:
            return c[2]
        track = self._track(target)
        self._cached = (target, target._version, track)
        return track

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, float | Missing]:
        pred, target = check_pair(pred, target)
        missing = face_models_missing()
        if missing is None:
            try:
                gt, gen = self._gt_track(target), self._track(pred)
            except faces.FaceModelsMissing as err:
                missing = Missing(f"dlib face models unavailable: {err}")
        if missing is not None:
            return {name: missing for name in self.names}
        return {
            "csim": float(_cosines(gen.embeddings, gt.embeddings).mean()),
            "lmd_face": landmark_distance(gen.landmarks, gt.landmarks),
            "lmd_mouth": landmark_distance(gen.landmarks, gt.landmarks, points=MOUTH_POINTS),
            "lip_sync_lmk": lip_sync_landmarks(gen.landmarks, gt.landmarks),
        }


def isfa_identity_consistency(
    pred01: torch.Tensor, reference01: torch.Tensor, *, max_frames: int | None = 16
) -> float | Missing:
    """ISFA's identity-consistency scalar ``IDSim_k = (1 + mean_i cos(e(x̂_i), e(ref_i))) / 2`` in [0, 1] with
    e = dlib's face descriptor: the real-data counterpart of the backbone-encoder scalar of
    :meth:`pftray.fed.client.ClientTrainer.reliability` (same formula, same range).

    ``pred01``: the model's predicted frames ``[N, 3, H, W]`` in [0, 1]; ``reference01``: the client's
    reference frame(s), ``[1, 3, H, W]`` (compared with every frame) or ``[N, 3, H, W]`` (pairwise). At most
    ``max_frames`` evenly spaced frames are embedded (~80 ms each on CPU). ``Missing`` without dlib.
    """
    pred01 = check_frames(pred01, "pred01")
    reference01 = check_frames(reference01, "reference01")
    n = pred01.shape[0]
    if reference01.shape[0] not in (1, n):
        raise ValueError(f"reference01 must hold 1 or {n} frames, got {reference01.shape[0]}")
    missing = face_models_missing()
    if missing is not None:
        return missing
    idx = evenly_spaced(n, max_frames)
    try:
        e_pred = descriptors(pred01[torch.from_numpy(idx)])
        if reference01.shape[0] == 1 or bool((reference01 == reference01[:1]).all()):
            e_ref = np.repeat(descriptors(reference01[:1]), len(idx), axis=0)
        else:
            e_ref = descriptors(reference01[torch.from_numpy(idx)])
    except faces.FaceModelsMissing as err:
        return Missing(f"dlib face models unavailable: {err}")
    return float((1.0 + _cosines(e_pred, e_ref).mean()) / 2.0)

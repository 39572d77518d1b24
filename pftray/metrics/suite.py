"""One entry point for evaluation: per-clip metrics, per-set metrics (FID) and a flat row for tables.

Metric names (the column names of the results tables; "better" as in :data:`METRIC_BETTER`):

================  ==============================================================  ==============  ======
name              definition                                                      needs           better
================  ==============================================================  ==============  ======
psnr, ssim        :func:`pftray.metrics.image.psnr` / ``ssim``, mean over frames  always          higher
mouth_psnr/_ssim  same on the mouth crops (``mouth_box``)                         mouth_box       higher
shift_psnr        PSNR of the pixels in ``extras["shift_box"]``, pooled           shift_box       higher
lpips             LPIPS-Alex, mean over frames                                    AlexNet file    lower
jitter            temporal jitter J (DESIGN's J_k)                                T >= 2          lower
temp_stab         1 / (1 + J)                                                     T >= 2          higher
flicker_ratio     temporal-change energy ratio                                    T >= 2          near 1
warp_error        warping error with ground-truth motion                          T >= 2          lower
lip_sync          Pearson r of mouth openness                                     openness        higher
id_sim_synth      cosine identity similarity, synthetic-benchmark encoder         encoder + ref   higher
id_sim            cosine identity similarity, user's face recogniser              embedder + ref  higher
csim              cosine of dlib face descriptors of the generated and the        face_metrics    higher
                  ground-truth frame of each time step, mean (:mod:`.face`)
lmd_face          68-landmark distance / ground-truth inter-ocular distance       face_metrics    lower
lmd_mouth         the same over the 20 lip landmarks 48-67                        face_metrics    lower
lip_sync_lmk      Pearson r of the landmark mouth ratio, generated vs truth       face_metrics    higher
fid               FID of all generated vs all real frames (:meth:`set_metrics`)   Inception file  lower
================  ==============================================================  ==============  ======

The four face metrics (:mod:`pftray.metrics.face`) read real faces with dlib; they are computed only when the
suite is built with ``face_metrics=True`` and are ``Missing`` (with the reason) when dlib or its weights are
absent. They are meaningless on the synthetic benchmark's cartoon faces, so the switch follows the data:
:func:`face_metrics_for_source` (``data.source`` of a run's config) is off for ``"synthetic"`` and on for a
folder made by ``pftray data prepare`` (real video).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import torch

from pftray.metrics.base import Missing, check_pair
from pftray.metrics.face import FACE_METRIC_NAMES, FaceMetrics
from pftray.metrics.fid import FIDMetric
from pftray.metrics.identity import IdentityEmbedder, id_sim
from pftray.metrics.image import psnr, region_psnr, region_ssim, ssim
from pftray.metrics.lpips_metric import LPIPSMetric
from pftray.metrics.sync import mouth_sync_correlation
from pftray.metrics.temporal import clip_temporal_metrics

MetricValue = float | Missing

#: which value of each metric column is better: "higher", "lower", or "near 1" (``flicker_ratio``)
METRIC_BETTER: dict[str, str] = {
    "psnr": "higher",
    "ssim": "higher",
    "mouth_psnr": "higher",
    "mouth_ssim": "higher",
    "shift_psnr": "higher",
    "lpips": "lower",
    "jitter": "lower",
    "temp_stab": "higher",
    "temp_stab_eval": "higher",
    "flicker_ratio": "near 1",
    "warp_error": "lower",
    "lip_sync": "higher",
    "id_sim_synth": "higher",
    "id_sim": "higher",
    "csim": "higher",
    "lmd_face": "lower",
    "lmd_mouth": "lower",
    "lip_sync_lmk": "higher",
    "fid": "lower",
}


def face_metrics_for_source(data_source: str) -> bool:
    """Whether the dlib face metrics apply to a run's data (``data.source`` of its config): not to the embedded
    synthetic benchmark (cartoon faces: dlib's landmarks and descriptors of them mean nothing), yes to a folder
    made by ``pftray data prepare`` from real video."""
    return str(data_source) != "synthetic"


class MetricSuite:
    """Evaluate generated clips against ground truth with every metric that its inputs allow.

    ``lpips_weights`` / ``fid_weights``: paths to the AlexNet / FID-Inception weights, or None to look them up
    in ``torch.hub.get_dir()/checkpoints``; absent files give ``Missing`` values, never downloads.
    ``face_embedder``: a user's :class:`IdentityEmbedder` (``id_sim``); ``synth_id_encoder``: the synthetic
    benchmark's encoder (``id_sim_synth``). Either may be a ``Missing`` (e.g. from a failed load), which is
    then reported as the value. ``face_metrics``: compute ``csim``, ``lmd_face``, ``lmd_mouth`` and
    ``lip_sync_lmk`` with dlib (True, or a configured :class:`~pftray.metrics.face.FaceMetrics`); off by
    default; :func:`face_metrics_for_source` says whether a run's data wants them.
    """

    def __init__(
        self,
        lpips_weights: str | os.PathLike[str] | None = None,
        fid_weights: str | os.PathLike[str] | None = None,
        face_embedder: IdentityEmbedder | Missing | None = None,
        synth_id_encoder: IdentityEmbedder | Missing | None = None,
        *,
        device: str | torch.device = "cpu",
        mouth_size: tuple[int, int] | None = None,
        face_metrics: bool | FaceMetrics = False,
    ):
        self.lpips = LPIPSMetric(lpips_weights, device=device)
        self.fid = FIDMetric(fid_weights, device=device)
        self.face_embedder = face_embedder
        self.synth_id_encoder = synth_id_encoder
        self.mouth_size = mouth_size
        if not isinstance(face_metrics, (bool, FaceMetrics)):
            raise ValueError(f"face_metrics must be True, False or a FaceMetrics, got {face_metrics!r}")
        self.face = FaceMetrics() if face_metrics is True else (face_metrics or None)

    @property
    def face_metric_names(self) -> tuple[str, ...]:
        """The face-metric columns this suite emits (empty when face metrics are off)."""
        return FACE_METRIC_NAMES if self.face is not None else ()

    def face_clip_metrics(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, MetricValue]:
        """``csim``, ``lmd_face``, ``lmd_mouth``, ``lip_sync_lmk`` of one clip (``{}`` when face metrics are off;
        ``Missing`` values without dlib). See :mod:`pftray.metrics.face`."""
        return {} if self.face is None else self.face(pred, target)

    def clip_metrics(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        *,
        reference: torch.Tensor | None = None,
        mouth_box: torch.Tensor | None = None,
        pred_openness: np.ndarray | torch.Tensor | None = None,
        gt_openness: np.ndarray | torch.Tensor | None = None,
    ) -> dict[str, MetricValue]:
        """Metrics of one generated clip ``pred`` ``[T, 3, H, W]`` vs its ground truth ``target``.

        Always: psnr, ssim, lpips (possibly ``Missing``). With T >= 2: jitter, temp_stab, flicker_ratio,
        warp_error. With ``mouth_box`` (``[4]`` or ``[T, 4]``, y0, y1, x0, x1): mouth_psnr, mouth_ssim.
        With both openness series: lip_sync. With ``reference`` frames of the identity: id_sim_synth and/or
        id_sim for whichever encoders the suite holds. With ``face_metrics``: csim, lmd_face, lmd_mouth,
        lip_sync_lmk.
        """
        pred, target = check_pair(pred, target)
        out: dict[str, MetricValue] = {"psnr": psnr(pred, target), "ssim": ssim(pred, target)}
        if mouth_box is not None:
            out["mouth_psnr"] = region_psnr(pred, target, mouth_box, size=self.mouth_size)
            out["mouth_ssim"] = region_ssim(pred, target, mouth_box, size=self.mouth_size)
        out["lpips"] = self.lpips(pred, target)
        if pred.shape[0] >= 2:
            out.update(clip_temporal_metrics(pred, target))
        if (pred_openness is None) != (gt_openness is None):
            raise ValueError("pred_openness and gt_openness must be given together")
        if pred_openness is not None and gt_openness is not None:
            out["lip_sync"] = mouth_sync_correlation(pred_openness, gt_openness)
        if reference is not None:
            if self.synth_id_encoder is not None:
                out["id_sim_synth"] = id_sim(self.synth_id_encoder, pred, reference)
            if self.face_embedder is not None:
                out["id_sim"] = id_sim(self.face_embedder, pred, reference)
        out.update(self.face_clip_metrics(pred, target))
        return out

    def set_metrics(self, pred_frames: torch.Tensor, real_frames: torch.Tensor) -> dict[str, MetricValue]:
        """Set-level metrics over all frames of an evaluation: ``{"fid": ...}``.

        FID compares distributions, so pass the frames of *all* generated clips and *all* real clips of the
        evaluation set (thousands of frames for a stable value; fewer frames bias FID upwards and values are
        only comparable at equal counts). Needs >= 2 frames per set.
        """
        return {"fid": self.fid(pred_frames, real_frames)}


def status_of(value: MetricValue) -> tuple[float, str | None]:
    """(number, reason): a metric value as a float column entry plus a reason (None when present).

    Numbers (Python or 0-d numpy/torch) become float; ``Missing`` becomes (NaN, reason).
    """
    if isinstance(value, Missing):
        return math.nan, value.reason
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer, torch.Tensor)):
        raise ValueError(f"metric value must be a number or Missing, got {type(value).__name__}: {value!r}")
    if isinstance(value, torch.Tensor) and value.numel() != 1:
        raise ValueError(f"metric tensor must hold one value, got shape {tuple(value.shape)}")
    return float(value), None


def flatten_for_table(metrics: Mapping[str, MetricValue]) -> dict[str, float | str]:
    """Flatten a metrics dict into one table row for Parquet.

    Each metric ``name`` becomes a float column (``NaN`` when missing); each missing metric also gets a
    ``<name>_missing`` string column holding its reason. Present metrics get no reason column, so a table
    built from many rows (``pandas.DataFrame(rows)``) has NaN reasons where a metric was present.
    """
    row: dict[str, float | str] = {}
    for name, value in metrics.items():
        if name.endswith("_missing"):
            raise ValueError(f"metric name {name!r} clashes with the reason-column suffix '_missing'")
        number, reason = status_of(value)
        row[name] = number
        if reason is not None:
            row[f"{name}_missing"] = reason
    return row

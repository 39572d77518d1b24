"""One entry point for evaluation: per-clip metrics, per-set metrics (FID) and a flat row for tables.

Metric names (the column names of the results tables):

=================  ============================================================  ============
name               definition                                                     needs
=================  ============================================================  ============
psnr, ssim         :func:`pftray.metrics.image.psnr` / ``ssim``, mean over frames  always
mouth_psnr/_ssim   same on the mouth crops (``mouth_box``)                         mouth_box
lpips              LPIPS-Alex, mean over frames                                    AlexNet file
jitter             temporal jitter J (DESIGN's J_k)                                T >= 2
temp_stab          1 / (1 + J)                                                     T >= 2
flicker_ratio      temporal-change energy ratio                                    T >= 2
warp_error         warping error with ground-truth motion                          T >= 2
lip_sync           Pearson r of mouth openness                                     openness series
id_sim_synth       cosine identity similarity, synthetic-benchmark encoder         encoder + reference
id_sim             cosine identity similarity, user's face recogniser              embedder + reference
fid                FID of all generated vs all real frames (:meth:`set_metrics`)   Inception file
=================  ============================================================  ============
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import numpy as np
import torch

from pftray.metrics.base import Missing, check_pair
from pftray.metrics.fid import FIDMetric
from pftray.metrics.identity import IdentityEmbedder, id_sim
from pftray.metrics.image import psnr, region_psnr, region_ssim, ssim
from pftray.metrics.lpips_metric import LPIPSMetric
from pftray.metrics.sync import mouth_sync_correlation
from pftray.metrics.temporal import clip_temporal_metrics

MetricValue = float | Missing


class MetricSuite:
    """Evaluate generated clips against ground truth with every metric that its inputs allow.

    ``lpips_weights`` / ``fid_weights``: paths to the AlexNet / FID-Inception weights, or None to look them up
    in ``torch.hub.get_dir()/checkpoints``; absent files give ``Missing`` values, never downloads.
    ``face_embedder``: a user's :class:`IdentityEmbedder` (``id_sim``); ``synth_id_encoder``: the synthetic
    benchmark's encoder (``id_sim_synth``). Either may be a ``Missing`` (e.g. from a failed load), which is
    then reported as the value.
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
    ):
        self.lpips = LPIPSMetric(lpips_weights, device=device)
        self.fid = FIDMetric(fid_weights, device=device)
        self.face_embedder = face_embedder
        self.synth_id_encoder = synth_id_encoder
        self.mouth_size = mouth_size

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
        id_sim for whichever encoders the suite holds.
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

"""Evaluation metrics for generated talking-head clips (see each module for definitions and sources).

Frames are float tensors in [0, 1] shaped ``[N, 3, H, W]`` (a batch) or ``[T, 3, H, W]`` (one clip). A metric
that cannot be computed returns ``Missing(reason)``, never a number from a substitute network.
"""

from pftray.metrics.base import Missing, is_missing
from pftray.metrics.face import (
    FACE_METRIC_NAMES,
    DlibFaceEmbedder,
    FaceMetrics,
    csim,
    isfa_identity_consistency,
    landmark_distance,
    lip_sync_landmarks,
)
from pftray.metrics.fid import (
    FID_WEIGHTS_NAME,
    FIDInceptionV3,
    FIDMetric,
    frechet_distance,
    frechet_distance_features,
    gaussian_stats,
    load_fid_inception,
)
from pftray.metrics.identity import (
    IdentityEmbedder,
    SynthIdentityEncoder,
    TorchScriptEmbedder,
    id_sim,
    train_synth_identity_encoder,
)
from pftray.metrics.image import (
    MOUTH_SIZE,
    crop_boxes,
    psnr,
    psnr_per_frame,
    region_psnr,
    region_ssim,
    ssim,
    ssim_per_frame,
)
from pftray.metrics.lpips_metric import ALEXNET_WEIGHTS_NAME, LPIPSMetric
from pftray.metrics.suite import (
    METRIC_BETTER,
    MetricSuite,
    face_metrics_for_source,
    flatten_for_table,
    status_of,
)
from pftray.metrics.sync import (
    OffsetCorrelation,
    SyncNetModel,
    SyncNetScorer,
    SyncScores,
    best_offset_correlation,
    lse_from_embeddings,
    mfcc,
    mouth_sync_correlation,
    offset_correlations,
)
from pftray.metrics.temporal import (
    clip_temporal_metrics,
    flicker_energy_ratio,
    phase_correlation_shift,
    temporal_jitter,
    temporal_stability,
    warp_error,
)

# short aliases named as in the brief / results tables
masked_psnr = region_psnr
masked_ssim = region_ssim

__all__ = [
    "ALEXNET_WEIGHTS_NAME",
    "FACE_METRIC_NAMES",
    "FID_WEIGHTS_NAME",
    "METRIC_BETTER",
    "MOUTH_SIZE",
    "DlibFaceEmbedder",
    "FIDInceptionV3",
    "FIDMetric",
    "FaceMetrics",
    "IdentityEmbedder",
    "LPIPSMetric",
    "MetricSuite",
    "Missing",
    "OffsetCorrelation",
    "SyncNetModel",
    "SyncNetScorer",
    "SyncScores",
    "SynthIdentityEncoder",
    "TorchScriptEmbedder",
    "best_offset_correlation",
    "offset_correlations",
    "clip_temporal_metrics",
    "crop_boxes",
    "csim",
    "face_metrics_for_source",
    "flatten_for_table",
    "flicker_energy_ratio",
    "frechet_distance",
    "frechet_distance_features",
    "gaussian_stats",
    "id_sim",
    "is_missing",
    "isfa_identity_consistency",
    "landmark_distance",
    "lip_sync_landmarks",
    "load_fid_inception",
    "lse_from_embeddings",
    "masked_psnr",
    "masked_ssim",
    "mfcc",
    "mouth_sync_correlation",
    "phase_correlation_shift",
    "psnr",
    "psnr_per_frame",
    "region_psnr",
    "region_ssim",
    "ssim",
    "ssim_per_frame",
    "status_of",
    "temporal_jitter",
    "temporal_stability",
    "train_synth_identity_encoder",
    "warp_error",
]

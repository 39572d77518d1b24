"""Privacy layer of pftray: secure aggregation, client-level DP, accounting and audit statistics.

Pure numpy / cryptography / opacus; no Ray and no torch models. The Ray runtime moves these objects.
"""

from pftray.privacy.accounting import (
    SUPPORTED_KINDS,
    PrivacyEvent,
    PrivacyLedger,
    calibrate_noise,
    compute_epsilon,
)
from pftray.privacy.audit_stats import one_run_epsilon_lower_bound, one_run_p_value, roc_auc, tpr_at_fpr
from pftray.privacy.dp import AdaptiveClipping, central_noise, clip_update, split_noise_multiplier
from pftray.privacy.layer import DPLayer, DistributedNoisePlan, bounded_weight, secure_generator, skellam_noise
from pftray.privacy.secagg import (
    SecAggAbort,
    SecAggClient,
    SecAggOutcome,
    SecAggParams,
    SecAggProtocolError,
    SecAggResult,
    SecAggServer,
    benchmark_secagg,
    run_secagg,
)

__all__ = [
    "SUPPORTED_KINDS",
    "AdaptiveClipping",
    "DPLayer",
    "DistributedNoisePlan",
    "PrivacyEvent",
    "PrivacyLedger",
    "SecAggAbort",
    "SecAggClient",
    "SecAggOutcome",
    "SecAggParams",
    "SecAggProtocolError",
    "SecAggResult",
    "SecAggServer",
    "benchmark_secagg",
    "bounded_weight",
    "calibrate_noise",
    "central_noise",
    "clip_update",
    "compute_epsilon",
    "one_run_epsilon_lower_bound",
    "one_run_p_value",
    "roc_auc",
    "run_secagg",
    "secure_generator",
    "skellam_noise",
    "split_noise_multiplier",
    "tpr_at_fpr",
]

"""Privacy layer of pftray: secure aggregation, client-level DP, accounting and audit statistics.

Pure numpy / cryptography / opacus; no Ray and no torch models. The Ray runtime moves these objects.

Threat model (client-level DP)

Adjacency. Add or remove one client: all of its clips, its reports and its update (user-level DP). Epsilon is
reported at `privacy.target_delta` for this adjacency only.

Deployments.
- Central DP (`privacy.noise_placement: central`): the driver is TRUSTED. Each client's update enters the sum as
  `clip(omega_k Delta_k, C)` with its own weight `omega_k` in [0, 1]; the driver adds `N(0, (z_Delta C)^2)` to the
  sum and divides by the fixed `m = q N`. Protected: everything the run releases from the driver. Not protected:
  anything against the driver itself.
- Distributed DP + secure aggregation (`noise_placement: distributed`, `secagg: true`): the driver is
  HONEST-BUT-CURIOUS (it follows the protocol and tries to learn from what it sees). Each client adds integer
  Skellam noise to its fixed-point vector before masking, sized so that any sum SecAgg accepts (at least
  `threshold` survivors) carries the configured noise; the ledger records the noise of the survivors actually summed.
  The driver sees who was sampled, each client's status (ok, failed, rejected) and placement, and the noised sum;
  no per-client value. Not protected: a driver colluding with clients (their shares are known to them), a
  malicious driver (SecAgg+ is secure against semi-honest servers).
- In both, client sampling is Poisson with rate `fed.sample_rate` (fixed-size sampling under DP is a config
  error), and the noise, the sample and the adaptive-clipping count noise come from the OS's CSPRNG, never from
  `experiment.seed`: a DP run's noise is deliberately not reproducible.

What protects each artefact a run writes.
- Shared adapter (`checkpoints/`, `best.npy`), `clipping_norm` and `epsilon` in `rounds.parquet`, `privacy.json`:
  client-level DP with the reported epsilon, in both deployments (adaptive clipping releases the noised centred
  count; the clipping-norm trajectory is post-processing of it).
- `rounds.parquet` train_loss / val_loss: central: means of per-client values, a trusted-driver log NOT covered by
  DP; under SecAgg: not released (NaN).
- `rounds.parquet` n_sampled / n_ok / n_failed: participation counts, NOT covered by DP (operator log; under SecAgg
  the driver knows them by protocol).
- `clients.parquet`: central: per-client values in the clear, NOT covered by DP, keep it private; under SecAgg:
  status and placement only. Its `view` column says which case a file is.
- `eval.parquet`, `samples/`: NOT covered by DP: the evaluator uses the evaluated clients' held-out clips and
  private identity adapters.
- `clients/` (identity adapters): never leave the client's host; not released, not DP.

Which epsilon is reported. The epsilon in `rounds.parquet`, `privacy.json`, the run summary, sweeps and this
README is the accountant's upper bound (RDP, or PRV for Gaussian rounds; Skellam rounds are accounted with RDP)
for the shared-adapter releases under the deployment of the run. `pftray audit` gives an empirical lower bound.
The sample-level DP-SGD epsilon is a different adjacency (one clip of one client) and is never added to it.

Not covered. A SecAgg round that aborts leaves the adapter unchanged, which is visible; aborts are assumed to
depend on dropouts, not on the data. Floating-point attacks on the central Gaussian sampler, and timing.
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
from pftray.privacy.layer import (
    DistributedNoisePlan,
    DPLayer,
    bounded_weight,
    secure_generator,
    skellam_noise,
)
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

"""Hyper-parameter sweeps with Ray Tune + Optuna (TPE), single- or multi-objective.

A **sweep file** (YAML) names a base config and a search space over any dotted config key::

    name: dp-lora-tdc
    base: configs/privfedtalk.yaml        # a preset path (relative to the cwd or the sweep file) or a mapping
    overrides: {fed.rounds: 20}           # dotted keys applied to the base before sampling
    space:
      privacy.noise_multiplier: {type: loguniform, low: 0.3, high: 3}
      lora.shared_rank: {type: choice, values: [2, 4, 8]}
      train.lambda_tdc: {type: uniform, low: 0.0, high: 0.5}
      fed.strategy: {type: choice, values: [fedavg, fedprox, isfa]}
    objectives:                           # one (single-objective) or two (Pareto front)
      - {metric: psnr, mode: max}
      - {metric: epsilon, mode: min}
    search: {num_samples: 32, max_concurrent: 4, seed: 0}
    scheduler: {type: asha, metric: val_loss, mode: min, grace_period: 2, reduction_factor: 2}
    trial: {pool: ray, driver_cpus: 1}    # pool: ray (worker actors from runtime.tiers) | local (in-process)
    max_failures: 0                       # retries of a failing trial; a trial that still fails is recorded
    smoke_test: {num_samples: 2, max_concurrent: 2, overrides: {fed.rounds: 1}, scheduler: {grace_period: 1}}

The ASHA ``grace_period`` must not exceed ``fed.rounds`` (ASHA's ``max_t``), checked when the file is read for the
sweep and for its smoke variant, whose ``smoke_test.scheduler`` overrides the scheduler's keys.

Every trial is a plain function of its sampled config (:func:`sweep_trainable`): it builds the
:class:`~pftray.config.Config`, prepares a run directory ``<trial dir>/run`` (the same run-directory contract as
``pftray run``), runs the rounds over a :class:`~pftray.runtime.pool.RayPool` (``trial.pool: ray``) or an
in-process :class:`~pftray.fed.pool.LocalPool` (``trial.pool: local``) and reports every round to Tune.

Resources: a trial reserves its driver *and* its workers together, ``PlacementGroupFactory([{CPU: driver},
*one bundle per worker of runtime.tiers])``. Ray Tune schedules the trainable with
``placement_group_capture_child_tasks=True`` (``ray/air/execution/resources/placement_group.py``), so the
``ClientWorker`` actors the trial creates land in the trial's own placement group without any extra
scheduling strategy; trials never starve each other of GPUs half-way through a round.

Privacy as an objective: ``epsilon`` is the accountant's epsilon at ``privacy.target_delta``; a trial without DP
(``privacy.noise_multiplier = 0``) has no finite guarantee and reports ``epsilon = inf`` (never NaN or 0), so it
is dominated on the privacy axis by every DP trial.
"""

from __future__ import annotations

from pftray.sweep.command import (  # noqa: F401 - re-exported: pftray.tune stays the public entry point
    _init_ray,
    add_sweep_parser,
    cmd_sweep,
    main,
)
from pftray.sweep.search import (  # noqa: F401 - re-exported: pftray.tune stays the public entry point
    _interrupted,
    _parquet_safe,
    build_scheduler,
    build_searcher,
    experiment_dir,
    run_sweep,
    wrapped_trainable,
)
from pftray.sweep.spec import (  # noqa: F401 - re-exported: pftray.tune stays the public entry point
    PARAM_TYPES,
    PATH_KEYS,
    SCHEDULER_KEYS,
    SWEEP_KEYS,
    Objective,
    ParamSpec,
    SchedulerSpec,
    SweepSpec,
    TrialSpec,
    _absolute_paths,
    _apply,
    _check_rounds,
    _mapping,
    _number,
    _param,
    _resolve_base,
    _scheduler,
    load_sweep_file,
    sweep_from_dict,
)
from pftray.sweep.trial import (  # noqa: F401 - re-exported: pftray.tune stays the public entry point
    RoundReporter,
    _trial_device,
    run_trial,
    sweep_trainable,
    trial_bundles,
    trial_config,
    worker_bundles,
)
from pftray.sweep_layout import DONE_MARKER, METRIC_MODES, RUN_SUBDIR  # noqa: F401

if __name__ == "__main__":
    raise SystemExit(main())

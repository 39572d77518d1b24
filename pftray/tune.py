"""Hyper-parameter sweeps with Ray Tune + Optuna (TPE), single- or multi-objective: the public entry point.

The code lives in :mod:`pftray.sweep`, one module per job; the sweep-file format, the objectives and the privacy
axis are documented once, in :mod:`pftray.sweep.spec`. This module re-exports those names, so ``pftray.tune``
imports keep working.
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

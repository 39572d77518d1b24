"""The Tune wiring: searcher, scheduler, the experiment directory and :func:`run_sweep`."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import yaml

from pftray.config import (
    ConfigError,
)
from pftray.sweep.spec import (
    SweepSpec,
    sweep_from_dict,
)
from pftray.sweep.trial import (
    sweep_trainable,
    trial_bundles,
)
from pftray.sweep_layout import DONE_MARKER

# ------------------------------------------------------------------------------------------ the sweep


def build_searcher(spec: SweepSpec):
    """``ConcurrencyLimiter(OptunaSearch(TPE))``; two objectives make it a multi-objective (Pareto) search."""
    import optuna
    from ray.tune.search import ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    metrics = [o.metric for o in spec.objectives]
    modes = [o.mode for o in spec.objectives]
    multi = len(metrics) > 1
    sampler = optuna.samplers.TPESampler(seed=spec.seed, multivariate=True)
    search = OptunaSearch(
        metric=metrics if multi else metrics[0],
        mode=modes if multi else modes[0],
        sampler=sampler,
        points_to_evaluate=[dict(p) for p in spec.points_to_evaluate] or None,
    )
    return ConcurrencyLimiter(search, max_concurrent=spec.max_concurrent)


def build_scheduler(spec: SweepSpec):
    if spec.scheduler.type != "asha":
        return None
    from ray.tune.schedulers import ASHAScheduler

    s = spec.scheduler
    return ASHAScheduler(
        time_attr="server_round",
        metric=s.metric,
        mode=s.mode,
        max_t=spec.base_config.fed.rounds,
        grace_period=s.grace_period,
        reduction_factor=s.reduction_factor,
    )


def wrapped_trainable(spec: SweepSpec, exp_dir: str | Path):
    """``with_resources(with_parameters(sweep_trainable, ...), PlacementGroupFactory(trial_bundles(spec)))``."""
    from ray import tune
    from ray.tune import PlacementGroupFactory

    fn = tune.with_parameters(sweep_trainable, spec=spec, exp_dir=str(Path(exp_dir).resolve()))
    return tune.with_resources(fn, PlacementGroupFactory(trial_bundles(spec), strategy="PACK"))


def experiment_dir(spec: SweepSpec, out: str | Path | None = None) -> Path:
    return Path(out or spec.out).resolve() / spec.name


def run_sweep(
    spec: SweepSpec, *, out: str | Path | None = None, resume: bool = False, verbose: int = 1
) -> tuple[Path, Any]:
    """Run (or resume) a sweep; returns ``(experiment dir, ResultGrid)``. Ray must be initialised.

    Writes into the experiment dir: ``sweep.yaml`` (the resolved spec), Tune's trial dirs (each with ``run/``),
    ``results.parquet`` (``ResultGrid.get_dataframe()``), ``trials.parquet`` (:func:`pftray.analysis.load_sweep`)
    and ``sweep_done.json``.
    """
    import json

    from ray import tune

    from pftray.analysis import load_sweep
    from pftray.results import atomic_write_text, write_parquet

    exp = experiment_dir(spec, out)
    saved = exp / "sweep.yaml"
    trainable = wrapped_trainable(spec, exp)
    if resume:
        if not tune.Tuner.can_restore(str(exp)):
            raise FileNotFoundError(f"{exp}: no sweep to resume (no Tune experiment state)")
        saved_spec = sweep_from_dict(yaml.safe_load(saved.read_text())) if saved.exists() else spec
        if saved_spec != spec:
            raise ConfigError(
                f"{exp}: the sweep file changed since the sweep started; resume with the same file "
                f"or start a new sweep (another name or --out)"
            )
        tuner = tune.Tuner.restore(
            str(exp), trainable=trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
        )
        (exp / DONE_MARKER).unlink(missing_ok=True)
    else:
        if saved.exists() or tune.Tuner.can_restore(str(exp)):
            raise FileExistsError(f"{exp} already holds a sweep; use --resume, another --out or another name")
        exp.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved, yaml.safe_dump(spec.to_dict(), sort_keys=False))
        tuner = tune.Tuner(
            trainable,
            param_space={p.key: p.domain() for p in spec.space},
            tune_config=tune.TuneConfig(
                search_alg=build_searcher(spec),
                scheduler=build_scheduler(spec),
                num_samples=spec.num_samples,
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=spec.name,
                storage_path=str(exp.parent),
                verbose=verbose,
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            ),
        )
    t0 = time.perf_counter()
    grid = tuner.fit()
    complete = not _interrupted(grid, spec)
    df = grid.get_dataframe()
    write_parquet(_parquet_safe(df), exp / "results.parquet")
    write_parquet(_parquet_safe(load_sweep(exp, finished=complete)), exp / "trials.parquet")
    if complete:  # an interrupted sweep (Ctrl-C: Tune saves its state and returns) gets no marker
        marker = {
            "wall_s": time.perf_counter() - t0,
            "trials": len(grid),
            "errors": sum(r.error is not None for r in grid),
        }
        atomic_write_text(exp / DONE_MARKER, json.dumps(marker))
    return exp, grid


def _interrupted(grid: Any, spec: SweepSpec) -> bool:
    """Whether ``Tuner.fit`` returned before every trial ended (Tune returns normally after a SIGINT)."""
    if len(grid) < spec.num_samples:
        return True
    # ResultGrid has no public trial status; a trial that is neither TERMINATED nor ERROR did not end
    trials = getattr(getattr(grid, "_experiment_analysis", None), "trials", None) or []
    return any(getattr(t, "status", "TERMINATED") not in ("TERMINATED", "ERROR") for t in trials)


def _parquet_safe(df):
    """Object columns with mixed types (e.g. a metric that is sometimes a string) are stored as strings."""
    df = df.copy()
    for c in df.columns:
        if df[c].dtype == object:
            kinds = {type(v) for v in df[c] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            if len(kinds) > 1 or (kinds and not kinds <= {str}):
                df[c] = df[c].map(lambda v: None if v is None else str(v))
    return df

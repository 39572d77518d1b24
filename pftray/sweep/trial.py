"""The trainable: one trial's config, its resources and its in-process (or Ray-pool) run, reported round by round."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pftray.config import (
    Config,
    ConfigError,
    TierConfig,
    apply_overrides,
)
from pftray.sweep.spec import (
    SweepSpec,
)
from pftray.sweep_layout import METRIC_MODES, RUN_SUBDIR

# ------------------------------------------------------------------------------------------ the trainable


def trial_config(spec: SweepSpec, params: Mapping[str, Any], *, trial_id: str = "") -> Config:
    """The trial's config: base + sampled values (+ a trial-specific experiment name)."""
    cfg = apply_overrides(spec.base_config, dict(params))
    if trial_id:
        cfg = cfg.replace(**{"experiment.name": f"{spec.name}-{trial_id}"})
    return cfg


def worker_bundles(tiers: tuple[TierConfig, ...]) -> list[dict[str, float]]:
    """One placement-group bundle per worker actor of every tier (what ``RayPool`` will ask for)."""
    from pftray.runtime.ray_pool import tier_request

    bundles = []
    for tier in tiers:
        req = tier_request(tier)
        if req:  # a worker that asks for nothing needs no reservation
            bundles += [dict(req) for _ in range(tier.num_workers)]
    return bundles


def trial_bundles(spec: SweepSpec) -> list[dict[str, float]]:
    """``[{CPU: driver}, *worker bundles]`` (ray pool) or ``[{CPU: local_cpus, GPU: local_gpus}]`` (local)."""
    if spec.trial.pool == "local":
        b = {"CPU": float(spec.trial.local_cpus)}
        if spec.trial.local_gpus:
            b["GPU"] = float(spec.trial.local_gpus)
        return [b]
    return [{"CPU": float(spec.trial.driver_cpus)}, *worker_bundles(spec.base_config.runtime.tiers)]


class RoundReporter:
    """The server's progress callback: turns each round row into one ``tune.report``.

    Every report carries every objective metric (Tune and Optuna need them on each result): evaluation metrics
    that appear only on evaluation rounds are carried forward from the last evaluation (NaN before the first).
    """

    def __init__(self, cfg: Config, run_dir: str, report: Callable[[dict[str, Any]], None]):
        self.dp = cfg.privacy.noise_multiplier > 0
        self.run_dir = run_dir
        self.report = report
        self.count = 0
        self.last_eval: dict[str, float] = {
            k: math.nan for k in METRIC_MODES if k not in ("val_loss", "train_loss", "epsilon")
        }

    def metrics(self, row: Mapping[str, Any]) -> dict[str, Any]:
        for k in self.last_eval:
            v = row.get(k)
            if isinstance(v, (int, float)) and math.isfinite(v):
                self.last_eval[k] = float(v)
        eps = row.get("epsilon", math.nan)
        eps = float(eps) if self.dp and isinstance(eps, (int, float)) and math.isfinite(eps) else math.inf
        out = {
            "server_round": int(row["server_round"]),
            "train_loss": float(row.get("train_loss", math.nan)),
            "val_loss": float(row.get("val_loss", math.nan)),
            "epsilon": eps,
            **self.last_eval,
            "n_ok": int(row.get("n_ok", 0)),
            "n_failed": int(row.get("n_failed", 0)),
            "round_status": str(row.get("status", "")),
            "round_wall_s": float(row.get("wall_s", math.nan)),
            "run_dir": self.run_dir,
        }
        if "eval_error" in row:
            out["eval_error"] = str(row["eval_error"])
        return out

    def __call__(self, row: Mapping[str, Any]) -> None:
        self.count += 1
        self.report(self.metrics(row))


def _trial_device(gpus: float) -> str:
    import ray
    import torch

    return "cuda" if gpus > 0 and ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"


def run_trial(
    spec: SweepSpec,
    params: Mapping[str, Any],
    run_path: Path,
    *,
    trial_id: str,
    report: Callable[[dict[str, Any]], None],
) -> dict[str, Any]:
    """Run (or resume) one trial's federated run in ``run_path``; ``report`` receives one dict per round.

    A trial restarted by Tune (crash, ``Tuner.restore``) finds its run directory and resumes from the latest
    federated checkpoint; a run that had already finished re-reports its rounds instead of training again.
    """
    from pftray.results import RunDir
    from pftray.runtime.driver import make_pool, make_server, prepare_run, resume_config

    cfg = trial_config(spec, params, trial_id=trial_id)
    run = RunDir(run_path)
    if (run.path / "config.yaml").exists():
        if resume_config(run) != cfg:
            raise ConfigError(
                f"{run.path}: holds a run with another config; refusing to resume it as {trial_id}"
            )
        run.update_meta(status="running", resumed=time.strftime("%Y-%m-%dT%H:%M:%S"))
    else:
        prepare_run(cfg, run)
    run.update_meta(trial_id=trial_id, sweep=spec.name, params=dict(params))
    reporter = RoundReporter(cfg, str(run.path), report)
    t0 = time.perf_counter()
    if spec.trial.pool == "local":
        import torch

        torch.set_num_threads(max(1, int(spec.trial.local_cpus)))
    pool = make_pool(cfg, run.path, kind=spec.trial.pool, local_hosts=spec.trial.local_hosts,
                     device=_trial_device(spec.trial.local_gpus) if spec.trial.pool == "local" else "cpu",
                     worker=f"{trial_id}-local")
    server = None
    try:
        server = make_server(cfg, run, pool, reporter)
        summary = server.run_rounds()
        if reporter.count == 0:
            # restarted after its last round (or with its privacy budget spent): nothing new was trained, so
            # report what the run directory holds rather than end the trial without a result
            rows = run.table("rounds").to_dict("records")
            for row in rows[:-1]:
                reporter.metrics(row)  # carries the evaluation metrics forward
            if rows:
                reporter(rows[-1])
    except (SystemExit, KeyboardInterrupt):
        # Tune ends a trial that its scheduler stops (ASHA) or that the sweep is shutting down by raising
        # SystemExit inside tune.report: an early stop, not a failure
        r = server.state.server_round if server is not None else 0
        run.update_meta(status="done" if r >= cfg.fed.rounds else "stopped", rounds_completed=r)
        raise
    except BaseException as exc:
        run.update_meta(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    finally:
        pool.shutdown()
    wall = time.perf_counter() - t0
    run.update_meta(wall_s=wall)
    return {**summary, "wall_s": wall}


def sweep_trainable(config: dict[str, Any], spec: SweepSpec, exp_dir: str) -> None:
    """The Tune trainable: a plain function of the sampled ``config`` (dotted keys -> values).

    The run directory is ``<exp_dir>/<trial dir name>/run``, i.e. inside the trial's directory in the sweep's
    storage, written in place. (``get_trial_dir()`` is Tune's *local staging* copy under the Ray session dir of
    whichever node runs the trial, synced to storage only when the trial ends and never from worker nodes: a
    run directory there would be lost or incomplete.) On a multi-node cluster ``exp_dir`` must therefore be on a
    filesystem every node mounts, as the worker actors write client states into the same run directory.
    """
    from ray import tune

    ctx = tune.get_context()
    run_path = Path(exp_dir) / Path(ctx.get_trial_dir()).name / RUN_SUBDIR
    run_trial(spec, config, run_path, trial_id=ctx.get_trial_id(), report=tune.report)

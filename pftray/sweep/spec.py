"""The sweep file: its schema, validation and the resolved :class:`SweepSpec`.

Hyper-parameter sweeps with Ray Tune + Optuna (TPE), single- or multi-objective.

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
``pftray run``), runs the rounds over a :class:`~pftray.runtime.ray_pool.RayPool` (``trial.pool: ray``) or an
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

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pftray.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_from_dict,
    load_config,
    path_roots,
    resolve_input_paths,
)
from pftray.sweep_layout import METRIC_MODES

PARAM_TYPES = ("uniform", "loguniform", "int", "logint", "choice")
SWEEP_KEYS = (
    "name",
    "base",
    "overrides",
    "space",
    "objectives",
    "search",
    "scheduler",
    "trial",
    "max_failures",
    "smoke_test",
    "out",
)
#: config keys holding paths: made absolute at launch, because Tune runs trials in another working directory
PATH_KEYS = ("data.source", "data.public_source", "model.pretrained", "model.backbone")


# ------------------------------------------------------------------------------------------ the sweep file


@dataclass(frozen=True)
class ParamSpec:
    """One search dimension over a dotted config key (``values`` for ``choice``; ``low``/``high`` otherwise)."""

    key: str
    type: str
    low: float | None = None
    high: float | None = None
    values: tuple[Any, ...] = ()

    def domain(self) -> Any:
        """The Ray Tune search domain (int ranges are inclusive of ``high``)."""
        from ray import tune

        if self.type == "uniform":
            return tune.uniform(self.low, self.high)
        if self.type == "loguniform":
            return tune.loguniform(self.low, self.high)
        if self.type == "int":
            return tune.randint(int(self.low), int(self.high) + 1)
        if self.type == "logint":
            return tune.lograndint(int(self.low), int(self.high) + 1)
        return tune.choice(list(self.values))

    def probes(self) -> list[Any]:
        """Values that validation applies to the base config: both bounds, or every choice."""
        if self.type == "choice":
            return list(self.values)
        if self.type in ("int", "logint"):
            return [int(self.low), int(self.high)]
        return [float(self.low), float(self.high)]


@dataclass(frozen=True)
class Objective:
    metric: str
    mode: str


@dataclass(frozen=True)
class SchedulerSpec:
    """ASHA on rounds (``time_attr = server_round``, which equals Tune's ``training_iteration`` in a fresh trial
    and stays right in a trial resumed from its run directory)."""

    type: str = "none"
    metric: str = "val_loss"
    mode: str = "min"
    grace_period: int = 1
    reduction_factor: float = 2.0


@dataclass(frozen=True)
class TrialSpec:
    pool: str = "ray"
    driver_cpus: float = 1.0
    local_hosts: int = 1
    local_cpus: float = 1.0
    local_gpus: float = 0.0


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep file. ``base`` is the fully resolved base config (overrides applied) as a plain dict."""

    name: str
    base: dict[str, Any]
    space: tuple[ParamSpec, ...]
    objectives: tuple[Objective, ...]
    num_samples: int = 8
    max_concurrent: int = 2
    seed: int = 0
    points_to_evaluate: tuple[dict[str, Any], ...] = ()
    scheduler: SchedulerSpec = field(default_factory=SchedulerSpec)
    trial: TrialSpec = field(default_factory=TrialSpec)
    max_failures: int = 0
    out: str = "runs/sweeps"
    smoke: dict[str, Any] = field(default_factory=dict)

    @property
    def base_config(self) -> Config:
        return config_from_dict(self.base)

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping that :func:`sweep_from_dict` reads back to an equal spec (saved as ``sweep.yaml``)."""
        space = {}
        for p in self.space:
            space[p.key] = (
                {"type": "choice", "values": list(p.values)}
                if p.type == "choice"
                else {"type": p.type, "low": p.low, "high": p.high}
            )
        s = self.scheduler
        return {
            "name": self.name,
            "base": copy.deepcopy(self.base),
            "space": space,
            "objectives": [{"metric": o.metric, "mode": o.mode} for o in self.objectives],
            "search": {
                "num_samples": self.num_samples,
                "max_concurrent": self.max_concurrent,
                "seed": self.seed,
                "points_to_evaluate": [dict(p) for p in self.points_to_evaluate],
            },
            "scheduler": {
                "type": s.type,
                "metric": s.metric,
                "mode": s.mode,
                "grace_period": s.grace_period,
                "reduction_factor": s.reduction_factor,
            },
            "trial": {
                "pool": self.trial.pool,
                "driver_cpus": self.trial.driver_cpus,
                "local_hosts": self.trial.local_hosts,
                "local_cpus": self.trial.local_cpus,
                "local_gpus": self.trial.local_gpus,
            },
            "max_failures": self.max_failures,
            "out": self.out,
            "smoke_test": copy.deepcopy(self.smoke),
        }

    def smoke_test(self) -> SweepSpec:
        """The ``--smoke-test`` variant: ``smoke_test`` overrides on the base and on the scheduler (e.g. a grace
        period that fits its fewer rounds), fewer samples, ``<name>-smoke``."""
        sm = self.smoke
        base = self.base
        if sm.get("overrides"):
            base = _apply(config_from_dict(base), sm["overrides"], "smoke_test.overrides").to_dict()
        d = self.to_dict()
        d.update(name=f"{self.name}-smoke", base=base, smoke_test={})
        d["scheduler"].update(sm.get("scheduler") or {})
        d["search"].update(
            num_samples=int(sm.get("num_samples", min(2, self.num_samples))),
            max_concurrent=int(sm.get("max_concurrent", min(2, self.max_concurrent))),
        )
        return sweep_from_dict(d)


def _apply(cfg: Config, overrides: Mapping[str, Any], where: str) -> Config:
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"{where}: expected a mapping of dotted keys to values, got {overrides!r}")
    try:
        return apply_overrides(cfg, dict(overrides))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _mapping(d: Any, where: str, allowed: tuple[str, ...]) -> dict[str, Any]:
    if d is None:
        return {}
    if not isinstance(d, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {d!r}")
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}.{unknown[0]}: unknown key; allowed keys here: {sorted(allowed)}")
    return dict(d)


def _number(v: Any, where: str, *, positive: bool = False, integer: bool = False) -> float:
    ok = isinstance(v, int) if integer else isinstance(v, (int, float))
    if isinstance(v, bool) or not ok or not math.isfinite(v):
        raise ConfigError(f"{where}: expected {'an integer' if integer else 'a finite number'}, got {v!r}")
    if positive and v <= 0:
        raise ConfigError(f"{where}: {v!r} must be > 0")
    return v


SCHEDULER_KEYS = ("type", "metric", "mode", "grace_period", "reduction_factor")


def _scheduler(sch: Mapping[str, Any], where: str) -> SchedulerSpec:
    scheduler = SchedulerSpec(**sch)
    if scheduler.type not in ("none", "asha"):
        raise ConfigError(f"{where}.type: {scheduler.type!r} is not allowed; choose 'none' or 'asha'")
    if scheduler.metric not in METRIC_MODES or scheduler.mode not in ("min", "max"):
        raise ConfigError(
            f"{where}.metric/mode: {scheduler.metric!r}/{scheduler.mode!r}; metric one of "
            f"{sorted(METRIC_MODES)}, mode 'min' or 'max'"
        )
    _number(scheduler.grace_period, f"{where}.grace_period", integer=True, positive=True)
    if _number(scheduler.reduction_factor, f"{where}.reduction_factor") <= 1:
        raise ConfigError(f"{where}.reduction_factor: {scheduler.reduction_factor!r} must be > 1")
    return scheduler


def _check_rounds(scheduler: SchedulerSpec, base: Config, where: str, rounds_name: str) -> None:
    """ASHA stops trials at ``max_t = fed.rounds`` and first compares them at ``grace_period`` rounds, so the grace
    period cannot exceed the rounds (Ray's ASHAScheduler asserts it when the sweep starts)."""
    rounds = base.fed.rounds
    if scheduler.type == "asha" and scheduler.grace_period > rounds:
        raise ConfigError(
            f"{where}.grace_period: {scheduler.grace_period} exceeds the {rounds_name} {rounds} (ASHA's max_t); "
            f"set {where}.grace_period <= {rounds} or run more rounds"
        )


def _param(key: str, raw: Any, base: Config) -> ParamSpec:
    where = f"space.{key}"
    d = _mapping(raw, where, ("type", "low", "high", "values"))
    kind = d.get("type")
    if kind not in PARAM_TYPES:
        raise ConfigError(f"{where}.type: {kind!r} is not allowed; choose one of {list(PARAM_TYPES)}")
    if kind == "choice":
        values = d.get("values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}.values: expected a non-empty list, got {values!r}")
        if set(d) - {"type", "values"}:
            raise ConfigError(f"{where}: type 'choice' takes only 'values', got {sorted(d)}")
        spec = ParamSpec(key, kind, values=tuple(values))
    else:
        if "values" in d:
            raise ConfigError(
                f"{where}.values: only type 'choice' takes values; type {kind!r} takes low/high"
            )
        for b in ("low", "high"):
            if b not in d:
                raise ConfigError(f"{where}.{b}: missing; type {kind!r} needs low and high")
        integer = kind in ("int", "logint")
        low = _number(d["low"], f"{where}.low", integer=integer, positive=kind in ("loguniform", "logint"))
        high = _number(d["high"], f"{where}.high", integer=integer)
        if not high > low:
            raise ConfigError(f"{where}: high {high!r} must be greater than low {low!r}")
        spec = ParamSpec(key, kind, low=low, high=high)
    for v in spec.probes():  # every bound / choice must make a valid config on its own
        try:
            apply_overrides(base, {key: v})
        except ConfigError as exc:
            raise ConfigError(f"{where}: value {v!r} is not valid for the base config: {exc}") from None
    return spec


def _resolve_base(raw: Any, source: Path | None) -> Config:
    if isinstance(raw, Mapping):
        try:
            return config_from_dict(raw)
        except ConfigError as exc:
            raise ConfigError(f"base: {exc}") from None
    if not isinstance(raw, str) or not raw:
        raise ConfigError(
            f"base: expected a preset path (e.g. configs/quickstart.yaml) or a mapping, got {raw!r}"
        )
    tried = [Path(raw)]
    if source is not None and not Path(raw).is_absolute():
        tried += [source.parent / raw, source.parent.parent / raw]
    for p in tried:
        if p.is_file():
            return load_config(p.resolve())
    raise ConfigError(f"base: preset {raw!r} not found (tried {[str(p) for p in tried]})")


def _absolute_paths(cfg: Config, cwd: Path) -> Config:
    fixes = {}
    for key in PATH_KEYS:
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value and not (key == "data.source" and value == "synthetic") and not Path(value).is_absolute():
            fixes[key] = str((cwd / value).resolve())
    return cfg.replace(**fixes) if fixes else cfg


def sweep_from_dict(data: Any, *, source: Path | None = None, cwd: Path | None = None) -> SweepSpec:
    """Validate a parsed sweep file. Errors are :class:`ConfigError` naming the sweep key (and the config key)."""
    d = _mapping(data, "<sweep>", SWEEP_KEYS)
    name = d.get("name")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise ConfigError(f"name: expected a non-empty directory name, got {name!r}")
    if "base" not in d:
        raise ConfigError("base: missing; name a preset (configs/*.yaml) or give the config inline")
    base = _resolve_base(d["base"], source)
    overrides = d.get("overrides") or {}
    base = _apply(base, overrides, "overrides")
    # input paths of an inline base or of the overrides: the sweep file's folder, then the working directory, then
    # the repository root (a preset's own paths are already absolute: load_config resolves them against its folder)
    here = Path(cwd or Path.cwd())
    base = resolve_input_paths(base, path_roots(source.parent if source is not None else None, here))
    base = _absolute_paths(base, here)
    space_raw = d.get("space")
    if not isinstance(space_raw, Mapping) or not space_raw:
        raise ConfigError(f"space: expected a non-empty mapping of dotted config keys, got {space_raw!r}")
    for key in space_raw:
        if str(key).startswith("runtime.tiers"):
            raise ConfigError(
                f"space.{key}: runtime.tiers cannot be searched; every trial reserves the same "
                "worker bundles (sweep the tiers with separate sweep files)"
            )
        if key in overrides:
            raise ConfigError(f"space.{key}: also set in overrides; a key is either fixed or searched")
    space = tuple(_param(str(k), v, base) for k, v in space_raw.items())
    objs_raw = d.get("objectives")
    if not isinstance(objs_raw, list) or not 1 <= len(objs_raw) <= 2:
        raise ConfigError(f"objectives: expected a list of one or two {{metric, mode}}, got {objs_raw!r}")
    objectives = []
    for i, o in enumerate(objs_raw):
        o = _mapping(o, f"objectives[{i}]", ("metric", "mode"))
        if o.get("metric") not in METRIC_MODES:
            raise ConfigError(
                f"objectives[{i}].metric: {o.get('metric')!r} is not allowed; choose one of "
                f"{sorted(METRIC_MODES)}"
            )
        if o.get("mode") not in ("min", "max"):
            raise ConfigError(
                f"objectives[{i}].mode: {o.get('mode')!r} is not allowed; choose 'min' or 'max'"
            )
        objectives.append(Objective(o["metric"], o["mode"]))
    if len({o.metric for o in objectives}) != len(objectives):
        raise ConfigError(f"objectives: the same metric twice {[o.metric for o in objectives]}")
    search = _mapping(
        d.get("search"), "search", ("num_samples", "max_concurrent", "seed", "points_to_evaluate")
    )
    num_samples = int(
        _number(search.get("num_samples", 8), "search.num_samples", integer=True, positive=True)
    )
    max_conc = int(
        _number(search.get("max_concurrent", 2), "search.max_concurrent", integer=True, positive=True)
    )
    seed = int(_number(search.get("seed", 0), "search.seed", integer=True))
    points = search.get("points_to_evaluate") or []
    if not isinstance(points, list):
        raise ConfigError(f"search.points_to_evaluate: expected a list of mappings, got {points!r}")
    for i, pt in enumerate(points):
        pt = _mapping(pt, f"search.points_to_evaluate[{i}]", tuple(p.key for p in space))
        missing = [p.key for p in space if p.key not in pt]
        if missing:
            raise ConfigError(
                f"search.points_to_evaluate[{i}].{missing[0]}: missing; a point gives a value for "
                f"every searched key {[p.key for p in space]}"
            )
        try:
            apply_overrides(base, pt)
        except ConfigError as exc:
            raise ConfigError(f"search.points_to_evaluate[{i}]: {exc}") from None
    sch = _mapping(d.get("scheduler"), "scheduler", SCHEDULER_KEYS)
    scheduler = _scheduler(sch, "scheduler")
    _check_rounds(scheduler, base, "scheduler", "fed.rounds (after overrides)")
    tr = _mapping(d.get("trial"), "trial", ("pool", "driver_cpus", "local_hosts", "local_cpus", "local_gpus"))
    trial = TrialSpec(**tr)
    if trial.pool not in ("ray", "local"):
        raise ConfigError(
            f"trial.pool: {trial.pool!r} is not allowed; choose 'ray' (worker actors from "
            "runtime.tiers) or 'local' (clients in the trial's own process)"
        )
    _number(trial.driver_cpus, "trial.driver_cpus", positive=True)
    _number(trial.local_cpus, "trial.local_cpus", positive=True)
    _number(trial.local_hosts, "trial.local_hosts", integer=True, positive=True)
    if _number(trial.local_gpus, "trial.local_gpus") < 0:
        raise ConfigError(f"trial.local_gpus: {trial.local_gpus!r} must be >= 0")
    max_failures = int(_number(d.get("max_failures", 0), "max_failures", integer=True))
    if max_failures < -1:
        raise ConfigError(f"max_failures: {max_failures} must be >= -1 (-1 = retry forever)")
    smoke = _mapping(d.get("smoke_test"), "smoke_test", ("num_samples", "max_concurrent", "overrides", "scheduler"))
    if smoke:  # the --smoke-test variant is checked now too, not when someone first runs it
        smoke_base = _apply(base, smoke["overrides"], "smoke_test.overrides") if smoke.get("overrides") else base
        smoke_sch = _mapping(smoke.get("scheduler"), "smoke_test.scheduler", SCHEDULER_KEYS)
        smoke_scheduler = _scheduler({**sch, **smoke_sch}, "smoke_test.scheduler")
        _check_rounds(smoke_scheduler, smoke_base, "smoke_test.scheduler", "smoke_test's fed.rounds")
    out = d.get("out", "runs/sweeps")
    if not isinstance(out, str) or not out:
        raise ConfigError(f"out: expected a directory path, got {out!r}")
    return SweepSpec(
        name=name,
        base=base.to_dict(),
        space=space,
        objectives=tuple(objectives),
        num_samples=num_samples,
        max_concurrent=max_conc,
        seed=seed,
        points_to_evaluate=tuple(dict(p) for p in points),
        scheduler=scheduler,
        trial=trial,
        max_failures=max_failures,
        out=out,
        smoke=smoke,
    )


def load_sweep_file(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML; every error names the file and the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read sweep file ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return sweep_from_dict(data, source=path.resolve())
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None

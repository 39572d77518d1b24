"""Sweep-file validation, trial resources, round reporting, the Pareto front and the cluster config (no Ray)."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from _tune_helpers import REPO, TINY_BASE, sweep_dict
from hypothesis import given, settings
from hypothesis import strategies as st

from pftray.analysis import pareto_front
from pftray.config import ConfigError, config_from_dict
from pftray.tune import (
    RoundReporter,
    build_scheduler,
    build_searcher,
    load_sweep_file,
    sweep_from_dict,
    trial_bundles,
    trial_config,
)


# ------------------------------------------------------------------------------------------ sweep files
def test_valid_sweep_parses_every_space_type():
    d = sweep_dict()
    d["space"]["train.local_steps"] = {"type": "int", "low": 1, "high": 3}
    d["space"]["data.clips_per_client"] = {"type": "logint", "low": 1, "high": 4}
    spec = sweep_from_dict(d)
    types = {p.key: p.type for p in spec.space}
    assert types == {
        "privacy.noise_multiplier": "loguniform",
        "lora.shared_rank": "choice",
        "train.lambda_tdc": "uniform",
        "fed.strategy": "choice",
        "train.local_steps": "int",
        "data.clips_per_client": "logint",
    }
    assert [(o.metric, o.mode) for o in spec.objectives] == [("psnr", "max"), ("epsilon", "min")]
    # the spec round-trips through the saved form (what --resume compares)
    assert sweep_from_dict(spec.to_dict()) == spec
    # a trial config is the base plus the sampled values
    cfg = trial_config(
        spec,
        {"privacy.noise_multiplier": 1.5, "fed.strategy": "fedprox", "lora.shared_rank": 1},
        trial_id="abc",
    )
    assert (cfg.privacy.noise_multiplier, cfg.fed.strategy, cfg.lora.shared_rank) == (1.5, "fedprox", 1)
    assert cfg.experiment.name == "t-abc" and cfg.data.resolution == 32


def test_int_domains_include_high():
    d = sweep_dict(space={"train.local_steps": {"type": "int", "low": 1, "high": 2}})
    dom = sweep_from_dict(d).space[0].domain()
    assert {dom.sample() for _ in range(60)} == {1, 2}


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["space"].update(
                {"privacy.noise_multiplyer": {"type": "uniform", "low": 0, "high": 1}}
            ),
            "space.privacy.noise_multiplyer: value 0.0 is not valid for the base config: privacy.noise_multiplyer: "
            "unknown key",
        ),
        (
            lambda d: d["space"].update({"lora.shared_rank": {"type": "choice", "values": [2, 0]}}),
            "space.lora.shared_rank: value 0 is not valid for the base config: lora.shared_rank: 0 is out of range",
        ),
        (
            lambda d: d["space"].update({"fed.strategy": {"type": "choice", "values": ["isfa", "fedsgd"]}}),
            "space.fed.strategy: value 'fedsgd' is not valid",
        ),
        (
            lambda d: d["space"].update({"train.lambda_tdc": {"type": "loguniform", "low": 0.0, "high": 1}}),
            "space.train.lambda_tdc.low: 0.0 must be > 0",
        ),
        (
            lambda d: d["space"].update({"train.lambda_tdc": {"type": "uniform", "low": 0.5, "high": 0.1}}),
            "space.train.lambda_tdc: high 0.1 must be greater than low 0.5",
        ),
        (
            lambda d: d["space"].update({"train.lambda_tdc": {"type": "normal", "low": 0, "high": 1}}),
            "space.train.lambda_tdc.type: 'normal' is not allowed",
        ),
        (
            lambda d: d["space"].update({"train.lambda_tdc": {"type": "uniform", "low": 0}}),
            "space.train.lambda_tdc.high: missing",
        ),
        (
            lambda d: d["space"].update({"train.local_steps": {"type": "int", "low": 1.5, "high": 3}}),
            "space.train.local_steps.low: expected an integer",
        ),
        (
            lambda d: d["space"].update({"lora.shared_rank": {"type": "choice", "values": []}}),
            "space.lora.shared_rank.values: expected a non-empty list",
        ),
        (
            lambda d: d["space"].update({"lora.shared_rank": {"type": "choice", "vals": [2]}}),
            "space.lora.shared_rank.vals: unknown key",
        ),
        (
            lambda d: d.update(overrides={"lora.shared_rank": 2}),
            "space.lora.shared_rank: also set in overrides",
        ),
        (lambda d: d.update(overrides={"fed.roundz": 2}), "overrides: fed.roundz: unknown key"),
        (
            lambda d: d.update(objectives=[{"metric": "fid", "mode": "min"}]),
            "objectives[0].metric: 'fid' is not",
        ),
        (
            lambda d: d.update(objectives=[{"metric": "psnr", "mode": "up"}]),
            "objectives[0].mode: 'up' is not",
        ),
        (lambda d: d.update(objectives=[]), "objectives: expected a list of one or two"),
        (lambda d: d.update(search={"num_samples": 0}), "search.num_samples: 0 must be > 0"),
        (lambda d: d.update(search={"max_concurent": 2}), "search.max_concurent: unknown key"),
        (lambda d: d.update(scheduler={"type": "pbt"}), "scheduler.type: 'pbt' is not allowed"),
        (lambda d: d.update(trial={"pool": "gpu"}), "trial.pool: 'gpu' is not allowed"),
        (lambda d: d.update(trial={"pool": "local", "local_cpus": 0}), "trial.local_cpus: 0 must be > 0"),
        (lambda d: d.update(spaces={}), "<sweep>.spaces: unknown key"),
        (lambda d: d.pop("base"), "base: missing"),
        (
            lambda d: d.update(base="configs/no-such-preset.yaml"),
            "base: preset 'configs/no-such-preset.yaml' not found",
        ),
        (
            lambda d: d["base"]["fed"].update(mu=0.0),
            "space.fed.strategy: value 'fedprox' is not valid for the base "
            "config: fed.mu: 0.0 with strategy 'fedprox'",
        ),
        (
            lambda d: d.update(search={"points_to_evaluate": [{"lora.shared_rank": 2}]}),
            "search.points_to_evaluate[0].privacy.noise_multiplier: missing",
        ),
        (
            lambda d: d.update(
                search={
                    "points_to_evaluate": [
                        {
                            "lora.shared_rank": 0,
                            "privacy.noise_multiplier": 1.0,
                            "train.lambda_tdc": 0.1,
                            "fed.strategy": "isfa",
                        }
                    ]
                }
            ),
            "search.points_to_evaluate[0]: lora.shared_rank: 0 is out of range",
        ),
        (lambda d: d.update(name="a/b"), "name: expected a non-empty directory name"),
        (
            lambda d: d["space"].update({"runtime.tiers": {"type": "choice", "values": [[]]}}),
            "space.runtime.tiers: runtime.tiers cannot be searched",
        ),
    ],
)
def test_sweep_validation_names_the_key(mutate, message):
    d = sweep_dict()
    mutate(d)
    with pytest.raises(ConfigError) as err:
        sweep_from_dict(d)
    assert message in str(err.value)


def test_sweep_file_errors_name_the_file(tmp_path: Path):
    p = tmp_path / "bad.yaml"
    d = sweep_dict()
    d["space"]["lora.shared_rank"]["values"] = [2, 1000]
    p.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match=r"bad\.yaml: space\.lora\.shared_rank: value 1000 .*out of range"):
        load_sweep_file(p)
    with pytest.raises(ConfigError, match="cannot read sweep file"):
        load_sweep_file(tmp_path / "missing.yaml")


def test_base_preset_relative_to_sweep_file_and_paths_made_absolute(tmp_path: Path):
    (tmp_path / "configs").mkdir()
    (tmp_path / "sweeps").mkdir()
    base = copy.deepcopy(TINY_BASE)
    base["model"]["backbone"] = "checkpoints/bb.pt"
    (tmp_path / "configs" / "tiny.yaml").write_text(yaml.safe_dump(base))
    d = sweep_dict(base="configs/tiny.yaml")
    (tmp_path / "sweeps" / "s.yaml").write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError, match=r"model\.backbone: 'checkpoints/bb\.pt': no such file"):
        load_sweep_file(tmp_path / "sweeps" / "s.yaml")  # a missing backbone fails when the file is read
    bb = tmp_path / "configs" / "checkpoints" / "bb.pt"  # relative to the preset's folder
    bb.parent.mkdir()
    bb.write_bytes(b"")
    spec = load_sweep_file(tmp_path / "sweeps" / "s.yaml")  # found via the sweep file's parent's parent
    assert spec.base["model"]["backbone"] == str(bb.resolve())  # absolute: trials run in another directory
    assert spec.base["data"]["source"] == "synthetic"


def test_smoke_variant():
    d = sweep_dict(smoke_test={"num_samples": 1, "overrides": {"fed.rounds": 1, "train.local_steps": 1}})
    d["base"]["fed"]["rounds"] = 5
    spec = sweep_from_dict(d)
    smoke = spec.smoke_test()
    assert smoke.name == "t-smoke" and smoke.num_samples == 1 and smoke.base["fed"]["rounds"] == 1
    assert spec.base["fed"]["rounds"] == 5 and smoke.space == spec.space


def test_shipped_sweeps_validate():
    assert load_sweep_file(REPO / "sweeps" / "smoke.yaml").trial.pool == "local"
    spec = load_sweep_file(REPO / "sweeps" / "privfedtalk.yaml")
    assert {p.key for p in spec.space} == {
        "privacy.noise_multiplier",
        "lora.shared_rank",
        "train.lambda_tdc",
        "fed.strategy",
    }
    assert spec.scheduler.type == "asha" and len(spec.objectives) == 2
    bundles = trial_bundles(spec)
    assert bundles[0] == {"CPU": 1.0} and len(bundles) == 7 and sum(b.get("GPU", 0) for b in bundles) == 2.0
    assert trial_bundles(spec.smoke_test()) == [{"CPU": 1.0}, {"CPU": 1.0}]  # the smoke variant runs on CPU


def test_searcher_and_scheduler():
    multi = build_searcher(sweep_from_dict(sweep_dict()))
    assert multi.max_concurrent == 2
    assert multi.searcher.metric == ["psnr", "epsilon"] and multi.searcher.mode == ["max", "min"]
    single = build_searcher(sweep_from_dict(sweep_dict(objectives=[{"metric": "val_loss", "mode": "min"}])))
    assert single.searcher.metric == "val_loss" and single.searcher.mode == "min"
    assert build_scheduler(sweep_from_dict(sweep_dict())) is None
    d = sweep_dict(scheduler={"type": "asha", "grace_period": 2, "reduction_factor": 3})
    d["base"]["fed"]["rounds"] = 9
    asha = build_scheduler(sweep_from_dict(d))
    assert asha._time_attr == "server_round" and asha._metric == "val_loss" and asha._mode == "min"
    assert asha._max_t == 9 and asha._reduction_factor == 3
    assert [m for m, _ in asha._brackets[0]._rungs] == [6, 2]  # grace 2 * 3^k below max_t 9


# ------------------------------------------------------------------------------------------ resources
def test_trial_bundles_reserve_driver_and_every_worker():
    d = sweep_dict(trial={"pool": "ray", "driver_cpus": 0.5})
    d["base"]["runtime"] = {
        "tiers": [
            {
                "name": "l4",
                "num_workers": 2,
                "num_cpus": 2,
                "num_gpus": 0.5,
                "resources": {"accelerator_type:L4": 0.001},
            },
            {"name": "a100", "num_workers": 1, "num_cpus": 4, "num_gpus": 1},
        ]
    }
    assert trial_bundles(sweep_from_dict(d)) == [
        {"CPU": 0.5},
        {"CPU": 2.0, "GPU": 0.5, "accelerator_type:L4": 0.001},
        {"CPU": 2.0, "GPU": 0.5, "accelerator_type:L4": 0.001},
        {"CPU": 4.0, "GPU": 1.0},
    ]
    assert trial_bundles(
        sweep_from_dict(sweep_dict(trial={"pool": "local", "local_cpus": 2, "local_gpus": 0.25}))
    ) == [{"CPU": 2.0, "GPU": 0.25}]


def test_round_reporter_carries_eval_metrics_and_reports_inf_epsilon_without_dp():
    got = []
    cfg = config_from_dict(TINY_BASE)  # noise_multiplier 0: no DP
    rep = RoundReporter(cfg, "/r", got.append)
    rep(
        {
            "server_round": 1,
            "train_loss": 1.0,
            "val_loss": 0.5,
            "epsilon": math.nan,
            "status": "ok",
            "psnr": 9.5,
        }
    )
    rep({"server_round": 2, "train_loss": 0.9, "val_loss": 0.4, "epsilon": math.nan, "status": "ok"})
    assert [g["server_round"] for g in got] == [1, 2]
    assert got[1]["psnr"] == 9.5 and math.isnan(got[1]["ssim"])  # carried forward / not yet measured
    assert got[0]["epsilon"] == math.inf and got[1]["val_loss"] == 0.4 and got[1]["run_dir"] == "/r"
    dp = RoundReporter(cfg.replace(**{"privacy.noise_multiplier": 1.0}), "/r", got.append)
    assert dp.metrics({"server_round": 1, "epsilon": 2.5})["epsilon"] == 2.5


# ------------------------------------------------------------------------------------------ pareto front
def test_pareto_front_hand_made():
    df = pd.DataFrame(
        {
            "trial": list("abcdefg"),
            "psnr": [20.0, 18.0, 22.0, 19.0, 22.0, np.nan, 25.0],
            "epsilon": [2.0, 1.0, 4.0, 3.0, 5.0, 0.5, math.inf],
        }
    )
    front = pareto_front(df, maximize=["psnr"], minimize=["epsilon"])
    # d is dominated by a (19<20, 3>2); e by c (same psnr, larger eps); f has NaN; g (no DP) is best in psnr
    assert list(front["trial"]) == ["g", "c", "a", "b"]
    assert list(front.index) == [6, 2, 0, 1]
    # single objective: the best row(s), ties kept
    assert list(pareto_front(df, maximize=["psnr"])["trial"]) == ["g"]
    assert list(pareto_front(df, minimize=["psnr"])["trial"]) == ["b"]
    tie = pd.DataFrame({"u": [1.0, 1.0, 0.0], "e": [1.0, 1.0, 1.0]})
    assert list(pareto_front(tie, maximize=["u"], minimize=["e"]).index) == [0, 1]
    with pytest.raises(ValueError, match="column 'fid' not in the frame"):
        pareto_front(df, minimize=["fid"])
    with pytest.raises(ValueError, match="at least one column"):
        pareto_front(df)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=12))
def test_pareto_front_matches_brute_force(points):
    df = pd.DataFrame(points, columns=["u", "e", "c"]).astype(float)
    front = set(pareto_front(df, maximize=["u"], minimize=["e", "c"]).index)

    def dominates(a, b):
        better_eq = a[0] >= b[0] and a[1] <= b[1] and a[2] <= b[2]
        return better_eq and (a[0] > b[0] or a[1] < b[1] or a[2] < b[2])

    expected = {i for i, p in enumerate(points) if not any(dominates(q, p) for q in points)}
    assert front == expected
    for i, j in itertools.combinations(sorted(front), 2):
        assert not dominates(points[i], points[j]) and not dominates(points[j], points[i])


# ------------------------------------------------------------------------------------------ cluster.yaml
def test_cluster_yaml_passes_ray_schema_and_a_typo_fails():
    import jsonschema
    from ray.autoscaler._private.commands import prepare_config
    from ray.autoscaler._private.util import validate_config

    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(copy.deepcopy(cfg))
    validate_config(prepare_config(copy.deepcopy(cfg)))  # what `ray up` validates: defaults filled in
    types = cfg["available_node_types"]
    gpu_types = {k: v for k, v in types.items() if v["resources"].get("GPU", 0) > 0}
    assert (
        len(gpu_types) >= 2
        and cfg["head_node_type"] in types
        and "GPU" not in types[cfg["head_node_type"]]["resources"]
    )
    assert len({v["resources"]["GPU"] for v in gpu_types.values()}) >= 2  # GPU nodes of different sizes
    accel = [r for v in gpu_types.values() for r in v["resources"] if r.startswith("accelerator_type:")]
    assert len(set(accel)) == len(gpu_types)
    assert any("scripts/install.sh" in c for c in cfg["setup_commands"])
    for where, good, typo in [
        ((), "idle_timeout_minutes", "idle_timout_minutes"),
        (("available_node_types", "gpu_a10g_1x"), "min_workers", "min_worker"),
        ((), "setup_commands", "setup_comands"),
    ]:
        bad = copy.deepcopy(cfg)
        node = bad
        for k in where:
            node = node[k]
        node[typo] = node.pop(good)  # a typo'd key: the right value under a wrong name
        with pytest.raises(jsonschema.ValidationError, match=typo):
            validate_config(bad)


def test_entry_point_exits_2_with_the_key_on_a_bad_sweep(tmp_path: Path, capsys):
    from pftray.tune import main

    d = sweep_dict()
    d["space"]["fed.strategy"]["values"] = ["isfa", "fedsgd"]
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(d))
    assert main([str(p)]) == 2  # validated before Ray starts
    err = capsys.readouterr().err
    assert err.startswith("pftray: error: ") and "space.fed.strategy: value 'fedsgd'" in err
    assert main([str(tmp_path / "out-of-nowhere.yaml"), "--resume"]) == 2


def _asha_sweep(grace: int, rounds: int, smoke: dict | None = None) -> dict:
    d = sweep_dict(scheduler={"type": "asha", "grace_period": grace}, smoke_test=smoke or {})
    d["base"]["fed"]["rounds"] = rounds
    return d


def test_asha_grace_period_must_fit_the_rounds():
    with pytest.raises(ConfigError) as err:
        sweep_from_dict(_asha_sweep(6, 5))
    assert str(err.value) == (
        "scheduler.grace_period: 6 exceeds the fed.rounds (after overrides) 5 (ASHA's max_t); "
        "set scheduler.grace_period <= 5 or run more rounds"
    )
    d = _asha_sweep(6, 9)
    d["overrides"] = {"fed.rounds": 4}  # the rounds after the overrides count
    with pytest.raises(ConfigError, match=r"^scheduler\.grace_period: 6 exceeds .* 4 "):
        sweep_from_dict(d)
    assert build_scheduler(sweep_from_dict(_asha_sweep(5, 5)))._max_t == 5  # equal is fine
    d = _asha_sweep(9, 2)
    d["scheduler"]["type"] = "none"  # no ASHA, no constraint
    assert sweep_from_dict(d).scheduler.grace_period == 9


def test_the_smoke_variant_scheduler_is_checked_when_the_file_is_read():
    # the smoke test runs 2 rounds: a grace period of 3 fails on load, not when Ray's ASHAScheduler asserts
    with pytest.raises(ConfigError) as err:
        sweep_from_dict(_asha_sweep(3, 5, smoke={"overrides": {"fed.rounds": 2}}))
    assert str(err.value).startswith(
        "smoke_test.scheduler.grace_period: 3 exceeds the smoke_test's fed.rounds 2 (ASHA's max_t)"
    )
    spec = sweep_from_dict(_asha_sweep(3, 5, smoke={"overrides": {"fed.rounds": 2}, "scheduler": {"grace_period": 1}}))
    assert spec.scheduler.grace_period == 3  # the sweep keeps its own
    smoke = spec.smoke_test()
    assert smoke.scheduler.grace_period == 1 and smoke.scheduler.type == "asha" and smoke.base["fed"]["rounds"] == 2
    asha = build_scheduler(smoke)
    assert asha._max_t == 2 and [m for m, _ in asha._brackets[0]._rungs] == [2, 1]  # grace 1 * 2^k up to 2
    with pytest.raises(ConfigError, match=r"^smoke_test\.scheduler\.grace_path: unknown key"):
        sweep_from_dict(_asha_sweep(1, 5, smoke={"scheduler": {"grace_path": 1}}))
    with pytest.raises(ConfigError, match=r"^smoke_test\.scheduler\.grace_period: expected an integer"):
        sweep_from_dict(_asha_sweep(1, 5, smoke={"scheduler": {"grace_period": 0.5}}))


@pytest.mark.parametrize("name", ["privfedtalk.yaml", "smoke.yaml"])
def test_shipped_sweeps_build_their_schedulers_for_both_variants(name):
    spec = load_sweep_file(REPO / "sweeps" / name)
    for variant in (spec, spec.smoke_test()):
        s = build_scheduler(variant)  # Ray's ASHAScheduler asserts grace_period <= max_t
        assert s is None or s._max_t == variant.base["fed"]["rounds"]


def test_pftray_sweep_with_a_bad_grace_period_exits_2_with_one_line(tmp_path, capsys):
    from pftray.cli import main

    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(_asha_sweep(3, 5, smoke={"overrides": {"fed.rounds": 2}})))
    assert main(["sweep", str(p), "--smoke-test"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{p}: smoke_test.scheduler.grace_period: 3 exceeds" in err, err

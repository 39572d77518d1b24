"""A smoke sweep on a local Ray instance: 4 tiny trials, 2 at a time, clients in each trial's own process.

One trial is made to fail (``points_to_evaluate`` puts a noise multiplier whose first round would exceed
``privacy.target_epsilon``): it is recorded with its error and the sweep goes on.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
from _tune_helpers import sweep_dict

from pftray.analysis import load_sweep, pareto_front, plot_sweep
from pftray.privacy.accounting import compute_epsilon
from pftray.results import RunDir
from pftray.tune import DONE_MARKER, run_sweep, sweep_from_dict

TARGET_EPS = 5.0
Q = 1.0  # fed.sample_rate of the tiny base (Poisson sampling)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    tmp = tempfile.mkdtemp(prefix="pft", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
    owned = not ray.is_initialized()  # reuse the session's instance (tests/conftest.py) when one is running
    if owned:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    try:
        d = sweep_dict(
            name="smoke",
            search={
                "num_samples": 4,
                "max_concurrent": 2,
                "seed": 3,
                "points_to_evaluate": [
                    {
                        "privacy.noise_multiplier": 0.3,
                        "lora.shared_rank": 2,
                        "train.lambda_tdc": 0.1,
                        "fed.strategy": "isfa",
                    }
                ],
            },
        )
        d["space"]["privacy.noise_multiplier"]["low"] = 0.3
        d["scheduler"] = {
            "type": "asha",
            "metric": "val_loss",
            "mode": "min",
            "grace_period": 1,
        }  # wiring only
        d["base"]["privacy"]["target_epsilon"] = TARGET_EPS
        spec = sweep_from_dict(d)
        out = tmp_path_factory.mktemp("sweeps")
        t0 = time.perf_counter()
        exp, grid = run_sweep(spec, out=out, verbose=0)
        wall = time.perf_counter() - t0
        yield spec, exp, grid, wall
    finally:
        if owned:
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def test_sweep_results_one_row_per_trial(sweep):
    spec, exp, grid, wall = sweep
    print(f"smoke sweep wall time {wall:.1f} s")
    assert len(grid) == 4
    results = pd.read_parquet(exp / "results.parquet")  # ResultGrid.get_dataframe() as Parquet
    assert "config/privacy.noise_multiplier" in results and results["trial_id"].is_unique
    df = load_sweep(exp)
    saved = pd.read_parquet(exp / "trials.parquet")
    pd.testing.assert_frame_equal(df.reset_index(drop=True), saved, check_dtype=False)
    assert len(df) == 4 and df["trial_id"].is_unique and (exp / DONE_MARKER).exists()
    assert set(results["trial_id"]) <= set(df["trial_id"])
    for _, row in df.iterrows():
        z = row["config/privacy.noise_multiplier"]
        eps1 = compute_epsilon(noise_multiplier=z, sample_rate=Q, rounds=1, delta=1e-5)
        if eps1 > TARGET_EPS:  # the budget check refuses the first round: a failed trial, with its error
            assert row["status"] == "error", row.to_dict()
            assert "target_epsilon" in row["error"] and "RunError" in row["error"]
            meta = pd.read_json(Path(row["run_dir"]) / "meta.json", typ="series")
            assert meta["status"] == "failed"
        else:
            assert row["status"] == "done" and row["error"] == ""
            assert row["final/epsilon"] == pytest.approx(eps1, rel=1e-9)
            assert math.isfinite(row["final/psnr"]) and row["final/psnr"] > 0
            run = Path(row["run_dir"])
            assert run.parent.parent == exp  # run dirs live in the trial dirs of the sweep
            rounds = RunDir(run).table("rounds")
            assert list(rounds["server_round"]) == [1]
            assert rounds["val_loss"].iloc[0] == pytest.approx(row["final/val_loss"])
            cfg = (run / "config.yaml").read_text()
            assert f"strategy: {row['config/fed.strategy']}" in cfg
    assert (df["config/privacy.noise_multiplier"] == 0.3).sum() == 1  # the point to evaluate ran
    assert (df["status"] == "error").sum() >= 1 and (df["status"] == "done").sum() >= 1


def test_pareto_and_plots(sweep, tmp_path: Path):
    spec, exp, grid, wall = sweep
    df = load_sweep(exp)
    ok = df[df["status"] == "done"]
    front = pareto_front(ok, maximize=["final/psnr"], minimize=["final/epsilon"])
    assert 1 <= len(front) <= len(ok)
    for _, a in ok.iterrows():  # no finished trial dominates a front member
        for _, b in front.iterrows():
            assert not (
                a["final/psnr"] >= b["final/psnr"]
                and a["final/epsilon"] <= b["final/epsilon"]
                and (a["final/psnr"] > b["final/psnr"] or a["final/epsilon"] < b["final/epsilon"])
            )
    paths = plot_sweep(df, tmp_path)
    names = sorted(p.name for p in paths)
    assert names == sorted(
        [
            "privacy_utility.png",
            "psnr_vs_privacy_noise_multiplier.png",
            "psnr_vs_lora_shared_rank.png",
            "psnr_vs_train_lambda_tdc.png",
            "psnr_vs_fed_strategy.png",
        ]
    )
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000


def test_existing_sweep_is_not_overwritten(sweep):
    spec, exp, grid, wall = sweep
    with pytest.raises(FileExistsError, match="already holds a sweep; use --resume"):
        run_sweep(spec, out=exp.parent)

"""The trial body without Ray: one tiny in-process run, reported round by round, and a restart that finds the
finished run directory (it re-reports, it does not train again)."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
from _tune_helpers import sweep_dict

from pftray.config import ConfigError
from pftray.results import RunDir
from pftray.tune import run_trial, sweep_from_dict


def test_run_trial_reports_and_a_restart_does_not_retrain(tmp_path: Path):
    spec = sweep_from_dict(sweep_dict())
    params = {
        "privacy.noise_multiplier": 1.0,
        "lora.shared_rank": 1,
        "train.lambda_tdc": 0.2,
        "fed.strategy": "isfa",
    }
    run = tmp_path / "trial" / "run"
    got: list[dict] = []
    summary = run_trial(spec, params, run, trial_id="t1", report=got.append)
    assert summary["status"] == "done" and summary["rounds"] == 1
    assert len(got) == 1 and got[0]["server_round"] == 1 and got[0]["run_dir"] == str(run)
    rounds = RunDir(run).table("rounds")
    assert got[0]["val_loss"] == pytest.approx(rounds["val_loss"].iloc[0])
    assert got[0]["psnr"] == pytest.approx(rounds["psnr"].iloc[0]) and math.isfinite(got[0]["psnr"])
    assert 0 < got[0]["epsilon"] < math.inf
    tables = {p.name: pd.read_parquet(p) for p in run.glob("*.parquet")}
    ckpts = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()}
    again: list[dict] = []
    run_trial(spec, params, run, trial_id="t1", report=again.append)  # e.g. Tune restarted the trial
    # no round was trained again: same checkpoints (restore rewrites the tables, truncated to the checkpoint)
    assert {p: p.stat().st_mtime_ns for p in (run / "checkpoints").iterdir()} == ckpts
    for name, df in tables.items():
        pd.testing.assert_frame_equal(pd.read_parquet(run / name), df)
    assert [(r["server_round"], r["psnr"], r["epsilon"]) for r in again] == [
        (r["server_round"], r["psnr"], r["epsilon"]) for r in got
    ]
    with pytest.raises(ConfigError, match="holds a run with another config"):
        run_trial(spec, {**params, "lora.shared_rank": 2}, run, trial_id="t1", report=again.append)

"""``ray job submit`` of the sweep entry script to a local head started with ``ray start --head`` (own temp dir
and ports, dashboard on for the Jobs API); the head is torn down by pid in a finally."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from _tune_helpers import PYTHON, REPO, free_ports, kill_procs, procs_with, sweep_dict

from pftray.results import RunDir

RAY = str(Path(PYTHON).parent / "ray")


def test_ray_job_submit_runs_the_sweep_entry_script(tmp_path: Path):
    tmp = Path(tempfile.mkdtemp(prefix="pfj", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    gcs, dash, client, nm, om, agent, agent_grpc, metrics, rt_env = free_ports(9)
    d = sweep_dict(name="job", search={"num_samples": 1, "max_concurrent": 1, "seed": 0})
    sweep = tmp_path / "job.yaml"
    sweep.write_text(yaml.safe_dump(d))
    out = tmp_path / "out"
    try:
        t0 = time.perf_counter()
        start = subprocess.run(
            [
                RAY,
                "start",
                "--head",
                "--temp-dir",
                str(tmp),
                "--port",
                str(gcs),
                "--include-dashboard=true",
                "--dashboard-host",
                "127.0.0.1",
                "--dashboard-port",
                str(dash),
                "--ray-client-server-port",
                str(client),
                "--node-manager-port",
                str(nm),
                "--object-manager-port",
                str(om),
                "--dashboard-agent-listen-port",
                str(agent),
                "--dashboard-agent-grpc-port",
                str(agent_grpc),
                "--metrics-export-port",
                str(metrics),
                "--runtime-env-agent-port",
                str(rt_env),
                "--num-cpus",
                "2",
                "--disable-usage-stats",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert start.returncode == 0, start.stdout[-2000:] + start.stderr[-2000:]
        t_start = time.perf_counter() - t0
        t1 = time.perf_counter()
        job = subprocess.run(
            [
                RAY,
                "job",
                "submit",
                "--address",
                f"http://127.0.0.1:{dash}",
                "--",
                PYTHON,
                str(REPO / "sweeps" / "run_sweep.py"),
                str(sweep),
                "--out",
                str(out),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        t_job = time.perf_counter() - t1
        log = job.stdout[-4000:] + job.stderr[-2000:]
        assert job.returncode == 0, log
        assert "succeeded" in log and "sweep job: 1 trials (0 failed)" in log, log
    finally:
        kill_procs(procs_with(str(tmp)))
        shutil.rmtree(tmp, ignore_errors=True)  # Ray's session logs of this test
    print(f"ray start {t_start:.1f} s, job {t_job:.1f} s")
    trials = pd.read_parquet(out / "job" / "trials.parquet")
    assert list(trials["status"]) == ["done"]
    assert len(RunDir(trials["run_dir"].iloc[0]).table("rounds")) > 0
    assert procs_with(str(tmp)) == []

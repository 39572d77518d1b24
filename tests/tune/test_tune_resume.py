"""A sweep killed (SIGKILL of its whole process group) after its first trial finished resumes with
``--resume``: it ends with every trial done, and Tune does not run the finished trial again.

The second trial must still be running when the sweep is killed. With two identical 1-round trials it was not:
the second one reuses the first one's actor and ends about a second later, the sweep finishes, and no experiment
state is written after the first trial's end (the test then waited 60 s for one). So the trials are fixed
(``points_to_evaluate``): the first runs 1 round, the second 30, and the kill comes as soon as Tune's experiment
state records the first trial as TERMINATED (its own content, not a file time)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml
from _tune_helpers import PYTHON, REPO, kill_procs, procs_with, sweep_dict, wait_for

from pftray.results import RunDir


def _snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(d)): (p.stat().st_size, p.stat().st_mtime_ns) for p in d.rglob("*") if p.is_file()
    }


def _done_runs(exp: Path) -> list[Path]:
    out = []
    for meta in exp.glob("*/run/meta.json"):
        try:
            if json.loads(meta.read_text()).get("status") == "done":
                out.append(meta.parent)
        except (json.JSONDecodeError, OSError):  # being replaced right now
            continue
    return out


def _terminated_in_state(exp: Path, trial_id: str) -> bool:
    """Whether Tune's experiment state (what ``Tuner.restore`` reads) records ``trial_id`` as TERMINATED."""
    assert not (exp / "sweep_done.json").exists(), "the sweep finished before it could be killed"
    for path in exp.glob("experiment_state-*.json"):
        try:
            trials = [json.loads(t[0]) for t in json.loads(path.read_text())["trial_data"]]
        except (json.JSONDecodeError, OSError, KeyError, IndexError, TypeError):  # being replaced right now
            continue
        if any(t.get("trial_id") == trial_id and t.get("status") == "TERMINATED" for t in trials):
            return True
    return False


LONG_ROUNDS = 30  # the second trial: still running when the first one's end is in the experiment state


def test_killed_sweep_resumes_without_rerunning_finished_trials(tmp_path: Path):
    tmp = Path(tempfile.mkdtemp(prefix="pfr", dir="/tmp"))  # this test's Ray temp dir: finds its processes
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_TMPDIR": str(tmp),
        "TUNE_GLOBAL_CHECKPOINT_S": "0",
        "PYTHONUNBUFFERED": "1",
    }
    points = [{"fed.rounds": 1, "privacy.noise_multiplier": 1.0},
              {"fed.rounds": LONG_ROUNDS, "privacy.noise_multiplier": 1.0}]
    d = sweep_dict(
        name="resume",
        space={"fed.rounds": {"type": "choice", "values": [1, LONG_ROUNDS]},
               "privacy.noise_multiplier": {"type": "loguniform", "low": 0.5, "high": 3.0}},
        search={"num_samples": 2, "max_concurrent": 1, "seed": 0, "points_to_evaluate": points},
    )
    sweep = tmp_path / "resume.yaml"
    sweep.write_text(yaml.safe_dump(d))
    out = tmp_path / "out"
    exp = out / "resume"
    cmd = [PYTHON, str(REPO / "sweeps" / "run_sweep.py"), str(sweep), "--out", str(out)]
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(
        cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=tmp_path
    )
    try:
        t0 = time.perf_counter()
        first = wait_for(
            lambda: _done_runs(exp) if exp.exists() else [], timeout_s=150, what="a finished trial"
        )
        assert len(first) == 1
        first_id = json.loads((first[0] / "meta.json").read_text())["trial_id"]
        assert json.loads((first[0] / "meta.json").read_text())["params"]["fed.rounds"] == 1
        # the experiment state (trial statuses) is snapshotted on Tune's next controller step
        wait_for(
            lambda: _terminated_in_state(exp, first_id),
            timeout_s=60,
            what="the experiment state to record the first trial as TERMINATED",
        )
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        t_kill = time.perf_counter() - t0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        kill_procs(procs_with(str(tmp)))  # raylet, gcs, workers of the killed run
        log.close()
    assert not (exp / "trials.parquet").exists()  # it really was interrupted
    before = _snapshot(first[0])
    results_before = (first[0].parent / "result.json").read_text()
    try:
        t1 = time.perf_counter()
        res = subprocess.run(
            [*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path
        )
        t_resume = time.perf_counter() - t1
    finally:
        kill_procs(procs_with(str(tmp)))
        shutil.rmtree(tmp, ignore_errors=True)  # Ray's session logs of this test
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    print(f"first run until kill {t_kill:.1f} s, resume {t_resume:.1f} s")
    trials = pd.read_parquet(exp / "trials.parquet")
    assert len(trials) == 2 and list(trials["status"]) == ["done"] * 2, trials[
        ["trial_id", "status", "error"]
    ]
    assert _snapshot(first[0]) == before  # the finished trial's run directory was not touched
    assert (first[0].parent / "result.json").read_text() == results_before  # and Tune did not run it again
    by_rounds = {int(r): Path(d) for r, d in zip(trials["config/fed.rounds"], trials["run_dir"])}
    assert sorted(by_rounds) == [1, LONG_ROUNDS] and by_rounds[1].resolve() == first[0].resolve()
    for n, run_dir in by_rounds.items():
        rounds = RunDir(run_dir).table("rounds")
        assert list(rounds["server_round"]) == list(range(1, n + 1))  # no round ran twice in a resumed trial
    assert procs_with(str(tmp)) == []

"""A sweep on a local multi-node cluster (``ray.cluster_utils.Cluster``, in a subprocess): head {tierA: 1} and a
second node {tierB: 1}, one logical GPU each; the trial's worker actors (tier a -> tierA, tier b -> tierB, half a
GPU each) land on both nodes.

It also shows that the worker actors are scheduled *inside the trial's placement group*: the trial reserves
``[{CPU: 1}, {CPU: 1, GPU: .5, tierA: 1}, {CPU: 1, GPU: .5, tierB: 1}]``, which takes all of tierA and tierB, so
an actor created outside the group could never be placed and its clients would time out as failed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from _tune_helpers import PYTHON, kill_procs, procs_with


def test_sweep_workers_land_on_both_nodes(tmp_path: Path):
    tmp = Path(tempfile.mkdtemp(prefix="pfc", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_TMPDIR": str(tmp), "PYTHONUNBUFFERED": "1"}
    script = Path(__file__).parent / "_tune_cluster_sweep.py"
    try:
        t0 = time.perf_counter()
        res = subprocess.run(
            [PYTHON, str(script), str(tmp_path / "out")], env=env, capture_output=True, text=True, timeout=300
        )
        wall = time.perf_counter() - t0
    finally:
        kill_procs(procs_with(str(tmp)))
        shutil.rmtree(tmp, ignore_errors=True)  # Ray's session logs of this test
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
    assert res.returncode == 0 and lines, res.stdout[-3000:] + res.stderr[-3000:]
    print(f"cluster sweep {wall:.1f} s")
    r = json.loads(lines[-1][len("RESULT ") :])
    assert r["statuses"] == ["done"], r["errors"]
    assert r["node_resources"][r["head"]]["tierA"] == 1 and r["node_resources"][r["worker"]]["tierB"] == 1
    for clients in r["placements"]:
        assert all(c["status"] == "ok" for c in clients)
        where = {c["worker"]: c["node_id"] for c in clients}
        assert where == {"a-0": r["head"], "b-0": r["worker"]}  # each tier on the node that has its resource
        assert all(c["gpu_ids"] == "0" for c in clients)  # half of the node's one (logical) GPU
    assert procs_with(str(tmp)) == []

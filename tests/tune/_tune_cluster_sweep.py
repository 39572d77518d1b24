"""Subprocess of test_tune_cluster: a two-node ``ray.cluster_utils.Cluster`` (head {tierA}, worker {tierB}, one
logical GPU each) runs a sweep whose trials use worker actors of both tiers; prints one JSON line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import ray
from ray.cluster_utils import Cluster

sys.path.insert(0, str(Path(__file__).parent))
from _tune_helpers import sweep_dict  # noqa: E402

from pftray.results import RunDir
from pftray.tune import run_sweep, sweep_from_dict  # noqa: E402


def main(out: str) -> None:
    os.makedirs("/tmp/ray", exist_ok=True)  # cluster_utils needs Ray's default temp dir to exist
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "num_gpus": 1, "resources": {"tierA": 1}, "include_dashboard": False},
    )
    try:
        worker = cluster.add_node(num_cpus=2, num_gpus=1, resources={"tierB": 1})
        cluster.wait_for_nodes()
        ray.init(address=cluster.address)
        tiers = [
            {"name": "a", "num_workers": 1, "num_cpus": 1, "num_gpus": 0.5, "resources": {"tierA": 1}},
            {"name": "b", "num_workers": 1, "num_cpus": 1, "num_gpus": 0.5, "resources": {"tierB": 1}},
        ]
        d = sweep_dict(
            name="cluster",
            trial={"pool": "ray", "driver_cpus": 1},
            search={"num_samples": 1, "max_concurrent": 1, "seed": 1},
        )
        d["base"]["runtime"] = {"tiers": tiers, "round_timeout_s": 180.0}
        d["base"]["fed"]["clients_per_round"] = 2
        spec = sweep_from_dict(d)
        exp, grid = run_sweep(spec, out=out, verbose=0)
        trials = pd.read_parquet(exp / "trials.parquet")
        placements = []
        for run_dir in trials["run_dir"]:
            c = RunDir(run_dir).table("clients")
            placements.append(c[["client_id", "worker", "node_id", "gpu_ids", "status"]].to_dict("records"))
        nodes = {n["NodeID"]: n["Resources"] for n in ray.nodes() if n["Alive"]}
        print(
            "RESULT "
            + json.dumps(
                {
                    "head": cluster.head_node.node_id,
                    "worker": worker.node_id,
                    "statuses": list(trials["status"]),
                    "errors": list(trials["error"]),
                    "placements": placements,
                    "node_resources": {
                        k: {r: v for r, v in res.items() if r in ("tierA", "tierB", "GPU", "CPU")}
                        for k, res in nodes.items()
                    },
                }
            ),
            flush=True,
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])

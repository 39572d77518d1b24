"""The Ray layer on a local instance with 2 CPUs and 2 logical GPUs (no real GPU needed)."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pftray.fed.server import FederatedServer
from pftray.results import RunDir, load_run
from pftray.runtime.driver import initial_shared, prepare_run
from pftray.runtime.ray_pool import RayPool, TierError, check_tiers, client_tier
from tests.tinycfg import tiny_config

pytestmark = pytest.mark.ray


def _cfg(tiers, **kw):
    return tiny_config(**{"runtime.tiers": tiers, **kw})


def test_client_tier_follows_shares():
    from pftray.config import TierConfig

    tiers = (TierConfig(name="a", client_share=3.0), TierConfig(name="b", client_share=1.0))
    counts = np.bincount([client_tier(k, tiers) for k in range(4000)], minlength=2)
    assert abs(counts[0] / 4000 - 0.75) < 0.01
    assert all(client_tier(k, tiers) == client_tier(k, tiers) for k in range(50))


def test_unsatisfiable_tier_is_an_error_not_a_hang(ray_session):
    cfg = _cfg([{"name": "huge", "num_gpus": 8}])
    with pytest.raises(TierError, match=r"runtime.tiers\[huge\]: no node has"):
        check_tiers(cfg.runtime.tiers)
    cfg = _cfg([{"name": "a100", "num_gpus": 1, "resources": {"accelerator_type:A100": 0.001}}])
    with pytest.raises(TierError, match="accelerator_type:A100"):
        RayPool(cfg, "/tmp/unused")


def test_workers_get_the_fractional_gpus_asked_for(ray_session, tmp_path):
    cfg = _cfg([{"name": "quarter", "num_workers": 2, "num_cpus": 0.5, "num_gpus": 0.25},
                {"name": "whole", "num_workers": 1, "num_cpus": 0.5, "num_gpus": 1}])
    pool = RayPool(cfg, str(tmp_path))
    try:
        import ray

        placement = pool.placement()
        by_tier = {}
        for p in placement:
            by_tier.setdefault(p["tier"], []).append(p)
        assert len(by_tier["quarter"]) == 2 and len(by_tier["whole"]) == 1
        for p in placement:  # each worker sees exactly one logical GPU id
            assert p["gpu_ids"] in {"0", "1"}, p
        avail = ray.available_resources().get("GPU", 0.0)
        assert avail == pytest.approx(2 - 0.25 * 2 - 1)  # the fractions were reserved as asked
    finally:
        pool.shutdown()


@pytest.mark.parametrize("dispatch", ["static", "dynamic"])
def test_round_over_ray_then_killed_worker_round_completes_and_worker_is_recreated(ray_session, tmp_path, dispatch):
    cfg = _cfg([{"name": "cpu", "num_workers": 2, "num_cpus": 0.5, "num_gpus": 0.5}],
               **{"fed.rounds": 3, "fed.clients_per_round": 4, "fed.min_clients": 1, "runtime.dispatch": dispatch})
    run = RunDir(tmp_path / "run")
    prepare_run(cfg, run)
    pool = RayPool(cfg, str(run.path))
    try:
        server = FederatedServer(cfg, run, pool, initial_shared(cfg), num_registered=cfg.data.num_clients)
        server.round(1)
        victim = pool.worker_of(1)
        pool.kill_worker(victim)  # the process dies; the next round must notice, mark clients failed, go on
        server.round(2)
        server.round(3)
    finally:
        pool.shutdown()
    res = load_run(run.path)
    rounds, clients = res["rounds"], res["clients"]
    assert rounds["status"].tolist() == ["ok", "ok", "ok"]
    r2 = clients[clients.server_round == 2]
    lost = set(r2[r2.status == "failed"].client_id)
    if dispatch == "static":
        assert lost == {c for c in range(4) if pool.worker_of(c) == victim}
    else:  # the chunk the dead worker was running is lost, the rest of the round goes to the live workers
        assert len(lost) == 1, lost
        assert (r2[~r2.client_id.isin(lost)].status == "ok").all()
    assert "worker lost" in r2[r2.status == "failed"].message.iloc[0]
    assert rounds.loc[rounds.server_round == 2, "n_failed"].item() == len(lost)
    r3 = clients[clients.server_round == 3]
    assert (r3.status == "ok").all()  # the recreated worker serves its clients again
    assert set(clients[clients.status == "ok"].gpu_ids) <= {"0", "1"}


def _two_rounds(cfg, path):
    run = RunDir(path)
    prepare_run(cfg, run)
    pool = RayPool(cfg, str(run.path))
    try:
        server = FederatedServer(cfg, run, pool, initial_shared(cfg), num_registered=cfg.data.num_clients)
        server.round(1)
        server.round(2)
        workers = set(load_run(run.path)["clients"].worker)
        return server.state, workers
    finally:
        pool.shutdown()


def test_dynamic_dispatch_spreads_a_round_and_matches_static_dispatch_exactly(ray_session, tmp_path):
    """Clients train on whichever worker is free, over several chunks per worker and round, and private states
    move between workers through the run directory: the global weights after two rounds (the second reloads
    each client's state from round 1) are bit-identical to static client-to-worker pinning."""
    tiers = [{"name": "cpu", "num_workers": 2, "num_cpus": 0.5}]
    kw = {"fed.rounds": 2, "fed.clients_per_round": 4, "data.num_clients": 4, "runtime.resident_clients": 1}
    static, w_static = _two_rounds(_cfg(tiers, **kw, **{"runtime.dispatch": "static"}), tmp_path / "static")
    dynamic, w_dynamic = _two_rounds(_cfg(tiers, **kw, **{"runtime.dispatch": "dynamic"}), tmp_path / "dynamic")
    assert w_static == w_dynamic == {"cpu-0", "cpu-1"}
    np.testing.assert_allclose(dynamic.global_shared, static.global_shared, rtol=1e-5, atol=1e-7)
    assert np.abs(dynamic.global_shared - initial_shared(_cfg(tiers, **kw))).max() > 0  # training happened


def test_heterogeneous_multinode_cluster_places_each_tier_on_matching_nodes(tmp_path):
    """Two fake nodes with different custom resources; each tier's clients must train only on its node."""
    script = textwrap.dedent(f"""
        import os, sys, json
        os.environ["RAY_AUTH_MODE"] = "disabled"
        os.makedirs("/tmp/ray", exist_ok=True)
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        import ray
        from ray.cluster_utils import Cluster
        from tests.tinycfg import tiny_config
        from pftray.runtime.driver import run_federated
        cluster = Cluster(initialize_head=True, head_node_args={{"num_cpus": 1, "num_gpus": 0,
                          "resources": {{"accelerator_type:T4": 1}}}})
        b = cluster.add_node(num_cpus=1, num_gpus=2, resources={{"accelerator_type:A100": 1}})
        ray.init(address=cluster.address)
        try:
            cfg = tiny_config(**{{"fed.rounds": 1, "fed.clients_per_round": 4, "runtime.tiers": [
                {{"name": "t4", "num_cpus": 0.5, "resources": {{"accelerator_type:T4": 0.001}}, "client_share": 1}},
                {{"name": "a100", "num_cpus": 0.5, "num_gpus": 0.5,
                  "resources": {{"accelerator_type:A100": 0.001}}, "client_share": 1}}]}})
            run, summary = run_federated(cfg, out={str(tmp_path / "run")!r})
            nodes = {{n["NodeID"]: n["Resources"] for n in ray.nodes()}}
            print("RESULT", json.dumps({{"placement": summary["placement"], "nodes": nodes}}))
        finally:
            ray.shutdown()
            cluster.shutdown()
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    out = json.loads(res.stdout.split("RESULT", 1)[1])
    clients = load_run(tmp_path / "run")["clients"]
    assert (clients.status == "ok").all() and len(clients) == 4
    for _, row in clients.iterrows():
        tier = row.worker.rsplit("-", 1)[0]
        node_res = out["nodes"][row.node_id]
        assert (f"accelerator_type:{'T4' if tier == 't4' else 'A100'}") in node_res, (tier, node_res)
    assert set(clients.worker.str.rsplit("-", n=1).str[0]) == {"t4", "a100"}
    a100 = clients[clients.worker.str.startswith("a100")]
    assert (a100.gpu_ids.isin(["0", "1"])).all()

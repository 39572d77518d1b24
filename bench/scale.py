"""Scale benchmark (issue: federated rounds): 10,000 registered clients with 100 trained per round against 100
registered clients, tiny workload. Reports seconds per round, the driver's and workers' peak resident memory and the
on-disk client state; memory must not grow with the number of registered clients beyond their on-disk state.

    python -m bench.scale [--registered 100 10000] [--per-round 100] [--rounds 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_one(registered: int, per_round: int, rounds: int, workers: int) -> dict:
    from pftray.fed.server import FederatedServer
    from pftray.results import RunDir
    from pftray.runtime.driver import initial_shared, prepare_run
    from pftray.runtime.ray_pool import RayPool
    from tests.tinycfg import tiny_config

    cfg = tiny_config(**{"data.num_clients": registered, "fed.clients_per_round": per_round, "fed.rounds": rounds,
                         "train.local_steps": 1, "data.clips_per_client": 1, "data.frames_per_clip": 4,
                         "runtime.resident_clients": 8, "fed.checkpoint_every": rounds,
                         "runtime.tiers": [{"name": "cpu", "num_workers": workers, "num_cpus": 1}]})
    tmp = Path(tempfile.mkdtemp(prefix="pftray-scale-"))
    run = RunDir(tmp / "run")
    prepare_run(cfg, run)
    pool = RayPool(cfg, str(run.path))
    try:
        server = FederatedServer(cfg, run, pool, initial_shared(cfg), num_registered=registered)
        times = []
        for r in range(1, rounds + 1):
            t0 = time.perf_counter()
            server.round(r)
            times.append(time.perf_counter() - t0)
        infos = pool.placement()
    finally:
        pool.shutdown()
    out = {
        "registered": registered, "per_round": per_round, "rounds": rounds, "s_per_round": times,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "worker_peak_rss_mb": max(i["peak_rss_mb"] for i in infos),
        "client_state_on_disk_mb": _du(run.clients) / 2**20,
        "clients_with_state": sum(1 for _ in run.clients.iterdir()),
    }
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registered", type=int, nargs="+", default=[100, 10_000])
    ap.add_argument("--per-round", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", default="bench/results/scale.json")
    ap.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        import ray

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        try:
            print("RESULT " + json.dumps(run_one(args.one, args.per_round, args.rounds, args.workers)))
        finally:
            ray.shutdown()
        return 0
    results = []
    for n in args.registered:  # one process per size: peak memory is per process
        cmd = [sys.executable, "-m", "bench.scale", "--one", str(n), "--per-round", str(args.per_round),
               "--rounds", str(args.rounds), "--workers", str(args.workers)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        r = json.loads(proc.stdout.split("RESULT ", 1)[1].splitlines()[0])
        results.append(r)
        print(f"registered {n:>6d}  per round {args.per_round}  s/round {', '.join(f'{t:.1f}' for t in r['s_per_round'])}"
              f"  driver peak {r['driver_peak_rss_mb']:.0f} MB  worker peak {r['worker_peak_rss_mb']:.0f} MB  "
              f"client states on disk {r['client_state_on_disk_mb']:.1f} MB ({r['clients_with_state']} clients)",
              flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

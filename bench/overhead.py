"""Framework overhead per round: the same synthetic federated workload run by pftray (its real Ray pool and
round loop) and by Flower's simulation engine (Ray backend), in one invocation, on CPU.

Workload (identical function on both sides, :mod:`bench.workload`): a global vector of ``d`` float32 goes to
each client, the client burns a calibrated amount of CPU (0 s or ~1 s of numpy matmuls) and returns an update of
``d`` float32; FedAvg aggregates. Two parallel workers on both sides (pftray: 2 worker actors of 1 CPU; Flower: 2
actors of ``client_resources={"num_cpus": 1}``).

Reported per setting: seconds per round (median over the rounds after the first, which pays for warm-up), the
client compute (wall seconds of the busy loop, summed over the round's clients), and the framework overhead
``round - compute / workers`` with its share of the round.

pftray's side is :class:`SyntheticRayPool`, a subclass of :class:`pftray.runtime.ray_pool.RayPool` whose ``_spawn``
creates :class:`SyntheticWorker` actors hosting :class:`SyntheticHost` (the ``ClientHost`` contract:
``fit`` -> scalar reports, ``contribute`` -> partial weighted sum); everything else (grouping clients by worker,
``ray.put`` of the global vector once per round, ``ray.wait`` gathering, partial sums, the
:class:`~pftray.fed.server.FederatedServer` round loop with its parquet tables and checkpoints) is pftray's own.

    python -m bench overhead [--clients 10 100] [--work 0 1] [--rounds 4] [--d 100000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.workload import calibrate, client_update, expected_fedavg

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class SyntheticHost:
    """The :class:`pftray.fed.host.ClientHost` contract (``fit`` / ``contribute``) over the synthetic workload.

    As in ``ClientHost``, each trained client's delta stays here until the server has decided the weights, and
    only scalars and this host's partial weighted sum ``sum_k scale_k * delta_k`` leave."""

    def __init__(self, iters: int, worker: str = "local"):
        if iters < 0:
            raise ValueError(f"iters must be >= 0, got {iters}")
        self.iters, self.worker = iters, worker
        self.pending: dict[int, np.ndarray] = {}
        self.round = -1

    def fit(
        self, client_ids: list[int], global_shared: np.ndarray, server_round: int, round_cfg: dict[str, Any]
    ) -> list[dict[str, Any]]:
        if server_round != self.round:
            # per round, not per call (as ClientHost): with dynamic dispatch a worker receives several chunks
            # of one round and must keep every chunk's pending delta until ``contribute``
            self.pending.clear()
            self.round = server_round
        reports = []
        for cid in client_ids:
            t0 = time.perf_counter()
            delta, wall, cpu = client_update(cid, global_shared, self.iters)
            self.pending[cid] = delta
            reports.append(
                {
                    "client_id": cid,
                    "status": "ok",
                    "message": "",
                    "num_examples": 1,
                    "loss": 0.0,
                    "val_loss": 0.0,
                    "id_sim": 1.0,
                    "temp_stab": 1.0,
                    "update_norm": float(np.linalg.norm(delta)),
                    "worker": self.worker,
                    "compute_s": wall,
                    "compute_cpu_s": cpu,
                    "fit_s": time.perf_counter() - t0,
                }
            )
        return reports

    def contribute(
        self, scales: dict[int, float], *, clipping_norm: float = 0.0, noise_std: float = 0.0, seed: int = 0
    ) -> tuple[np.ndarray, dict[int, dict[str, Any]]]:
        if clipping_norm > 0 or noise_std > 0:
            raise ValueError(
                "SyntheticHost: the overhead benchmark runs without DP (clipping_norm = noise_std = 0)"
            )
        total, info = None, {}
        for cid, scale in scales.items():
            v = self.pending[cid] * np.float32(scale)
            total = v.astype(np.float64) if total is None else total + v
            info[cid] = {"update_norm_scaled": float(np.linalg.norm(v)), "clipped": False}
        self.pending.clear()
        return total, info

    def secagg_stage(self, stage: str, messages: dict[int, Any], **kw: Any) -> dict[int, Any]:
        raise ValueError("SyntheticHost: the overhead benchmark runs without secure aggregation")

    def evaluate(
        self, client_ids: list[int], global_shared: np.ndarray, server_round: int, **kw: Any
    ) -> list[dict[str, Any]]:
        return []

    def ping(self) -> dict[str, Any]:
        import resource

        return {
            "worker": self.worker,
            "pid": os.getpid(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }


def _synthetic_worker_class():
    import ray

    @ray.remote
    class SyntheticWorker:
        """A thin Ray shell around :class:`SyntheticHost`, as ``ClientWorker`` is around ``ClientHost``."""

        def __init__(self, iters: int, worker: str):
            self.host = SyntheticHost(iters, worker)

        def fit(self, *args, **kw):
            return self.host.fit(*args, **kw)

        def contribute(self, *args, **kw):
            return self.host.contribute(*args, **kw)

        def secagg_stage(self, *args, **kw):
            return self.host.secagg_stage(*args, **kw)

        def evaluate(self, *args, **kw):
            return self.host.evaluate(*args, **kw)

        def ping(self):
            return self.host.ping()

    return SyntheticWorker


def synthetic_pool_class():
    """``RayPool`` with ``_spawn`` creating synthetic-workload actors (built lazily: importing Ray is slow)."""

    from pftray.runtime.ray_pool import RayPool

    worker_cls = _synthetic_worker_class()

    class SyntheticRayPool(RayPool):
        """``RayPool`` over synthetic-workload actors: pftray's own ``fit`` (``runtime.dispatch`` of the config:
        ``dynamic`` hands chunks to whichever worker is free, ``static`` pins client ``k`` to worker
        ``k % workers``), ``contribute`` and gathering; only the actors' class differs."""

        def __init__(self, cfg, run_dir: str, *, iters: int):
            self.iters = iters
            self.last_compute_s = self.last_compute_cpu_s = 0.0
            self.last_worker_compute_s: dict[str, float] = {}
            super().__init__(cfg, run_dir)

        def fit(self, ids, global_shared, server_round, round_cfg):
            reports = super().fit(ids, global_shared, server_round, round_cfg)
            # the busy loop's own wall time, summed over the round's clients (what Flower's clients report too)
            self.last_compute_s = float(sum(rep["compute_s"] for rep in reports))
            self.last_compute_cpu_s = float(sum(rep["compute_cpu_s"] for rep in reports))
            per_worker: dict[str, float] = {}
            for rep in reports:
                per_worker[rep["worker"]] = per_worker.get(rep["worker"], 0.0) + rep["compute_s"]
            self.last_worker_compute_s = per_worker
            return reports

        def _spawn(self, ti: int, wi: int):
            tier = self.tiers[ti]
            return worker_cls.options(num_cpus=tier.num_cpus, num_gpus=tier.num_gpus, max_restarts=0).remote(
                self.iters, f"{tier.name}-{wi}"
            )

    return SyntheticRayPool


def bench_config(*, clients: int, workers: int, rounds: int):
    """A pftray config for the synthetic workload: every registered client trains every round, FedAvg, no DP,
    evaluation off, the default per-round checkpoint and parquet tables kept (they are part of the round)."""
    from pftray.config import config_from_dict

    return config_from_dict(
        {
            "experiment": {"name": "overhead", "seed": 0},
            "data": {"num_clients": clients},
            "fed": {
                "strategy": "fedavg",
                "rounds": rounds + 1,
                "clients_per_round": clients,
                "eval_every": 0,
                "eval_clients": 1,
                "min_clients": 1,
            },
            "runtime": {"tiers": [{"name": "cpu", "num_workers": workers, "num_cpus": 1}]},
        }
    )


def summarise(
    round_s: list[float], compute_s: list[float], compute_cpu_s: list[float], *, workers: int
) -> dict[str, Any]:
    """Median round time and overhead over the rounds after the first (warm-up: actor start, imports).

    ``overhead_s = round - compute / workers`` with ``compute`` the busy loops' wall seconds summed over the
    round's clients (a core shared with other processes slows the client, not the framework);
    ``overhead_cpu_s`` is the same with the loops' CPU seconds (it also charges the framework for any CPU it
    takes from the clients, and for everything else that ran on the machine)."""
    if not (len(round_s) == len(compute_s) == len(compute_cpu_s)) or len(round_s) < 2:
        raise ValueError(
            f"summarise: need >= 2 rounds with compute times, got {len(round_s)}/{len(compute_s)}/"
            f"{len(compute_cpu_s)}"
        )
    steady = list(zip(round_s[1:], compute_s[1:], compute_cpu_s[1:]))
    rs = statistics.median(r for r, _, _ in steady)
    ov = statistics.median(r - c / workers for r, c, _ in steady)
    ov_cpu = statistics.median(r - c / workers for r, _, c in steady)
    return {
        "round_s": rs,
        "compute_s": statistics.median(c for _, c, _ in steady),
        "compute_cpu_s": statistics.median(c for _, _, c in steady),
        "overhead_s": ov,
        "overhead_share": ov / rs if rs > 0 else float("nan"),
        "overhead_cpu_s": ov_cpu,
        "overhead_cpu_share": ov_cpu / rs if rs > 0 else float("nan"),
        "rounds_s": round_s,
        "rounds_compute_s": compute_s,
        "rounds_compute_cpu_s": compute_cpu_s,
        "first_round_s": round_s[0],
    }


def pftray_rounds(
    *, clients: int, iters: int, d: int, rounds: int, workers: int, dispatch: str = "dynamic"
) -> dict[str, Any]:
    """``rounds + 1`` rounds of the pftray server over a :class:`SyntheticRayPool` on the running Ray instance;
    checks the aggregate against the closed form of :func:`bench.workload.expected_fedavg`."""
    from pftray.fed.server import FederatedServer
    from pftray.results import RunDir
    from pftray.runtime.driver import prepare_run

    cfg = bench_config(clients=clients, workers=workers, rounds=rounds).replace(**{"runtime.dispatch": dispatch})
    tmp = Path(tempfile.mkdtemp(prefix="pftray-overhead-"))
    run = RunDir(tmp / "run")
    prepare_run(cfg, run)
    pool = synthetic_pool_class()(cfg, str(run.path), iters=iters)
    try:
        pool.placement()  # actors up before the clock starts
        server = FederatedServer(cfg, run, pool, np.zeros(d, np.float32), num_registered=clients)
        round_s, compute_s, compute_cpu_s, imbalance = [], [], [], []
        expect = np.zeros(d, np.float64)
        for r in range(1, rounds + 2):
            t0 = time.perf_counter()
            row = server.round(r)
            round_s.append(time.perf_counter() - t0)
            if row["status"] != "ok":
                raise RuntimeError(f"pftray round {r} failed: {row.get('message')}")
            compute_s.append(pool.last_compute_s)
            compute_cpu_s.append(pool.last_compute_cpu_s)
            # the slowest worker's compute minus the mean worker's: time the round waits on a straggler
            per = list(pool.last_worker_compute_s.values()) + [0.0] * (
                workers - len(pool.last_worker_compute_s)
            )
            imbalance.append(max(per) - sum(per) / workers)
            expect += expected_fedavg(list(range(clients)))
        err = float(np.max(np.abs(server.state.global_shared - expect)))
        if err > 1e-4:
            raise RuntimeError(f"pftray aggregated the wrong vector (max error {err:.3g})")
    finally:
        pool.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "framework": "pftray" if dispatch == "dynamic" else f"pftray-{dispatch}",
        "clients": clients,
        "iters": iters,
        "d": d,
        "workers": workers,
        "max_abs_error": err,
        "worker_imbalance_s": statistics.median(imbalance[1:]) if len(imbalance) > 1 else imbalance[0],
        "rounds_worker_imbalance_s": imbalance,
        **summarise(round_s, compute_s, compute_cpu_s, workers=workers),
    }


def run_pftray(
    *, clients: int, iters: int, d: int, rounds: int, workers: int, temp_dir: str, dispatch: str = "dynamic"
) -> dict[str, Any]:
    """:func:`pftray_rounds` on a fresh local Ray of ``workers`` CPUs (its own ``temp_dir``)."""
    import ray

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # Ray 2.5x: no token auth for a local instance
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        log_to_driver=False,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": ONE_THREAD},
    )
    try:
        return pftray_rounds(
            clients=clients, iters=iters, d=d, rounds=rounds, workers=workers, dispatch=dispatch
        )
    finally:
        ray.shutdown()


def run_flower(
    *, clients: int, iters: int, d: int, rounds: int, workers: int, temp_dir: str, python: str
) -> dict[str, Any]:
    """Flower's side in its own venv (a subprocess printing one JSON line)."""
    from bench.flower_side import run_in_flower_venv

    out = run_in_flower_venv(
        [
            "overhead",
            "--clients",
            str(clients),
            "--iters",
            str(iters),
            "--d",
            str(d),
            "--rounds",
            str(rounds),
            "--workers",
            str(workers),
            "--temp-dir",
            temp_dir,
        ],
        python=python,
        env=ONE_THREAD,
    )
    return {
        "framework": "flower",
        "clients": clients,
        "iters": iters,
        "d": d,
        "workers": workers,
        "max_abs_error": out["max_abs_error"],
        "flwr": out["flwr"],
        "ray": out["ray"],
        **summarise(out["round_s"], out["compute_s"], out["compute_cpu_s"], workers=workers),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100], help="clients per round")
    ap.add_argument("--work", type=float, nargs="+", default=[0.0, 1.0], help="client CPU seconds")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up round")
    ap.add_argument("--d", type=int, default=100_000, help="parameters (float32)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-flower", action="store_true", help="pftray's side only")
    ap.add_argument("--flower-python", default="", help="python of Flower's venv (default: build/find it)")
    ap.add_argument(
        "--dispatch",
        nargs="+",
        default=["dynamic"],
        choices=("static", "dynamic"),
        help="pftray's runtime.dispatch (dynamic is the default; static pins client k to worker k %% workers)",
    )
    ap.add_argument("--json", default="bench/results/overhead.json")
    ap.add_argument(
        "--append",
        action="store_true",
        help="keep the runs of --json measured for other (framework, clients, work) settings",
    )
    args = ap.parse_args(argv)
    os.environ.update(ONE_THREAD)
    python = ""
    if not args.no_flower:
        from bench.flower_side import ensure_flower_venv

        python = args.flower_python or ensure_flower_venv()
    results = []
    for work in args.work:
        iters = calibrate(work)
        for n in args.clients:
            sides = [f"pftray-{x}" for x in args.dispatch] + (["flower"] if python else [])  # pftray-dynamic: "pftray"
            for side in sides:
                temp_dir = tempfile.mkdtemp(prefix=f"ray-{side[:2]}-", dir="/tmp")
                kw = dict(
                    clients=n,
                    iters=iters,
                    d=args.d,
                    rounds=args.rounds,
                    workers=args.workers,
                    temp_dir=temp_dir,
                )
                try:
                    if side == "flower":
                        res = run_flower(**kw, python=python)
                    else:
                        res = run_pftray(**kw, dispatch=side.split("-", 1)[1])
                finally:
                    shutil.rmtree(temp_dir, ignore_errors=True)
                res["work_s"] = work
                res["load_avg_1m"] = os.getloadavg()[0]  # the machine is shared: how busy it was
                results.append(res)
                print(
                    f"{res['framework']:14s} clients {n:4d} work {work:3.1f}s  round {res['round_s']:7.3f}s  compute/worker "
                    f"{res['compute_s'] / args.workers:7.3f}s  overhead {res['overhead_s']:7.3f}s "
                    f"({100 * res['overhead_share']:5.1f}%)  on CPU-time basis {res['overhead_cpu_s']:7.3f}s "
                    f"({100 * res['overhead_cpu_share']:5.1f}%)",
                    flush=True,
                )
    if args.append and Path(args.json).exists():
        done = {(r["framework"], r["clients"], r["work_s"]) for r in results}
        old = json.loads(Path(args.json).read_text())["runs"]
        results = [r for r in old if (r["framework"], r["clients"], r["work_s"]) not in done] + results
    table = comparison(results)
    for row in table:
        print(
            f"{row['pftray']:14s} clients {row['clients']:4d} work {row['work_s']:3.1f}s  overhead pftray/flower "
            f"{row['overhead_ratio']:.3f}  round pftray/flower {row['round_ratio']:.3f}"
        )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(
        json.dumps(
            {
                "machine": machine(),
                "d": args.d,
                "workers": args.workers,
                "runs": results,
                "comparison": table,
            },
            indent=2,
        )
    )
    return 0


def comparison(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """pftray / Flower ratios of round time and overhead for each (clients, work) measured on both sides."""
    by = {(r["framework"], r["clients"], r["work_s"]): r for r in results}
    rows = []
    for (fw, n, w), p in by.items():
        f = by.get(("flower", n, w))
        if not fw.startswith("pftray") or f is None:
            continue
        rows.append(
            {
                "pftray": fw,
                "clients": n,
                "work_s": w,
                "pftray_round_s": p["round_s"],
                "flower_round_s": f["round_s"],
                "pftray_overhead_s": p["overhead_s"],
                "flower_overhead_s": f["overhead_s"],
                "pftray_overhead_share": p["overhead_share"],
                "flower_overhead_share": f["overhead_share"],
                "pftray_overhead_cpu_s": p["overhead_cpu_s"],
                "flower_overhead_cpu_s": f["overhead_cpu_s"],
                "pftray_overhead_cpu_share": p["overhead_cpu_share"],
                "flower_overhead_cpu_share": f["overhead_cpu_share"],
                "round_ratio": p["round_s"] / f["round_s"],
                "overhead_ratio": p["overhead_s"] / f["overhead_s"] if f["overhead_s"] > 0 else float("nan"),
            }
        )
    return rows


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import platform

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "load_avg_1m_at_end": os.getloadavg()[0],
    }


if __name__ == "__main__":
    raise SystemExit(main())

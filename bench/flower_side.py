"""Flower's side of the benchmarks, run with the python of Flower's own venv (Flower 1.42 pins Ray 2.55, which
must not meet pftray's Ray 2.60). This module never imports pftray: pftray's side calls
:func:`run_in_flower_venv`, which runs ``python -m bench.flower_side <command> ...`` in that venv and reads the
one ``RESULT {json}`` line it prints.

Commands (inside Flower's venv):

* ``overhead``: the synthetic workload of :mod:`bench.workload` through ``flwr.simulation.run_simulation``
  (Ray backend, ``client_resources={"num_cpus": 1}``, one actor per CPU given to Ray), legacy ``FedAvg`` with
  every node sampled every round and evaluation off; round times come from the strategy's own hooks
  (``configure_fit`` of round 1 to ``aggregate_fit`` of each round).
* ``secagg``: Flower's real SecAgg+ code, ``SecAggPlusWorkflow`` (server) and ``secaggplus_mod`` (client),
  driven in-process through a grid that hands each message straight to the addressed node's mod (no
  transport), exactly as ``pftray.privacy.secagg.run_secagg`` drives pftray's state machines: client seconds are
  the time inside the mods, driver seconds the rest of the workflow.

    bash bench/make_flower_venv.sh                      # once (or let ensure_flower_venv build it)
    .flwr-venv/bin/python -m bench.flower_side secagg --n 10 --d 10000 --num-shares 3 --threshold 2
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_VENV = os.environ.get("FLWR_VENV", str(REPO / ".flwr-venv"))


# ------------------------------------------------------------------------------------------ pftray's end
def ensure_flower_venv(venv: str = DEFAULT_VENV) -> str:
    """Build Flower's venv when missing (``bench/make_flower_venv.sh``); return its python."""
    subprocess.run(["bash", str(REPO / "bench" / "make_flower_venv.sh"), venv], check=True)
    return str(Path(venv) / "bin" / "python")


def run_in_flower_venv(
    args: list[str], *, python: str, env: dict[str, str] | None = None, timeout: float = 900.0
) -> dict[str, Any]:
    """Run ``python -m bench.flower_side *args`` in Flower's venv; return the JSON of its ``RESULT`` line."""
    full_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    full_env.update(env or {})
    full_env["RAY_AUTH_MODE"] = (
        "disabled"  # Ray >= 2.5x refuses a local cluster without it unless tokens are set
    )
    proc = subprocess.run(
        [python, "-m", "bench.flower_side", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(
        f"Flower side {args[0]} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
        f"{proc.stderr[-3000:]}"
    )


# -------------------------------------------------------------------------------------- overhead (Flower)
_TIMES: dict[str, dict[int, float]] = {"start": {}, "end": {}, "compute": {}, "compute_cpu": {}}
_FINAL: dict[str, Any] = {}


def flower_overhead(
    *, clients: int, iters: int, d: int, rounds: int, workers: int, temp_dir: str
) -> dict[str, Any]:
    """``rounds + 1`` rounds of Flower's simulation engine over the synthetic workload."""
    import flwr
    import ray
    from flwr.client import ClientApp, NumPyClient
    from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server import ServerApp, ServerAppComponents, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.simulation import run_simulation

    from bench.workload import client_update, expected_fedavg

    class BenchClient(NumPyClient):
        def __init__(self, cid: int):
            self.cid = cid

        def fit(self, parameters, config):
            # Flower's FedAvg averages the returned weights: w + delta_k averages to w + mean(delta)
            delta, wall, cpu = client_update(self.cid, parameters[0], iters)
            return [parameters[0] + delta], 1, {"compute_s": wall, "compute_cpu_s": cpu}

    def client_fn(context: Context):
        return BenchClient(int(context.node_config["partition-id"])).to_client()

    class TimedFedAvg(FedAvg):
        def configure_fit(self, server_round, parameters, client_manager):
            _TIMES["start"].setdefault(server_round, time.perf_counter())
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            if failures:
                raise RuntimeError(f"Flower round {server_round}: {len(failures)} failures: {failures[:2]}")
            out = super().aggregate_fit(server_round, results, failures)
            _TIMES["end"][server_round] = time.perf_counter()
            _TIMES["compute"][server_round] = sum(float(r.metrics["compute_s"]) for _, r in results)
            _TIMES["compute_cpu"][server_round] = sum(float(r.metrics["compute_cpu_s"]) for _, r in results)
            _FINAL["params"] = out[0]
            return out

    def server_fn(context: Context):
        strategy = TimedFedAvg(
            fraction_fit=1.0,
            min_fit_clients=clients,
            min_available_clients=clients,
            fraction_evaluate=0.0,
            min_evaluate_clients=0,
            accept_failures=False,
            initial_parameters=ndarrays_to_parameters([np.zeros(d, np.float32)]),
        )
        return ServerAppComponents(strategy=strategy, config=ServerConfig(num_rounds=rounds + 1))

    run_simulation(
        server_app=ServerApp(server_fn=server_fn),
        client_app=ClientApp(client_fn=client_fn),
        num_supernodes=clients,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {
                "num_cpus": workers,
                "_temp_dir": temp_dir,
                "include_dashboard": False,
                "log_to_driver": False,
            },
        },
    )
    n_rounds = rounds + 1
    if sorted(_TIMES["end"]) != list(range(1, n_rounds + 1)):
        raise RuntimeError(f"Flower completed rounds {sorted(_TIMES['end'])}, expected 1..{n_rounds}")
    ends = [_TIMES["end"][r] for r in range(1, n_rounds + 1)]
    round_s = [ends[0] - _TIMES["start"][1]] + [b - a for a, b in zip(ends, ends[1:])]
    final = parameters_to_ndarrays(_FINAL["params"])[0]
    expect = n_rounds * expected_fedavg(list(range(clients)))
    return {
        "round_s": round_s,
        "compute_s": [_TIMES["compute"][r] for r in range(1, n_rounds + 1)],
        "compute_cpu_s": [_TIMES["compute_cpu"][r] for r in range(1, n_rounds + 1)],
        "max_abs_error": float(np.max(np.abs(final - expect))),
        "flwr": flwr.__version__,
        "ray": ray.__version__,
    }


# ---------------------------------------------------------------------------------------- SecAgg+ (Flower)
def _payload_bytes(record) -> int:
    """Wire payload of a ConfigRecord counted as pftray counts its messages: 4 bytes per id/int, bytes by length."""
    total = 0
    for v in record.values():
        for x in v if isinstance(v, list) else [v]:
            total += len(x) if isinstance(x, bytes) else len(x.encode()) if isinstance(x, str) else 4
    return total


def flower_secagg(
    *, n: int, d: int, num_shares: int, threshold: int, reps: int = 1, seed: int = 0
) -> dict[str, Any]:
    """One round (per rep) of Flower's SecAgg+ over ``n`` uniform(-1, 1) vectors of length ``d``, in process."""
    import flwr
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.client.mod import secaggplus_mod
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
    from flwr.server import ServerConfig
    from flwr.server.client_manager import SimpleClientManager
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.compat.legacy_context import LegacyContext
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.supercore.task_identity import TaskIdentity

    # a ServerApp process gets these from its SuperLink; in process the server is node 0 of run 0
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 0, 0, 0
    rng = np.random.default_rng(seed)
    vectors = {nid: rng.uniform(-1.0, 1.0, size=d).astype(np.float32) for nid in range(1, n + 1)}
    plain_mean = np.mean(np.asarray(list(vectors.values()), dtype=np.float64), axis=0)

    class Proxy(ClientProxy):  # the strategy samples proxies; this in-process run never calls their methods
        def get_properties(self, *a, **k):
            raise RuntimeError("unused")

        get_parameters = fit = evaluate = reconnect = get_properties

    class DirectGrid:
        """``send_and_receive`` hands each message to its node's ``secaggplus_mod`` in this process."""

        def __init__(self):
            self.contexts = {
                nid: Context(run_id=0, node_id=nid, node_config={}, state=RecordDict(), run_config={})
                for nid in vectors
            }
            self.client_s = dict.fromkeys(vectors, 0.0)
            self.up = dict.fromkeys(vectors, 0)
            self.down = dict.fromkeys(vectors, 0)
            self.transport_s = 0.0

        def send_and_receive(self, messages, *, timeout=None):
            replies = []
            for msg in messages:
                t0 = time.perf_counter()
                # a real transport hands each node its own copy (the setup stage shares one content object
                # among all messages and the mod pops from it); the copy counts as neither side's compute
                msg = copy.deepcopy(msg)
                self.transport_s += time.perf_counter() - t0
                nid = msg.metadata.dst_node_id
                self.down[nid] += _payload_bytes(msg.content.config_records[RECORD_KEY_CONFIGS])

                def fit(m, ctxt, nid=nid):  # the ClientApp's training step: return this node's vector
                    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([vectors[nid]]), 1, {})
                    return Message(compat.fitres_to_recorddict(res, True), reply_to=m)

                t0 = time.perf_counter()
                reply = secaggplus_mod(msg, self.contexts[nid], fit)
                self.client_s[nid] += time.perf_counter() - t0
                self.up[nid] += _payload_bytes(reply.content.config_records[RECORD_KEY_CONFIGS])
                replies.append(reply)
            return replies

    client_s, driver_s, errs, up, down = [], [], [], [], []
    for _ in range(reps):
        cm = SimpleClientManager()
        for nid in vectors:
            proxy = Proxy(str(nid))
            proxy.node_id = nid
            cm.register(proxy)
        strategy = FedAvg(fraction_fit=1.0, min_fit_clients=n, min_available_clients=n, fraction_evaluate=0.0)
        base = Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={})
        ctx = LegacyContext(base, config=ServerConfig(num_rounds=1), strategy=strategy, client_manager=cm)
        ctx.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({"current_round": 1})
        ctx.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters([np.zeros(d, np.float32)]), True
        )
        workflow = SecAggPlusWorkflow(
            num_shares=num_shares, reconstruction_threshold=threshold, clipping_range=1.0
        )
        grid = DirectGrid()
        t0 = time.perf_counter()
        workflow(grid, ctx)
        total = time.perf_counter() - t0
        out = compat.arrayrecord_to_parameters(ctx.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
        from flwr.common import parameters_to_ndarrays

        agg = parameters_to_ndarrays(out)[0]
        errs.append(float(np.max(np.abs(agg - plain_mean))))
        client_s.append(float(np.mean(list(grid.client_s.values()))))
        driver_s.append(total - sum(grid.client_s.values()) - grid.transport_s)
        up.append(float(np.mean(list(grid.up.values()))))
        down.append(float(np.mean(list(grid.down.values()))))
    return {
        "framework": "flower",
        "flwr": flwr.__version__,
        "n": n,
        "d": d,
        "num_shares": num_shares,
        "degree": num_shares - 1,
        "threshold": threshold,
        "client_seconds": float(np.mean(client_s)),
        "server_seconds": float(np.mean(driver_s)),
        "bytes_per_client": float(np.mean(up)),
        "bytes_down_per_client": float(np.mean(down)),
        "expansion": float(np.mean(up)) / (4.0 * d),
        "max_abs_error_of_mean": max(errs),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--clients", type=int, required=True)
    o.add_argument("--iters", type=int, required=True)
    o.add_argument("--d", type=int, required=True)
    o.add_argument("--rounds", type=int, required=True)
    o.add_argument("--workers", type=int, required=True)
    o.add_argument("--temp-dir", required=True)
    s = sub.add_parser("secagg")
    s.add_argument("--n", type=int, required=True)
    s.add_argument("--d", type=int, required=True)
    s.add_argument("--num-shares", type=int, required=True)
    s.add_argument("--threshold", type=int, required=True)
    s.add_argument("--reps", type=int, default=1)
    args = ap.parse_args(argv)
    if args.command == "overhead":
        res = flower_overhead(
            clients=args.clients,
            iters=args.iters,
            d=args.d,
            rounds=args.rounds,
            workers=args.workers,
            temp_dir=args.temp_dir,
        )
    else:
        res = flower_secagg(
            n=args.n, d=args.d, num_shares=args.num_shares, threshold=args.threshold, reps=args.reps
        )
    print("RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How much of a round's overhead any client-granular scheduler must leave: a discrete-event simulation of one
round of ``n`` clients on ``workers`` workers, one chunk in flight per worker (as pftray's dynamic dispatch), with
client durations drawn from N(mean, (spread * mean)^2) and a fixed round trip per chunk.

The tail (round time - total client time / workers) is what the overhead benchmark reports as overhead minus
the framework's own time; it depends on the spread of client durations, not on the chunk rule. Used in the README
to read the 10-client overhead figure.

    python -m bench tail-sim [--clients 10 100] [--mean 1.3] [--spreads 0.04 0.12 0.23] [--rounds 2000]
"""

from __future__ import annotations

import argparse
import heapq
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pftray.runtime.ray_pool import chunk_size

RULES: dict[str, Callable[[int, int], int]] = {
    "ceil(R/2P) (pftray)": chunk_size,  # the rule RayPool's dynamic dispatch uses
    "floor(R/2P)": lambda r, p: max(1, r // (2 * p)),
    "ceil(R/P)": lambda r, p: max(1, -(-r // p)),
    "1": lambda r, p: 1,
}


def simulate_round(durations: np.ndarray, workers: int, rule: Callable[[int, int], int], rtt: float) -> float:
    """Round time minus ``durations.sum() / workers`` for one round."""
    remaining = len(durations)
    nxt = 0
    heap = [(0.0, w) for w in range(workers)]
    while remaining:
        t, w = heapq.heappop(heap)
        k = min(rule(remaining, workers), remaining)
        heapq.heappush(heap, (t + rtt + float(durations[nxt: nxt + k].sum()), w))
        nxt += k
        remaining -= k
    return max(t for t, _ in heap) - float(durations.sum()) / workers


def tail_table(clients: list[int], spreads: list[float], *, mean: float, workers: int, rounds: int, rtt: float,
               seed: int = 0) -> list[dict]:
    rows = []
    for n in clients:
        for spread in spreads:
            for name, rule in RULES.items():
                rng = np.random.default_rng(seed)
                tails = np.array([simulate_round(rng.normal(mean, spread * mean, n).clip(0.05 * mean), workers,
                                                 rule, rtt) for _ in range(rounds)])
                rows.append({"clients": n, "spread": spread, "rule": name, "median_tail_s": float(np.median(tails)),
                             "mean_tail_s": float(tails.mean()),
                             "median_share": float(np.median(tails) / (n * mean / workers + np.median(tails)))})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--mean", type=float, default=1.3, help="mean client seconds")
    ap.add_argument("--spreads", type=float, nargs="+", default=[0.04, 0.12, 0.23], help="sd / mean")
    ap.add_argument("--rtt", type=float, default=0.002, help="seconds per chunk round trip")
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--json", default="bench/results/tail_sim.json")
    args = ap.parse_args(argv)
    rows = tail_table(args.clients, args.spreads, mean=args.mean, workers=args.workers, rounds=args.rounds,
                      rtt=args.rtt)
    print(f"{'clients':>7s} {'spread':>7s}  {'chunk rule':22s}{'median tail':>12s}{'share':>8s}")
    for r in rows:
        print(f"{r['clients']:7d} {r['spread']:7.2f}  {r['rule']:22s}{r['median_tail_s']:11.3f}s"
              f"{100 * r['median_share']:7.1f}%")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

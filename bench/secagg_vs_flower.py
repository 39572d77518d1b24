"""pftray's SecAgg+ against Flower's SecAgg+ (issue 4), one round each, in process, no dropouts.

pftray: :func:`pftray.privacy.secagg.benchmark_secagg` (its state machines driven by ``run_secagg``). Flower:
``SecAggPlusWorkflow`` + ``secaggplus_mod`` of Flower 1.42 driven in process by :mod:`bench.flower_side` (its own
venv). Both sum ``n`` uniform(-1, 1) float32 vectors of length ``d`` with clipping range 1 and a 32-bit ring
(Flower: its default 2**22 quantisation levels inside 2**32; pftray: its own fixed-point grid in 2**32).

Neighbourhoods are matched: Flower's ``num_shares`` counts the client itself, so ``num_shares = k + 1`` for pftray's
``degree = k`` neighbours, with the same reconstruction threshold. Settings: Flower's example (3 shares,
threshold 2) and a denser one (11 shares, threshold 6; the complete graph with threshold 6 when n <= 11).

Reported: mean client compute per round (seconds, all four stages), driver compute per round, upload bytes per
client (payload: keys and ciphertexts by length, ids 4 bytes, the masked vector's buffer) and its expansion over
the ``4 d`` bytes of a plain float32 update.

    python -m bench secagg-vs-flower [--n 10 100] [--d 10000 100000] [--reps 1]
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

TARGET_SPEEDUP = 3.0  # issue 4: >= 3x faster than Flower's SecAgg+ at n=100, d=1e5
TARGET_EXPANSION = 1.2  # issue 4: <= 1.2x the bytes of the plain update


def settings(n: int) -> list[tuple[str, int, int]]:
    """``(label, degree, threshold)`` pairs for ``n`` clients (degree = neighbours, not counting oneself)."""
    dense = min(10, n - 1)
    return [("flower-example", 2, 2), ("dense", dense, 6 if dense >= 6 else max(2, dense // 2 + 1))]


def run_pair(
    n: int, d: int, degree: int, threshold: int, *, reps: int, python: str, flower_timeout: float = 900.0
) -> dict[str, Any]:
    import subprocess

    from bench.flower_side import run_in_flower_venv
    from pftray.privacy.secagg import benchmark_secagg

    p = benchmark_secagg(n, d, degree=degree if degree < n - 1 else None, threshold=threshold, reps=reps)
    row = {"n": n, "d": d, "degree": degree, "threshold": threshold, "pftray": {"framework": "pftray", **p}}
    if not python:
        return row
    try:
        f = run_in_flower_venv(
            [
                "secagg",
                "--n",
                str(n),
                "--d",
                str(d),
                "--num-shares",
                str(degree + 1),
                "--threshold",
                str(threshold),
                "--reps",
                str(reps),
            ],
            python=python,
            env={"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
            timeout=flower_timeout,
        )
    except subprocess.TimeoutExpired:  # recorded as such: a lower bound on Flower's time, no ratio
        row["flower"] = {"framework": "flower", "timed_out_s": flower_timeout}
        return row
    p_total = p["client_seconds"] + p["server_seconds"]
    f_total = f["client_seconds"] + f["server_seconds"]
    return {
        "n": n,
        "d": d,
        "degree": degree,
        "threshold": threshold,
        "pftray": {"framework": "pftray", **p},
        "flower": f,
        "client_speedup": f["client_seconds"] / p["client_seconds"],
        "driver_speedup": f["server_seconds"] / p["server_seconds"],
        "round_speedup": f_total / p_total,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--d", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--only", choices=("flower-example", "dense"), default=None)
    ap.add_argument("--flower-python", default="")
    ap.add_argument("--no-flower", action="store_true", help="pftray's side only")
    ap.add_argument(
        "--flower-timeout", type=float, default=900.0, help="seconds before a Flower cell is given up"
    )
    ap.add_argument("--append", action="store_true", help="keep the rows of --json for other (n, d, setting)")
    ap.add_argument("--json", default="bench/results/secagg_vs_flower.json")
    args = ap.parse_args(argv)
    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[k] = "1"
    from bench.flower_side import ensure_flower_venv

    python = "" if args.no_flower else args.flower_python or ensure_flower_venv()
    rows = []
    print(
        f"{'n':>4s}{'d':>8s}{'nbrs':>5s}{'t':>3s} | {'client s':>9s}{'driver s':>9s}{'bytes/cl':>10s}{'x f32':>7s}"
        f" | {'client s':>9s}{'driver s':>9s}{'bytes/cl':>10s}{'x f32':>7s} | {'speedup':>8s}"
    )
    print(f"{'':20s}| {'pftray':^35s} | {'Flower 1.42':^35s} | client+driver")
    for n in args.n:
        for label, degree, threshold in settings(n):
            if args.only and label != args.only:
                continue
            for d in args.d:
                r = run_pair(
                    n, d, degree, threshold, reps=args.reps, python=python, flower_timeout=args.flower_timeout
                )
                r["setting"] = label
                rows.append(r)
                p, f = r["pftray"], r.get("flower")
                if f is None or "timed_out_s" in f:
                    why = "not run" if f is None else f"not done in {f['timed_out_s']:.0f} s"
                    print(
                        f"{n:4d}{d:8d}{degree:5d}{threshold:3d} | {p['client_seconds']:9.4f}{p['server_seconds']:9.4f}"
                        f"{p['bytes_per_client']:10.0f}{p['expansion']:7.3f} | Flower {why}",
                        flush=True,
                    )
                    continue
                print(
                    f"{n:4d}{d:8d}{degree:5d}{threshold:3d} | {p['client_seconds']:9.4f}{p['server_seconds']:9.4f}"
                    f"{p['bytes_per_client']:10.0f}{p['expansion']:7.3f} | {f['client_seconds']:9.4f}"
                    f"{f['server_seconds']:9.4f}{f['bytes_per_client']:10.0f}{f['expansion']:7.3f} | "
                    f"{r['round_speedup']:7.1f}x",
                    flush=True,
                )
    if args.append and Path(args.json).exists():
        done = {(r["n"], r["d"], r["setting"]) for r in rows}
        old = json.loads(Path(args.json).read_text())["rows"]
        rows = [r for r in old if (r["n"], r["d"], r["setting"]) not in done] + rows
    head = [r for r in rows if r["n"] == 100 and r["d"] == 100_000 and "round_speedup" in r]
    targets = {
        "speedup_min": TARGET_SPEEDUP,
        "expansion_max": TARGET_EXPANSION,
        "n100_d1e5": [
            {
                "setting": r["setting"],
                "round_speedup": r["round_speedup"],
                "client_speedup": r["client_speedup"],
                "driver_speedup": r["driver_speedup"],
                "pftray_expansion": r["pftray"]["expansion"],
                "speedup_met": r["round_speedup"] >= TARGET_SPEEDUP,
                "expansion_met": r["pftray"]["expansion"] <= TARGET_EXPANSION,
            }
            for r in head
        ],
    }
    for t in targets["n100_d1e5"]:
        print(
            f"target n=100 d=1e5 ({t['setting']}): speedup {t['round_speedup']:.1f}x (>= {TARGET_SPEEDUP:g}x: "
            f"{'met' if t['speedup_met'] else 'MISSED'}), pftray bytes {t['pftray_expansion']:.3f}x plain "
            f"(<= {TARGET_EXPANSION:g}x: {'met' if t['expansion_met'] else 'MISSED'})"
        )
    from bench.overhead import machine

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": machine(), "rows": rows, "targets": targets}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

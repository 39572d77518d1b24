"""``pftray sweep``: the command line of a sweep."""

from __future__ import annotations

import argparse
import os

from pftray.sweep.search import (
    run_sweep,
)
from pftray.sweep.spec import (
    SweepSpec,
    load_sweep_file,
)
from pftray.sweep_layout import DONE_MARKER

# ------------------------------------------------------------------------------------------ CLI


def add_sweep_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``pftray sweep SWEEP.yaml [--smoke-test] [--out DIR] [--resume] [--address ADDR]``."""
    p = subparsers.add_parser("sweep", help="Ray Tune + Optuna sweep over config keys (see sweeps/*.yaml)")
    p.add_argument("sweep", help="sweep file (YAML): base config, search space, objectives")
    p.add_argument(
        "--smoke-test",
        action="store_true",
        help="the sweep file's smoke_test variant: few tiny trials, experiment '<name>-smoke'",
    )
    p.add_argument(
        "--out",
        help="parent folder of the sweep dir (default: the sweep file's 'out'); on a cluster "
        "it must be a path every node sees (shared filesystem)",
    )
    p.add_argument(
        "--resume", action="store_true", help="resume an interrupted sweep (finished trials are kept)"
    )
    p.add_argument(
        "--address",
        default=None,
        help="Ray address ('auto' = the cluster this node belongs to; default: RAY_ADDRESS, else "
        "the base config's runtime.address, else a local instance)",
    )
    p.set_defaults(fn=cmd_sweep)
    return p


def _init_ray(spec: SweepSpec, address: str | None) -> None:
    import ray

    from pftray.runtime.driver import init_ray

    if ray.is_initialized():
        return
    cfg = spec.base_config
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        cfg = cfg.replace(**{"runtime.address": address})
    init_ray(cfg)


def cmd_sweep(args: argparse.Namespace) -> int:
    """``pftray sweep``: validate the sweep file, run or resume it, print where the results are."""
    from pftray.analysis import pareto_front

    spec = load_sweep_file(args.sweep)
    if args.smoke_test:
        spec = spec.smoke_test()
    _init_ray(spec, args.address)
    exp, grid = run_sweep(spec, out=args.out, resume=args.resume)
    import pandas as pd

    trials = pd.read_parquet(exp / "trials.parquet")
    if not (exp / DONE_MARKER).exists():
        print(
            f"sweep {spec.name}: interrupted with {len(trials)} trials started; the state is saved in {exp}; "
            f"continue with `pftray sweep {args.sweep} --resume` (same --out)"
        )
        return 130
    n_err = int((trials["status"] == "error").sum()) if len(trials) else 0
    print(f"sweep {spec.name}: {len(trials)} trials ({n_err} failed) in {exp}")
    final = {o.metric: o.mode for o in spec.objectives}
    cols = [f"final/{m}" for m in final]
    if len(trials) and all(c in trials for c in cols):
        mx = [f"final/{m}" for m, md in final.items() if md == "max"]
        mn = [f"final/{m}" for m, md in final.items() if md == "min"]
        front = pareto_front(trials[trials["status"] != "error"], maximize=mx, minimize=mn)
        show = ["trial_id", *cols, *[c for c in trials if c.startswith("config/")]]
        print("Pareto front:" if len(cols) > 1 else "best:")
        print(front[show].to_string(index=False))
    print(f"tables: {exp / 'trials.parquet'} (pftray.analysis.load_sweep), {exp / 'results.parquet'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``sweeps/run_sweep.py``: same arguments as ``pftray sweep``, same exit codes and one-line
    errors (:func:`pftray.entry.dispatch`)."""
    import sys

    from pftray.entry import ArgParser, dispatch

    ap = ArgParser(prog="run_sweep.py", description="pftray sweep (Ray Tune + Optuna)")
    sub = ap.add_subparsers(dest="command", required=True)
    add_sweep_parser(sub)
    return dispatch(ap, ["sweep", *(sys.argv[1:] if argv is None else argv)])

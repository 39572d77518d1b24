"""Per-round cost of writing a run's tables (``RunDir.append`` of ``rounds``, ``clients`` and, on evaluation
rounds, ``eval``) at round 10 and round 1000 of a long synthetic run, with the real column sets
(``ROUND_COLUMNS``, ``CLIENT_COLUMNS`` plus the server's extra client columns). pftray's writer (one part file per
round) against the previous one (re-read and rewrite the whole table every round), in separate run directories.
Also prints what a read of the whole run costs mid-run (``load_run`` over the parts) and the compaction at the
end of the run.

    python -m bench table-writes [--rounds 1000] [--at 10 1000] [--clients 10] [--eval-every 10]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from pftray.results import CLIENT_COLUMNS, ROUND_COLUMNS, RunDir, load_run, write_parquet


class LegacyWriter:
    """The writer before append-only tables: every append re-reads and rewrites ``<name>.parquet``."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, name: str, rows: list[dict[str, Any]], *, replace_round: int | None = None) -> None:
        p = self.path / f"{name}.parquet"
        old = pd.read_parquet(p) if p.exists() else pd.DataFrame()
        if replace_round is not None and len(old) and "server_round" in old:
            old = old[old["server_round"] < replace_round]
        new = pd.DataFrame(rows)
        write_parquet(new if old.empty else pd.concat([old, new], ignore_index=True), p)


def round_rows(r: int, *, clients: int, eval_round: bool) -> dict[str, list[dict[str, Any]]]:
    """Synthetic rows of round ``r`` with the columns the server writes."""
    row: dict[str, Any] = {c: 0.1 * r for c in ROUND_COLUMNS}
    row.update(server_round=r, status="ok", n_sampled=clients, n_ok=clients, n_failed=0, bytes_up=4000 * clients,
               bytes_down=4000 * clients)
    client_rows = []
    for k in range(clients):
        c: dict[str, Any] = {col: 0.01 * (r + k) for col in CLIENT_COLUMNS}
        c.update(server_round=r, client_id=k, num_examples=8, status="ok", message="", worker=f"cpu-{k % 2}",
                 node_id="a" * 56, gpu_ids="", fit_s=1.0, sample_epsilon=math.nan, view="clear")
        client_rows.append(c)
    out = {"rounds": [row], "clients": client_rows}
    if eval_round:
        row.update(psnr=20.0, ssim=0.5, lip_sync=0.3)
        out["eval"] = [{"server_round": r, "client_id": k, "clip": j, "model": m, "frames": 4, "psnr": 20.0,
                        "ssim": 0.5, "lpips": math.nan, "lpips_missing": "AlexNet weights not found",
                        "id_sim_synth": 0.9, "lip_sync": 0.3}
                       for k in range(2) for j in range(2) for m in ("personalised", "backbone", "copy")]
    return out


def measure(writer, *, rounds: int, at: list[int], clients: int, eval_every: int, window: int) -> dict[int, float]:
    """Write ``rounds`` rounds; the median write time (all tables of the round) of the ``window`` rounds ending
    at each round of ``at``."""
    times: dict[int, float] = {}
    for r in range(1, rounds + 1):
        rows = round_rows(r, clients=clients, eval_round=eval_every > 0 and r % eval_every == 0)
        t0 = time.perf_counter()
        for name, rs in rows.items():
            writer.append(name, rs, replace_round=r)
        times[r] = time.perf_counter() - t0
    return {a: statistics.median(times[r] for r in range(max(1, a - window + 1), a + 1)) for a in at}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--at", type=int, nargs="+", default=[10, 1000], help="rounds at which to report")
    ap.add_argument("--clients", type=int, default=10, help="clients per round (rows of clients per round)")
    ap.add_argument("--eval-every", type=int, default=10, help="eval rows every N rounds (0 = never)")
    ap.add_argument("--window", type=int, default=21, help="median over this many rounds ending at each --at")
    ap.add_argument("--no-legacy", action="store_true", help="skip the previous (rewrite-everything) writer")
    ap.add_argument("--json", default="bench/results/table_writes.json")
    args = ap.parse_args(argv)
    at = sorted(a for a in set(args.at) if 1 <= a <= args.rounds)
    kw = dict(rounds=args.rounds, at=at, clients=args.clients, eval_every=args.eval_every, window=args.window)
    res: dict[str, Any] = {"args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="pftray-table-writes-") as tmp:
        run = RunDir(Path(tmp) / "parts")
        run.create()
        (run.path / "config.yaml").write_text("{}\n")
        res["parts_ms"] = {a: 1e3 * t for a, t in measure(run, **kw).items()}
        t0 = time.perf_counter()
        tables = load_run(run.path)
        res["read_mid_run_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        run.compact()
        res["compact_s"] = time.perf_counter() - t0
        res["rows"] = {n: len(tables[n]) for n in ("rounds", "clients", "eval")}
        if not args.no_legacy:
            legacy_dir = Path(tmp) / "legacy"
            legacy_dir.mkdir()
            res["legacy_ms"] = {a: 1e3 * t for a, t in measure(LegacyWriter(legacy_dir), **kw).items()}
    print(f"per-round write of rounds + clients ({args.clients} rows) + eval (every {args.eval_every}), "
          f"median of {args.window} rounds; {args.rounds} rounds:")
    print(f"{'round':>7s} {'parts (pftray)':>15s} {'rewrite (before)':>17s}")
    for a in at:
        legacy = f"{res['legacy_ms'][a]:14.2f} ms" if "legacy_ms" in res else f"{'-':>17s}"
        print(f"{a:7d} {res['parts_ms'][a]:12.2f} ms {legacy}")
    print(f"load_run mid-run over {args.rounds} parts per table: {res['read_mid_run_s']:.2f} s "
          f"({res['rows']}); compaction at the end: {res['compact_s']:.2f} s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

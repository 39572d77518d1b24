"""``python -m bench <name> [args]``: one entry point for pftray's benchmarks (see bench/README.md).

python -m bench overhead          # pftray vs Flower simulation: framework overhead per round
python -m bench comm              # bytes per client per round: shared adapter vs full UNet, SecAgg, fp16
python -m bench train             # local training throughput and peak memory (CPU; GPU when present)
python -m bench secagg-vs-flower  # pftray's SecAgg+ vs Flower's SecAgg+
python -m bench pretrain-quality  # backbone quality on unseen identities
python -m bench scale             # 10,000 registered clients vs 100
python -m bench tdc               # the TDC default by experiment: none vs eps-space vs x0-space
python -m bench tail-sim          # simulated tail imbalance of client-granular scheduling (to read `overhead`)
python -m bench privacy-audit     # accountant epsilon beside the membership audit's lower bound (quickstart, cohort)
python -m bench table-writes      # per-round cost of writing the run tables at round 10 vs round 1000
python -m bench federation        # the federated grid: methods, baselines, unreliable clients, DP cohort, TDC
python -m bench mouth-timing      # when trained models open the mouth: lagged lip sync of finished runs
python -m bench shift-gap         # what the shifted scenario costs the public-trained backbone, by severity
python -m bench real-faces        # real speakers: pre-train, federate, eval vs copy-the-reference, generate
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = {
    "overhead": "bench.overhead",
    "comm": "bench.comm",
    "train": "bench.train",
    "secagg-vs-flower": "bench.secagg_vs_flower",
    "pretrain-quality": "bench.pretrain_quality",
    "scale": "bench.scale",
    "tdc": "bench.tdc",
    "tail-sim": "bench.tail_sim",
    "privacy-audit": "bench.privacy_audit",
    "table-writes": "bench.table_writes",
    "federation": "bench.federation",
    "mouth-timing": "bench.mouth_timing",
    "shift-gap": "bench.shift_gap",
    "real-faces": "bench.real_faces",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in BENCHMARKS:
        print(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(BENCHMARKS[name])
    sys.argv[0] = f"python -m bench {name}"  # argparse's prog in the benchmarks' usage lines
    # bench.scale re-runs itself as `python -m bench.scale --one N` in subprocesses: it keeps working as is
    return int(module.main(rest) or 0)


if __name__ == "__main__":
    raise SystemExit(main())

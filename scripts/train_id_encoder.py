#!/usr/bin/env python
"""Train the synthetic-benchmark identity encoder for ``id_sim_synth`` on the public synthetic identities.

    python scripts/train_id_encoder.py configs/quickstart.yaml --out checkpoints/id-encoder-synth.pt [--steps 300]
    pftray eval RUN_DIR --id-encoder checkpoints/id-encoder-synth.pt

Use the config of the runs you will evaluate (same data.resolution). Exit 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="YAML preset (its data section sets resolution and public identities)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    ap.add_argument("--out", required=True, help="where to save the encoder (.pt)")
    ap.add_argument("--steps", type=int, default=300, help="optimiser steps")
    ap.add_argument("--seed", type=int, default=None, help="training seed (default: experiment.seed)")
    args = ap.parse_args(argv)
    from pftray.config import ConfigError, load_config
    from pftray.evaluation.id_encoder import train_public_id_encoder

    try:
        cfg = load_config(args.config, args.set)
        if args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
    except (ConfigError, ValueError) as exc:
        print(f"train_id_encoder: error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    encoder, report = train_public_id_encoder(cfg, steps=args.steps, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    encoder.save(tmp)
    tmp.replace(out)
    report.update(out=str(out), wall_s=round(time.perf_counter() - t0, 1))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bytes per client per round: the federated shared LoRA adapter at ranks 4/8/16 against a full-UNet update,
in float32, in 16-bit transport (fp16/bf16: 2 bytes a parameter) and under SecAgg+ (measured upload of a real
:func:`pftray.privacy.secagg.benchmark_secagg` round over vectors of that length, all four stages counted).

Model sizes are those of ``configs/quickstart.yaml`` (64 px) with ``model.backbone=''`` (the sizes do not depend
on the weights). The full-UNet update counts the base UNet's own parameters (adapters excluded), i.e. what a
client would send if the UNet itself were federated.

    python -m bench comm [--config configs/quickstart.yaml] [--ranks 4 8 16] [--secagg-n 10]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TARGET_SHARE_RANK8 = (
    0.02  # issue 7: the shared-adapter update is <= 2 % of the full-UNet update bytes at rank 8
)


def model_sizes(config: str, rank: int, unet_channels: tuple[int, ...] = ()) -> dict[str, Any]:
    """Parameter counts of the config's model with the shared adapter at ``rank`` (and, when given, another
    ``model.unet_channels``)."""
    import torch

    from pftray.config import load_config
    from pftray.fed.client import build_model
    from pftray.model.adapters import adapter_numel

    torch.manual_seed(0)
    sets = ["model.backbone=", f"lora.shared_rank={rank}"]
    if unet_channels:
        sets.append(f"model.unet_channels=[{','.join(map(str, unet_channels))}]")
    cfg = load_config(config, sets)
    model = build_model(cfg)
    shared = adapter_numel(model.unet, "shared")
    identity = adapter_numel(model.unet, "identity")
    unet_total = sum(p.numel() for p in model.unet.parameters())
    return {
        "rank": rank,
        "shared_numel": shared,
        "identity_numel": identity,
        "unet_numel": unet_total - shared - identity,
        "resolution": cfg.data.resolution,
        "unet_channels": list(cfg.model.unet_channels),
    }


def secagg_upload(d: int, *, n: int, degree: int, threshold: int) -> dict[str, Any]:
    """Measured SecAgg+ upload per client for vectors of length ``d`` (one round, ``n`` clients, in process)."""
    from pftray.privacy.secagg import benchmark_secagg

    deg = degree if degree < n - 1 else None
    r = benchmark_secagg(n, d, degree=deg, threshold=threshold)
    return {
        "bytes_per_client": r["bytes_per_client"],
        "expansion": r["expansion"],
        "n": n,
        "degree": r["degree"],
        "threshold": threshold,
    }


def comm_table(
    config: str,
    ranks: list[int],
    *,
    secagg_n: int,
    degree: int = 2,
    threshold: int = 2,
    unet_channels: tuple[int, ...] = (),
) -> dict[str, Any]:
    """One row per rank plus the full-UNet row; every ratio is against the full UNet's float32 update."""
    rows = []
    unet = None
    for rank in ranks:
        s = model_sizes(config, rank, unet_channels)
        unet = s["unet_numel"]
        sa = secagg_upload(s["shared_numel"], n=secagg_n, degree=degree, threshold=threshold)
        rows.append(
            {
                "what": f"shared adapter r={rank}",
                **s,
                "fp32_bytes": 4 * s["shared_numel"],
                "fp16_bytes": 2 * s["shared_numel"],
                "secagg_bytes": sa["bytes_per_client"],
                "secagg_expansion": sa["expansion"],
            }
        )
    assert unet is not None
    sa = secagg_upload(unet, n=3, degree=2, threshold=2)  # masking cost is linear in d: 3 clients measure it
    full = {
        "what": "full UNet",
        "unet_numel": unet,
        "unet_channels": rows[-1]["unet_channels"],
        "fp32_bytes": 4 * unet,
        "fp16_bytes": 2 * unet,
        "secagg_bytes": sa["bytes_per_client"],
        "secagg_expansion": sa["expansion"],
    }
    for row in [*rows, full]:
        for k in ("fp32", "fp16", "secagg"):
            row[f"{k}_share_of_unet_fp32"] = row[f"{k}_bytes"] / full["fp32_bytes"]
    r8 = next((r for r in rows if r["rank"] == 8), None)
    return {
        "config": config,
        "unet_channels": rows[-1]["unet_channels"],
        "secagg": {"n": secagg_n, "degree": degree, "threshold": threshold, "modulus_bits": 32},
        "rows": rows,
        "full_unet": full,
        "target": {
            "rank8_share_max": TARGET_SHARE_RANK8,
            "rank8_share": r8["fp32_share_of_unet_fp32"] if r8 else None,
            "met": bool(r8 and r8["fp32_share_of_unet_fp32"] <= TARGET_SHARE_RANK8),
        },
    }


def _fmt_bytes(b: float) -> str:
    return f"{b / 1024:.1f} KiB" if b < 2**20 else f"{b / 2**20:.2f} MiB"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--ranks", type=int, nargs="+", default=[4, 8, 16])
    ap.add_argument("--secagg-n", type=int, default=10, help="clients of the measured SecAgg+ round")
    ap.add_argument(
        "--wide",
        type=int,
        nargs="*",
        default=[128, 256],
        help="also measure a wider UNet (model.unet_channels); none to skip",
    )
    ap.add_argument("--json", default="bench/results/comm.json")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    tables = [comm_table(args.config, args.ranks, secagg_n=args.secagg_n)]
    if args.wide:
        tables.append(
            comm_table(args.config, args.ranks, secagg_n=args.secagg_n, unet_channels=tuple(args.wide))
        )
    for res in tables:
        print_table(res)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(tables, indent=2))
    return 0


def print_table(res: dict[str, Any]) -> None:
    print(
        f"{res['config']}, UNet channels {res['unet_channels']}; SecAgg+ n={res['secagg']['n']}, "
        f"{res['secagg']['degree']} neighbours, threshold {res['secagg']['threshold']}, 32-bit ring"
    )
    print(
        f"{'update':22s}{'params':>10s}{'fp32':>12s}{'fp16/bf16':>12s}{'SecAgg+':>12s}{'fp32 % UNet':>13s}"
        f"{'SecAgg x':>10s}"
    )
    for row in [*res["rows"], res["full_unet"]]:
        n = row.get("shared_numel", row["unet_numel"])
        print(
            f"{row['what']:22s}{n:>10d}{_fmt_bytes(row['fp32_bytes']):>12s}{_fmt_bytes(row['fp16_bytes']):>12s}"
            f"{_fmt_bytes(row['secagg_bytes']):>12s}{100 * row['fp32_share_of_unet_fp32']:>12.2f}%"
            f"{row['secagg_expansion']:>10.4f}"
        )
    t = res["target"]
    print(
        f"target: shared adapter at r=8 <= {100 * t['rank8_share_max']:.0f}% of the full-UNet update: "
        f"{100 * t['rank8_share']:.2f}% -> {'met' if t['met'] else 'MISSED'}"
    )


if __name__ == "__main__":
    raise SystemExit(main())

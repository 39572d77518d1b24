"""Bytes per client per round: the federated shared LoRA adapter at ranks 4/8/16 against a full-UNet update,
in float32, in 16-bit transport (fp16/bf16: 2 bytes a parameter) and under SecAgg+ (measured upload of a real
:func:`pftray.privacy.secagg.benchmark_secagg` round over vectors of that length, all four stages counted).

Three model sizes: ``configs/quickstart.yaml`` as is (UNet widths 32-64, 1.1 M parameters), the same with UNet
widths 128-256 (16.6 M), and a Stable-Diffusion-1.x-sized pftray model (``SD_SCALE``: 1.0 B; parameter counts on
the meta device, no SecAgg+ measurement). The shared adapter adapts the attention projections (to_q/k/v/out), so
its share of the UNet shrinks as 1/width: rank r on a d x d projection adds 2rd parameters to d^2. The full-UNet
update counts the base UNet's own parameters (adapters excluded), i.e. what a client would send if the UNet
itself were federated. Sizes do not depend on the weights (``model.backbone=''``).

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


# A Stable-Diffusion-1.x-sized pftray model (UNet widths 320-640-1280-1280, 2 resnets per block, 768-wide condition
# tokens, 40-channel heads; SD's VAE widths): built on the meta device, so only the parameter counts exist
SD_SCALE = (
    "model.unet_channels=[320,640,1280,1280]",
    "model.unet_layers_per_block=2",
    "model.cross_attention_dim=768",
    "model.attention_head_dim=40",
    "model.vae_channels=[128,256,512,512]",
    "model.latent_channels=4",
    "data.resolution=256",
)


def model_sizes(
    config: str, rank: int, unet_channels: tuple[int, ...] = (), extra: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Parameter counts of the config's model with the shared adapter at ``rank`` (and, when given, another
    ``model.unet_channels`` or other ``extra`` overrides). Built on the meta device: no memory, no weights."""
    import torch

    from pftray.config import load_config
    from pftray.model.adapters import adapter_numel
    from pftray.model.factory import build_model

    torch.manual_seed(0)
    sets = ["model.backbone=", f"lora.shared_rank={rank}"]
    if unet_channels:
        sets.append(f"model.unet_channels=[{','.join(map(str, unet_channels))}]")
    cfg = load_config(config, [*sets, *extra])
    with torch.device("meta"):
        model = build_model(cfg, device="meta")
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
    extra: tuple[str, ...] = (),
    measure_secagg: bool = True,
) -> dict[str, Any]:
    """One row per rank plus the full-UNet row; every ratio is against the full UNet's float32 update.
    ``measure_secagg=False`` (models too large to mask in memory here) leaves the SecAgg+ columns empty."""
    rows = []
    unet = None
    no_sa = {"bytes_per_client": None, "expansion": None}
    for rank in ranks:
        s = model_sizes(config, rank, unet_channels, extra)
        unet = s["unet_numel"]
        sa = (
            secagg_upload(s["shared_numel"], n=secagg_n, degree=degree, threshold=threshold)
            if measure_secagg
            else no_sa
        )
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
    # masking cost is linear in d: 3 clients measure it
    sa = secagg_upload(unet, n=3, degree=2, threshold=2) if measure_secagg else no_sa
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
            b = row[f"{k}_bytes"]
            row[f"{k}_share_of_unet_fp32"] = None if b is None else b / full["fp32_bytes"]
    r8 = next((r for r in rows if r["rank"] == 8), None)
    return {
        "config": config,
        "overrides": list(extra),
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
    if b >= 2**30:
        return f"{b / 2**30:.2f} GiB"
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
    ap.add_argument(
        "--no-sd-scale",
        action="store_true",
        help="skip the Stable-Diffusion-sized model (parameter counts on the meta device)",
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
    if not args.no_sd_scale:
        tables.append(
            comm_table(args.config, args.ranks, secagg_n=args.secagg_n, extra=SD_SCALE, measure_secagg=False)
        )
    for res in tables:
        print_table(res)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(tables, indent=2))
    return 0


def print_table(res: dict[str, Any]) -> None:
    print(
        f"{res['config']} {' '.join(res.get('overrides', []))}, UNet channels {res['unet_channels']}; "
        f"SecAgg+ n={res['secagg']['n']}, "
        f"{res['secagg']['degree']} neighbours, threshold {res['secagg']['threshold']}, 32-bit ring"
    )
    print(
        f"{'update':22s}{'params':>10s}{'fp32':>12s}{'fp16/bf16':>12s}{'SecAgg+':>12s}{'fp32 % UNet':>13s}"
        f"{'SecAgg x':>10s}"
    )
    for row in [*res["rows"], res["full_unet"]]:
        n = row.get("shared_numel", row["unet_numel"])
        sa_b = "n/a" if row["secagg_bytes"] is None else _fmt_bytes(row["secagg_bytes"])
        sa_x = "n/a" if row["secagg_expansion"] is None else f"{row['secagg_expansion']:.4f}"
        print(
            f"{row['what']:22s}{n:>10d}{_fmt_bytes(row['fp32_bytes']):>12s}{_fmt_bytes(row['fp16_bytes']):>12s}"
            f"{sa_b:>12s}{100 * row['fp32_share_of_unet_fp32']:>12.2f}%{sa_x:>10s}"
        )
    t = res["target"]
    print(
        f"target: shared adapter at r=8 <= {100 * t['rank8_share_max']:.0f}% of the full-UNet update: "
        f"{100 * t['rank8_share']:.2f}% -> {'met' if t['met'] else 'MISSED'}"
    )


if __name__ == "__main__":
    raise SystemExit(main())

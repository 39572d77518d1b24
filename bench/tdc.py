"""Choosing the TDC default by experiment: the UNet stage of the backbone pre-training run three times from one
shared warp + VAE stage, with no TDC, TDC on ε-predictions and TDC on x0-predictions (same seed, same batches,
same noise), then each backbone measured on held-out clips of unseen identities by
:func:`bench.pretrain_quality.evaluate_backbone` (PSNR, SSIM, mouth-openness correlation, temporal jitter).

The shared stages are made once by :func:`pftray.model.pretrain.pretrain` and stopped at the start of the UNet
stage; its resumable checkpoint (written at the stage switch) is then the starting point of every variant, which
resumes it under its own ``train.lambda_tdc`` / ``train.tdc_space``. Interrupted runs pick up where they stopped.

    python -m bench tdc [--config configs/quickstart.yaml] [--lambda-tdc 0.1] [--work runs/bench-tdc]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from bench.pretrain_quality import evaluate_backbone
from pftray.config import load_config
from pftray.model.generator import TalkingHeadModel
from pftray.model.pretrain import pretrain


class _UnetStageReached(Exception):
    pass


def variants(lam: float) -> dict[str, list[str]]:
    return {
        "none": ["train.lambda_tdc=0.0"],
        "eps": [f"train.lambda_tdc={lam}", "train.tdc_space=eps"],
        "x0": [f"train.lambda_tdc={lam}", "train.tdc_space=x0"],
    }


def shared_stages(cfg, work: Path) -> Path:
    """The partial checkpoint at the start of the UNet stage (warp + VAE trained), made once."""
    start = work / "unet-start.partial"
    if start.exists():
        return start
    out = work / "shared.pt"

    def stop_at_unet(phase: str, step: int, total: int, loss: float) -> None:
        if phase == "unet":
            raise _UnetStageReached

    try:
        pretrain(cfg, out, progress=stop_at_unet)
    except _UnetStageReached:
        pass
    partial = out.with_name(out.name + ".partial")
    blob = torch.load(partial, map_location="cpu", weights_only=False)
    if blob["state"]["phase"] != "unet" or blob["state"]["step"] != 0:
        raise RuntimeError(f"{partial}: expected the checkpoint of the stage switch, got {blob['state']['phase']} "
                           f"step {blob['state']['step']} (pretrain.checkpoint_every must be > 1)")
    shutil.move(partial, start)
    return start


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--lambda-tdc", type=float, default=0.1)
    ap.add_argument("--identities", type=int, default=6, help="unseen identities evaluated")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps")
    ap.add_argument("--work", default="runs/bench-tdc", help="checkpoints of the shared stages and the variants")
    ap.add_argument("--variants", nargs="+", default=["none", "eps", "x0"], choices=["none", "eps", "x0"],
                    help="run only these (processes sharing --work can split the variants between them)")
    ap.add_argument("--json", default="bench/results/tdc.json")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    base_sets = ["model.backbone=", *args.set]
    t0 = time.perf_counter()
    start = shared_stages(load_config(args.config, base_sets), work)
    shared_s = time.perf_counter() - t0
    results = {}
    for name, sets in variants(args.lambda_tdc).items():
        if name not in args.variants:
            continue
        cfg = load_config(args.config, [*base_sets, *sets])
        out = work / f"backbone-{name}.pt"
        if not out.exists():
            partial = out.with_name(out.name + ".partial")
            if not partial.exists():
                shutil.copyfile(start, partial)
            pretrain(cfg, out)
        model = TalkingHeadModel(cfg.model, cfg.data)
        model.load_backbone(out)
        model.eval()
        blob = torch.load(out, map_location="cpu", weights_only=False)
        results[name] = {"sets": sets, "pretrain": blob.get("pretrain", {}),
                         **evaluate_backbone(cfg, model, identities=args.identities, steps=args.steps)}
        r = results[name]
        print(f"{name:5s} PSNR {r['model_psnr']:6.2f}  SSIM {r['model_ssim']:.3f}  mouth corr "
              f"{r['model_mouth_corr']:.3f}  jitter {r['model_jitter']:.4f}  "
              f"(UNet stage {r['pretrain'].get('times', {}).get('unet', 0):.0f}s)", flush=True)
    first = next(iter(results.values()))
    print(f"\nTDC weight {args.lambda_tdc}; held-out clips of {args.identities} unseen identities, DDIM {args.steps} "
          f"steps; copy baseline PSNR {first['copy_psnr']:.2f}, jitter {first['copy_jitter']:.4f}; "
          f"VAE ceiling PSNR {first['vae_psnr']:.2f}, jitter {first['vae_jitter']:.4f}")
    print(f"{'TDC':8s}{'PSNR':>8s}{'SSIM':>8s}{'mouthPSNR':>11s}{'mouth corr':>12s}{'jitter':>9s}")
    for name, r in results.items():
        print(f"{name:8s}{r['model_psnr']:8.2f}{r['model_ssim']:8.3f}{r['model_mouth_psnr']:11.2f}"
              f"{r['model_mouth_corr']:12.3f}{r['model_jitter']:9.4f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"config": args.config, "set": args.set, "lambda_tdc": args.lambda_tdc,
                                           "shared_stages_s": shared_s, "variants": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

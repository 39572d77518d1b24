"""Backbone quality benchmark: pre-train (optionally) the tiny backbone on the public synthetic identities, then
measure on held-out clips of UNSEEN identities (the client identities, disjoint from the public ones):

* whole-frame and mouth-region PSNR / SSIM of DDIM samples,
* the Pearson correlation between mouth openness measured on the generated frames and the ground truth,
* the VAE's own reconstruction PSNR / SSIM (the ceiling any latent model can reach),
* temporal jitter (mean |Δx̂_t − Δx_t|, :func:`pftray.metrics.temporal.temporal_jitter`),
* the trivial baseline that outputs the reference frame unchanged,

with pre-training wall and CPU times. Prints a table and writes JSON.

    python -m bench.pretrain_quality --config configs/quickstart.yaml --backbone checkpoints/backbone-warp64.pt
    python -m bench.pretrain_quality --pretrain ...   # pre-train first (writes --backbone)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from pftray.config import load_config
from pftray.data import make_client
from pftray.data.synthetic import estimate_mouth_openness
from pftray.fed.host import ClientProvider
from pftray.metrics.image import psnr, region_psnr, region_ssim, ssim
from pftray.metrics.temporal import temporal_jitter
from pftray.model.generator import TalkingHeadModel

MOUTH = (24, 24)


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if a.std() < 1e-12 or b.std() < 1e-12:
        return 0.0  # a constant series (the copy baseline) carries no sync information
    return float(np.corrcoef(a, b)[0, 1])


@torch.no_grad()
def evaluate_backbone(cfg, model: TalkingHeadModel, *, identities: int, steps: int, seed: int = 0) -> dict:
    kw = ClientProvider(cfg).synthetic_kwargs()
    kw.update(num_clients=max(identities, kw["num_clients"]), unreliable_fraction=0.0)
    acc: dict[str, list] = {}
    opens = {"model": [], "vae": [], "gt": []}
    dev = next(model.parameters()).device
    t0 = time.perf_counter()
    for k in range(identities):
        client = make_client(k, **kw)
        ref = torch.from_numpy(client.reference).permute(2, 0, 1).float().div(127.5).sub(1).to(dev)
        for ci, clip in enumerate(client.heldout):
            gt = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float().div(255)
            g = torch.Generator().manual_seed(seed * 1000 + k * 10 + ci)
            gen = (model.sample(ref, torch.from_numpy(clip.audio_feats).to(dev), torch.from_numpy(clip.pose).to(dev),
                                steps=steps, generator=g).cpu() + 1) / 2
            pose = torch.from_numpy(clip.pose).to(dev)
            recon = (model.decode(model.encode(gt.to(dev) * 2 - 1, ref, pose), ref, pose).cpu() + 1) / 2
            copy = ((ref.cpu() + 1) / 2)[None].expand_as(gt)
            boxes = torch.as_tensor(clip.mouth_box, dtype=torch.long)
            for name, x in (("model", gen), ("vae", recon), ("copy", copy)):
                acc.setdefault(f"{name}_psnr", []).append(psnr(x, gt))
                acc.setdefault(f"{name}_ssim", []).append(ssim(x, gt))
                acc.setdefault(f"{name}_mouth_psnr", []).append(region_psnr(x, gt, boxes, size=MOUTH))
                acc.setdefault(f"{name}_mouth_ssim", []).append(region_ssim(x, gt, boxes, size=MOUTH))
                acc.setdefault(f"{name}_jitter", []).append(temporal_jitter(x, gt))
            for name, x in (("model", gen), ("vae", recon)):
                o = estimate_mouth_openness(x.permute(0, 2, 3, 1).numpy(), clip.mouth_box, value_range=(0.0, 1.0))
                opens[name].append(o)
                acc.setdefault(f"{name}_mouth_corr_clip", []).append(_pearson(o, clip.mouth))
            opens["gt"].append(clip.mouth)
    out = {k: float(np.mean(v)) for k, v in acc.items()}
    for name in ("model", "vae"):
        out[f"{name}_mouth_corr"] = _pearson(np.concatenate(opens[name]), np.concatenate(opens["gt"]))
    out["copy_mouth_corr"] = 0.0
    out["eval_s"] = time.perf_counter() - t0
    out["clips"] = len(acc["model_psnr"])
    return out


def print_quality(res: dict) -> None:
    print(f"{'':14s}{'PSNR':>8s}{'SSIM':>8s}{'mouthPSNR':>11s}{'mouthSSIM':>11s}{'mouth corr':>12s}{'jitter':>9s}")
    for name, label in (("copy", "copy baseline"), ("model", "backbone"), ("vae", "VAE ceiling")):
        corr = res.get(f"{name}_mouth_corr", float("nan"))
        print(f"{label:14s}{res[f'{name}_psnr']:8.2f}{res[f'{name}_ssim']:8.3f}{res[f'{name}_mouth_psnr']:11.2f}"
              f"{res[f'{name}_mouth_ssim']:11.3f}{corr:12.3f}{res[f'{name}_jitter']:9.4f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--backbone", default="checkpoints/backbone-warp64.pt")
    ap.add_argument("--pretrain", action="store_true", help="pre-train first (resumes a partial run)")
    ap.add_argument("--identities", type=int, default=8, help="unseen identities evaluated")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--device", default="cpu", help="pre-train and evaluate here (cpu or cuda)")
    ap.add_argument("--json", default="bench/results/pretrain_quality.json")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, ["model.backbone=", *args.set])
    pre = {}
    if args.pretrain:
        from pftray.model.pretrain import pretrain

        c0, w0 = time.process_time(), time.perf_counter()
        pretrain(cfg, args.backbone, device=args.device)
        pre = {"pretrain_cpu_s": time.process_time() - c0, "pretrain_wall_s": time.perf_counter() - w0}
    model = TalkingHeadModel(cfg.model, cfg.data)
    model.load_backbone(args.backbone)
    model.eval().to(args.device)
    blob = torch.load(args.backbone, map_location="cpu", weights_only=False)
    res = {**pre, "pretrain": blob.get("pretrain", {}), "resolution": cfg.data.resolution,
           **evaluate_backbone(cfg, model, identities=args.identities, steps=args.steps)}
    print(f"held-out clips of {args.identities} unseen identities at {cfg.data.resolution}px, {res['clips']} clips, "
          f"DDIM {args.steps} steps")
    print_quality(res)
    times = res["pretrain"].get("times", {})
    print(f"pre-training wall time: warp {times.get('warp', 0):.0f}s, VAE {times.get('vae', 0):.0f}s, "
          f"UNet {times.get('unet', 0):.0f}s "
          f"(steps {res['pretrain'].get('vae_steps')}/{res['pretrain'].get('unet_steps')})")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

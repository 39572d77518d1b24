"""Does the "shifted" scenario make the pre-trained backbone fail? (issue #13)

The backbone is pre-trained on the public identities only, which never carry the shift (:mod:`pftray.data.synthetic`:
shared visible teeth and a mouth lead over the audio, per-client mouth gain and teeth colour). This bench samples
the backbone, with no adapters, on the held-out clips of client identities at several ``data.shift_severity``
values, and at the largest one also on each part of the shift alone ("teeth": teeth only; "motion": lead and gain
only), and reports PSNR in three regions:

* the whole frame; the mouth box (``Clip.mouth_box``, which does not depend on the severity);
* the teeth region: inside ``extras["shift_box"]`` where a frame has teeth. Without teeth (severity 0, "motion")
  the region is where the teeth of the same clip would be (the clip rendered with the teeth at gain 1 and no
  lead), so every row is measured on comparable pixels.

Each PSNR pools the squared error over all frames and pixels of the region of all clips (a mean of per-frame
PSNRs is infinite as soon as one frame is identical). Rows: ``model`` (DDIM samples), ``vae`` (the backbone's
autoencoder reconstruction: the ceiling of any adapter on the UNet), ``copy`` (the reference frame unchanged) and
``oracle_iid`` (the unshifted clip: what a model that is perfect on i.i.d. clients scores on the shifted ones).

    python -m bench.shift_gap --config configs/quickstart.yaml --identities 8 --severities 0 0.5 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from pftray.config import load_config
from pftray.data import make_client
from pftray.data.partition import _HELDOUT
from pftray.data.synthetic import ClientShift, reference_frame, render_clip, sample_identity, sample_shift
from pftray.fed.host import ClientProvider
from pftray.model.generator import TalkingHeadModel


def _box_sse(x: torch.Tensor, gt: torch.Tensor, boxes: np.ndarray) -> tuple[float, int]:
    """Summed squared error and pixel-channel count inside per-frame boxes (``[T, 3, H, W]`` in [0, 1])."""
    sse, n = 0.0, 0
    for t, (y0, y1, x0, x1) in enumerate(boxes):
        if y1 > y0 and x1 > x0:
            d = x[t, :, y0:y1, x0:x1] - gt[t, :, y0:y1, x0:x1]
            sse += float((d.double() ** 2).sum())
            n += d.numel()
    return sse, n


def _psnr_from(sse: float, n: int) -> float:
    return float("nan") if n == 0 else float(10 * np.log10(1.0 / max(sse / n, 1e-12)))


def variant(shift: ClientShift | None, part: str) -> ClientShift | None:
    """The whole shift ("all"), its teeth only ("teeth": gain 1, no lead) or its motion only ("motion": no teeth)."""
    if shift is None or part == "all":
        return shift
    if part == "teeth":
        return dataclasses.replace(shift, mouth_gain=1.0, mouth_lead=0.0)
    if part == "motion":
        return dataclasses.replace(shift, teeth_alpha=0.0)
    raise ValueError(f"part must be all, teeth or motion, got {part!r}")


def heldout_clip(cfg, k: int, j: int, shift: ClientShift | None):
    """Held-out clip ``j`` of client ``k`` as :func:`pftray.data.make_client` renders it, with ``shift``."""
    d, seed = cfg.data, cfg.experiment.seed
    return render_clip(sample_identity(seed, k), num_frames=d.frames_per_clip, resolution=d.resolution,
                       seed=[seed, _HELDOUT, k, j], n_mels=d.n_mels, audio_window=d.audio_window,
                       clip_id=f"client-{k}/heldout-{j}", shift=shift)


@torch.no_grad()
def evaluate(cfg, model: TalkingHeadModel, *, identities: int, settings, steps: int, seed: int = 0) -> dict:
    """PSNRs (see the module docstring) for each ``(severity, part)`` of ``settings``."""
    dev = next(model.parameters()).device
    d, cseed = cfg.data, cfg.experiment.seed
    kw = ClientProvider(cfg).synthetic_kwargs()
    kw.update(num_clients=max(identities, kw["num_clients"]), unreliable_fraction=0.0, shift_severity=1.0)
    probe = make_client(0, **kw).heldout[0]
    if probe != heldout_clip(cfg, 0, 0, sample_shift(cseed, 0, 1.0)):
        raise RuntimeError("heldout_clip no longer renders make_client's held-out clips")
    out = {}
    for s, part in settings:
        sse: dict[str, list] = {}
        t0 = time.perf_counter()
        for k in range(identities):
            ref = reference_frame(sample_identity(cseed, k), d.resolution)
            ref = torch.from_numpy(ref).permute(2, 0, 1).float().div(127.5).sub(1).to(dev)
            full = sample_shift(cseed, k, s)
            for j in range(d.heldout_clips):
                clip = heldout_clip(cfg, k, j, variant(full, part))
                clip0 = heldout_clip(cfg, k, j, None)
                if s > 0 and part != "motion":
                    teeth = clip.extras["shift_box"]
                else:  # where the teeth of this very motion would be
                    where = variant(sample_shift(cseed, k, 1.0), "teeth")
                    if s > 0:
                        where = dataclasses.replace(where, mouth_gain=full.mouth_gain, mouth_lead=full.mouth_lead)
                    teeth = heldout_clip(cfg, k, j, where).extras["shift_box"]
                gt = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float().div(255)
                g = torch.Generator().manual_seed(seed * 1000 + k * 10 + j)
                audio, pose = torch.from_numpy(clip.audio_feats).to(dev), torch.from_numpy(clip.pose).to(dev)
                gen = (model.sample(ref, audio, pose, steps=steps, generator=g).cpu() + 1) / 2
                recon = (model.decode(model.encode(gt.to(dev) * 2 - 1, ref, pose), ref, pose).cpu() + 1) / 2
                copy = ((ref.cpu() + 1) / 2)[None].expand_as(gt)
                oracle = torch.from_numpy(clip0.frames).permute(0, 3, 1, 2).float().div(255)
                whole = np.tile(np.array([[0, d.resolution, 0, d.resolution]]), (clip.num_frames, 1))
                for name, x in (("model", gen), ("vae", recon), ("copy", copy), ("oracle_iid", oracle)):
                    for region, boxes in (("frame", whole), ("mouth", clip.mouth_box), ("teeth", teeth)):
                        e, n = _box_sse(x, gt, boxes)
                        acc = sse.setdefault(f"{name}_{region}", [0.0, 0])
                        acc[0] += e
                        acc[1] += n
        row = {f"{key}_psnr": _psnr_from(*v) for key, v in sse.items()}
        row["teeth_pixels"] = sse["model_teeth"][1] // 3
        row["clips"] = identities * d.heldout_clips
        row["eval_s"] = time.perf_counter() - t0
        out[f"{float(s)}/{part}"] = row
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/quickstart.yaml")
    ap.add_argument("--backbone", default="", help="checkpoint (default: the config's model.backbone)")
    ap.add_argument("--identities", type=int, default=8)
    ap.add_argument("--severities", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    ap.add_argument("--parts", nargs="+", default=["all", "teeth", "motion"],
                    help="parts of the shift evaluated at the largest severity (the other severities: all)")
    ap.add_argument("--steps", type=int, default=10, help="DDIM steps")
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default="bench/results/shift_gap.json")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    backbone = args.backbone or cfg.model.backbone
    if not backbone:
        raise SystemExit("no backbone: pass --backbone or set model.backbone")
    model = TalkingHeadModel(cfg.model, cfg.data)
    model.load_backbone(backbone)
    model.eval().to(args.device)
    if Path(backbone).resolve().is_relative_to(Path.cwd()):
        backbone = os.path.relpath(backbone)
    top = max(args.severities)
    settings = [(s, "all") for s in args.severities if s < top or "all" in args.parts]
    settings += [(top, p) for p in args.parts if p != "all" and top > 0]
    res = evaluate(cfg, model, identities=args.identities, settings=settings, steps=args.steps)
    print(f"backbone {backbone}, {args.identities} client identities x {cfg.data.heldout_clips} held-out clips, "
          f"{cfg.data.resolution}px, DDIM {args.steps} steps")
    print("PSNR (dB) pools the squared error over all frames/pixels of the region; oracle_iid = the unshifted clip")
    print(f"{'severity/part':>14s} {'':12s}{'frame':>8s}{'mouth box':>11s}{'teeth':>8s}")
    for key, row in res.items():
        for name in ("model", "vae", "copy", "oracle_iid"):
            print(f"{key:>14s} {name:12s}{row[f'{name}_frame_psnr']:8.2f}{row[f'{name}_mouth_psnr']:11.2f}"
                  f"{row[f'{name}_teeth_psnr']:8.2f}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"backbone": backbone, "config": args.config, "steps": args.steps,
                                           "identities": args.identities, "results": res}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

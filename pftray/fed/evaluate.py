"""Personalised evaluation of one client on its held-out clips (no Ray).

For each evaluated clip, frames are generated with DDIM from the client's reference frame, audio and pose by

* ``personalised``: the global shared adapter + the client's identity adapter,
* ``backbone``: the pre-trained backbone alone (both adapters disabled: the no-personalisation baseline),
* ``copy``: the trivial baseline that outputs the reference frame unchanged,

and compared with the ground truth: PSNR/SSIM (whole frame and mouth box), lip sync (Pearson correlation of
the mouth openness measured on generated frames with the ground-truth openness), temporal jitter.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pftray.config import Config
from pftray.data import ClientData
from pftray.data.synthetic import estimate_mouth_openness
from pftray.metrics.base import is_missing
from pftray.metrics.image import psnr, region_psnr, region_ssim, ssim
from pftray.metrics.sync import mouth_sync_correlation
from pftray.metrics.temporal import temporal_jitter, temporal_stability

MOUTH_CROP = (24, 24)


def _to01(x: torch.Tensor) -> torch.Tensor:
    return ((x.float().clamp(-1, 1) + 1) / 2).cpu()


def clip_scores(pred01: torch.Tensor, gt01: torch.Tensor, boxes: np.ndarray, gt_mouth: np.ndarray) -> dict[str, Any]:
    """Metrics of a generated clip ``[T, 3, H, W]`` in [0, 1] against the ground truth."""
    b = torch.as_tensor(boxes, dtype=torch.long)
    opening = estimate_mouth_openness(pred01.permute(0, 2, 3, 1).numpy(), boxes, value_range=(0.0, 1.0))
    sync = mouth_sync_correlation(opening, gt_mouth) if len(gt_mouth) > 2 else math.nan
    out = {
        "psnr": psnr(pred01, gt01), "ssim": ssim(pred01, gt01),
        "mouth_psnr": region_psnr(pred01, gt01, b, size=MOUTH_CROP),
        "mouth_ssim": region_ssim(pred01, gt01, b, size=MOUTH_CROP),
        "lip_sync": math.nan if is_missing(sync) else float(sync),
        "lip_sync_missing": str(sync.reason) if is_missing(sync) else "",
        "jitter": temporal_jitter(pred01, gt01) if len(gt01) > 1 else math.nan,
        "temp_stab_eval": temporal_stability(pred01, gt01) if len(gt01) > 1 else math.nan,
    }
    return out


@torch.no_grad()
def evaluate_client(trainer, client: ClientData, state, global_shared: np.ndarray, *, server_round: int,
                    cfg: Config, baseline: bool = True, save_dir: str | None = None) -> list[dict[str, Any]]:
    from pftray.fed.client import ClientState, initial_identity_state

    model = trainer.model
    if state is None:
        state = ClientState(initial_identity_state(model, client.client_id, cfg.experiment.seed))
    trainer.load(global_shared, state)
    device = trainer.device
    rows, grids = [], []
    ref = torch.from_numpy(client.reference).permute(2, 0, 1).float().div(127.5).sub(1).to(device)
    for ci, clip in enumerate(client.heldout[: cfg.eval.clips]):
        n = min(cfg.eval.frames, clip.num_frames)
        gt = torch.from_numpy(clip.frames[:n]).permute(0, 3, 1, 2).float().div(255.0)
        audio = torch.from_numpy(clip.audio_feats[:n]).to(device)
        pose = torch.from_numpy(clip.pose[:n]).to(device)
        gen_seed = cfg.experiment.seed * 100_003 + client.client_id * 101 + ci
        outputs = {"personalised": model.sample(ref, audio, pose, steps=cfg.eval.sample_steps,
                                                generator=torch.Generator().manual_seed(gen_seed))}
        if baseline:
            model.unet.disable_adapters()
            try:
                outputs["backbone"] = model.sample(ref, audio, pose, steps=cfg.eval.sample_steps,
                                                   generator=torch.Generator().manual_seed(gen_seed))
            finally:
                model.unet.enable_adapters()
                model.unet.set_adapters(["shared", "identity"])
            outputs["copy"] = ref[None].expand(n, -1, -1, -1)
        for name, frames in outputs.items():
            pred01 = _to01(frames)
            rows.append({"client_id": client.client_id, "clip": clip.clip_id, "model": name, "frames": n,
                         **clip_scores(pred01, gt, clip.mouth_box[:n], clip.mouth[:n])})
        if save_dir is not None and ci == 0:
            grids.append((gt, {k: _to01(v) for k, v in outputs.items()}, clip))
    if save_dir is not None and grids:
        save_grid(Path(save_dir) / f"client-{client.client_id}_round-{server_round}.png", *grids[0][:2])
    return rows


def save_grid(path: Path, gt01: torch.Tensor, outputs: dict[str, torch.Tensor]) -> Path:
    """PNG with one row per source (ground truth first), frames left to right."""
    from PIL import Image

    rows = [gt01] + [outputs[k] for k in ("backbone", "personalised") if k in outputs]
    img = torch.cat([torch.cat(list(r), dim=2) for r in rows], dim=1)  # [3, rows*H, T*W]
    arr = (img.permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path

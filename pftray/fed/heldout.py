"""Held-out sampling and scoring of one client (no Ray): the one routine behind training-time evaluation
(:func:`evaluate_client`, called by the client hosts every ``fed.eval_every`` rounds) and ``pftray eval``
(:mod:`pftray.evaluation.run_eval`), so the two agree by construction.

For each evaluated clip (``cfg.eval.clips`` held-out clips, the first ``cfg.eval.frames`` frames of each),
frames are generated (:func:`sample_heldout`) with DDIM from the client's reference frame, audio and pose by

* ``personalised``: the global shared adapter + the client's identity adapter,
* ``backbone``: the pre-trained backbone alone (both adapters disabled: the no-personalisation baseline),
* ``copy``: the trivial baseline that outputs the reference frame unchanged,

and compared with the ground truth: PSNR/SSIM (whole frame and mouth box), lip sync (Pearson correlation of
the mouth openness measured on generated frames with the ground-truth openness), temporal jitter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pftray.config import Config
from pftray.data import ClientData
from pftray.data.synthetic import estimate_mouth_openness
from pftray.metrics.base import is_missing
from pftray.metrics.image import pooled_box_psnr, psnr, region_psnr, region_ssim, ssim
from pftray.metrics.sync import mouth_sync_correlation
from pftray.metrics.temporal import temporal_jitter, temporal_stability

MOUTH_CROP = (24, 24)


@dataclass
class ClipSample:
    """Generated frames of one held-out clip: ``gt01`` and each ``outputs[model]`` are ``[T, 3, H, W]`` in [0, 1]."""

    client_id: int
    clip: Any
    gt01: torch.Tensor
    outputs: dict[str, torch.Tensor]


def to01(x: torch.Tensor) -> torch.Tensor:
    """Model output in [-1, 1] to float frames in [0, 1] on the CPU."""
    return ((x.float().clamp(-1, 1) + 1) / 2).cpu()


def generation_seed(*, seed: int, client_id: int, clip_index: int) -> int:
    """DDIM noise seed of one evaluated clip (the same for every model, so only the weights differ)."""
    return seed * 100_003 + client_id * 101 + clip_index


@dataclass(frozen=True)
class HeldoutInput:
    """What a model is given and scored against for one evaluated clip: the client's ``reference`` frame
    ``[3, H, W]`` in [-1, 1], the first ``n`` frames' ground truth ``gt01`` ``[n, 3, H, W]`` in [0, 1] (on the
    CPU), ``audio`` features and ``pose`` (on the device); ``index`` is the clip's place among the held-out clips."""

    index: int
    clip: Any
    reference: torch.Tensor
    gt01: torch.Tensor
    audio: torch.Tensor
    pose: torch.Tensor


def heldout_inputs(client: ClientData, cfg: Config, device: torch.device | str = "cpu"):
    """The evaluated inputs of ``client``: its first ``cfg.eval.clips`` held-out clips, the first
    ``cfg.eval.frames`` frames of each. Every evaluation (:func:`sample_heldout`, the benchmark's decoder round
    trip) reads its clips through here, so all of them score the same frames."""
    ref = torch.from_numpy(client.reference).permute(2, 0, 1).float().div(127.5).sub(1).to(device)
    for ci, clip in enumerate(client.heldout[: cfg.eval.clips]):
        n = min(cfg.eval.frames, clip.num_frames)
        yield HeldoutInput(
            index=ci, clip=clip, reference=ref,
            gt01=torch.from_numpy(clip.frames[:n]).permute(0, 3, 1, 2).float().div(255.0),
            audio=torch.from_numpy(clip.audio_feats[:n]).to(device),
            pose=torch.from_numpy(clip.pose[:n]).to(device),
        )


def _generate(model, ref, audio, pose, *, steps: int, seed: int) -> torch.Tensor:
    return to01(model.sample(ref, audio, pose, steps=steps, generator=torch.Generator().manual_seed(seed)))


@torch.no_grad()
def sample_heldout(trainer, client: ClientData, state, global_shared: np.ndarray, *, cfg: Config,
                   baseline: bool = True, personalised: bool = True, local_state=None) -> list[ClipSample]:
    """Generate the held-out clips of ``client`` under ``personalised`` (global shared adapter + the client's
    identity adapter; a data-independent identity adapter when ``state`` is None), ``backbone`` (both adapters
    disabled) and ``copy`` (the reference frame repeated); with ``local_state`` (the client's local-only shadow,
    ``eval.local_baseline``) also ``local``: its own shared and identity adapters; with ``cfg.eval.global_model``
    also ``global``: the global shared adapter with the data-independent identity adapter (the shared adapter
    alone, as a client gets it before any training of its own)."""
    from pftray.fed.client import ClientState
    from pftray.model.factory import initial_identity_state

    if not (baseline or personalised):
        raise ValueError("sample_heldout: nothing to generate (baseline=False and personalised=False)")
    model = trainer.model
    fresh = None
    if state is None or cfg.eval.global_model:
        fresh = ClientState(initial_identity_state(model, client.client_id, cfg.experiment.seed))
    if state is None:
        state = fresh
    trainer.load(global_shared, state)

    def generate_with(other, args, seed: int) -> torch.Tensor:
        """Sample under ``other``'s adapters, then load the client's own ``state`` back."""
        trainer.load(global_shared, other)
        try:
            return _generate(*args, steps=cfg.eval.sample_steps, seed=seed)
        finally:
            trainer.load(global_shared, state)

    out = []
    for x in heldout_inputs(client, cfg, trainer.device):
        ref, clip, gt, n = x.reference, x.clip, x.gt01, x.gt01.shape[0]
        seed = generation_seed(seed=cfg.experiment.seed, client_id=client.client_id, clip_index=x.index)
        outputs: dict[str, torch.Tensor] = {}
        args = (model, ref, x.audio, x.pose)
        if personalised:
            outputs["personalised"] = _generate(*args, steps=cfg.eval.sample_steps, seed=seed)
        if cfg.eval.global_model:  # a client without a state of its own is already sampled with ``fresh``
            outputs["global"] = (outputs["personalised"] if personalised and state is fresh
                                 else generate_with(fresh, args, seed))
        if local_state is not None:
            outputs["local"] = generate_with(local_state, args, seed)
        if baseline:
            model.unet.disable_adapters()
            try:
                outputs["backbone"] = _generate(*args, steps=cfg.eval.sample_steps, seed=seed)
            finally:
                model.unet.enable_adapters()
                model.unet.set_adapters(["shared", "identity"])
            outputs["copy"] = to01(ref[None].expand(n, -1, -1, -1))
        out.append(ClipSample(client.client_id, clip, gt, outputs))
    return out


def clip_scores(pred01: torch.Tensor, gt01: torch.Tensor, boxes: np.ndarray, gt_mouth: np.ndarray,
                extras: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Metrics of a generated clip ``[T, 3, H, W]`` in [0, 1] against the ground truth. With the synthetic shifted
    scenario's ``extras["shift_box"]`` (first ``T`` frames) also ``shift_psnr``: PSNR over the pixels of the shift
    region (the teeth), pooled over the frames that show it, where whole-frame PSNR would hide the effect."""
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
    if extras and "shift_box" in extras:
        out["shift_psnr"] = pooled_box_psnr(pred01, gt01, extras["shift_box"][: len(gt01)])
    return out


def evaluate_client(trainer, client: ClientData, state, global_shared: np.ndarray, *, server_round: int,
                    cfg: Config, baseline: bool = True, save_dir: str | None = None,
                    local_state=None) -> list[dict[str, Any]]:
    """Training-time evaluation rows (one per clip per model) of :func:`sample_heldout`'s clips; with
    ``save_dir``, the first clip's grid as ``client-K_round-N.png``."""
    samples = sample_heldout(trainer, client, state, global_shared, cfg=cfg, baseline=baseline,
                             local_state=local_state)
    rows = []
    for s in samples:
        n = s.gt01.shape[0]
        for name, pred01 in s.outputs.items():
            rows.append({"client_id": client.client_id, "clip": s.clip.clip_id, "model": name, "frames": n,
                         **clip_scores(pred01, s.gt01, s.clip.mouth_box[:n], s.clip.mouth[:n], s.clip.extras)})
    if save_dir is not None and samples:
        save_grid(Path(save_dir) / f"client-{client.client_id}_round-{server_round}.png", samples[0].gt01,
                  samples[0].outputs)
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

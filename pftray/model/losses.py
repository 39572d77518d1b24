"""Training losses: denoising, Temporal-Denoising Consistency (TDC) and the FedProx proximal term."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pftray.model.generator import TalkingHeadModel


def tdc_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Temporal-Denoising Consistency (PrivFedTalk): L1 between first-order temporal differences.

    ``pred`` and ``target`` are ``[B, F, ...]`` sequences of F consecutive frames of a clip at ONE diffusion
    timestep; ``L_TDC = mean |(p_{f+1} - p_f) - (y_{f+1} - y_f)|``. Zero when the prediction moves exactly as
    the target (a static clip predicted statically included), positive under flicker.
    """
    if pred.shape != target.shape or pred.dim() < 3:
        raise ValueError(f"tdc_loss needs equal [B, F, ...] shapes, got {tuple(pred.shape)} and {tuple(target.shape)}")
    if pred.shape[1] < 2:
        raise ValueError("tdc_loss needs at least 2 frames per clip")
    return F.l1_loss(pred[:, 1:] - pred[:, :-1], target[:, 1:] - target[:, :-1])


def proximal_term(params: dict[str, torch.Tensor], global_params: dict[str, torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx (Li et al. 2020, eq. 2): ``mu/2 * ||w - w_global||^2`` over the shared adapter."""
    total = sum(((p - global_params[k].to(p.device, p.dtype)) ** 2).sum() for k, p in params.items())
    return 0.5 * mu * total


def encode_batch(model: TalkingHeadModel, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames ``[B, F, 3, H, W]`` and reference ``[B, 3, H, W]`` -> residual latents ``[B*F, C, h, w]`` and
    reference features ``[B, R, h, w]``."""
    b, f = batch["frames"].shape[:2]
    with torch.no_grad():
        lat = model.encode(batch["frames"].flatten(0, 1), batch["reference"].repeat_interleave(f, dim=0),
                           batch["pose"].flatten(0, 1))
    ref = model.reference_features(batch["reference"])
    return lat, ref


def diffusion_losses(model: TalkingHeadModel, batch: dict[str, torch.Tensor], *, lambda_tdc: float = 0.0,
                     tdc_space: str = "x0", generator: torch.Generator | None = None,
                     latents: tuple[torch.Tensor, torch.Tensor] | None = None,
                     timesteps: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                     reduce: bool = True, audio_dropout: float = 0.0) -> dict[str, torch.Tensor]:
    """Denoising loss on every frame plus ``lambda_tdc`` * TDC across the frames of each clip.

    All frames of a clip share one timestep (TDC compares neighbouring frames at the same noise level); noise is
    independent per frame. ``timesteps`` (per clip, ``[B]``) and ``noise`` (latent shape) are drawn from
    ``generator`` unless given. Returns ``{"loss", "diffusion", "tdc", "x0_pred", "x0"}``; with ``reduce=False``
    the losses are per clip ``[B]`` (for per-sample gradients). ``audio_dropout`` > 0: that share of clips (drawn
    from ``generator`` after the noise) sees the null audio tokens instead of its audio, for every frame.
    """
    b, f = batch["audio_feats"].shape[:2]
    device = batch["audio_feats"].device
    x0, ref = latents if latents is not None else encode_batch(model, batch)
    if timesteps is None:
        timesteps = torch.randint(0, model.scheduler.config.num_train_timesteps, (b,), generator=generator)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator)
    t = timesteps.to(device).repeat_interleave(f)
    eps = noise.to(device, x0.dtype)
    noisy = model.scheduler.add_noise(x0, eps, t)
    ref_rep = ref.repeat_interleave(f, dim=0)
    drop = None
    if audio_dropout > 0:
        drop = (torch.rand(b, generator=generator) < audio_dropout).repeat_interleave(f)
    out = model.predict(noisy, t, ref_rep, batch["audio_feats"].flatten(0, 1), batch["pose"].flatten(0, 1), drop)
    ptype = model.scheduler.config.prediction_type
    if ptype == "v_prediction":
        target = model.scheduler.get_velocity(x0, eps, t)
    elif ptype == "epsilon":
        target = eps
    else:
        target = x0
    per_clip = ((out.float() - target.float()) ** 2).reshape(b, -1).mean(dim=1)
    x0_pred, eps_pred = model.to_x0_eps(noisy, t, out.float())
    if lambda_tdc > 0 and f >= 2:
        p, y = (x0_pred, x0) if tdc_space == "x0" else (eps_pred, eps)
        p, y = p.reshape(b, f, -1), y.reshape(b, f, -1)
        tdc = ((p[:, 1:] - p[:, :-1]) - (y[:, 1:] - y[:, :-1])).abs().mean(dim=(1, 2))
    else:
        tdc = torch.zeros(b, device=device)
    loss = per_clip + lambda_tdc * tdc
    if reduce:
        loss, per_clip, tdc = loss.mean(), per_clip.mean(), tdc.mean()
    return {"loss": loss, "diffusion": per_clip, "tdc": tdc, "x0_pred": x0_pred.detach(), "x0": x0}

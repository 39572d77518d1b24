"""Sample-level DP-SGD inside a client: per-clip clipping and Gaussian noise on the LoRA parameters.

The UNet denoises single frames, so a batch of ``B`` clips x ``F`` frames is ``N = B * F`` rows
(:func:`pftray.model.losses.diffusion_losses`). The privacy unit here is one **clip**: TDC couples the frames of a
clip, and nothing in the UNet mixes rows, so the gradient of clip ``b``'s loss is the sum of the per-row gradients
of its ``F`` rows. Opacus' grad-sample hooks (``opacus.GradSampleModule`` with ``loss_reduction="sum"``) give the
per-row gradients of the LoRA ``nn.Linear`` layers; we sum them per clip and run DP-SGD (Abadi et al. 2016,
Alg. 1)::

    g_b   = sum_{f} grad_row(b, f)                         per-clip gradient over all trained LoRA tensors
    g~_b  = g_b * min(1, C / ||g_b||_2)                    clip each clip's gradient to max_grad_norm C
    g~    = (sum_b g~_b + N(0, sigma^2 C^2 I)) / L         L = expected batch size (fixed denominator)

**What this guarantees.** With clips Poisson-sampled at rate ``q = batch_clips / num_train_clips`` (see
:func:`poisson_clip_indices`) and ``T = local_steps`` steps per participating round, the sequence of the client's
LoRA weights (shared *and* identity adapter, and everything computed from them only: the shared update it sends,
its Adam state, its personalised model) is (eps, delta)-DP with respect to adding or removing **one clip of that
client** (the sampled Gaussian mechanism; one :class:`~pftray.privacy.accounting.PrivacyEvent` of kind
``"sample-level"`` per client per round it trains, see :func:`dp_sgd_event`; compose a client's events with a
:class:`~pftray.privacy.accounting.PrivacyLedger`). The identity adapter is never released, but it is covered too,
which matters because the personalised model is what a client deploys. Not covered: anything a client computes
from its raw clips outside these steps (the ISFA scalars ``id_sim`` / ``temp_stab``, ``val_loss``,
``num_examples``, evaluation samples), and fixed-size batches (``rng.choice`` without replacement) are only
*accounted as* Poisson, as the server does for client sampling.

**Composition with client-level DP.** Client-level DP-FedAvg (:mod:`pftray.privacy.dp`, ``privacy.json``) is a
guarantee for a different neighbouring relation: adding or removing a whole client, for the sequence of global
shared adapters the server releases. The two are reported side by side and never added up. A clip change replaces
one client's data, so client-level (eps_c, delta) under add/remove adjacency also implies, by group privacy of size
2, a clip-level bound of ``2 * eps_c`` for the shared release only (not for the identity adapter); the sample-level
epsilon of DP-SGD is the bound for the whole personalised model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from opacus import GradSampleModule

from pftray.model.adapters import ADAPTERS, adapter_parameters
from pftray.model.generator import TalkingHeadModel
from pftray.model.losses import diffusion_losses, encode_batch
from pftray.privacy.accounting import PrivacyEvent

__all__ = [
    "clip_losses",
    "dp_sgd_event",
    "dp_sgd_step",
    "draw_noise",
    "per_clip_gradients",
    "poisson_clip_indices",
    "privatize_gradients",
]


# ------------------------------------------------------------------------------------------------ the loss


def draw_noise(
    model: TalkingHeadModel, x0: torch.Tensor, *, frames: int, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-clip timesteps ``[B]`` and per-row noise (shape of ``x0``, ``[B*F, C, h, w]``) that
    ``diffusion_losses`` draws for latents ``x0``.

    Same generator calls in the same order (``randint`` over clips, then ``randn`` of the latent shape, both on
    the CPU), so ``clip_losses(model, batch, timesteps=t, noise=eps, ...)`` equals
    ``diffusion_losses(..., reduce=False)["loss"]`` for a generator in the same state.
    """
    if frames < 1 or x0.shape[0] % frames:
        raise ValueError(f"frames must be >= 1 and divide the {x0.shape[0]} latent rows, got {frames!r}")
    b = x0.shape[0] // frames
    t_clip = torch.randint(0, model.scheduler.config.num_train_timesteps, (b,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    return t_clip.to(x0.device), eps.to(x0.device, x0.dtype)


def clip_losses(
    model: TalkingHeadModel,
    batch: dict[str, torch.Tensor],
    *,
    timesteps: torch.Tensor,
    noise: torch.Tensor,
    lambda_tdc: float,
    tdc_space: str,
    latents: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """Per-clip loss ``[B]``: denoising MSE + ``lambda_tdc`` * TDC with given timesteps and noise.

    :func:`pftray.model.losses.diffusion_losses` with explicit ``t`` and ``eps`` (validated here), so that one
    clip can be evaluated alone with exactly the ``t`` and ``eps`` it had in a batch.
    """
    if tdc_space not in ("x0", "eps"):
        raise ValueError(f"tdc_space must be 'x0' or 'eps', got {tdc_space!r}")
    b, f = batch["audio_feats"].shape[:2]
    x0, ref = latents if latents is not None else encode_batch(model, batch)
    if timesteps.shape != (b,):
        raise ValueError(f"timesteps must have shape ({b},), got {tuple(timesteps.shape)}")
    if noise.shape != x0.shape:
        raise ValueError(f"noise must have the latent shape {tuple(x0.shape)}, got {tuple(noise.shape)}")
    out = diffusion_losses(model, batch, lambda_tdc=lambda_tdc, tdc_space=tdc_space, latents=(x0, ref),
                           timesteps=timesteps, noise=noise, reduce=False)
    return out["loss"]


# ------------------------------------------------------------------------------------- per-clip gradients


def _lora_parameters(model: TalkingHeadModel) -> dict[int, str]:
    return {id(p): k for a in ADAPTERS for k, p in adapter_parameters(model.unet, a).items()}


def _check_params(model: TalkingHeadModel, params: dict[str, torch.nn.Parameter]) -> None:
    if not params:
        raise ValueError("params must name at least one LoRA parameter")
    lora = _lora_parameters(model)
    foreign = [k for k, p in params.items() if id(p) not in lora]
    if foreign:
        raise ValueError(f"params must be LoRA parameters of model.unet; not LoRA: {foreign[:3]}")
    if model.mcfg.gradient_checkpointing:
        # checkpointing re-runs forwards inside backward, so the grad-sample hooks would see every activation twice
        raise ValueError("DP-SGD needs model.gradient_checkpointing = false")


@contextmanager
def _grad_sample_hooks(model: TalkingHeadModel, params: dict[str, torch.nn.Parameter]) -> Iterator[None]:
    """Only ``params`` trainable and opacus hooks on the UNet; requires_grad and ``.grad`` restored on exit."""
    saved_flags = [(p, p.requires_grad) for p in model.parameters()]
    saved_grads = {k: p.grad for k, p in params.items()}
    for p, _ in saved_flags:
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
        p.grad = None
    gsm = GradSampleModule(model.unet, batch_first=True, loss_reduction="sum", strict=True)
    try:
        yield
    finally:
        gsm.cleanup()  # removes the hooks and every attribute opacus put on the parameters
        for p, flag in saved_flags:
            p.requires_grad_(flag)
        for k, p in params.items():
            p.grad = saved_grads[k]


def _per_clip(
    model: TalkingHeadModel,
    batch: dict[str, torch.Tensor],
    params: dict[str, torch.nn.Parameter],
    *,
    lambda_tdc: float,
    tdc_space: str,
    generator: torch.Generator | None,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    _check_params(model, params)
    b, f = batch["audio_feats"].shape[:2]
    latents = encode_batch(model, batch)
    t_clip, eps = draw_noise(model, latents[0], frames=f, generator=generator)
    with _grad_sample_hooks(model, params), warnings.catch_warnings():
        # opacus uses full backward hooks; no module *input* needs a gradient here (only LoRA weights do)
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        losses = clip_losses(
            model,
            batch,
            timesteps=t_clip,
            noise=eps,
            lambda_tdc=lambda_tdc,
            tdc_space=tdc_space,
            latents=latents,
        )
        losses.sum().backward()  # loss_reduction="sum": grad samples are gradients of each row's own terms
        grads = {}
        for k, p in params.items():
            gs = getattr(p, "grad_sample", None)
            if gs is None:
                raise RuntimeError(f"opacus produced no grad_sample for {k}; is it used in the forward pass?")
            if gs.shape[0] != b * f:
                raise RuntimeError(f"grad_sample of {k} has {gs.shape[0]} rows, expected B*F = {b * f}")
            grads[k] = gs.detach().float().reshape(b, f, *p.shape).sum(dim=1)
    return grads, losses.detach()


def per_clip_gradients(
    model: TalkingHeadModel,
    batch: dict[str, torch.Tensor],
    params: dict[str, torch.nn.Parameter],
    *,
    lambda_tdc: float,
    tdc_space: str,
    generator: torch.Generator | None,
) -> dict[str, torch.Tensor]:
    """Gradient of each clip's loss w.r.t. ``params``: ``{name: [B, *shape]}`` (float32).

    Loss per clip as in ``diffusion_losses(reduce=False)`` with ``t`` and ``eps`` drawn from ``generator``
    (:func:`draw_noise`); per-row grad samples from opacus, summed over the ``F`` rows (frames) of each clip.
    ``params`` must be LoRA parameters of ``model.unet``; only they receive gradients, and the model's
    ``requires_grad`` flags and ``.grad`` fields are left as they were.
    """
    return _per_clip(model, batch, params, lambda_tdc=lambda_tdc, tdc_space=tdc_space, generator=generator)[0]


# ---------------------------------------------------------------------------------------------- DP-SGD


def _check_dp_args(noise_multiplier: float, max_grad_norm: float, expected_batch_size: float) -> None:
    if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
        raise ValueError(f"noise_multiplier must be finite and >= 0, got {noise_multiplier!r}")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ValueError(f"max_grad_norm must be finite and > 0, got {max_grad_norm!r}")
    if not (math.isfinite(expected_batch_size) and expected_batch_size > 0):
        raise ValueError(f"expected_batch_size must be finite and > 0, got {expected_batch_size!r}")


def privatize_gradients(
    per_clip: dict[str, torch.Tensor],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    generator: torch.Generator | None,
) -> tuple[dict[str, torch.Tensor], float]:
    """Clip each clip's joint gradient to ``C``, sum, add ``N(0, (sigma C)^2)``, divide by ``L``.

    ``per_clip`` is ``{name: [B, *shape]}`` (``B`` may be 0 under Poisson sampling: the result is pure noise).
    The clip norm is over all tensors together. Noise is drawn on the CPU from ``generator`` in sorted key order.
    Returns the noisy mean gradient ``{name: shape}`` and the fraction of clips that were clipped (``nan`` if
    ``B == 0``).
    """
    _check_dp_args(noise_multiplier, max_grad_norm, expected_batch_size)
    if not per_clip:
        raise ValueError("per_clip must hold at least one tensor")
    sizes = {g.shape[0] for g in per_clip.values()}
    if len(sizes) != 1:
        raise ValueError(f"per_clip tensors disagree on the number of clips: {sorted(sizes)}")
    b = sizes.pop()
    norms = torch.sqrt(sum(g.flatten(1).double().pow(2).sum(dim=1) for g in per_clip.values()))
    factor = (max_grad_norm / (norms + 1e-12)).clamp(max=1.0)
    clipped_fraction = float((norms > max_grad_norm).double().mean()) if b else math.nan
    out = {}
    for k in sorted(per_clip):
        g = per_clip[k]
        total = (g.double() * factor.reshape(b, *([1] * (g.dim() - 1))).to(g.device)).sum(dim=0)
        noise = torch.randn(g.shape[1:], generator=generator, dtype=torch.float64) * (
            noise_multiplier * max_grad_norm
        )
        out[k] = ((total + noise.to(g.device)) / expected_batch_size).to(g.dtype)
    return out, clipped_fraction


def dp_sgd_step(
    model: TalkingHeadModel,
    batch: dict[str, torch.Tensor] | None,
    params: dict[str, torch.nn.Parameter],
    optimizer: torch.optim.Optimizer | Sequence[torch.optim.Optimizer],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    generator: torch.Generator | None,
    lambda_tdc: float,
    tdc_space: str,
    mu: float = 0.0,
    global_params: dict[str, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """One DP-SGD step on ``params``: privatised gradient into ``.grad``, then ``optimizer.step()``.

    ``optimizer`` may be a sequence (the client keeps separate optimisers for the shared and identity adapters);
    each is zeroed before and stepped after the gradients are set.

    ``batch`` is ``None`` for an empty Poisson sample (the step then applies noise only). A FedProx term
    ``mu/2 ||w - w_global||^2`` over the keys of ``global_params`` is data-independent, so its gradient
    ``mu (w - w_global)`` is added after privatisation (post-processing). Returns ``{"loss": mean per-clip loss,
    "clip_fraction": fraction of clipped clips, "batch_clips": B}`` (``loss`` / ``clip_fraction`` nan if empty).
    """
    _check_dp_args(noise_multiplier, max_grad_norm, expected_batch_size)
    if mu < 0 or (mu > 0 and global_params is None):
        raise ValueError(f"mu must be >= 0 and needs global_params when > 0, got mu={mu!r}")
    if batch is None:
        _check_params(model, params)
        per_clip = {k: torch.zeros((0, *p.shape), device=p.device) for k, p in params.items()}
        losses = torch.zeros(0)
    else:
        per_clip, losses = _per_clip(
            model, batch, params, lambda_tdc=lambda_tdc, tdc_space=tdc_space, generator=generator
        )
    grads, clipped = privatize_gradients(
        per_clip,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        generator=generator,
    )
    optimizers = [optimizer] if isinstance(optimizer, torch.optim.Optimizer) else list(optimizer)
    for opt in optimizers:
        opt.zero_grad(set_to_none=True)
    for k, p in params.items():
        g = grads[k].to(p.device, p.dtype)
        if mu > 0 and k in global_params:
            g = g + mu * (p.detach() - global_params[k].to(p.device, p.dtype))
        p.grad = g
    for opt in optimizers:
        opt.step()
    loss = float(losses.mean()) if losses.numel() else math.nan
    return {"loss": loss, "clip_fraction": clipped, "batch_clips": int(losses.numel())}


# ------------------------------------------------------------------------------------ sampling, accounting


def poisson_clip_indices(num_clips: int, *, sample_rate: float, rng: np.random.Generator) -> np.ndarray:
    """Indices of the clips in one Poisson sample: each clip independently with probability ``sample_rate``.

    This is the sampling the sampled-Gaussian accountant assumes; the batch size is random (possibly 0), and
    :func:`dp_sgd_step` divides by the expected size ``sample_rate * num_clips``.
    """
    if num_clips < 1:
        raise ValueError(f"num_clips must be >= 1, got {num_clips!r}")
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    return np.flatnonzero(rng.random(num_clips) < sample_rate)


def dp_sgd_event(
    *, noise_multiplier: float, batch_clips: int, num_train_clips: int, local_steps: int
) -> PrivacyEvent:
    """The sample-level privacy event of one client's local training in one round.

    ``local_steps`` sampled Gaussian steps at ``q = batch_clips / num_train_clips``; record it in that client's own
    :class:`~pftray.privacy.accounting.PrivacyLedger` (one ledger per client: the neighbouring relation is one
    clip of one client, so events of different clients do not compose).
    """
    if not 1 <= batch_clips <= num_train_clips:
        raise ValueError(f"need 1 <= batch_clips <= num_train_clips, got {batch_clips} and {num_train_clips}")
    return PrivacyEvent(
        noise_multiplier=noise_multiplier,
        sample_rate=batch_clips / num_train_clips,
        steps=local_steps,
        kind="sample-level",
    )

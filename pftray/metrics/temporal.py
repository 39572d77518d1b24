"""Temporal consistency of a generated clip against its ground truth.

Notation: a clip is ``[T, 3, H, W]`` in [0, 1]; x̂_t is the generated frame t, x_t the ground-truth frame t,
Δx̂_t = x̂_{t+1} − x̂_t and Δx_t = x_{t+1} − x_t for t = 0 .. T−2. All clips need T >= 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pftray.metrics.base import Missing, check_frames, check_pair


def temporal_jitter(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Temporal jitter J = mean over t, channels and pixels of |Δx̂_t − Δx_t|.

    This is J_k of the PrivFedTalk design (TempStab_k = 1 / (1 + J_k), used by ISFA) and the same first-order
    temporal difference as the TDC loss. J = 0 exactly when the generated clip changes from frame to frame
    exactly as the ground truth does (including when both are static), whatever its per-frame error.
    """
    pred, target = check_pair(pred, target, min_frames=2)
    d_pred = pred[1:].double() - pred[:-1].double()
    d_true = target[1:].double() - target[:-1].double()
    return float((d_pred - d_true).abs().mean())


def temporal_stability(pred: torch.Tensor, target: torch.Tensor) -> float:
    """TempStab = 1 / (1 + J) in (0, 1], with J from :func:`temporal_jitter` (1 means no excess jitter)."""
    return 1.0 / (1.0 + temporal_jitter(pred, target))


def flicker_energy_ratio(pred: torch.Tensor, target: torch.Tensor) -> float | Missing:
    """Ratio of temporal-change energies R = mean_t ||Δx̂_t||^2 / mean_t ||Δx_t||^2.

    R = 1 when the generated clip changes as much as the ground truth, R > 1 for flicker / excess motion,
    R < 1 for a frozen or over-smoothed clip. ``Missing`` when the ground truth is static (the denominator
    is 0 and the ratio undefined).
    """
    pred, target = check_pair(pred, target, min_frames=2)
    num = float(((pred[1:].double() - pred[:-1].double()) ** 2).sum(dim=(1, 2, 3)).mean())
    den = float(((target[1:].double() - target[:-1].double()) ** 2).sum(dim=(1, 2, 3)).mean())
    if den == 0.0:
        return Missing("ground-truth clip is static: flicker energy ratio undefined")
    return num / den


def phase_correlation_shift(frame_a: torch.Tensor, frame_b: torch.Tensor) -> tuple[int, int]:
    """Integer translation (dy, dx) with frame_b(p) ≈ frame_a(p − d), by phase correlation.

    (Kuglin & Hines 1975): with F the 2-D DFT of the channel-mean images, the normalised cross-power spectrum
    F_b conj(F_a) / |F_b conj(F_a)| is e^{−2πi k·d / N} for a circular shift d, whose inverse DFT peaks at d.
    Shifts are returned in (−N/2, N/2].
    """
    if frame_a.shape != frame_b.shape or frame_a.ndim != 3:
        raise ValueError(
            f"frames must both be [C, H, W] of one shape, got {tuple(frame_a.shape)}, {tuple(frame_b.shape)}"
        )
    a = frame_a.double().mean(dim=0)
    b = frame_b.double().mean(dim=0)
    cross = torch.fft.fft2(b) * torch.conj(torch.fft.fft2(a))
    mag = cross.abs()
    cross = torch.where(mag > 1e-12, cross / mag.clamp_min(1e-12), torch.zeros_like(cross))
    corr = torch.fft.ifft2(cross).real
    h, w = corr.shape
    idx = int(torch.argmax(corr))
    dy, dx = divmod(idx, w)
    dy = dy - h if dy > h // 2 else dy
    dx = dx - w if dx > w // 2 else dx
    return dy, dx


def _shift_l1(prev: torch.Tensor, nxt: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Mean |prev(p − d) − nxt(p)| over the pixels p whose source p − d lies inside the frame."""
    _, h, w = prev.shape
    if abs(dy) >= h or abs(dx) >= w:
        return nxt.new_tensor(float("nan"))
    src_y = slice(max(0, -dy), h - max(0, dy))
    dst_y = slice(max(0, dy), h - max(0, -dy))
    src_x = slice(max(0, -dx), w - max(0, dx))
    dst_x = slice(max(0, dx), w - max(0, -dx))
    return (prev[:, src_y, src_x] - nxt[:, dst_y, dst_x]).abs().mean()


def _flow_l1(prev: torch.Tensor, nxt: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Mean |prev(p + f(p)) − nxt(p)| over pixels whose sample point lies inside the frame (bilinear)."""
    _, h, w = prev.shape
    ys, xs = torch.meshgrid(
        torch.arange(h, dtype=prev.dtype), torch.arange(w, dtype=prev.dtype), indexing="ij"
    )
    sx = xs + flow[0].to(prev.dtype)
    sy = ys + flow[1].to(prev.dtype)
    valid = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1)
    grid = torch.stack([2 * sx / max(w - 1, 1) - 1, 2 * sy / max(h - 1, 1) - 1], dim=-1)
    warped = F.grid_sample(prev[None], grid[None], mode="bilinear", align_corners=True)[0]
    err = (warped - nxt).abs().mean(dim=0)
    return err[valid].mean() if valid.any() else nxt.new_tensor(float("nan"))


def warp_error(
    pred: torch.Tensor, target: torch.Tensor, *, flow: torch.Tensor | None = None
) -> float | Missing:
    """Warping error: how far the generated frame t+1 is from the generated frame t moved by the *true* motion.

    E_warp = mean_t mean_{p valid} |x̂_t(W_t(p)) − x̂_{t+1}(p)| (channel-averaged L1), cf. the warping error
    of Lai et al. 2018 ("Learning Blind Video Temporal Consistency", ECCV) with the motion taken from the
    ground truth instead of the output:

    * ``flow is None``: the motion of each ground-truth pair (x_t, x_{t+1}) is a global integer translation d_t
      estimated by :func:`phase_correlation_shift`; W_t(p) = p − d_t. Suited to clips whose motion is mostly
      a global head translation (the synthetic benchmark); local motion (mouth) is left in the error.
    * ``flow`` given: ``[T−1, 2, H, W]`` backward flow in pixels, channel 0 = x, 1 = y, with
      x_{t+1}(p) ≈ x_t(p + flow_t(p)); W_t(p) = p + flow_t(p), bilinear sampling.

    Pixels whose source point falls outside frame t are excluded. 0 for a static generated clip whose
    ground truth is static, and for a generated clip that moves exactly with a translating ground truth.
    """
    pred, target = check_pair(pred, target, min_frames=2)
    t_pairs = pred.shape[0] - 1
    if flow is not None:
        expected = (t_pairs, 2, pred.shape[2], pred.shape[3])
        if tuple(flow.shape) != expected:
            raise ValueError(f"flow must have shape [T-1, 2, H, W] = {expected}, got {tuple(flow.shape)}")
        if not torch.isfinite(flow).all():
            raise ValueError("flow contains NaN or infinite values")
    errors = []
    for t in range(t_pairs):
        prev, nxt = pred[t].double(), pred[t + 1].double()
        if flow is None:
            dy, dx = phase_correlation_shift(target[t], target[t + 1])
            errors.append(_shift_l1(prev, nxt, dy, dx))
        else:
            errors.append(_flow_l1(prev, nxt, flow[t].double()))
    err = torch.stack(errors)
    if torch.isnan(err).all():
        return Missing("no frame pair has pixels inside the frame after warping")
    return float(err[~torch.isnan(err)].mean())


def clip_temporal_metrics(pred: torch.Tensor, target: torch.Tensor) -> dict[str, float | Missing]:
    """All temporal metrics of one clip: jitter, temp_stab, flicker_ratio, warp_error."""
    check_frames(pred, "pred", min_frames=2)
    jitter = temporal_jitter(pred, target)
    return {
        "jitter": jitter,
        "temp_stab": 1.0 / (1.0 + jitter),
        "flicker_ratio": flicker_energy_ratio(pred, target),
        "warp_error": warp_error(pred, target),
    }

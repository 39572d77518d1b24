"""Full-reference image metrics over frame stacks: PSNR, SSIM and their mouth-region variants.

Conventions: ``pred`` and ``target`` are float tensors in [0, 1] of shape ``[N, 3, H, W]`` (N frames of a
clip or a batch of images). Every metric is computed **per frame and then averaged over the N frames**
(not over the pooled pixels of the whole batch), so a clip's score does not depend on how it is batched.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pftray.metrics.base import check_pair

MOUTH_SIZE: tuple[int, int] = (16, 16)
"""Size that mouth crops are resized to when the boxes of a clip differ in size (bilinear, antialiased)."""

SSIM_KERNEL_SIZE = 11
SSIM_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03


def psnr_per_frame(pred: torch.Tensor, target: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Per-frame PSNR ``10 log10(R^2 / MSE_i)`` in dB, ``MSE_i`` over all channels and pixels of frame i.

    A frame with ``MSE_i == 0`` has PSNR ``+inf``.
    """
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    pred, target = check_pair(pred, target)
    mse = ((pred.double() - target.double()) ** 2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(data_range**2 / mse)


def psnr(pred: torch.Tensor, target: torch.Tensor, *, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB, the **mean over frames of per-frame PSNR**.

    PSNR_i = 10 log10(R^2 / MSE_i), R = ``data_range`` (1.0 for [0, 1] images). Averaging per-frame dB
    values weights every frame equally; it differs from the PSNR of the pooled MSE when frames differ in
    quality (the pooled value is dominated by the worst frames). Identical inputs give ``inf``.
    """
    return float(psnr_per_frame(pred, target, data_range=data_range).mean())


def _gaussian_window(*, kernel_size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    """Normalised 1-D Gaussian taps (as scipy.ndimage.gaussian_filter with truncate=(k-1)/(2 sigma))."""
    x = torch.arange(kernel_size, dtype=dtype) - (kernel_size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def ssim_per_frame(pred: torch.Tensor, target: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """Per-frame SSIM (see :func:`ssim`), shape ``[N]``, computed in float64."""
    if not data_range > 0:
        raise ValueError(f"data_range must be > 0, got {data_range}")
    pred, target = check_pair(pred, target, min_size=SSIM_KERNEL_SIZE)
    x, y = pred.double(), target.double()
    channels = x.shape[1]
    g = _gaussian_window(kernel_size=SSIM_KERNEL_SIZE, sigma=SSIM_SIGMA, dtype=torch.float64).to(x.device)
    gy = g.view(1, 1, -1, 1).repeat(channels, 1, 1, 1)
    gx = g.view(1, 1, 1, -1).repeat(channels, 1, 1, 1)

    def blur(z: torch.Tensor) -> torch.Tensor:
        # separable Gaussian, "valid" positions only: the window never leaves the image
        return F.conv2d(F.conv2d(z, gy, groups=channels), gx, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov_xy = blur(x * y) - mu_x * mu_y
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / (
        (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    )
    return ssim_map.flatten(1).mean(dim=1)


def ssim(pred: torch.Tensor, target: torch.Tensor, *, data_range: float = 1.0) -> float:
    """Structural similarity (Wang, Bovik, Sheikh, Simoncelli 2004, IEEE TIP 13(4), eq. 13).

    SSIM(x, y) = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))
    with local statistics under an 11x11 Gaussian window (sigma 1.5), C1 = (0.01 R)^2, C2 = (0.03 R)^2 and
    population (not sample) covariance. The SSIM map is averaged over the window positions that lie fully
    inside the image and over the three channels of each frame, then over frames. This equals
    ``skimage.metrics.structural_similarity(x, y, channel_axis=0, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=R)`` per frame. Frames must be at least 11x11.
    """
    return float(ssim_per_frame(pred, target, data_range=data_range).mean())


def crop_boxes(
    frames: torch.Tensor, boxes: torch.Tensor, *, size: tuple[int, int] | None = None
) -> torch.Tensor:
    """Crop each frame to its box ``[y0, y1, x0, x1]`` (half-open pixel ranges) and return ``[N, 3, h, w]``.

    ``boxes`` is ``[N, 4]`` (one box per frame) or ``[4]`` (the same box for all frames). When ``size`` is
    None and all boxes have the same height and width, the crops are returned exactly; when sizes differ
    (and ``size`` is None) every crop is resized to :data:`MOUTH_SIZE`. Passing ``size`` always resizes.
    Resizing is bilinear with antialiasing.
    """
    if frames.ndim != 4:
        raise ValueError(f"frames must have shape [N, C, H, W], got {tuple(frames.shape)}")
    n, _, height, width = frames.shape
    boxes = torch.as_tensor(boxes)
    if boxes.shape == (4,):
        boxes = boxes.expand(n, 4)
    if boxes.shape != (n, 4):
        raise ValueError(f"boxes must have shape [N, 4] or [4] with N={n}, got {tuple(boxes.shape)}")
    if torch.is_floating_point(boxes) and not torch.equal(boxes, boxes.round()):
        raise ValueError("boxes must hold integer pixel coordinates [y0, y1, x0, x1]")
    boxes = boxes.long()
    y0, y1, x0, x1 = boxes.unbind(dim=1)
    bad = (y0 < 0) | (x0 < 0) | (y1 > height) | (x1 > width) | (y1 <= y0) | (x1 <= x0)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"boxes[{i}] = {boxes[i].tolist()} is empty or outside the {height}x{width} frame "
            "(expected 0 <= y0 < y1 <= H, 0 <= x0 < x1 <= W)"
        )
    crops = [frames[i : i + 1, :, int(y0[i]) : int(y1[i]), int(x0[i]) : int(x1[i])] for i in range(n)]
    sizes = {tuple(c.shape[2:]) for c in crops}
    if size is None and len(sizes) == 1:
        return torch.cat(crops, dim=0)
    target_size = MOUTH_SIZE if size is None else tuple(size)
    resized = [
        F.interpolate(c, size=target_size, mode="bilinear", align_corners=False, antialias=True)
        for c in crops
    ]
    return torch.cat(resized, dim=0).clamp(0.0, 1.0)


def region_psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    boxes: torch.Tensor,
    *,
    size: tuple[int, int] | None = None,
    data_range: float = 1.0,
) -> float:
    """PSNR of the boxed region (e.g. the mouth): :func:`psnr` of :func:`crop_boxes` of both clips.

    The same box (from the ground truth's landmarks) crops the prediction and the target.
    """
    pred, target = check_pair(pred, target)
    return psnr(
        crop_boxes(pred, boxes, size=size), crop_boxes(target, boxes, size=size), data_range=data_range
    )


def region_ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    boxes: torch.Tensor,
    *,
    size: tuple[int, int] | None = None,
    data_range: float = 1.0,
) -> float:
    """SSIM of the boxed region: :func:`ssim` of :func:`crop_boxes`; crops must be at least 11x11."""
    pred, target = check_pair(pred, target)
    return ssim(
        crop_boxes(pred, boxes, size=size), crop_boxes(target, boxes, size=size), data_range=data_range
    )


def pooled_box_psnr(pred: torch.Tensor, target: torch.Tensor, boxes, *, data_range: float = 1.0) -> float:
    """PSNR of the pixels inside per-frame boxes ``[T, 4]`` (``y0, y1, x0, x1``, half-open, native resolution),
    pooled over the frames: ``10 log10(range^2 / MSE)`` with the MSE over every boxed pixel and channel. Frames
    whose box is empty do not count; ``NaN`` when no frame has a box. Unlike :func:`region_psnr` nothing is
    resized, so a small region (e.g. the synthetic scenario's ``shift_box``) is scored on its own pixels only."""
    pred, target = check_pair(pred, target)
    b = torch.as_tensor(boxes, dtype=torch.long)
    if b.ndim != 2 or b.shape != (pred.shape[0], 4):
        raise ValueError(f"boxes must be [T, 4] for T = {pred.shape[0]} frames, got {tuple(b.shape)}")
    sse, n = 0.0, 0
    for t, (y0, y1, x0, x1) in enumerate(b.tolist()):
        y0, x0 = max(y0, 0), max(x0, 0)
        if y1 > y0 and x1 > x0:
            d = pred[t, :, y0:y1, x0:x1].double() - target[t, :, y0:y1, x0:x1].double()
            sse += float((d**2).sum())
            n += d.numel()
    if n == 0:
        return float("nan")
    return float(10 * math.log10(data_range**2 / max(sse / n, 1e-20)))

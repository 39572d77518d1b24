import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from skimage.metrics import structural_similarity

from pftray.metrics import (
    Missing,
    crop_boxes,
    is_missing,
    psnr,
    psnr_per_frame,
    region_psnr,
    region_ssim,
    ssim,
)


def test_missing_value_and_helper():
    m = Missing("weights absent")
    assert is_missing(m) and not is_missing(0.0) and not is_missing(float("nan"))
    with pytest.raises(ValueError, match="non-empty"):
        Missing("")
    with pytest.raises(AttributeError):
        m.reason = "changed"  # frozen


def test_psnr_hand_computed_two_frames():
    pred = torch.zeros(2, 3, 2, 2)
    target = torch.zeros(2, 3, 2, 2)
    target[0, 1, 0, 1] = 0.5  # frame 0: MSE = 0.25 / 12
    target[1] = 0.1  # frame 1: MSE = 0.01 -> 20 dB
    expected0 = 10 * math.log10(1 / (0.25 / 12))  # = 10 log10(48)
    assert psnr_per_frame(pred, target).tolist() == pytest.approx([expected0, 20.0], abs=1e-5)
    assert psnr(pred, target) == pytest.approx((expected0 + 20.0) / 2, abs=1e-5)
    # data_range scales the peak: R = 2 adds 20 log10(2) dB
    assert psnr(pred, target, data_range=2.0) == pytest.approx(
        (expected0 + 20.0) / 2 + 20 * math.log10(2), abs=1e-5
    )


def test_psnr_identical_is_inf_and_errors_are_loud():
    x = torch.rand(2, 3, 4, 4)
    assert psnr(x, x) == math.inf
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(x, x[:1])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        psnr(x * 2, x)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        psnr(x[0], x[0])
    with pytest.raises(ValueError, match="data_range"):
        psnr(x, x, data_range=0)


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    vals = [
        structural_similarity(
            a[i].double().numpy(),
            b[i].double().numpy(),
            channel_axis=0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1,
        )
        for i in range(a.shape[0])
    ]
    return float(np.mean(vals))


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    noise=st.floats(0.0, 0.5),
    h=st.integers(11, 20),
    w=st.integers(11, 20),
)
def test_ssim_matches_skimage(seed, noise, h, w):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(2, 3, h, w, generator=g)
    b = (a + noise * torch.randn(2, 3, h, w, generator=g)).clamp(0, 1)
    assert ssim(a, b) == pytest.approx(_skimage_ssim(a, b), abs=1e-6)  # brief asks 1e-3; we match exactly


def test_ssim_identity_and_size_check():
    a = torch.rand(1, 3, 12, 12)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(a[..., :10, :10], a[..., :10, :10])


def test_crop_boxes_exact_and_resized():
    frames = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    same = crop_boxes(frames, torch.tensor([[1, 4, 2, 6], [3, 6, 0, 4]]))
    assert same.shape == (2, 3, 3, 4)
    assert torch.equal(same[0], frames[0, :, 1:4, 2:6]) and torch.equal(same[1], frames[1, :, 3:6, 0:4])
    one_box = crop_boxes(frames, torch.tensor([0, 2, 0, 2]))
    assert torch.equal(one_box, frames[:, :, 0:2, 0:2])
    differ = crop_boxes(frames / frames.max(), torch.tensor([[0, 4, 0, 4], [0, 8, 0, 8]]))
    assert differ.shape == (2, 3, 16, 16)
    # a constant region stays constant when resized
    const = torch.full((1, 3, 8, 8), 0.3)
    assert torch.allclose(
        crop_boxes(const, torch.tensor([[1, 6, 2, 5]]), size=(16, 16)), torch.full((1, 3, 16, 16), 0.3)
    )
    with pytest.raises(ValueError, match="outside"):
        crop_boxes(frames, torch.tensor([0, 9, 0, 2]))
    with pytest.raises(ValueError, match="empty"):
        crop_boxes(frames, torch.tensor([3, 3, 0, 2]))


def test_region_metrics_only_see_the_box():
    g = torch.Generator().manual_seed(1)
    target = torch.rand(3, 3, 32, 32, generator=g)
    pred = target.clone()
    box = torch.tensor([4, 20, 4, 20])
    pred[:, :, 20:, :] = 1 - pred[:, :, 20:, :]  # corrupt only outside the mouth box
    assert region_psnr(pred, target, box) == math.inf
    assert region_ssim(pred, target, box) == pytest.approx(1.0, abs=1e-12)
    pred[:, :, 4:20, 4:20] = (pred[:, :, 4:20, 4:20] + 0.1).clamp(0, 1)
    crop_p, crop_t = pred[:, :, 4:20, 4:20], target[:, :, 4:20, 4:20]
    assert region_psnr(pred, target, box) == pytest.approx(psnr(crop_p, crop_t))
    assert region_ssim(pred, target, box) == pytest.approx(_skimage_ssim(crop_p, crop_t), abs=1e-6)


def test_pooled_box_psnr_scores_only_the_boxed_pixels_pooled_over_frames():
    from pftray.metrics.image import pooled_box_psnr

    gt = torch.full((3, 3, 16, 16), 0.5)
    pred = gt.clone()
    boxes = np.array([[2, 6, 3, 9], [0, 0, 0, 0], [10, 12, 10, 16]], dtype=np.int32)  # frame 1: no region
    pred[0, :, 2:6, 3:9] += 0.1
    pred[2, :, 10:12, 10:16] += 0.1
    pred[1] = 0.0  # a wrong frame without a region does not count
    pred[0, :, 12:, 12:] = 1.0  # nor do errors outside the boxes
    assert pooled_box_psnr(pred, gt, boxes) == pytest.approx(20.0, abs=1e-4)  # MSE 0.01 (float32) on boxed pixels
    # pooling is over pixels, not a mean of per-frame PSNRs: a 2x larger error on the small box only
    pred[2, :, 10:12, 10:16] = gt[2, :, 10:12, 10:16] + 0.2
    n0, n2 = 4 * 6, 2 * 6
    assert pooled_box_psnr(pred, gt, boxes) == pytest.approx(10 * math.log10((n0 + n2) / (n0 * 0.01 + n2 * 0.04)),
                                                             abs=1e-4)
    assert math.isnan(pooled_box_psnr(pred, gt, np.zeros((3, 4), np.int32)))
    with pytest.raises(ValueError, match="boxes must be"):
        pooled_box_psnr(pred, gt, boxes[:2])


def test_clip_scores_add_shift_psnr_only_with_the_scenarios_ground_truth():
    from pftray.fed.heldout import clip_scores

    rng = np.random.default_rng(0)
    gt = torch.from_numpy(rng.random((4, 3, 32, 32), dtype=np.float32))
    pred = (gt + 0.05).clamp(0, 1)
    mouth = np.tile(np.array([[18, 28, 8, 24]], np.int32), (4, 1))
    base = clip_scores(pred, gt, mouth, np.linspace(0, 1, 4, dtype=np.float32))
    assert "shift_psnr" not in base
    box = np.tile(np.array([[20, 24, 12, 20]], np.int32), (6, 1))  # extras cover the whole clip: cut to T
    out = clip_scores(pred, gt, mouth, np.linspace(0, 1, 4, dtype=np.float32), {"shift_box": box})
    d = (pred - gt)[:, :, 20:24, 12:20].double()
    assert out["shift_psnr"] == pytest.approx(float(10 * torch.log10(1 / (d**2).mean())), abs=1e-9)

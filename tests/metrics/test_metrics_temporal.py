import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pftray.metrics import (
    Missing,
    flicker_energy_ratio,
    phase_correlation_shift,
    temporal_jitter,
    temporal_stability,
    warp_error,
)


def _translating_clip(seed: int = 0, t: int = 6, step=(1, 2)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, 20, 24, generator=g) * 0.6 + 0.2  # keep headroom so flicker is never clipped
    return torch.stack([torch.roll(base, (k * step[0], k * step[1]), dims=(1, 2)) for k in range(t)])


def _flicker(clip: torch.Tensor, amplitude: float) -> torch.Tensor:
    """Add a global brightness flicker +-amplitude alternating frame by frame."""
    signs = torch.tensor([(-1.0) ** k for k in range(clip.shape[0])]).view(-1, 1, 1, 1)
    return clip + amplitude * signs


def test_zero_on_static_clips():
    g = torch.Generator().manual_seed(0)
    frame = torch.rand(1, 3, 12, 12, generator=g)
    static = frame.repeat(5, 1, 1, 1)
    other_static = torch.rand(1, 3, 12, 12, generator=g).repeat(5, 1, 1, 1)
    for pred in (static, other_static):  # pred == target, and a different but static pred
        assert temporal_jitter(pred, static) == 0.0
        assert temporal_stability(pred, static) == 1.0
        assert warp_error(pred, static) == 0.0
    ratio = flicker_energy_ratio(static, static)
    assert isinstance(ratio, Missing) and "static" in ratio.reason


def test_jitter_hand_computed():
    target = torch.zeros(3, 3, 2, 2)
    pred = torch.zeros(3, 3, 2, 2)
    pred[1] = 0.3  # Δx̂ = +0.3, −0.3 everywhere; Δx = 0 -> J = 0.3
    assert temporal_jitter(pred, target) == pytest.approx(0.3)
    assert temporal_stability(pred, target) == pytest.approx(1 / 1.3)
    target[2] = 0.5  # Δx = 0, +0.5 -> |0.3 - 0| and |-0.3 - 0.5| -> mean (0.3 + 0.8) / 2
    assert temporal_jitter(pred, target) == pytest.approx(0.55)


def test_following_the_ground_truth_motion_is_free():
    clip = _translating_clip()
    assert temporal_jitter(clip, clip) == 0.0
    assert flicker_energy_ratio(clip, clip) == pytest.approx(1.0)
    assert warp_error(clip, clip) == pytest.approx(0.0, abs=1e-12)
    # a constant per-frame error (offset) does not change the motion
    assert temporal_jitter((clip + 0.1).clamp(0, 1), clip) == pytest.approx(0.0, abs=1e-6)


@settings(max_examples=20, deadline=None)
@given(dy=st.integers(-5, 5), dx=st.integers(-5, 5), seed=st.integers(0, 1000))
def test_phase_correlation_recovers_shift(dy, dx, seed):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(3, 24, 20, generator=g)
    b = torch.roll(a, (dy, dx), dims=(1, 2))  # b(p) = a(p - d)
    assert phase_correlation_shift(a, b) == (dy, dx)


def test_metrics_grow_monotonically_with_flicker():
    clip = _translating_clip()
    amplitudes = [0.0, 0.01, 0.03, 0.06, 0.1, 0.15]
    jit = [temporal_jitter(_flicker(clip, a), clip) for a in amplitudes]
    stab = [temporal_stability(_flicker(clip, a), clip) for a in amplitudes]
    ratio = [flicker_energy_ratio(_flicker(clip, a), clip) for a in amplitudes]
    warp = [warp_error(_flicker(clip, a), clip) for a in amplitudes]
    assert jit[0] == 0.0 and all(b > a for a, b in zip(jit, jit[1:]))
    assert jit == pytest.approx([2 * a for a in amplitudes], abs=1e-6)  # |Δ| of a ±a flicker is 2a
    assert stab[0] == 1.0 and all(b < a for a, b in zip(stab, stab[1:]))
    assert ratio[0] == pytest.approx(1.0) and all(b > a for a, b in zip(ratio, ratio[1:]))
    assert warp[0] == pytest.approx(0.0, abs=1e-12) and all(b > a for a, b in zip(warp, warp[1:]))
    assert warp == pytest.approx([2 * a for a in amplitudes], abs=1e-6)


def test_warp_error_with_dense_flow():
    clip = _translating_clip(step=(1, 2))
    flow = torch.zeros(clip.shape[0] - 1, 2, 20, 24)
    flow[:, 0], flow[:, 1] = -2.0, -1.0  # x_{t+1}(p) = x_t(p + flow): backward flow of a (+1, +2) shift
    assert warp_error(clip, clip, flow=flow) == pytest.approx(0.0, abs=1e-6)
    assert warp_error(clip, clip, flow=torch.zeros_like(flow)) > 0.05  # wrong motion is penalised
    assert warp_error(_flicker(clip, 0.05), clip, flow=flow) == pytest.approx(0.1, abs=1e-6)
    with pytest.raises(ValueError, match=r"\[T-1, 2, H, W\]"):
        warp_error(clip, clip, flow=flow[:, :1])


def test_frozen_prediction_and_validation():
    clip = _translating_clip()
    frozen = clip[:1].repeat(clip.shape[0], 1, 1, 1)
    assert flicker_energy_ratio(frozen, clip) == 0.0
    assert temporal_jitter(frozen, clip) > 0
    assert math.isfinite(warp_error(frozen, clip))
    with pytest.raises(ValueError, match="at least 2 frames"):
        temporal_jitter(clip[:1], clip[:1])
    with pytest.raises(ValueError, match="shapes differ"):
        temporal_jitter(clip, clip[:3])

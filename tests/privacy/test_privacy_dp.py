"""Client-level DP: clipping, adaptive clipping direction and convergence, noise scales, the DP layer's pieces."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pftray.privacy import (
    AdaptiveClipping,
    DPLayer,
    bounded_weight,
    central_noise,
    clip_update,
    secure_generator,
    skellam_noise,
    split_noise_multiplier,
)


def test_clip_update_known_values() -> None:
    clipped, norm, was = clip_update(np.array([3.0, 4.0]), 1.0)
    np.testing.assert_allclose(clipped, [0.6, 0.8])
    assert norm == 5.0 and was
    clipped, norm, was = clip_update(np.array([0.3, 0.4], dtype=np.float32), 1.0)
    np.testing.assert_array_equal(clipped, np.array([0.3, 0.4], dtype=np.float32))
    assert norm == pytest.approx(0.5) and not was and clipped.dtype == np.float32


@settings(max_examples=50, deadline=None)
@given(
    delta=arrays(np.float64, st.integers(1, 50), elements=st.floats(-1e3, 1e3)),
    c=st.floats(1e-3, 1e3),
)
def test_clip_update_properties(delta: np.ndarray, c: float) -> None:
    clipped, norm, was = clip_update(delta, c)
    assert np.linalg.norm(clipped) <= c * (1 + 1e-9)
    assert norm == pytest.approx(np.linalg.norm(delta))
    assert was == (norm > c)
    if not was:
        np.testing.assert_array_equal(clipped, delta)
    elif norm > 0:  # direction preserved
        np.testing.assert_allclose(clipped * norm / c, delta, rtol=1e-9, atol=1e-9)


def test_clip_update_rejects_non_finite() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        clip_update(np.array([1.0, np.nan]), 1.0)
    with pytest.raises(ValueError, match="non-finite"):
        clip_update(np.array([np.inf]), 1.0)
    with pytest.raises(ValueError, match="clipping_norm"):
        clip_update(np.array([1.0]), 0.0)


def test_adaptive_clipping_direction() -> None:
    """All updates fit under C -> C shrinks; all are clipped -> C grows (Andrew et al.; Flower 1.42 inverts)."""
    ac = AdaptiveClipping(1.0, target_quantile=0.5, clip_lr=0.2)
    new = ac.update_from_norms(np.full(10, 0.1))
    assert new == pytest.approx(math.exp(-0.2 * (1.0 - 0.5)))
    assert new < 1.0
    ac = AdaptiveClipping(1.0, target_quantile=0.5, clip_lr=0.2)
    new = ac.update_from_norms(np.full(10, 10.0))
    assert new == pytest.approx(math.exp(0.2 * 0.5))
    assert new > 1.0
    # boundary: norm == C counts as NOT clipped (b_i = 1[||Delta|| <= C])
    ac = AdaptiveClipping(1.0, target_quantile=0.5, clip_lr=0.2)
    assert ac.update_from_norms(np.array([1.0])) < 1.0


@pytest.mark.parametrize("start", [0.01, 100.0])
@pytest.mark.parametrize("gamma", [0.3, 0.7])
def test_adaptive_clipping_converges_to_quantile(start: float, gamma: float) -> None:
    rng = np.random.default_rng(0)
    ac = AdaptiveClipping(start, target_quantile=gamma, clip_lr=0.2, clipped_count_stddev=1.0, rng=rng)
    for _ in range(300):
        ac.update_from_norms(rng.lognormal(0.0, 1.0, size=100))
    quantile = float(np.quantile(rng.lognormal(0.0, 1.0, size=200_000), gamma))
    assert ac.clipping_norm == pytest.approx(quantile, rel=0.10)


def test_adaptive_clipping_state_round_trip() -> None:
    ac = AdaptiveClipping(
        2.0, target_quantile=0.6, clip_lr=0.1, clipped_count_stddev=2.0, rng=np.random.default_rng(3)
    )
    ac.update(unclipped_count=4, num_updates=10)
    state = json.loads(json.dumps(ac.state_dict()))
    other = AdaptiveClipping(1.0, rng=np.random.default_rng(3))
    other.load_state_dict(state)
    assert other.clipping_norm == ac.clipping_norm and other.target_quantile == 0.6
    ac._rng = np.random.default_rng(5)  # a test-injected draw, so both apply the same noise
    other._rng = np.random.default_rng(5)
    assert other.update(unclipped_count=7, num_updates=10) == ac.update(unclipped_count=7, num_updates=10)
    with pytest.raises(ValueError, match="unclipped_count"):
        ac.update(unclipped_count=11, num_updates=10)


def test_split_noise_multiplier() -> None:
    # Andrew et al. 2021: z_Delta = (z^-2 - (2 sigma_b)^-2)^-1/2
    assert split_noise_multiplier(noise_multiplier=1.0, clipped_count_stddev=5.0) == pytest.approx(
        (1 - 0.01) ** -0.5
    )
    assert split_noise_multiplier(noise_multiplier=0.0, clipped_count_stddev=0.0) == 0.0
    assert split_noise_multiplier(noise_multiplier=1.0, clipped_count_stddev=1e6) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="clipped_count_stddev"):
        split_noise_multiplier(noise_multiplier=1.0, clipped_count_stddev=0.5)


def test_noise_scales() -> None:
    rng = np.random.default_rng(0)
    x = central_noise(200_000, noise_multiplier=1.2, clipping_norm=0.5, denominator=10, rng=rng)
    assert x.std() == pytest.approx(1.2 * 0.5 / 10, rel=0.01)
    # Skellam shares: integer, variance 2 mu each, and the shares of survivors add up to Skellam(sum of mus)
    share = skellam_noise(200_000, 50.0, rng)
    assert share.dtype == np.int64 and share.var() == pytest.approx(100.0, rel=0.02)
    total = sum(skellam_noise(40_000, 12.5, rng) for _ in range(16))
    assert total.mean() == pytest.approx(0.0, abs=0.6) and total.var() == pytest.approx(2 * 16 * 12.5, rel=0.03)
    assert not skellam_noise(10, 0.0, rng).any()


def test_bounded_weight_clamps_whatever_is_reported() -> None:
    assert [bounded_weight(x) for x in (0.3, -2.0, 7.0, float("nan"), float("inf"), "junk", None)] == [
        0.3, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_secure_generator_draws_differ_and_are_not_the_seeded_stream() -> None:
    a, b = secure_generator().random(8), secure_generator().random(8)
    assert not np.array_equal(a, b)
    assert not np.array_equal(a, np.random.default_rng(0).random(8))


def test_dp_layer_validation() -> None:
    layer = DPLayer(noise_multiplier=1.0, clipping_norm=0.1, sample_rate=0.5, num_registered=20)
    assert layer.update_noise_multiplier == 1.0 and layer.denominator == 10.0
    adaptive = DPLayer(noise_multiplier=1.0, clipping_norm=0.1, sample_rate=0.5, num_registered=20, adaptive=True,
                       clipped_count_stddev=5.0)
    assert adaptive.update_noise_multiplier > 1.0
    assert DPLayer.joint_noise_multiplier(adaptive.update_noise_multiplier, 5.0) == pytest.approx(1.0)
    for kwargs, key in [
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"clipping_norm": 0.0}, "clipping_norm"),
        ({"placement": "local"}, "noise_placement"),
        ({"sample_rate": 0.0}, "sample_rate"),
        ({"adaptive": True, "clipped_count_stddev": 0.1}, "clipped_count_stddev"),
    ]:
        args = {"noise_multiplier": 1.0, "clipping_norm": 1.0, "sample_rate": 0.5, "num_registered": 10, **kwargs}
        with pytest.raises(ValueError, match=key):
            DPLayer(**args)

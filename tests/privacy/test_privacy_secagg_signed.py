"""Signed fixed point with integer noise (distributed discrete DP under SecAgg) and the modulus limit.

The outcome of a signed round must be exactly ``sum_i encode(x_i) + sum_i noise_i`` over the survivors, lifted to
``(-2**(k-1), 2**(k-1)]`` and divided by the scale; checked here with Python-int arithmetic."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from pftray.privacy.secagg import (
    MAX_MODULUS_BITS,
    STAGES,
    QuantizationSpec,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    SignedQuantization,
)

# ---------------------------------------------------------------------------------------------- modulus limit


@pytest.mark.parametrize("bad", [0, 1, 54, 64, True, 32.0, "32"])
def test_modulus_bits_outside_the_supported_range_is_refused(bad) -> None:
    assert MAX_MODULUS_BITS == 53
    msg = r"privacy\.secagg_modulus_bits.*\[2, 53\]"
    with pytest.raises(ValueError, match=msg):
        SecAggParams(sample=(0, 1), vector_length=2, clip_range=1.0, threshold=2, modulus_bits=bad)
    with pytest.raises(ValueError, match=msg):
        SecAggParams(sample=(0, 1), vector_length=2, clip_range=1.0, threshold=2, modulus_bits=bad, signed_bound=1.0)
    with pytest.raises(ValueError, match=msg):
        QuantizationSpec(clip_range=1.0, num_clients=2, modulus_bits=bad)
    with pytest.raises(ValueError, match=msg):
        SignedQuantization.for_bound(1.0, bad)


@pytest.mark.parametrize("bits", [2, 32, MAX_MODULUS_BITS])
def test_modulus_bits_at_the_limits_is_accepted(bits: int) -> None:
    p = SecAggParams(sample=(0, 1), vector_length=2, clip_range=1.0, threshold=2, modulus_bits=bits)
    assert p.quantization.modulus_bits == bits


# ---------------------------------------------------------------------------------------------- encoding


def _lift(word: int, k: int) -> int:
    word %= 1 << k
    return word - (1 << k) if word > 1 << (k - 1) else word


def test_encode_is_stochastic_rounding_of_x_times_scale_mod_2k() -> None:
    q = SignedQuantization(scale=1000.0, modulus_bits=20)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.uniform(-300, 300, 5000), [-0.001, 0.0, 0.001, -200.0, 123.456]])
    enc = q.encode(x, np.random.default_rng(1))
    assert enc.dtype == np.uint32 and int(enc.max()) < 2**20
    for xi, e in zip(x, enc.tolist()):
        v = _lift(e, 20)
        assert math.floor(xi * 1000) <= v <= math.floor(xi * 1000) + 1
    assert _lift(int(enc[-2]), 20) == -200_000  # integers are exact
    # unbiased: 0.3 units rounds up with probability 0.3
    up = q.encode(np.full(40_000, 0.0003), np.random.default_rng(2)).astype(np.int64)
    assert set(np.unique(up).tolist()) == {0, 1} and abs(up.mean() - 0.3) < 4 * math.sqrt(0.21 / 40_000)
    np.testing.assert_allclose(q.decode_sum(enc), x, atol=1 / q.scale)


def test_integer_noise_is_added_modulo_2k() -> None:
    q = SignedQuantization(scale=4.0, modulus_bits=12)
    x = np.array([0.25, -0.5, 1.0, -1.0])  # exact: 1, -2, 4, -4
    noise = np.array([-3, 2, 2000, -2045], dtype=np.int64)
    enc = q.encode(x, np.random.default_rng(0), integer_noise=noise)
    assert [_lift(int(e), 12) for e in enc] == [-2, 0, 2004, -2049 + 4096]  # the last one wraps
    with pytest.raises(ValueError, match="integer_noise"):
        q.encode(x, np.random.default_rng(0), integer_noise=noise.astype(np.float64))
    with pytest.raises(ValueError, match="integer_noise"):
        q.encode(x, np.random.default_rng(0), integer_noise=noise[:3])
    with pytest.raises(ValueError, match="NaN"):
        q.encode(np.array([np.nan]), np.random.default_rng(0))
    with pytest.raises(ValueError, match="2\\*\\*62"):
        q.encode(np.array([1e300]), np.random.default_rng(0))


def test_decode_sum_is_the_centred_lift() -> None:
    q = SignedQuantization(scale=1.0, modulus_bits=8)
    words = np.array([0, 1, 127, 128, 129, 255], dtype=np.uint32)
    np.testing.assert_array_equal(q.decode_sum(words), [0.0, 1.0, 127.0, 128.0, -127.0, -1.0])
    q2 = SignedQuantization(scale=8.0, modulus_bits=40)
    np.testing.assert_array_equal(q2.decode_sum(np.array([2**40 - 8, 4], dtype=np.uint64)), [-1.0, 0.5])


@pytest.mark.parametrize(("bound", "bits"), [(1.0, 32), (3.0, 32), (1e-3, 20), (7.5, 53), (2.0**30, 32)])
def test_for_bound_is_the_largest_exact_scale(bound: float, bits: int) -> None:
    q = SignedQuantization.for_bound(bound, bits)
    half = 2 ** (bits - 1) - 1
    exact = Fraction(half) / Fraction(bound)  # the float bound's exact value, e.g. 1e-3 is a little above 0.001
    assert q.scale == math.floor(exact)
    assert Fraction(q.scale) * Fraction(bound) <= half < Fraction(q.scale + 1) * Fraction(bound)
    # every integer sum with |S| <= bound * scale lifts back exactly, the extreme ones included
    extreme = int(q.scale * bound)
    for s in (extreme, -extreme, 0, 1, -1):
        word = np.array([s % (1 << bits)], dtype=np.uint64 if bits > 32 else np.uint32)
        assert q.decode_sum(word)[0] == s / q.scale


def test_for_bound_refuses_a_scale_below_one() -> None:
    with pytest.raises(ValueError, match="cannot hold sums up to"):
        SignedQuantization.for_bound(2.0**31, 32)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="bound"):
            SignedQuantization.for_bound(bad, 32)


# ---------------------------------------------------------------------------------------------- protocol


def _signed_round(vectors, noise, *, bound, bits, threshold, degree=None, drops=None, seed=0):
    """A signed round; client u rounds with ``default_rng((seed, u))``; ``drops`` = {u: stage it never answers}."""
    n, d = len(vectors), len(vectors[0])
    drops = drops or {}
    params = SecAggParams(sample=tuple(range(n)), vector_length=d, clip_range=1.0, threshold=threshold,
                          degree=degree, modulus_bits=bits, signed_bound=bound, graph_seed=seed)
    server = SecAggServer(params)
    clients = {u: SecAggClient(u, rng=np.random.default_rng((seed, u))) for u in range(n)}

    def alive(stage, msgs):
        return {u: m for u, m in msgs.items() if not (u in drops and STAGES.index(stage) >= STAGES.index(drops[u]))}

    msgs = server.setup()
    msgs = server.advertise_keys([clients[u].setup(m) for u, m in alive("advertise_keys", msgs).items()])
    msgs = server.share_keys([clients[u].share_keys(m) for u, m in alive("share_keys", msgs).items()])
    msgs = server.masked_input([clients[u].masked_input(m, vectors[u], integer_noise=noise[u])
                                for u, m in alive("masked_input", msgs).items()])
    return server.unmask([clients[u].unmask(m) for u, m in alive("unmask", msgs).items()]), params


def _reference_integer_sum(vectors, noise, survivors, scale, seed) -> list[int]:
    """``sum_u (round_stochastic(x_u * scale) + noise_u)`` in Python ints, with each client's rounding draws."""
    total = [0] * len(vectors[0])
    for u in survivors:
        v = np.asarray(vectors[u], dtype=np.float64) * scale
        draws = np.random.default_rng((seed, u)).random(v.shape)
        for j, (vj, rj, nj) in enumerate(zip(v.tolist(), draws.tolist(), np.asarray(noise[u]).tolist())):
            fl = math.floor(vj)
            total[j] += fl + (1 if rj < vj - fl else 0) + int(nj)
    return total


@pytest.mark.parametrize(("bits", "noise_amp"), [(20, 20), (32, 10**5), (53, 10**12)])
@pytest.mark.parametrize(("degree", "drops"), [
    (None, {}),
    (None, {1: "advertise_keys", 2: "masked_input", 4: "unmask"}),
    (4, {0: "share_keys", 2: "masked_input", 5: "unmask"}),  # every share group keeps >= 3 holders
])
def test_signed_round_is_exactly_the_sum_of_encodings_and_noise(bits, noise_amp, degree, drops) -> None:
    n, d, bound, seed = 8, 120, 16.0, 5
    rng = np.random.default_rng(bits)
    sign = np.where(np.arange(d) < d // 2, -0.9, 0.9)  # negative sums on the first half, positive on the second
    vectors = [rng.uniform(-0.1, 0.1, d) + sign for u in range(n)]
    noise = {u: rng.integers(-noise_amp, noise_amp + 1, d) for u in range(n)}
    out, params = _signed_round(vectors, noise, bound=bound, bits=bits, threshold=3, degree=degree, drops=drops,
                                seed=seed)
    q = params.signed_quantization
    assert q == SignedQuantization.for_bound(bound, bits) == params.quantization
    want_survivors = tuple(u for u in range(n) if drops.get(u) not in ("advertise_keys", "share_keys", "masked_input"))
    assert out.survivors == want_survivors
    expected = _reference_integer_sum(vectors, noise, out.survivors, q.scale, seed)
    assert max(abs(e) for e in expected) <= 2 ** (bits - 1) - 1  # inside the lift: the test is meaningful
    assert [_lift(int(w), bits) for w in out.quantized_sum.tolist()] == expected
    np.testing.assert_array_equal(out.sum, np.array(expected, dtype=np.float64) / q.scale)
    assert (out.sum < 0).any() and (out.sum > 0).any()
    # and the float reading: sum of inputs plus the noise in float units, up to one rounding unit per survivor
    signal = np.sum([vectors[u] for u in out.survivors], axis=0)
    noise_f = np.sum([noise[u] for u in out.survivors], axis=0) / q.scale
    assert np.max(np.abs(out.sum - signal - noise_f)) <= len(out.survivors) / q.scale


def test_integer_noise_needs_signed_mode_and_offset_mode_is_unchanged() -> None:
    n, d = 3, 5
    params = SecAggParams(sample=tuple(range(n)), vector_length=d, clip_range=2.0, threshold=2)
    assert params.signed_quantization is None
    assert params.quantization == QuantizationSpec(clip_range=2.0, num_clients=n, modulus_bits=32)
    server = SecAggServer(params)
    clients = {u: SecAggClient(u) for u in range(n)}
    msgs = server.setup()
    msgs = server.advertise_keys([clients[u].setup(m) for u, m in msgs.items()])
    msgs = server.share_keys([clients[u].share_keys(m) for u, m in msgs.items()])
    with pytest.raises(ValueError, match="signed"):
        clients[0].masked_input(msgs[0], np.zeros(d), integer_noise=np.ones(d, dtype=np.int64))
    vectors = [np.full(d, -1.5), np.full(d, 0.5), np.full(d, 2.5)]  # the last one is clipped to 2
    msgs = server.masked_input([clients[u].masked_input(m, vectors[u]) for u, m in msgs.items()])
    out = server.unmask([clients[u].unmask(m) for u, m in msgs.items()])
    np.testing.assert_allclose(out.sum, np.full(d, 1.0), atol=3 / params.quantization.scale)


def test_signed_mode_refuses_deterministic_rounding() -> None:
    with pytest.raises(ValueError, match="stochastic"):
        SecAggParams(sample=(0, 1), vector_length=2, clip_range=1.0, threshold=2, signed_bound=1.0,
                     rounding="deterministic")

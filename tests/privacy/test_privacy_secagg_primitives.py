"""SecAgg primitives: Shamir, key agreement, AEAD, PRG, quantisation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import stats

from pftray.privacy.secagg import QuantizationSpec, dequantize_sum, quantization_error_bound, quantize
from pftray.privacy.secagg import primitives as P


@pytest.mark.parametrize(("n", "t"), [(5, 3), (6, 2), (4, 4)])
def test_shamir_every_threshold_subset_reconstructs(n: int, t: int) -> None:
    secret = P.random_seed()
    shares = P.shamir_split(secret, threshold=t, xs=range(1, n + 1))
    for subset in itertools.combinations(shares, t):
        assert P.shamir_reconstruct({x: shares[x] for x in subset}, threshold=t, secret_bytes=32) == secret


def test_shamir_fails_below_threshold() -> None:
    secret = P.random_seed()
    shares = P.shamir_split(secret, threshold=3, xs=[1, 2, 3, 4, 5])
    two = {1: shares[1], 2: shares[2]}
    with pytest.raises(ValueError, match="at least threshold=3"):
        P.shamir_reconstruct(two, threshold=3, secret_bytes=32)
    # interpolating t-1 shares as if the threshold were t-1 does not give the secret (it usually even
    # yields chunks outside the 15-byte range, which reconstruct reports as inconsistent shares)
    try:
        wrong = P.shamir_reconstruct(two, threshold=2, secret_bytes=32)
    except ValueError:
        wrong = None
    assert wrong != secret


def test_shamir_odd_lengths_and_validation() -> None:
    for length in (1, 15, 16, 31, 45):
        secret = bytes(range(length))
        shares = P.shamir_split(secret, threshold=2, xs=[7, 9, 11])
        assert (
            P.shamir_reconstruct({9: shares[9], 11: shares[11]}, threshold=2, secret_bytes=length) == secret
        )
    with pytest.raises(ValueError, match="threshold"):
        P.shamir_split(b"x", threshold=4, xs=[1, 2, 3])
    with pytest.raises(ValueError, match="distinct"):
        P.shamir_split(b"x", threshold=2, xs=[1, 1, 2])


def test_key_agreement_symmetric_and_info_separated() -> None:
    a_sk, a_pk = P.generate_key_pair()
    b_sk, b_pk = P.generate_key_pair()
    assert P.agree(a_sk, b_pk, info=b"x") == P.agree(b_sk, a_pk, info=b"x")
    assert P.agree(a_sk, b_pk, info=b"x") != P.agree(a_sk, b_pk, info=b"y")
    assert P.public_key_from_private(a_sk) == a_pk


def test_aead_round_trip_and_tamper_detection() -> None:
    key = P.random_seed()
    ct = P.encrypt(key, b"share", associated_data=b"ad")
    assert P.decrypt(key, ct, associated_data=b"ad") == b"share"
    flipped = bytearray(ct)
    flipped[-1] ^= 1
    with pytest.raises(P.ShareDecryptionError):
        P.decrypt(key, bytes(flipped), associated_data=b"ad")
    with pytest.raises(P.ShareDecryptionError):
        P.decrypt(key, ct, associated_data=b"other")
    with pytest.raises(P.ShareDecryptionError):
        P.decrypt(P.random_seed(), ct, associated_data=b"ad")


@pytest.mark.parametrize("bits", [32, 20, 48])
def test_prg_deterministic_and_uniform(bits: int) -> None:
    seed = P.random_seed()
    a = P.prg_expand(seed, 100_000, modulus_bits=bits)
    assert np.array_equal(a, P.prg_expand(seed, 100_000, modulus_bits=bits))
    assert a.dtype == P.uint_dtype(bits) and int(a.max()) < 2**bits
    assert not np.array_equal(a, P.prg_expand(P.random_seed(), 100_000, modulus_bits=bits))
    u = a.astype(np.float64) / 2**bits
    assert stats.kstest(u, "uniform").pvalue > 1e-4
    # a prefix of a longer expansion equals the shorter expansion (CTR stream)
    assert np.array_equal(P.prg_expand(seed, 10, modulus_bits=bits), a[:10])


@settings(max_examples=40, deadline=None)
@given(
    xs=st.lists(arrays(np.float64, 16, elements=st.floats(-3, 3)), min_size=1, max_size=8),
    bits=st.sampled_from([16, 24, 32]),
    rounding=st.sampled_from(["stochastic", "deterministic"]),
)
def test_quantized_sum_within_bound(xs: list[np.ndarray], bits: int, rounding: str) -> None:
    n_max = 8
    spec = QuantizationSpec(clip_range=2.0, num_clients=n_max, modulus_bits=bits, rounding=rounding)  # type: ignore[arg-type]
    rng = np.random.default_rng(0)
    total = np.zeros(16, dtype=np.uint32)
    for x in xs:
        total += quantize(x, spec, rng=rng)
    assert int(total.max()) <= len(xs) * spec.levels < 2**bits  # no wraparound
    got = dequantize_sum(total, spec, num_summed=len(xs))
    want = np.sum([np.clip(x, -2, 2) for x in xs], axis=0)
    bound = quantization_error_bound(spec, num_summed=len(xs))
    assert np.max(np.abs(got - want)) <= bound * (1 + 1e-9)


def test_stochastic_rounding_unbiased() -> None:
    spec = QuantizationSpec(clip_range=1.0, num_clients=2, modulus_bits=8, rounding="stochastic")
    x = np.full(200_000, 0.3)
    q = quantize(x, spec, rng=np.random.default_rng(0))
    step = 1 / spec.scale
    assert dequantize_sum(q, spec, num_summed=1).mean() == pytest.approx(0.3, abs=step / 100)
    det = QuantizationSpec(clip_range=1.0, num_clients=2, modulus_bits=8, rounding="deterministic")
    assert abs(dequantize_sum(quantize(x, det), det, num_summed=1).mean() - 0.3) > step / 10


def test_quantize_validation() -> None:
    with pytest.raises(ValueError, match="NaN"):
        quantize(
            np.array([np.nan]), QuantizationSpec(clip_range=1.0, num_clients=2), rng=np.random.default_rng()
        )
    with pytest.raises(ValueError, match="clip_range"):
        QuantizationSpec(clip_range=0.0, num_clients=2)
    with pytest.raises(ValueError, match="modulus_bits"):
        QuantizationSpec(clip_range=1.0, num_clients=2, modulus_bits=64)
    with pytest.raises(ValueError, match="no room"):
        QuantizationSpec(clip_range=1.0, num_clients=10, modulus_bits=3)

"""A corrupted Shamir share in an unmask reply aborts the round (the reconstructed self-mask seed is checked against
its owner's commitment) and never changes the sum; the signed fixed point with integer noise decodes exactly."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pftray.privacy.secagg import SecAggAbort, SecAggClient, SecAggParams, SecAggServer
from pftray.privacy.secagg.quantize import MAX_MODULUS_BITS, SignedQuantization


def _round(vectors, *, threshold, corrupt=None, noise=None, signed_bound=None, drop_masked=()):
    n, d = len(vectors), len(vectors[0])
    params = SecAggParams(sample=tuple(range(n)), vector_length=d, clip_range=1.0, threshold=threshold,
                          signed_bound=signed_bound)
    server = SecAggServer(params)
    clients = {u: SecAggClient(u) for u in range(n)}
    msgs = server.setup()
    msgs = server.advertise_keys([clients[u].setup(m) for u, m in msgs.items()])
    msgs = server.share_keys([clients[u].share_keys(m) for u, m in msgs.items()])
    replies = []
    for u, m in msgs.items():
        if u in drop_masked:
            continue
        kw = {"integer_noise": noise[u]} if noise is not None else {}
        replies.append(clients[u].masked_input(m, vectors[u], **kw))
    msgs = server.masked_input(replies)
    unmask = [clients[u].unmask(m) for u, m in msgs.items()]
    if corrupt is not None:
        corrupt(unmask)
    return server.unmask(unmask), params


def test_a_corrupted_self_mask_share_aborts_or_leaves_the_sum_exact():
    rng = np.random.default_rng(0)
    outcomes = {"aborted": 0, "exact": 0}
    for trial in range(20):
        vectors = [rng.uniform(-1, 1, 64) for _ in range(5)]

        def corrupt(replies, trial=trial):
            r = replies[trial % len(replies)]
            owner = sorted(r.self_mask_shares)[trial % len(r.self_mask_shares)]
            share = bytearray(r.self_mask_shares[owner])
            share[-1 - trial % 8] ^= 0x5A
            replies[trial % len(replies)] = dataclasses.replace(
                r, self_mask_shares={**r.self_mask_shares, owner: bytes(share)})

        try:
            out, params = _round(vectors, threshold=5, corrupt=corrupt)  # every share is needed: must abort
        except SecAggAbort as exc:
            assert "commitment" in str(exc) or "share" in str(exc)
            outcomes["aborted"] += 1
            continue
        np.testing.assert_allclose(out.sum, np.sum(vectors, axis=0), atol=1e-5)  # never a wrong sum
        outcomes["exact"] += 1
    assert outcomes["aborted"] == 20  # with threshold = n the corrupted share is always used, so always caught


def test_signed_fixed_point_with_integer_noise_decodes_exactly_with_dropouts():
    rng = np.random.default_rng(1)
    n, d = 6, 200
    vectors = [rng.uniform(-0.5, 0.5, d) for _ in range(n)]
    noise = {u: rng.integers(-10**6, 10**6, d) for u in range(n)}
    out, params = _round(vectors, threshold=3, noise=noise, signed_bound=10.0, drop_masked={0, 1})
    spec = params.quantization
    assert isinstance(spec, SignedQuantization) and out.survivors == (2, 3, 4, 5)
    # the integer sum is exact: recompute it from the decoded float sum and compare with the known noise
    signal = out.sum - sum(noise[u] for u in out.survivors) / spec.scale
    np.testing.assert_allclose(signal, np.sum([vectors[u] for u in out.survivors], axis=0), atol=4 / spec.scale)
    assert (out.sum < 0).any()  # negative sums lift back correctly


def test_signed_quantization_range_and_modulus_limits():
    q = SignedQuantization.for_bound(3.0, 32)
    assert q.scale == (2**31 - 1) // 3
    x = np.array([-3.0, 3.0, 0.0])
    np.testing.assert_allclose(q.decode_sum(q.encode(x, np.random.default_rng(0))), x, atol=1 / q.scale)
    with pytest.raises(ValueError, match="secagg_modulus_bits"):
        SignedQuantization.for_bound(1.0, 64)
    with pytest.raises(ValueError, match="modulus"):
        SignedQuantization.for_bound(2.0**40, 32)
    with pytest.raises(ValueError, match="secagg_modulus_bits"):
        SecAggParams(sample=(0, 1), vector_length=2, clip_range=1.0, threshold=2, modulus_bits=MAX_MODULUS_BITS + 11)

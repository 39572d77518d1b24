"""SecAgg secrets come from the OS CSPRNG whatever rng a client is given (the rng drives stochastic rounding only),
and a masked vector is reduced mod 2**k for every modulus (no carries above bit k that would leak the input)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pftray.privacy.secagg import (
    MaskedInput,
    QuantizationSpec,
    SecAggClient,
    SecAggParams,
    SecAggProtocolError,
    SecAggServer,
    quantization_error_bound,
)


def _round(rng_seed: int, *, n: int = 4, d: int = 64, modulus_bits: int = 32, vectors=None):
    """A full round where client u gets ``default_rng((rng_seed, u))``; returns keys, masked inputs and outcome."""
    params = SecAggParams(sample=tuple(range(n)), vector_length=d, clip_range=1.0, threshold=3,
                          modulus_bits=modulus_bits, graph_seed=0)
    server = SecAggServer(params)
    rngs = {u: np.random.default_rng((rng_seed, u)) for u in range(n)}
    clients = {u: SecAggClient(u, rng=rngs[u]) for u in range(n)}
    if vectors is None:
        vectors = [np.linspace(-1, 1, d) * (u + 1) / n for u in range(n)]
    msgs = server.setup()
    adverts = {u: clients[u].setup(m) for u, m in msgs.items()}
    msgs = server.advertise_keys(adverts.values())
    share_keys = {u: clients[u].share_keys(m) for u, m in msgs.items()}
    # nothing secret was drawn from the caller's generators: they are still in their initial state
    for u in range(n):
        assert rngs[u].bit_generator.state == np.random.default_rng((rng_seed, u)).bit_generator.state
    msgs = server.share_keys(share_keys.values())
    masked = {u: clients[u].masked_input(m, vectors[u]) for u, m in msgs.items()}
    msgs = server.masked_input(masked.values())
    outcome = server.unmask([clients[u].unmask(m) for u, m in msgs.items()])
    return adverts, share_keys, masked, outcome


def test_same_rng_seed_gives_different_keys_seeds_and_masks() -> None:
    a_adv, a_sk, a_masked, a_out = _round(7)
    b_adv, b_sk, b_masked, b_out = _round(7)
    keys_a = {k for r in a_adv.values() for k in (r.c_pk, r.s_pk)}
    keys_b = {k for r in b_adv.values() for k in (r.c_pk, r.s_pk)}
    assert len(keys_a) == len(keys_b) == 8 and not keys_a & keys_b
    # the self-mask seeds differ (their commitments do), and so do the masked vectors of identical inputs
    assert all(a_sk[u].b_commitment != b_sk[u].b_commitment for u in a_sk)
    for u in a_masked:
        assert np.mean(a_masked[u].masked == b_masked[u].masked) < 0.01
    # the rng still drives the rounding: same seed, same inputs -> the same quantised sum
    np.testing.assert_array_equal(a_out.quantized_sum, b_out.quantized_sum)


def test_client_without_rng_draws_fresh_keys() -> None:
    setup = SecAggServer(SecAggParams(sample=(0, 1, 2), vector_length=2, clip_range=1.0, threshold=2)).setup()
    first = SecAggClient(0).setup(setup[0])
    second = SecAggClient(0).setup(setup[0])
    assert {first.c_pk, first.s_pk}.isdisjoint({second.c_pk, second.s_pk})


@pytest.mark.parametrize("bits", [20, 33, 40, 53])
def test_masked_words_are_reduced_mod_2k_and_the_sum_is_exact(bits: int) -> None:
    d = 2000
    vectors = [np.full(d, -1.0), np.full(d, 1.0), np.zeros(d), np.full(d, 0.5)]
    _, _, masked, outcome = _round(3, d=d, modulus_bits=bits, vectors=vectors)
    for r in masked.values():
        assert int(r.masked.max()) < 2**bits
        # uniform mod 2**k: the top bit is set about half the time whatever the input
        top = (r.masked >> np.uint64(bits - 1)) & 1 if r.masked.dtype == np.uint64 else (r.masked >> (bits - 1)) & 1
        assert 0.4 < float(np.mean(top)) < 0.6
    bound = quantization_error_bound(QuantizationSpec(clip_range=1.0, num_clients=4, modulus_bits=bits), num_summed=4)
    assert np.max(np.abs(outcome.sum - 0.5)) <= bound


def test_server_refuses_masked_words_outside_the_modulus() -> None:
    n, d, bits = 3, 8, 40
    server = SecAggServer(SecAggParams(sample=tuple(range(n)), vector_length=d, clip_range=1.0, threshold=2,
                                       modulus_bits=bits))
    clients = {u: SecAggClient(u) for u in range(n)}
    msgs = server.setup()
    msgs = server.advertise_keys([clients[u].setup(m) for u, m in msgs.items()])
    msgs = server.share_keys([clients[u].share_keys(m) for u, m in msgs.items()])
    replies = [clients[u].masked_input(m, np.zeros(d)) for u, m in msgs.items()]
    bad = replies[1].masked.copy()
    bad[3] |= np.uint64(1) << np.uint64(bits)
    replies[1] = dataclasses.replace(replies[1], masked=bad)
    assert isinstance(replies[1], MaskedInput)
    with pytest.raises(SecAggProtocolError, match=r"outside \[0, 2\*\*40\)"):
        server.masked_input(replies)

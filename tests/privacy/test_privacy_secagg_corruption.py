"""A corrupted Shamir share in an unmask reply never changes the sum: the reconstructed secret is checked against its
owner's commitment (SHA-256 of the self-mask seed b, the advertised s_pk for s_sk). With spare shares the server
recovers from another subset and names the holder of the bad share; without, the round aborts naming the owner."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pftray.privacy.secagg import (
    QuantizationSpec,
    SecAggAbort,
    SecAggClient,
    SecAggParams,
    SecAggServer,
    UnmaskReply,
    quantize,
)
from pftray.privacy.secagg import primitives as P

C = 1.0
K = 32


def _flip_byte(share: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(share)
    b[int(rng.integers(len(b)))] ^= int(rng.integers(1, 256))
    return bytes(b)


def _add_in_field(share: bytes, delta: int) -> bytes:
    """Add ``delta`` to every 16-byte field element of a share (mod 2**127 - 1)."""
    out = bytearray()
    for lo in range(0, len(share), 16):
        v = (int.from_bytes(share[lo : lo + 16], "big") + delta) % P.FIELD_PRIME
        out += v.to_bytes(16, "big")
    return bytes(out)


def _expected_quantized_sum(vectors, survivors, n) -> list[int]:
    """Exact integer sum (Python ints, mod 2**K) of the deterministic quantisations of the survivors' inputs."""
    spec = QuantizationSpec(clip_range=C, num_clients=n, modulus_bits=K, rounding="deterministic")
    qs = [quantize(vectors[u], spec).astype(np.int64).tolist() for u in survivors]
    return [sum(col) % (1 << K) for col in zip(*qs)]


def _round(vectors, *, threshold, corrupt, drop_masked=()):
    """One round with deterministic rounding; ``corrupt(replies)`` rewrites the unmask replies in place."""
    n, d = len(vectors), len(vectors[0])
    server = SecAggServer(SecAggParams(sample=tuple(range(n)), vector_length=d, clip_range=C, threshold=threshold,
                                       rounding="deterministic", modulus_bits=K))
    clients = {u: SecAggClient(u) for u in range(n)}
    msgs = server.setup()
    msgs = server.advertise_keys([clients[u].setup(m) for u, m in msgs.items()])
    msgs = server.share_keys([clients[u].share_keys(m) for u, m in msgs.items()])
    msgs = server.masked_input([clients[u].masked_input(m, vectors[u]) for u, m in msgs.items() if u not in drop_masked])
    replies = {u: clients[u].unmask(m) for u, m in msgs.items()}
    corrupt(replies)
    return server.unmask(list(replies.values()))


def _replace_share(replies: dict[int, UnmaskReply], holder: int, owner: int, kind: str, new: bytes) -> None:
    r = replies[holder]
    field = "self_mask_shares" if kind == "b" else "secret_key_shares"
    replies[holder] = dataclasses.replace(r, **{field: {**getattr(r, field), owner: new}})


def _inconsistent(outcome) -> set[tuple[int, int]]:
    return {(r.holder, r.owner) for r in outcome.rejected_shares if "inconsistent" in r.reason}


@pytest.mark.parametrize("kind", ["b", "sk"])
def test_one_corrupted_share_never_yields_a_wrong_sum(kind: str) -> None:
    """20 trials, one corrupted share each (b-share of a survivor, or s_sk-share of a dropped client): the round
    recovers the exact sum from spare shares and names exactly the corrupting holder when its share was used."""
    n, t, d = 6, 3, 40
    rng = np.random.default_rng(11)
    drop = (0,) if kind == "sk" else ()
    recovered = named = 0
    for trial in range(20):
        vectors = [rng.uniform(-C, C, d) for _ in range(n)]
        survivors = [u for u in range(n) if u not in drop]
        owner = 0 if kind == "sk" else int(rng.choice(survivors))
        # even trials: the holder with the smallest x-coordinate (its share is always in the first subset tried)
        holder = survivors[0] if trial % 2 == 0 else int(rng.choice(survivors))

        def corrupt(replies, holder=holder, owner=owner):
            shares = replies[holder].self_mask_shares if kind == "b" else replies[holder].secret_key_shares
            _replace_share(replies, holder, owner, kind, _flip_byte(shares[owner], rng))

        try:
            out = _round(vectors, threshold=t, corrupt=corrupt, drop_masked=drop)
        except SecAggAbort as exc:  # allowed by the contract, but never a wrong sum
            assert f"client {owner}" in str(exc)
            continue
        assert out.survivors == tuple(survivors)
        assert out.quantized_sum.astype(np.int64).tolist() == _expected_quantized_sum(vectors, survivors, n)
        recovered += 1
        flagged = _inconsistent(out)
        assert flagged <= {(holder, owner)}  # nobody else is accused
        if holder in survivors[:t]:  # the bad share was among the t used first: it must be found and named
            assert flagged == {(holder, owner)}
            named += 1
    # 5 or 6 shares for threshold 3: one bad share always leaves an honest subset
    assert recovered == 20
    assert named >= 10


@pytest.mark.parametrize("kind", ["b", "sk"])
def test_corrupted_share_without_a_spare_aborts_naming_the_owner(kind: str) -> None:
    """Exactly ``threshold`` shares and one is bad: no honest subset exists, so every trial aborts."""
    rng = np.random.default_rng(12)
    n, d = (4, 16) if kind == "b" else (5, 16)
    t = 4
    drop = (0,) if kind == "sk" else ()
    for trial in range(20):
        vectors = [rng.uniform(-C, C, d) for _ in range(n)]
        survivors = [u for u in range(n) if u not in drop]
        owner = 0 if kind == "sk" else survivors[trial % len(survivors)]
        holder = survivors[(trial // 2) % len(survivors)]

        def corrupt(replies, holder=holder, owner=owner):
            shares = replies[holder].self_mask_shares if kind == "b" else replies[holder].secret_key_shares
            _replace_share(replies, holder, owner, kind, _flip_byte(shares[owner], rng))

        what = "self-mask seed b" if kind == "b" else "mask key s_sk"
        with pytest.raises(SecAggAbort, match=f"{what} of client {owner}"):
            _round(vectors, threshold=t, corrupt=corrupt, drop_masked=drop)


def test_threshold_colluders_with_a_consistent_forgery_are_caught_and_named() -> None:
    """The t holders with the smallest x shift their shares by the same field element: together they interpolate a
    valid-looking but wrong seed. The commitment rejects it; the honest spare shares give the exact sum."""
    n, t, d = 8, 3, 30
    rng = np.random.default_rng(13)
    vectors = [rng.uniform(-C, C, d) for _ in range(n)]
    owner, colluders = 5, (0, 1, 2)

    def corrupt(replies):
        for h in colluders:
            _replace_share(replies, h, owner, "b", _add_in_field(replies[h].self_mask_shares[owner], 12345))

    out = _round(vectors, threshold=t, corrupt=corrupt)
    assert out.quantized_sum.astype(np.int64).tolist() == _expected_quantized_sum(vectors, range(n), n)
    assert _inconsistent(out) == {(h, owner) for h in colluders}


def test_two_corrupted_shares_of_a_dropped_clients_key_are_recovered_from() -> None:
    n, t, d = 8, 3, 30
    rng = np.random.default_rng(14)
    vectors = [rng.uniform(-C, C, d) for _ in range(n)]

    def corrupt(replies):
        for h in (1, 2):
            _replace_share(replies, h, 0, "sk", _flip_byte(replies[h].secret_key_shares[0], rng))

    out = _round(vectors, threshold=t, corrupt=corrupt, drop_masked=(0,))
    assert out.survivors == tuple(range(1, n))
    assert out.quantized_sum.astype(np.int64).tolist() == _expected_quantized_sum(vectors, range(1, n), n)
    assert _inconsistent(out) == {(1, 0), (2, 0)}


def test_more_bad_shares_than_spares_abort() -> None:
    """6 holders, threshold 3, 4 corrupted shares: only 2 honest shares remain, so no subset matches."""
    n, t, d = 6, 3, 10
    rng = np.random.default_rng(15)
    vectors = [rng.uniform(-C, C, d) for _ in range(n)]

    def corrupt(replies):
        for h in (0, 2, 3, 5):
            _replace_share(replies, h, 4, "b", _flip_byte(replies[h].self_mask_shares[4], rng))

    with pytest.raises(SecAggAbort, match="self-mask seed b of client 4 .*commitment"):
        _round(vectors, threshold=t, corrupt=corrupt)


def test_shamir_evaluate_reproduces_the_other_holders_shares() -> None:
    secret = P.random_seed()
    xs = list(range(1, 8))
    shares = P.shamir_split(secret, threshold=3, xs=xs)
    basis = {x: shares[x] for x in (2, 5, 7)}
    for x in xs:
        assert P.shamir_evaluate(basis, at=x) == shares[x]
    forged = {**basis, 5: _add_in_field(basis[5], 1)}
    assert P.shamir_evaluate(forged, at=1) != shares[1]
    with pytest.raises(ValueError):
        P.shamir_evaluate({1: shares[1], 2: shares[2][:16]}, at=3)


def test_a_corrupted_majority_that_preserves_the_secret_cannot_change_the_sum() -> None:
    """4 of 6 holders add h(x) = a x (h(0) = 0) to their shares: any subset of them still interpolates the true seed,
    so the sum stays exact; mixed subsets interpolate wrong seeds, which the commitment rejects. (Beyond the unique-
    decoding radius the holders cannot be named reliably, and nothing is asserted about names.)"""
    n, t, d = 6, 3, 20
    rng = np.random.default_rng(16)
    vectors = [rng.uniform(-C, C, d) for _ in range(n)]
    owner = 3

    for colluders in [(0, 1, 2, 4), (1, 2, 4, 5), (0, 2, 3, 5)]:
        def corrupt(replies, colluders=colluders):
            for h in colluders:
                share = replies[h].self_mask_shares[owner]
                _replace_share(replies, h, owner, "b", _add_in_field(share, 987654321 * (h + 1)))

        out = _round(vectors, threshold=t, corrupt=corrupt)  # a subset of colluders' shares gives the true seed
        assert out.quantized_sum.astype(np.int64).tolist() == _expected_quantized_sum(vectors, range(n), n)

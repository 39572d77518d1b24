"""SecAgg / SecAgg+ protocol: correct sums under dropouts, aborts, tampering, and masked-output statistics."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from pftray.privacy.secagg import (
    STAGES,
    MaskedInput,
    QuantizationSpec,
    SecAggAbort,
    SecAggClient,
    SecAggOutcome,
    SecAggParams,
    SecAggProtocolError,
    SecAggServer,
    ShareDelivery,
    UnmaskRequest,
    benchmark_secagg,
    neighbour_graph,
    quantization_error_bound,
    run_secagg,
)

C = 1.0


def _vectors(n: int, d: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-C, C, size=d) for _ in range(n)]


def _check_sum(vectors, result, n: int) -> None:
    want = np.sum([vectors[u] for u in result.survivors], axis=0)
    spec = QuantizationSpec(clip_range=C, num_clients=n)
    bound = quantization_error_bound(spec, num_summed=len(result.survivors))
    assert np.max(np.abs(result.sum - want)) <= bound


@pytest.mark.parametrize(("n", "degree", "threshold"), [(8, None, 5), (12, 4, 3), (11, 6, 4), (10, 3, 3)])
def test_sum_without_dropouts(n: int, degree: int | None, threshold: int) -> None:
    vectors = _vectors(n, 300)
    result = run_secagg(vectors, clip_range=C, threshold=threshold, degree=degree, seed=1)
    assert result.survivors == tuple(range(n)) and not result.dropped
    _check_sum(vectors, result, n)


@pytest.mark.parametrize("degree", [None, 6])
@pytest.mark.parametrize(
    "drops",
    [
        {2: "advertise_keys"},
        {2: "share_keys"},
        {2: "masked_input", 5: "masked_input"},
        {2: "unmask", 7: "unmask"},
        {0: "advertise_keys", 3: "share_keys", 6: "masked_input", 9: "unmask"},
    ],
)
def test_sum_with_dropouts(degree: int | None, drops: dict[int, str]) -> None:
    n = 12
    vectors = _vectors(n, 200, seed=3)
    result = run_secagg(vectors, clip_range=C, threshold=3, degree=degree, drop_before=drops, seed=2)
    gone_before_input = {u for u, s in drops.items() if STAGES.index(s) <= STAGES.index("masked_input")}
    assert set(result.survivors) == set(range(n)) - gone_before_input
    assert set(result.dropped) == set(drops)
    _check_sum(vectors, result, n)


def test_deterministic_rounding_and_narrow_modulus() -> None:
    vectors = _vectors(6, 100, seed=4)
    result = run_secagg(
        vectors,
        clip_range=C,
        threshold=3,
        degree=None,
        modulus_bits=20,
        rounding="deterministic",
        drop_before={1: "masked_input"},
    )
    want = np.sum([vectors[u] for u in result.survivors], axis=0)
    spec = QuantizationSpec(clip_range=C, num_clients=6, modulus_bits=20, rounding="deterministic")
    assert np.max(np.abs(result.sum - want)) <= quantization_error_bound(spec, num_summed=5)


def test_below_threshold_aborts() -> None:
    vectors = _vectors(6, 10)
    with pytest.raises(SecAggAbort, match="below the threshold t=4"):
        run_secagg(
            vectors,
            clip_range=C,
            threshold=4,
            drop_before={0: "masked_input", 1: "masked_input", 2: "share_keys"},
        )
    with pytest.raises(SecAggAbort, match="threshold"):
        run_secagg(vectors, clip_range=C, threshold=4, drop_before={u: "unmask" for u in range(3)})
    assert issubclass(SecAggAbort, RuntimeError)


def test_sparse_graph_excludes_isolated_client() -> None:
    # degree 2 ring, t = 3: a client whose both neighbours are gone cannot be protected -> excluded.
    n = 10
    graph = neighbour_graph(range(n), degree=2, seed=0)
    victim = 0
    a, b = sorted(graph[victim])
    vectors = _vectors(n, 50)
    result = run_secagg(
        vectors,
        clip_range=C,
        threshold=2,
        degree=2,
        seed=0,
        drop_before={a: "advertise_keys", b: "advertise_keys"},
    )
    assert victim not in result.survivors and "live share group" in result.dropped[victim]
    _check_sum(vectors, result, n)


def test_neighbour_graph_regular_and_deterministic() -> None:
    for n, k in [(10, 4), (10, 3), (101, 8), (7, 6)]:
        g = neighbour_graph(range(n), degree=k, seed=5)
        assert all(len(vs) == k for vs in g.values())
        assert all(u in g[v] for u in g for v in g[u])  # symmetric
        assert all(u not in g[u] for u in g)
        assert g == neighbour_graph(range(n), degree=k, seed=5)
    assert neighbour_graph(range(20), degree=4, seed=1) != neighbour_graph(range(20), degree=4, seed=2)
    assert all(len(vs) == 5 for vs in neighbour_graph(range(6), degree=None, seed=0).values())
    with pytest.raises(ValueError, match="odd number"):
        neighbour_graph(range(7), degree=3, seed=0)


def _manual_round(
    vectors: list[np.ndarray],
    *,
    threshold: int,
    degree: int | None,
    tamper: Callable[[dict[int, ShareDelivery]], dict[int, ShareDelivery]] = lambda m: m,
) -> tuple[SecAggOutcome, dict[int, MaskedInput]]:
    """One round through the message-level API (as the Ray layer would drive it)."""
    n, d = len(vectors), len(vectors[0])
    server = SecAggServer(
        SecAggParams(
            sample=tuple(range(n)), vector_length=d, clip_range=C, threshold=threshold, degree=degree
        )
    )
    clients = {u: SecAggClient(u, rng=np.random.default_rng(u)) for u in range(n)}
    setup = server.setup()
    keys = server.advertise_keys([clients[u].setup(m) for u, m in setup.items()])
    deliveries = tamper(server.share_keys([clients[u].share_keys(m) for u, m in keys.items()]))
    masked = {u: clients[u].masked_input(m, vectors[u]) for u, m in deliveries.items()}
    requests = server.masked_input(masked.values())
    return server.unmask([clients[u].unmask(m) for u, m in requests.items()]), masked


def _flip(ct: bytes) -> bytes:
    b = bytearray(ct)
    b[20] ^= 0x01
    return bytes(b)


def test_tampered_share_is_rejected_and_round_completes() -> None:
    vectors = _vectors(6, 50)

    def tamper(deliveries: dict[int, ShareDelivery]) -> dict[int, ShareDelivery]:
        cts = dict(deliveries[1].ciphertexts)
        cts[0] = _flip(cts[0])
        deliveries[1] = ShareDelivery(1, cts)
        return deliveries

    outcome, _ = _manual_round(vectors, threshold=3, degree=None, tamper=tamper)
    assert [(r.holder, r.owner) for r in outcome.rejected_shares] == [(1, 0)]
    assert "decryption failed" in outcome.rejected_shares[0].reason
    np.testing.assert_allclose(
        outcome.sum,
        np.sum(vectors, axis=0),
        atol=quantization_error_bound(QuantizationSpec(clip_range=C, num_clients=6), num_summed=6),
    )


def test_too_many_tampered_shares_abort() -> None:
    vectors = _vectors(5, 20)

    def tamper(deliveries: dict[int, ShareDelivery]) -> dict[int, ShareDelivery]:
        for v in (1, 2, 3):  # three of the four holders of client 0's shares; t = 3 needs 3 of 5 (incl. self)
            cts = dict(deliveries[v].ciphertexts)
            cts[0] = _flip(cts[0])
            deliveries[v] = ShareDelivery(v, cts)
        return deliveries

    with pytest.raises(SecAggAbort, match="valid shares of the self-mask seed b of client 0"):
        _manual_round(vectors, threshold=3, degree=None, tamper=tamper)


def test_client_refuses_out_of_order_and_double_unmask() -> None:
    n, d = 4, 8
    server = SecAggServer(SecAggParams(sample=tuple(range(n)), vector_length=d, clip_range=C, threshold=3))
    clients = {u: SecAggClient(u) for u in range(n)}
    setup = server.setup()
    with pytest.raises(SecAggProtocolError, match="addressed to client 1"):
        clients[0].setup(setup[1])
    keys = server.advertise_keys([clients[u].setup(m) for u, m in setup.items()])
    with pytest.raises(SecAggProtocolError, match="stage"):
        clients[0].unmask(UnmaskRequest(0, (0, 1, 2), ()))
    deliveries = server.share_keys([clients[u].share_keys(m) for u, m in keys.items()])
    masked = [clients[u].masked_input(m, np.zeros(d)) for u, m in deliveries.items()]
    requests = server.masked_input(masked)
    # a request naming a party as both survivor and dropped would reveal both of its secrets
    with pytest.raises(SecAggProtocolError, match="both surviving and dropped"):
        clients[0].unmask(UnmaskRequest(0, (0, 1, 2, 3), (3,)))
    clients[0].unmask(requests[0])
    with pytest.raises(SecAggProtocolError, match="stage"):
        clients[0].unmask(UnmaskRequest(0, (0, 1, 2), (3,)))


def test_params_validation() -> None:
    with pytest.raises(ValueError, match="threshold"):
        SecAggParams(sample=(0, 1, 2, 3), vector_length=4, clip_range=1.0, threshold=5)
    with pytest.raises(ValueError, match="threshold"):
        SecAggParams(sample=tuple(range(10)), vector_length=4, clip_range=1.0, threshold=5, degree=2)
    with pytest.raises(ValueError, match="distinct"):
        SecAggParams(sample=(0, 0, 1), vector_length=4, clip_range=1.0, threshold=2)
    with pytest.raises(ValueError, match="drop_before"):
        run_secagg(_vectors(3, 4), clip_range=C, threshold=2, drop_before={0: "later"})


def test_masked_outputs_uniform_and_independent_of_input() -> None:
    """y_u of an all -c input and of an all +c input are both ~uniform mod 2^32 and uncorrelated with x."""
    d = 20_000
    rng = np.random.default_rng(7)
    ramp = rng.uniform(-C, C, size=d)
    vectors = [np.full(d, -C), np.full(d, C), ramp, np.zeros(d)]
    _, masked = _manual_round(vectors, threshold=3, degree=None)
    for u in (0, 1, 2):
        y = masked[u].masked
        bits = (y[:, None] >> np.arange(32, dtype=np.uint32)) & 1
        ones = bits.sum(axis=0)
        # each bit position ~ Binomial(d, 1/2): chi-square over the 32 positions
        chi2 = float(np.sum((ones - d / 2) ** 2 / (d / 4)))
        assert stats.chi2.sf(chi2, df=32) > 1e-4
        assert stats.kstest(y / 2.0**32, "uniform").pvalue > 1e-4
        top = np.bincount((y >> 24).astype(np.int64), minlength=256)
        assert stats.chisquare(top).pvalue > 1e-4
    assert abs(np.corrcoef(masked[2].masked.astype(np.float64), ramp)[0, 1]) < 4 / np.sqrt(d)
    # the quantised inputs differ maximally, yet the masked outputs have indistinguishable distributions
    assert stats.ks_2samp(masked[0].masked, masked[1].masked).pvalue > 1e-4


def test_benchmark_reports_consistent_figures() -> None:
    r = benchmark_secagg(6, 1000, degree=4, threshold=3, dropout_rate=0.2)
    assert r["n"] == 6 and r["degree"] == 4 and r["client_seconds"] > 0 and r["server_seconds"] > 0
    # upload: 4 (id) + 2 keys + 4 ciphertexts + masked uint32 vector + unmask shares; dominated by 4 d bytes
    assert 4 * 1000 < r["bytes_per_client"] < 4 * 1000 + 2000
    assert r["expansion"] == pytest.approx(r["bytes_per_client"] / 4000)
    spec = QuantizationSpec(clip_range=1.0, num_clients=6)
    assert r["max_abs_error"] <= quantization_error_bound(spec, num_summed=5)

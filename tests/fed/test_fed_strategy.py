import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pftray.config import FedConfig
from pftray.fed.strategy import (
    ROUND_Z_CLIP,
    STRATEGIES,
    ServerOptimizer,
    aggregate,
    fedavg_weights,
    isfa_scores,
    isfa_weights,
    make_strategy,
    round_z,
)


def _reports(n, id_sim, temp):
    return [{"num_examples": a, "id_sim": b, "temp_stab": c} for a, b, c in zip(n, id_sim, temp)]


def test_aggregate_on_2x3_arrays_hand_computed():
    a = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=np.float32)
    b = np.array([[3.0, 2.0, 1.0], [0.0, 1.0, 2.0]], dtype=np.float32)
    out = aggregate([(a, 0.25), (b, 0.75)])
    np.testing.assert_allclose(out, [[2.5, 2.0, 1.5], [1.0, 2.0, 3.0]])


def test_fedavg_weights_proportional_to_examples():
    np.testing.assert_allclose(fedavg_weights([10, 30]), [0.25, 0.75])
    with pytest.raises(ValueError):
        fedavg_weights([0, 0])


def test_isfa_weights_hand_computed():
    # s = 0.6 * id + 0.4 * ts; w ∝ n exp(gamma s)
    s = isfa_scores([1.0, 0.5], [0.5, 1.0], alpha=0.6)
    np.testing.assert_allclose(s, [0.8, 0.7])
    w = isfa_weights([10, 20], s, gamma=2.0)
    raw = np.array([10 * np.exp(1.6), 20 * np.exp(1.4)])
    np.testing.assert_allclose(w, raw / raw.sum(), rtol=1e-12)


def test_isfa_gamma_zero_is_fedavg_and_large_gamma_picks_most_reliable():
    n = [5, 5, 10]
    s = [0.2, 0.9, 0.5]
    np.testing.assert_allclose(isfa_weights(n, s, gamma=0.0), fedavg_weights(n))
    assert np.argmax(isfa_weights(n, s, gamma=200.0)) == 1
    assert np.isfinite(isfa_weights(n, s, gamma=1e4)).all()  # stable in log space


@pytest.mark.parametrize("name", sorted(STRATEGIES))
class TestStrategyContract:
    """Every registered strategy: client order does not matter, equal inputs give the mean, identical updates
    come back unchanged, weights are a distribution."""

    def _strategy(self, name):
        return make_strategy(FedConfig(strategy=name, mu=0.1 if name == "fedprox" else 0.0))

    def test_order_invariance(self, name):
        strat = self._strategy(name)
        reps = _reports([3, 7, 5], [0.9, 0.4, 0.7], [0.6, 0.8, 0.3])
        w = strat.weights(reps)
        perm = [2, 0, 1]
        np.testing.assert_allclose(strat.weights([reps[i] for i in perm]), w[perm])
        assert w.sum() == pytest.approx(1.0) and (w > 0).all()

    def test_equal_clients_give_the_mean(self, name):
        strat = self._strategy(name)
        w = strat.weights(_reports([4, 4, 4, 4], [0.5] * 4, [0.5] * 4))
        xs = [np.full(3, float(i), np.float32) for i in range(4)]
        np.testing.assert_allclose(aggregate(list(zip(xs, w))), np.full(3, 1.5), rtol=1e-6)

    def test_identical_updates_unchanged(self, name):
        strat = self._strategy(name)
        w = strat.weights(_reports([1, 9, 3], [0.1, 0.9, 0.5], [0.2, 0.3, 0.9]))
        x = np.array([0.5, -2.0, 3.25], np.float32)
        np.testing.assert_allclose(aggregate([(x, wi) for wi in w]), x, rtol=1e-6)


def test_fedprox_sends_mu_and_fedavg_does_not():
    assert make_strategy(FedConfig(strategy="fedprox", mu=0.3)).client_config(1)["mu"] == 0.3
    assert make_strategy(FedConfig(strategy="fedavg", mu=0.3)).client_config(1)["mu"] == 0.0


def test_server_sgd_and_fedadam_hand_computed():
    w = np.zeros(2, np.float32)
    d = np.array([1.0, -2.0], np.float32)
    np.testing.assert_allclose(ServerOptimizer("sgd", lr=0.5).step(w, d), [0.5, -1.0])
    opt = ServerOptimizer("adam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    out = opt.step(w, d)
    m, v = 0.1 * d, 0.01 * d**2
    np.testing.assert_allclose(out, 0.1 * m / (np.sqrt(v) + 1e-3), rtol=1e-5)
    state = opt.state_dict()
    opt2 = ServerOptimizer("adam", lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    opt2.load_state_dict(state)
    np.testing.assert_allclose(opt2.step(out, d), opt.step(out, d))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 1000), st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=20),
       st.floats(0, 5))
def test_isfa_weights_are_a_distribution_monotone_in_score(items, gamma):
    n = [a for a, _, _ in items]
    s = isfa_scores([b for _, b, _ in items], [c for _, _, c in items], alpha=0.65)
    w = isfa_weights(n, s, gamma=gamma)
    assert w.sum() == pytest.approx(1.0) and (w >= 0).all()
    # per example, a higher score never gets less weight
    per = w / np.asarray(n)
    order = np.argsort(s)
    assert np.all(np.diff(per[order]) >= -1e-12)


# ---------------------------------------------------------------------------------------- ISFA 'round_z' weighting
def test_round_z_hand_computed_and_clipped():
    s = np.array([1.0, 2.0, 3.0, 4.0, 100.0])
    # median 3, |s - 3| = [2, 1, 0, 1, 97] -> MAD 1, scale 1.4826
    np.testing.assert_allclose(round_z(s)[:4], (s[:4] - 3.0) / 1.4826)
    assert round_z(s)[4] == ROUND_Z_CLIP  # one wild score cannot take the round's whole weight
    np.testing.assert_array_equal(round_z([0.7, 0.7, 0.7]), [0.0, 0.0, 0.0])  # no spread: FedAvg weights
    np.testing.assert_array_equal(round_z([0.9]), [0.0])
    with pytest.raises(ValueError):
        round_z([0.5, float("nan")])


def test_round_z_is_scale_and_shift_free():
    rng = np.random.default_rng(0)
    s = rng.normal(size=7)
    np.testing.assert_allclose(round_z(0.999 + 1e-4 * s), round_z(s), atol=1e-6)


def test_isfa_round_z_separates_clients_whose_raw_weights_are_uniform():
    """The benchmark's case: raw scores ~0.9995 that differ by ~1e-3. Raw ISFA weights are uniform to 0.1 %; the
    round-standardised ones down-weight the two low scorers several-fold, and gamma 0 is still FedAvg."""
    id_sim = [0.99990, 0.99991, 0.99880, 0.99878]
    temp = [0.9990, 0.9991, 0.9980, 0.9979]
    reps = _reports([2, 2, 2, 2], id_sim, temp)
    raw = make_strategy(FedConfig(strategy="isfa")).weights(reps)
    assert np.ptp(raw) / raw.mean() < 2e-3
    z = make_strategy(FedConfig(strategy="isfa", isfa_weighting="round_z")).weights(reps)
    np.testing.assert_allclose(z.sum(), 1.0)
    assert z[:2].min() > 3 * z[2:].max()
    # the weights are exp(gamma * z) * n, normalised
    zz = round_z(isfa_scores(id_sim, temp, alpha=0.65))
    np.testing.assert_allclose(z, np.exp(zz) / np.exp(zz).sum())
    g0 = make_strategy(FedConfig(strategy="isfa", isfa_weighting="round_z", isfa_gamma=0.0)).weights(reps)
    np.testing.assert_allclose(g0, [0.25] * 4)


def test_isfa_round_z_has_no_on_device_weight_and_the_config_refuses_it_under_dp_or_secagg():
    from pathlib import Path

    from pftray.config import ConfigError, load_config

    st_ = make_strategy(FedConfig(strategy="isfa", isfa_weighting="round_z"))
    with pytest.raises(ValueError, match="on-device"):
        st_.device_weight_spec(0)
    preset = Path(__file__).resolve().parents[2] / "configs" / "quickstart.yaml"
    base = ["fed.strategy=isfa", "fed.isfa_weighting=round_z"]
    # fine without DP and secure aggregation
    assert load_config(preset, base, check_paths=False).fed.isfa_weighting == "round_z"
    for extra in (["privacy.secagg=true"],
                  ["privacy.noise_multiplier=1.0", "privacy.clipping_norm=1.0", "fed.sample_rate=0.5"]):
        with pytest.raises(ConfigError, match="isfa_weighting"):
            load_config(preset, base + extra, check_paths=False)
    with pytest.raises(ConfigError):
        load_config(preset, ["fed.isfa_weighting=zscore"], check_paths=False)

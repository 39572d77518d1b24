"""The privacy guarantee attacked as a reviewer would, through the real round loop (FederatedServer, ClientHost's
pipeline, the DP layer, SecAgg) with a stand-in trainer whose deltas and reports the adversary chooses.

Each test asserts the property itself: noise that cannot be regenerated, a sensitivity no report can break, the
sampling the accountant assumes, the adaptive split, the distributed noise actually present, a budget never
exceeded, and a driver that sees no per-client value under secure aggregation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pftray.config import ConfigError
from pftray.fed.host import PUBLIC_REPORT_KEYS
from pftray.privacy.layer import DPLayer
from pftray.results import load_run
from tests.privacy import _privacy_oracle as oracle
from tests.privacy._standin import dp_config, make_server

D = 4000


def _deltas(n: int, norm: float, seed: int = 0, d: int = D) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for c in range(n):
        v = rng.normal(size=d)
        out[c] = (v / np.linalg.norm(v) * norm).astype(np.float32)
    return out


def _zero_noise(monkeypatch):
    monkeypatch.setattr(DPLayer, "central_noise", lambda self, dim: np.zeros(dim))


# ------------------------------------------------------------------------------------ 1. secret randomness
def test_noise_regenerated_from_the_config_leaves_the_noise_intact(tmp_path):
    cfg = dp_config(4, **{"privacy.clipping_norm": 0.5})
    zeros = {c: np.zeros(D, np.float32) for c in range(4)}
    released = []
    for k in range(2):
        server, _ = make_server(cfg, tmp_path / f"r{k}", zeros)
        server.round(1)
        released.append(server.state.global_shared.astype(np.float64))
    m = server.dp.denominator
    std = cfg.privacy.noise_multiplier * cfg.privacy.clipping_norm / m
    # what an attacker holding the config regenerates: the old seeding of the central noise, (seed, round, 13)
    regenerated = np.random.default_rng((cfg.experiment.seed, 1, 13)).normal(0.0, std, D)
    for x in released:
        assert np.std(x) == pytest.approx(std, rel=0.05)  # the noise is there, at z C / m
        assert np.std(x - regenerated) / std >= 0.9  # and subtracting the regenerated noise does not remove it
    # two runs of the same config draw independent noise
    assert abs(np.corrcoef(released[0], released[1])[0, 1]) < 0.06


def test_sampling_and_count_noise_are_not_reproducible_from_the_seed():
    from pftray.privacy.dp import AdaptiveClipping

    a = DPLayer(noise_multiplier=1.0, clipping_norm=1.0, sample_rate=0.5, num_registered=64)
    b = DPLayer(noise_multiplier=1.0, clipping_norm=1.0, sample_rate=0.5, num_registered=64)
    assert [a.sample() for _ in range(5)] != [b.sample() for _ in range(5)]
    ca = AdaptiveClipping(1.0, clipped_count_stddev=1.0)
    cb = AdaptiveClipping(1.0, clipped_count_stddev=1.0)
    assert ca.noised_centred_count(0.0) != cb.noised_centred_count(0.0)
    assert "rng_state" not in ca.state_dict()  # the noise generator is never written to a checkpoint


# ----------------------------------------------------------------------------------------- 2. sensitivity
ADVERSARIAL_REPORTS = [
    {},  # honest, equal example counts (FedAvg moved the sum by 1.8 C before)
    {"num_examples": 10**12},
    {"num_examples": 0},
    {"num_examples": -7},
    {"id_sim": 1e9, "temp_stab": 1e9},
    {"id_sim": -1e9, "temp_stab": -1e9},
    {"id_sim": 1.0, "temp_stab": 1.0, "num_examples": 10**9},
    {"id_sim": float("nan")},
]


@pytest.mark.parametrize("strategy,cap", [("fedavg", 0), ("fedavg", 20), ("isfa", 0), ("isfa", 20)])
def test_one_client_moves_the_released_sum_by_at_most_C(tmp_path, monkeypatch, strategy, cap):
    _zero_noise(monkeypatch)
    C = 1.0
    cfg = dp_config(5, **{"fed.strategy": strategy, "privacy.clipping_norm": C, "privacy.example_cap": cap,
                          "fed.mu": 0.01})
    deltas = _deltas(5, norm=3.0)  # every honest update is clipped
    honest = {c: {"num_examples": 5 + 3 * c, "id_sim": 0.5 + 0.1 * c, "temp_stab": 0.7} for c in range(4)}
    without, _ = make_server(cfg, tmp_path / "without", deltas, honest, absent={4})
    without.round(1)
    base = without.state.global_shared.astype(np.float64) * without.dp.denominator
    worst = 0.0
    for i, adv in enumerate(ADVERSARIAL_REPORTS):
        with_adv, _ = make_server(cfg, tmp_path / f"with{i}", deltas, {**honest, 4: adv})
        with_adv.round(1)
        moved = np.linalg.norm(with_adv.state.global_shared.astype(np.float64) * with_adv.dp.denominator - base)
        worst = max(worst, moved)
    assert worst <= C * (1 + 1e-5)
    assert worst > 0.5 * C  # the adversary does count (its clipped update enters the sum)


def test_other_clients_contributions_do_not_depend_on_an_adversarys_report(tmp_path, monkeypatch):
    _zero_noise(monkeypatch)
    cfg = dp_config(3, **{"fed.strategy": "isfa", "fed.mu": 0.01})
    deltas = _deltas(3, norm=0.5)
    deltas[2] = np.zeros(D, np.float32)  # the adversary contributes nothing itself, only reports
    sums = []
    for k, adv in enumerate([{}, {"num_examples": 10**9, "id_sim": 1.0, "temp_stab": 1.0}, {"num_examples": 0}]):
        server, _ = make_server(cfg, tmp_path / f"r{k}", deltas, {2: adv})
        server.round(1)
        sums.append(server.state.global_shared.astype(np.float64))
    np.testing.assert_allclose(sums[1], sums[0], atol=1e-7)
    np.testing.assert_allclose(sums[2], sums[0], atol=1e-7)


# ------------------------------------------------------------------------------------------- 3. sampling
def test_fixed_size_sampling_under_dp_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="fed.sample_rate"):
        dp_config(8, **{"fed.sample_rate": 0.0, "fed.clients_per_round": 4})


def test_sampling_is_poisson_and_epsilon_matches_an_independent_accountant(tmp_path):
    layer = DPLayer(noise_multiplier=1.0, clipping_norm=1.0, sample_rate=0.3, num_registered=20)
    sizes = np.array([len(layer.sample()) for _ in range(3000)])
    assert sizes.mean() == pytest.approx(6.0, rel=0.05)
    assert sizes.var() == pytest.approx(20 * 0.3 * 0.7, rel=0.12)  # binomial, not the fixed-size 0

    cfg = dp_config(6, **{"fed.sample_rate": 0.5, "fed.rounds": 4, "privacy.noise_multiplier": 1.1})
    server, _ = make_server(cfg, tmp_path / "run", _deltas(6, norm=0.3))
    server.run_rounds()
    ref = oracle.epsilon(q=0.5, sigma=1.1, steps=server.state.server_round, delta=cfg.privacy.target_delta)
    assert server.epsilon() == pytest.approx(ref, rel=0.01)


# ----------------------------------------------------------------------------------- 4. adaptive clipping
def test_adaptive_split_joint_multiplier_equals_the_recorded_one(tmp_path):
    z, sigma_b, C = 1.0, 2.0, 0.7
    layer = DPLayer(noise_multiplier=z, clipping_norm=C, sample_rate=1.0, num_registered=40, adaptive=True,
                    clipped_count_stddev=sigma_b)
    # measured, not read off: the noise on the sum, the noise on the count, and the count's sensitivity
    sum_std = float(np.std(layer.central_noise(400_000)))
    count_std = float(np.std([layer.adaptive.noised_centred_count(0.0) for _ in range(20_000)]))
    b = np.array([1, 0, 1, 1, 0], float)
    centred = lambda bits: float(np.sum(bits - 0.5))  # noqa: E731 - what the server computes from the indicators
    sens = max(abs(centred(np.append(b, x)) - centred(b)) for x in (0.0, 1.0))
    assert sens == 0.5
    joint = ((C / sum_std) ** 2 + (sens / count_std) ** 2) ** -0.5
    recorded = layer.central_event().noise_multiplier
    assert joint == pytest.approx(recorded, rel=0.03)
    # and the server's ledger records that value each round
    # 40 clients, all clipped: b~ = (-20 + N(0, 2^2)) / 40 + 1/2 is 0 +- 0.05, always below gamma = 0.5
    cfg = dp_config(40, **{"fed.rounds": 2, "privacy.adaptive_clipping": True, "privacy.clipped_count_stddev": 2.0})
    server, _ = make_server(cfg, tmp_path / "run", _deltas(40, norm=2.0, d=500))
    server.run_rounds()
    assert [e.noise_multiplier for e in server.ledger.events] == [cfg.privacy.noise_multiplier] * 2
    assert server.state.clipping_norm > cfg.privacy.clipping_norm  # every update clipped: C grows


# ------------------------------------------------------------------------------------------- 8. modulus
def test_a_64_bit_modulus_is_refused_at_config_time():
    with pytest.raises(ConfigError, match="secagg_modulus_bits"):
        dp_config(4, **{"privacy.secagg": True, "privacy.secagg_modulus_bits": 64})


# --------------------------------------------------------------------------------------- 6. target epsilon
@pytest.mark.parametrize("failures", [False, True])
def test_target_epsilon_is_never_exceeded(tmp_path, failures):
    from pftray.privacy.accounting import compute_epsilon

    q, z = 0.5, 1.0
    target = (compute_epsilon(noise_multiplier=z, sample_rate=q, rounds=3, delta=1e-5)
              + compute_epsilon(noise_multiplier=z, sample_rate=q, rounds=4, delta=1e-5)) / 2
    cfg = dp_config(6, **{"fed.sample_rate": q, "fed.rounds": 30, "privacy.target_epsilon": target})
    server, _ = make_server(cfg, tmp_path / "run", _deltas(6, norm=0.3), absent={0, 1} if failures else set())
    out = server.run_rounds()
    eps = load_run(tmp_path / "run")["rounds"]["epsilon"].to_numpy()
    assert out["status"] == "budget_exhausted"
    assert (eps <= target).all() and out["epsilon"] <= target
    assert server.ledger.events and len(server.ledger.events) <= 3


def test_target_epsilon_refuses_a_first_round_that_would_exceed_it(tmp_path):
    from pftray.fed.server import RunError

    cfg = dp_config(4, **{"fed.sample_rate": 0.5, "privacy.target_epsilon": 0.01})
    server, _ = make_server(cfg, tmp_path / "run", _deltas(4, norm=0.3))
    with pytest.raises(RunError, match="target_epsilon"):
        server.run_rounds()


# ---------------------------------------------------------------------------------- 7. the driver's view
@pytest.mark.parametrize("placement", ["central", "distributed"])
def test_driver_holds_no_per_client_value_under_secagg(tmp_path, placement):
    cfg = dp_config(4, **{"privacy.secagg": True, "privacy.noise_placement": placement, "fed.rounds": 2,
                          "privacy.clipping_norm": 0.2, "privacy.adaptive_clipping": True,
                          "privacy.clipped_count_stddev": 1.0})
    deltas = _deltas(4, norm=0.3)
    deltas[1] = deltas[1] * 0.1  # one client under the clip, the others over it
    server, pool = make_server(cfg, tmp_path / "run", deltas, hosts=2)
    server.run_rounds()
    assert pool.fit_reports and not pool.contribute_info  # nothing went through the plain path
    for rep in pool.fit_reports:
        assert set(rep) <= set(PUBLIC_REPORT_KEYS), set(rep) - set(PUBLIC_REPORT_KEYS)
        assert not any(isinstance(v, float) for v in rep.values())
    res = load_run(tmp_path / "run")
    clients = res["clients"]
    for col in ("loss", "val_loss", "id_sim", "temp_stab", "update_norm", "score", "fit_s"):
        assert clients[col].isna().all(), col
    assert (clients["num_examples"] == -1).all() and clients["view"].str.startswith("secagg").all()
    assert res["rounds"]["train_loss"].isna().all()
    assert (res["rounds"]["status"] == "ok").all() and np.isfinite(res["rounds"]["epsilon"]).all()


def test_clients_table_says_per_client_values_are_outside_the_guarantee_under_central_dp(tmp_path):
    cfg = dp_config(3)
    server, _ = make_server(cfg, tmp_path / "run", _deltas(3, norm=0.3))
    server.run_rounds()
    clients = load_run(tmp_path / "run")["clients"]
    assert clients["view"].str.contains("NOT covered by DP").all()
    assert clients["loss"].notna().all()


# ------------------------------------------------------------------------------------ 5. distributed noise
@pytest.mark.parametrize("dropped", [0, 2])
def test_distributed_noise_under_secagg_is_the_recorded_noise(tmp_path, dropped):
    C = 0.5
    cfg = dp_config(8, **{"privacy.secagg": True, "privacy.noise_placement": "distributed",
                          "privacy.clipping_norm": C, "privacy.secagg_threshold": 0.5})
    d = 40_000  # the std of the measured std is 1/sqrt(2d) = 0.35 %, far inside the 3 % tolerance
    zeros = {c: np.zeros(d, np.float32) for c in range(8)}
    server, _ = make_server(cfg, tmp_path / "run", zeros, drop_at={"masked_input": set(range(dropped))})
    row = server.round(1)
    assert row["status"] == "ok", row.get("message")
    (event,) = server.ledger.events
    survivors = 8 - dropped
    plan = server.dp.distributed_plan(dim=d + 1, num_clients=8, threshold=4)
    assert event.mu == pytest.approx(plan.sum_mu(survivors))
    recorded_std = math.sqrt(2 * event.mu) / plan.scale  # on the sum, float units
    noise = server.state.global_shared.astype(np.float64) * server.dp.denominator
    assert np.std(noise) == pytest.approx(recorded_std, rel=0.03)
    # at least the configured noise, whatever the survivors: z C on the sum
    assert recorded_std >= cfg.privacy.noise_multiplier * C * (1 - 1e-9)


# ------------------------------------------------------------------------------------------------ resume
def test_a_dp_run_resumes_with_its_ledger_and_fresh_noise(tmp_path):
    import json

    cfg = dp_config(4, **{"fed.rounds": 4, "fed.sample_rate": 0.5, "privacy.adaptive_clipping": True,
                          "privacy.clipped_count_stddev": 2.0})
    deltas = _deltas(4, norm=2.0)
    first, _ = make_server(cfg, tmp_path / "run", deltas)
    first.round(1)
    first.round(2)
    first.checkpoint()
    eps2, c2 = first.epsilon(), first.state.clipping_norm
    resumed, _ = make_server(cfg, tmp_path / "run", deltas)
    assert resumed.restore() == 2
    assert resumed.epsilon() == pytest.approx(eps2) and resumed.state.clipping_norm == c2
    assert resumed.dp.clipping_norm == c2  # the layer's adaptive state came back too
    resumed.run_rounds()
    assert len(resumed.ledger.events) == 4 and resumed.epsilon() > eps2
    summary = json.loads((tmp_path / "run" / "privacy.json").read_text())
    assert "not reproducible" in summary["randomness"] and summary["sampling"] == "poisson"

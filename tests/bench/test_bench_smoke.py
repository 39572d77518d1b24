"""Smoke tests of the pftray side of each benchmark at tiny sizes (no Flower, no timings asserted)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.workload import busy_work, calibrate, client_update, expected_fedavg


# ------------------------------------------------------------------------------------------------ workload
def test_workload_update_and_fedavg_closed_form():
    delta, wall, cpu = client_update(3, np.zeros(5, np.float32), 0)
    np.testing.assert_array_equal(delta, np.full(5, 0.004, np.float32))
    assert delta.dtype == np.float32 and (wall, cpu) == (0.0, 0.0)
    assert expected_fedavg([0, 1, 2]) == pytest.approx(0.002)  # mean of 1e-3, 2e-3, 3e-3


def test_busy_work_scales_with_iterations_and_calibration_hits_target():
    assert calibrate(0.0) == 0
    iters = calibrate(0.05)
    assert iters > 0
    cpu = min(busy_work(iters)[1] for _ in range(3))
    # best of three on a shared machine: within a factor of 2 of the target, and 2x the work costs more
    assert 0.025 < cpu < 0.1
    assert busy_work(4 * iters)[1] > cpu
    with pytest.raises(ValueError, match="iters"):
        busy_work(-1)
    with pytest.raises(ValueError, match="seconds"):
        calibrate(-1.0)


# ------------------------------------------------------------------------------------------------ overhead
def test_summarise_drops_warmup_round_and_computes_overhead():
    from bench.overhead import summarise

    s = summarise([9.0, 2.0, 3.0, 4.0], [0.0, 2.0, 4.0, 6.0], [0.0, 1.0, 2.0, 3.0], workers=2)
    assert s["round_s"] == 3.0 and s["first_round_s"] == 9.0
    assert s["overhead_s"] == pytest.approx(1.0)  # each steady round: r - c/2 = 1, 1, 1
    assert s["overhead_share"] == pytest.approx(1 / 3)
    assert s["overhead_cpu_s"] == pytest.approx(2.0)  # 2 - .5, 3 - 1, 4 - 1.5 -> median 2
    with pytest.raises(ValueError, match="2 rounds"):
        summarise([1.0], [0.0], [0.0], workers=2)


def test_comparison_ratios():
    from bench.overhead import comparison

    base = {
        "round_s": 2.0,
        "overhead_s": 0.5,
        "overhead_share": 0.25,
        "overhead_cpu_s": 0.6,
        "overhead_cpu_share": 0.3,
    }
    rows = comparison(
        [
            {**base, "framework": "pftray", "clients": 10, "work_s": 1.0},
            {**base, "framework": "flower", "clients": 10, "work_s": 1.0, "round_s": 4.0, "overhead_s": 2.0},
            {**base, "framework": "pftray", "clients": 100, "work_s": 1.0},
        ]
    )
    assert len(rows) == 1  # the 100-client pftray run has no Flower partner
    assert rows[0]["round_ratio"] == pytest.approx(0.5) and rows[0]["overhead_ratio"] == pytest.approx(0.25)


def test_synthetic_host_contract_through_the_real_server(tmp_path):
    """SyntheticHost honours the ClientHost contract: pftray's round loop over a LocalPool of two hosts
    aggregates exactly the closed-form FedAvg of the synthetic updates."""
    from bench.overhead import SyntheticHost, bench_config
    from pftray.fed.pool import LocalPool
    from pftray.fed.server import FederatedServer
    from pftray.results import RunDir
    from pftray.runtime.driver import prepare_run

    cfg = bench_config(clients=6, workers=2, rounds=2)
    run = RunDir(tmp_path / "run")
    prepare_run(cfg, run)
    server = FederatedServer(
        cfg, run, LocalPool([SyntheticHost(0), SyntheticHost(0)]), np.zeros(7, np.float32), num_registered=6
    )
    for r in (1, 2):
        assert server.round(r)["status"] == "ok"
    np.testing.assert_allclose(server.state.global_shared, 2 * expected_fedavg(list(range(6))), rtol=1e-6)
    assert sorted(run.table("clients")["client_id"].tolist()) == sorted(2 * list(range(6)))
    with pytest.raises(ValueError, match="without DP"):
        SyntheticHost(0).contribute({}, clipping_norm=1.0)


@pytest.mark.ray
def test_pftray_overhead_rounds_over_ray(ray_session):
    from bench.overhead import pftray_rounds

    res = pftray_rounds(clients=4, iters=10, d=1000, rounds=1, workers=2, dispatch="static")
    assert res["framework"] == "pftray-static" and res["max_abs_error"] < 1e-6
    assert len(res["rounds_s"]) == 2 and res["round_s"] > 0
    assert res["compute_s"] > 0 and res["overhead_s"] <= res["round_s"]
    # the default dynamic dispatch (several chunks per worker and round) must aggregate the same vector
    dyn = pftray_rounds(clients=9, iters=10, d=100, rounds=1, workers=2)
    assert dyn["framework"] == "pftray" and dyn["max_abs_error"] < 1e-6
    assert dyn["worker_imbalance_s"] >= 0


# ---------------------------------------------------------------------------------------------------- comm
def test_comm_counts_parameters_of_the_tiny_model(tmp_path):
    from bench.comm import comm_table, model_sizes
    from pftray.config import config_from_dict, dump_config
    from tests.tinycfg import TINY

    path = tmp_path / "tiny.yaml"
    dump_config(config_from_dict(TINY), path)
    s2, s4 = model_sizes(str(path), 2), model_sizes(str(path), 4)
    assert s4["shared_numel"] == 2 * s2["shared_numel"]  # LoRA parameters are linear in the rank
    assert s2["unet_numel"] == s4["unet_numel"] > s4["shared_numel"]
    res = comm_table(str(path), [2], secagg_n=3)
    row = res["rows"][0]
    assert row["fp32_bytes"] == 4 * s2["shared_numel"] and row["fp16_bytes"] == 2 * s2["shared_numel"]
    assert row["fp32_share_of_unet_fp32"] == pytest.approx(s2["shared_numel"] / s2["unet_numel"])
    # SecAgg+ uploads the 32-bit masked vector (one extra word) plus keys and shares: a little over fp32
    assert row["fp32_bytes"] < row["secagg_bytes"] < 1.2 * row["fp32_bytes"]
    assert res["target"]["rank8_share"] is None and res["target"]["met"] is False


def test_comm_share_falls_with_width_down_to_sd_scale(tmp_path):
    from bench.comm import SD_SCALE, comm_table

    tables = [comm_table("configs/quickstart.yaml", [8], secagg_n=3, unet_channels=w, measure_secagg=False)
              for w in ((32, 64), (64, 128), (128, 256))]
    sd = comm_table("configs/quickstart.yaml", [8], secagg_n=3, extra=SD_SCALE, measure_secagg=False)
    shares = [t["target"]["rank8_share"] for t in [*tables, sd]]
    assert shares == sorted(shares, reverse=True)  # LoRA on d x d projections: 2rd / d^2 shrinks with width
    assert shares[1] == pytest.approx(shares[0] / 2, rel=0.15) and shares[2] == pytest.approx(shares[1] / 2, rel=0.15)
    assert sd["full_unet"]["unet_numel"] > 5e8 and sd["target"]["met"] and sd["rows"][0]["secagg_bytes"] is None


def test_tail_sim_is_exact_without_noise_and_grows_with_the_spread():
    import numpy as np

    from bench.tail_sim import RULES, simulate_round, tail_table

    for rule in RULES.values():  # equal clients, an even split, no round trip: no tail at all
        assert simulate_round(np.full(10, 1.3), 2, rule, 0.0) == pytest.approx(0.0, abs=1e-12)
    # 3 equal clients on 2 workers: one worker runs the third alone -> round 2.0, total / workers 1.5: tail 0.5
    assert simulate_round(np.ones(3), 2, RULES["1"], 0.0) == pytest.approx(0.5)
    rows = tail_table([10], [0.0, 0.1, 0.3], mean=1.0, workers=2, rounds=200, rtt=0.0)
    med = {(r["spread"], r["rule"]): r["median_tail_s"] for r in rows}
    for name in RULES:
        assert abs(med[(0.0, name)]) < 1e-12 and 0 < med[(0.1, name)] < med[(0.3, name)]


# --------------------------------------------------------------------------------------------------- train
def test_train_measures_tiny_fit():
    from bench.train import measure_fit

    r = measure_fit("tiny", steps=1, repeats=1)
    assert r["resolution"] == 32 and r["frames_per_step"] >= 1
    assert r["fit_s"] > 0 and r["fit_fps"] > 0 and r["step_fps"] >= r["fit_fps"]
    assert r["peak_rss_mb"] >= r["rss_after_model_mb"] > 0
    with pytest.raises(ValueError, match="setting"):
        measure_fit("huge", steps=1, repeats=1)


# ---------------------------------------------------------------------------------------- secagg vs flower
def test_secagg_settings_match_neighbourhoods():
    from bench.secagg_vs_flower import settings

    assert settings(100) == [("flower-example", 2, 2), ("dense", 10, 6)]
    assert settings(10) == [("flower-example", 2, 2), ("dense", 9, 6)]  # complete graph for 10 clients
    for n in (3, 10, 100):
        for _, degree, threshold in settings(n):
            assert 2 <= threshold <= degree + 1 and degree <= n - 1


def test_entry_point_knows_every_benchmark():
    from bench.__main__ import BENCHMARKS, main

    assert set(BENCHMARKS) == {"overhead", "comm", "train", "secagg-vs-flower", "pretrain-quality", "scale", "tdc",
                               "tail-sim", "privacy-audit", "table-writes", "federation", "shift-gap", "real-faces",
                               "mouth-timing"}
    assert main(["no-such-bench"]) == 2

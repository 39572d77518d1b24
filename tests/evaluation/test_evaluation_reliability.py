"""AUC of ISFA's reliability signals against the ground-truth unreliable label, per corruption kind."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from pftray.evaluation.reliability import auc_by_kind, run_auc, signal_table


def _clients(rng, n_rel=30, kinds=None, rounds=4):
    """A clients table: reliable clients 0..n_rel-1, then unreliable ones per kind, with given id_sim means."""
    kinds = kinds or {}
    rows, labels, cid = [], {}, 0
    groups = [("", 0.9, n_rel)] + [(k, mu, n) for k, (mu, n) in kinds.items()]
    for kind, mu, n in groups:
        for _ in range(n):
            if kind:
                labels[cid] = kind
            for r in range(1, rounds + 1):
                rows.append({"server_round": r, "client_id": cid, "status": "ok",
                             "id_sim": float(rng.normal(mu, 0.05)), "temp_stab": 0.5})
            cid += 1
    return pd.DataFrame(rows), labels


def _brute_auc(pos, neg):
    return np.mean([1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg)])


def test_auc_per_kind_separates_a_visible_kind_from_an_invisible_one():
    rng = np.random.default_rng(0)
    clients, labels = _clients(rng, kinds={"noise": (0.5, 10), "frozen": (0.9, 10)})
    table = signal_table(clients, labels, alpha=0.65)
    np.testing.assert_allclose(table["score"], 0.65 * table["id_sim"] + 0.35 * 0.5)
    out = auc_by_kind(table).set_index(["kind", "signal"])
    assert out.loc[("noise", "score"), "auc"] == pytest.approx(1.0)
    assert abs(out.loc[("frozen", "score"), "auc"] - 0.5) < 0.1  # same distribution: blind
    assert out.loc[("noise", "score"), "n_reliable"] == 30 * 4 and out.loc[("noise", "score"), "n_unreliable"] == 40
    # temp_stab is constant: it cannot see anything (every pair ties)
    assert out.loc[("noise", "temp_stab"), "auc"] == 0.5
    # against an independent pairwise count
    rel = table[table["kind"] == ""]["score"].to_numpy()
    frz = table[table["kind"] == "frozen"]["score"].to_numpy()
    assert out.loc[("frozen", "score"), "auc"] == pytest.approx(_brute_auc(rel, frz))


def test_client_unit_averages_a_clients_reports_and_rounds_filter():
    rng = np.random.default_rng(1)
    clients, labels = _clients(rng, n_rel=5, kinds={"swapped_audio": (0.2, 3)}, rounds=6)
    t = signal_table(clients, labels, alpha=1.0, rounds=(2, 3))
    assert set(t["server_round"]) == {2, 3}
    out = auc_by_kind(t, unit="client").set_index("signal")
    assert out.loc["id_sim", "n_reliable"] == 5 and out.loc["id_sim", "n_unreliable"] == 3
    assert out.loc["id_sim", "auc"] == 1.0
    # an inverted signal (corrupted clients look MORE reliable) is reported below 0.5, not folded
    flipped = clients.assign(id_sim=1 - clients["id_sim"])
    assert auc_by_kind(signal_table(flipped, labels, alpha=1.0)).set_index("signal").loc["id_sim", "auc"] == 0.0
    # failed reports are left out; a kind with no reliable units has no AUC
    only_bad = clients[clients["client_id"].isin(labels)]
    assert np.isnan(auc_by_kind(signal_table(only_bad, labels, alpha=1.0))["auc"]).all()
    with pytest.raises(ValueError, match="unit"):
        auc_by_kind(t, unit="round")


def test_run_auc_on_a_real_run_recomputes_isfas_own_scores(compare_runs):
    from pftray.evaluation.ground_truth import unreliable_clients
    from pftray.results import load_run

    run = compare_runs[("isfa", 0)]
    res = load_run(run)
    labels = unreliable_clients(res["config"])
    assert labels  # the tiny federation has an unreliable client
    table = signal_table(res["clients"], labels, alpha=res["config"]["fed"]["isfa_alpha"])
    stored = res["clients"].set_index(["server_round", "client_id"])["score"]
    mine = table.set_index(["server_round", "client_id"])["score"]
    np.testing.assert_allclose(mine.to_numpy(), stored.loc[mine.index].to_numpy(), rtol=1e-9)
    out = run_auc(run)
    assert set(out["kind"]) <= set(labels.values()) and set(out["signal"]) == {"score", "id_sim", "temp_stab"}
    assert ((out["auc"] >= 0) & (out["auc"] <= 1) | out["auc"].isna()).all()

"""Smoke test of ``python -m bench privacy-audit``: a tiny DP cohort with canaries, one round, then the audit."""

from __future__ import annotations

import json
import math


def test_privacy_audit_cohort_smoke(tmp_path, capsys):
    from bench.privacy_audit import main

    args = ["--stages", "cohort", "--work", str(tmp_path / "work"), "--results", str(tmp_path / "res"),
            "--clients", "2", "--canaries", "6", "--rounds", "1", "--sample-rate", "1.0", "--noise", "1.0",
            "--clip", "1.0", "--local-steps", "1", "--timesteps", "100", "--repeats", "1"]
    assert main(args) == 0
    res = json.loads((tmp_path / "res" / "privacy_audit_cohort.json").read_text())
    assert res["stage"] == "cohort" and res["rounds"] == 1 and res["complete"]
    assert math.isfinite(res["accountant_epsilon"]) and res["accountant_epsilon"] > 0
    assert res["accountant_delta"] == 1e-5 and res["noise_multiplier"] == 1.0
    can = res["canaries"]
    assert can["num_canaries"] == 6 and can["num_included"] == 2  # the coin flips of canary seed 0
    assert res["registered_clients"] == 2 + 2
    assert 0 <= can["auc"] <= 1 and 0 <= can["tpr_at_1pct_fpr"] <= 1
    assert 0 <= can["eps_lb"] < 20 and can["num_guesses"] > 0
    assert res["personalised"] is None  # the cohort stages run the client-level canary audit only
    out = capsys.readouterr().out
    assert any(line.startswith("RESULT {") for line in out.splitlines())
    # resumable: a second call skips the stage and prints the same RESULT
    assert main(args) == 0
    again = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("RESULT ")]
    assert json.loads(again[-1][len("RESULT "):]) == res

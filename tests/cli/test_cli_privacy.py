import json
import subprocess
import sys

import pytest

from pftray.privacy.accounting import compute_epsilon


def _cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "pftray.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_privacy_epsilon_and_noise_print_json_that_round_trips():
    res = _cli("privacy", "epsilon", "--noise-multiplier", "1.0", "--sample-rate", "0.01", "--rounds", "1000",
               "--delta", "1e-5")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["epsilon"] == pytest.approx(compute_epsilon(noise_multiplier=1.0, sample_rate=0.01, rounds=1000,
                                                           delta=1e-5))
    res = _cli("privacy", "noise", "--target-epsilon", str(out["epsilon"]), "--sample-rate", "0.01", "--rounds",
               "1000", "--delta", "1e-5")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["noise_multiplier"] == pytest.approx(1.0, rel=1e-2)


def test_bad_input_paths_exit_2_naming_the_path(tmp_path):
    res = _cli("run", "--resume", str(tmp_path / "nope"), "--local")
    assert res.returncode == 2 and "nope" in res.stderr and "Traceback" not in res.stderr
    res = _cli("data", "prepare", "--source", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and "missing" in res.stderr
    res = _cli("audit", str(tmp_path))
    assert res.returncode == 2 and "not a pftray run directory" in res.stderr

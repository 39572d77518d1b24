"""Library warnings at most once, and none after ``pftray run``'s summary."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

from pftray.cli import QUIET_IN_WORKERS, quiet_library_warnings

PEFT = ("Already found a `peft_config` attribute in the model. This will lead to having multiple adapters in the "
        "model. Make sure to know what you are doing!")


def _warn_here():
    warnings.warn("a library says this every time", UserWarning, stacklevel=1)


def _warn_there():
    warnings.warn("a library says this every time", UserWarning, stacklevel=1)


def test_the_same_message_from_two_places_shows_once(monkeypatch):
    monkeypatch.delenv("PYTHONWARNINGS", raising=False)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")  # Python's own rule: once per place, so twice here
        _warn_here()
        _warn_there()
        assert len(seen) == 2
        seen.clear()
        quiet_library_warnings()
        _warn_here()
        _warn_there()
        _warn_here()
    assert [str(w.message) for w in seen] == ["a library says this every time"]


def test_ray_processes_inherit_a_filter_that_silences_the_peft_warning(monkeypatch, tmp_path):
    monkeypatch.setenv("PYTHONWARNINGS", "error::DeprecationWarning")
    quiet_library_warnings()
    quiet_library_warnings()  # idempotent: no entry twice, earlier entries kept
    entries = os.environ["PYTHONWARNINGS"].split(",")
    assert entries[0] == "error::DeprecationWarning"
    assert entries.count(f"ignore:{QUIET_IN_WORKERS[0]}") == 1
    # a child process (what Ray starts its driver actor and workers as) parses the variable and drops the warning
    code = ("import warnings\n"
            f"warnings.warn({PEFT!r}, UserWarning)\n"
            "warnings.warn('another library warning', UserWarning)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ),
                         timeout=60)
    assert res.returncode == 0, res.stderr
    assert "peft_config" not in res.stderr
    assert "another library warning" in res.stderr  # only the known repeated one is silenced


def test_nothing_prints_after_the_summary_of_a_local_run(tmp_path):
    from pftray.config import dump_config
    from tests.tinycfg import tiny_config

    cfg = tiny_config(**{"experiment.out_dir": str(tmp_path), "fed.rounds": 1, "train.local_steps": 1,
                         "data.frames_per_clip": 4, "eval.frames": 2})
    dump_config(cfg, tmp_path / "cfg.yaml")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("PYTHONWARNINGS", None)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    res = subprocess.run([sys.executable, "-m", "pftray", "run", str(tmp_path / "cfg.yaml"), "--local",
                          "--out", str(tmp_path / "run")], cwd=root, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, timeout=600)
    assert res.returncode == 0, res.stdout
    lines = res.stdout.splitlines()
    summary_at = next(i for i, line in enumerate(lines) if line.startswith("run directory :"))
    assert sum("peft_config" in line for line in lines) <= 1
    assert not any("Warning" in line for line in lines[summary_at:])
    assert lines[-1].startswith("samples       :")
    assert any(line.startswith("  round 1 client ") for line in lines[:summary_at])

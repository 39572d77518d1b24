"""``pftray run --resume DIR`` on a finished run says so and changes nothing (no Ray, no training, no writes)."""

from __future__ import annotations

import hashlib

import pytest

from pftray.results import RunDir
from pftray.runtime.driver import finished_summary, run_federated
from tests.tinycfg import tiny_config


def _tree_digest(path):
    """path -> sha256 of every file under ``path`` (the whole run directory)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    cfg = tiny_config(**{"fed.rounds": 2})
    run, summary = run_federated(cfg, out=str(tmp_path_factory.mktemp("resume") / "run"), use_ray=False)
    assert summary["status"] == "done" and summary["rounds"] == 2
    return run.path


def test_resume_of_a_finished_run_prints_complete_and_changes_nothing(finished_run, monkeypatch, capsys):
    import pftray.runtime.driver as driver
    from pftray.cli import main

    def no_ray(cfg):
        raise AssertionError("Ray was started for a finished run")

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(driver, "init_ray", no_ray)
    monkeypatch.setattr(driver, "run_local", no_training)
    meta = (finished_run / "meta.json").read_bytes()
    before = _tree_digest(finished_run)
    assert main(["run", "--resume", str(finished_run)]) == 0  # the Ray path: it must not get that far
    out = capsys.readouterr().out
    assert f"run {finished_run} is complete (all 2 rounds done, 2/2 rounds); nothing to resume" in out
    assert "run directory : " in out  # the usual summary, from the tables on disk
    assert (finished_run / "meta.json").read_bytes() == meta
    assert _tree_digest(finished_run) == before
    assert main(["run", "--resume", str(finished_run), "--local"]) == 0
    assert (finished_run / "meta.json").read_bytes() == meta


def test_only_a_run_with_every_round_done_counts_as_finished(finished_run, tmp_path):
    run = RunDir(finished_run)
    cfg = tiny_config(**{"fed.rounds": 2})
    meta = run.read_meta()
    assert finished_summary(run, cfg)["rounds"] == 2
    assert finished_summary(run, cfg.replace(**{"fed.rounds": 3})) is None  # a round left
    copy = RunDir(tmp_path / "copy")
    copy.path.mkdir()
    for status, rounds, finished in [("done", 2, True), ("running", 2, False), ("stopped", 1, False),
                                     ("failed", 1, False), ("budget_exhausted", 1, True), ("done", 1, False)]:
        copy.write_meta({**meta, "status": status, "rounds_completed": rounds})
        assert (finished_summary(copy, cfg) is not None) is finished, (status, rounds)

"""``pftray run``'s progress: a line per finished client as it finishes, and an ETA from the rounds after
warm-up."""

from __future__ import annotations

import io
import re

import pytest

from pftray.cli import EtaEstimator, RoundPrinter


# ------------------------------------------------------------------------------------------------ ETA
def test_eta_is_unknown_until_a_round_after_the_first():
    est = EtaEstimator()
    assert est.eta(10) is None
    est.observe(1, 500.0)  # round 1: start-up and compilation included
    assert est.eta(10) is None


def test_eta_is_mean_round_duration_after_warm_up_times_rounds_left():
    est = EtaEstimator()
    for r, t in [(1, 300.0), (2, 310.0), (3, 330.0)]:  # warm-up 300 s, then rounds of 10 s and 20 s
        est.observe(r, t)
    assert est.durations == [10.0, 20.0]
    assert est.eta(10) == pytest.approx(15.0 * 7)
    assert est.eta(3) == 0.0


def test_eta_is_not_elapsed_over_rounds():
    # the run that prompted this: a slow first round must not dominate the estimate
    est = EtaEstimator()
    est.observe(1, 164.0)
    est.observe(2, 168.0)
    assert est.eta(200) == pytest.approx(4.0 * 198)
    assert est.eta(200) != pytest.approx(168.0 / 2 * 198)


def test_eta_on_resume_counts_only_this_process_rounds():
    est = EtaEstimator()  # resumed after round 5: the first round seen here is 6, whose time includes start-up
    est.observe(6, 1000.0)
    assert est.eta(10) is None
    est.observe(7, 1006.0)
    est.observe(8, 1014.0)
    assert est.eta(10) == pytest.approx(7.0 * 2)


def test_eta_spreads_a_gap_over_skipped_rounds():
    est = EtaEstimator()  # the Ray driver is polled: two rounds may end between two reports
    est.observe(1, 0.0)
    est.observe(4, 30.0)
    assert est.durations == [10.0, 10.0, 10.0]
    est.observe(4, 99.0)  # a repeated report changes nothing
    assert est.durations == [10.0, 10.0, 10.0]
    assert est.eta(6) == pytest.approx(20.0)


def test_round_printer_prints_the_estimator_eta():
    clock = iter([0.0, 100.0, 104.0, 112.0])
    out = io.StringIO()
    printer = RoundPrinter(clock=lambda: next(clock), file=out)
    for r in (1, 2, 3):
        printer({"server_round": r, "rounds": 5, "train_loss": 0.5, "val_loss": 0.4, "n_ok": 2, "n_sampled": 2})
    lines = out.getvalue().splitlines()
    assert "eta after the next round" in lines[0]
    assert lines[1].endswith("elapsed 104s eta 12s")  # 4 s a round, 3 rounds left
    assert lines[2].endswith("elapsed 112s eta 12s")  # (4 + 8) / 2 = 6 s a round, 2 rounds left


def test_client_line_names_round_client_status_time_and_worker():
    out = io.StringIO()
    printer = RoundPrinter(file=out)
    printer.client_done({"server_round": 3, "client_id": 17, "status": "ok", "fit_s": 12.34, "worker": "gpu-1",
                         "n_done": 2, "n_clients": 8})
    printer.client_done({"server_round": 3, "client_id": 4, "status": "error", "message": "ValueError: bad clip",
                         "worker": "gpu-0", "n_done": 3, "n_clients": 8})  # under secure aggregation: no fit_s
    assert out.getvalue().splitlines() == [
        "  round 3 client 17: ok, fit 12.3s on gpu-1 (2/8)",
        "  round 3 client 4: error, fit n/a on gpu-0 (3/8) [ValueError: bad clip]",
    ]


# ----------------------------------------------------------------------------------- in-process run
def test_local_pool_reports_each_client_as_it_finishes(tmp_path, monkeypatch):
    """Each client's line is printed after its training and before the next client's training starts."""
    import torch

    from pftray.fed.host import ClientHost
    from pftray.runtime.driver import new_run_dir, prepare_run, run_local
    from tests.tinycfg import tiny_config

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    events: list[str] = []
    train = ClientHost._train

    def traced(self, cid, *a, **kw):
        events.append(f"start {cid}")
        return train(self, cid, *a, **kw)

    monkeypatch.setattr(ClientHost, "_train", traced)

    class Out(io.StringIO):
        def write(self, s):
            events.extend(line for line in s.splitlines() if line.strip())
            return super().write(s)

    cfg = tiny_config(**{"experiment.out_dir": str(tmp_path), "fed.rounds": 2, "data.num_clients": 4,
                         "fed.clients_per_round": 3, "train.local_steps": 1, "data.frames_per_clip": 4})
    run = new_run_dir(cfg, str(tmp_path / "run"))
    prepare_run(cfg, run)
    try:
        summary = run_local(cfg, run, num_hosts=2, progress=RoundPrinter(file=Out()))
    finally:
        torch.set_num_threads(before)
    assert summary["status"] == "done"

    from pftray.results import load_run

    clients = load_run(run.path)["clients"]
    client_line = re.compile(r"^  round (\d+) client (\d+): (\w+), fit ([\d.]+)s on (local-\d) \((\d)/3\)$")
    seen: list[tuple[int, int]] = []
    for i, ev in enumerate(events):
        m = client_line.match(ev)
        if m is None:
            continue
        r, cid = int(m.group(1)), int(m.group(2))
        assert m.group(3) == "ok"
        assert m.group(5) == f"local-{cid % 2}"  # LocalPool maps client k to host k % hosts
        assert events[i - 1] == f"start {cid}"  # printed right after its own training, before the next one
        assert int(m.group(6)) == sum(1 for s in seen if s[0] == r) + 1
        seen.append((r, cid))
    assert len(seen) == 6  # 3 clients in each of 2 rounds
    for r in (1, 2):
        round_at = next(i for i, ev in enumerate(events) if ev.startswith(f"round {r}/2 "))
        mine = [i for i, ev in enumerate(events) if ev.startswith(f"  round {r} client ")]
        assert max(mine) < round_at  # the round's clients come before the round's line
        sampled = sorted(int(c) for c in clients.loc[clients["server_round"] == r, "client_id"])
        assert sorted(c for rr, c in seen if rr == r) == sampled

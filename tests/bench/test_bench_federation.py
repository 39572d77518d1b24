"""Smoke test of the federated benchmark's machinery (``python -m bench federation``) on a tiny grid: it runs
the cells, writes units.parquet and summary.md whose numbers are recomputed here from the Parquet, resumes
without retraining, and calibrates the DP cells' noise to the accountant's epsilon."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from tests.tinycfg import tiny_dict


@pytest.fixture(scope="module")
def grid_result(tmp_path_factory):
    import torch

    from bench.federation import Grid, run_grid
    from pftray.config import config_from_dict, dump_config

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fedbench")
    config = root / "tiny.yaml"
    dump_config(config_from_dict(tiny_dict(**{"data.shift_severity": 1.0, "data.num_clients": 4,
                                              "eval.sample_steps": 1, "eval.frames": 3, "train.local_steps": 1,
                                              "data.frames_per_clip": 4})), config)
    grid = Grid(base={"data.unreliable_fraction": 0.0, "fed.rounds": 1, "fed.clients_per_round": 2,
                      "fed.eval_clients": 4},
                cohort={"fed.sample_rate": 0.9, "privacy.clipping_norm": 0.5},
                seeds=(0,), fractions=(0.0, 0.5), epsilons=(8.0,), lambdas=(), methods=("backbone", "local", "fedavg"),
                dp_methods=("fedavg",), cohort_pretrain={"pretrain.vae_steps": 1, "pretrain.unet_steps": 1,
                                                         "pretrain.warp_steps": 0})
    lines = []
    res = run_grid(grid, config=config, work=root / "work", out=root / "out", factors=("unreliable", "dp"),
                   progress=lines.append)
    return grid, res, root, lines


def test_grid_writes_units_and_a_summary_recomputed_from_them(grid_result):
    import pandas as pd

    grid, res, root, lines = grid_result
    units = pd.read_parquet(root / "out" / "units.parquet")
    assert set(units["method"]) == {"backbone", "local", "fedavg", "fedavg/global", "autoencoder"}
    assert set(units["factor"]) == {"unreliable", "dp"}
    # the autoencoder round trip: the default cell only, the same (seed, client) units as its fedavg rows
    ae = units[units["method"] == "autoencoder"]
    assert set(ae["level"]) == {"0"} and set(ae["factor"]) == {"unreliable"}
    fa = units[(units["method"] == "fedavg") & (units["level"] == "0") & (units["factor"] == "unreliable")]
    assert sorted(zip(ae["seed"], ae["client_id"])) == sorted(zip(fa["seed"], fa["client_id"]))
    assert np.isfinite(ae["psnr"]).all()
    # 4 evaluated clients per method per cell; backbone rows come from the fedavg run of the same cell
    u = units[(units["factor"] == "unreliable") & (units["method"] != "autoencoder")]
    # 2 fractions; the federated run also samples the shared adapter alone (eval.global_model), local-only not
    assert u.groupby("method").size().to_dict() == {"backbone": 8, "local": 8, "fedavg": 8, "fedavg/global": 8}
    g = u[u["method"] == "fedavg/global"]
    assert (g["run"].to_numpy() == u[u["method"] == "fedavg"]["run"].to_numpy()).all()
    assert u[u["method"] == "backbone"]["run"].iloc[0] == u[u["method"] == "fedavg"]["run"].iloc[0]
    assert (u["unreliable"] != "").sum() == 4 * 2  # round(0.5 * 4) unreliable clients, seen by 4 methods
    # the shift-region metric exists on the shifted scenario
    assert np.isfinite(u["shift_psnr"]).all()
    text = (root / "out" / "summary.md").read_text()
    # the reliable-clients row of local-only, recomputed from the Parquet: mean +- t half-width
    from scipy import stats

    rel = u[(u["level"] == "0.5") & (u["unreliable"] == "") & (u["method"] == "local")]["shift_psnr"].to_numpy(float)
    half = stats.t.ppf(0.975, len(rel) - 1) * rel.std(ddof=1) / math.sqrt(len(rel))
    section = text.split("## unreliable: reliable clients")[1].split("## ")[0]
    row = next(ln for ln in section.splitlines() if ln.startswith("| 0.5 | local |"))
    assert f"{rel.mean():.3f} ± {half:.3f}" in row
    # a paired difference against FedAvg, recomputed on the same (seed, client) units
    a = u[(u["method"] == "local") & (u["level"] == "0.5")].set_index(["seed", "client_id"])["psnr"]
    b = u[(u["method"] == "fedavg") & (u["level"] == "0.5")].set_index(["seed", "client_id"])["psnr"]
    d = (a - b).dropna()
    allc = text.split("## unreliable: all clients")[1].split("## ")[0]
    prow = next(ln for ln in allc.splitlines() if re.match(r"\| 0\.5 \| local \| fedavg \| psnr \|", ln))
    assert f"{d.mean():.3f} [" in prow and f"| {len(d)} |" in prow
    # each method against itself at fraction 0, on the clients reliable at 0.5, recomputed
    from bench.federation import vs_clean

    vc = vs_clean(units).set_index(["method", "level", "clients", "metric"])
    cur = u[(u["method"] == "fedavg") & (u["level"] == "0.5") & (u["unreliable"] == "")].set_index("client_id")
    clean = u[(u["method"] == "fedavg") & (u["level"] == "0")].set_index("client_id")
    diff = (cur["psnr"] - clean["psnr"].loc[cur.index]).mean()
    assert vc.loc[("fedavg", "0.5", "reliable", "psnr"), "mean_diff"] == pytest.approx(diff)
    assert vc.loc[("fedavg", "0.5", "reliable", "psnr"), "n_pairs"] == 2
    assert "each method against itself without them" in text
    assert (root / "out" / "rounds.png").stat().st_size > 0 and (root / "out" / "utility_vs_epsilon.png").exists()


def test_autoencoder_rows_score_the_very_frames_the_runs_scored(grid_result):
    """With 'copy the reference' as the reconstruction, the autoencoder rows must equal the FedAvg run's own
    ``copy`` rows of the default cell, client for client: the same held-out clips, frames and metric code. With a
    lossless autoencoder (space_to_depth) the round trip gives back the ground truth (PSNR > 60 dB)."""
    import dataclasses

    import pandas as pd

    from bench.federation import autoencoder_rows
    from pftray.config import config_from_dict, dump_config, load_config

    grid, res, root, lines = grid_result
    copy = autoencoder_rows(grid, root / "tiny.yaml", reconstruct=lambda m, x, ref, pose: ref[None].expand_as(x))
    units = pd.read_parquet(root / "out" / "units.parquet")
    run = units[(units["method"] == "fedavg") & (units["level"] == "0") & (units["factor"] == "unreliable")]["run"]
    ev = pd.read_parquet(root / "work" / "runs" / run.iloc[0] / "eval.parquet")
    ev = ev[(ev["model"] == "copy") & (ev["server_round"] == ev["server_round"].max())]
    want = ev.groupby("client_id")[["psnr", "mouth_psnr", "shift_psnr", "jitter"]].mean()
    got = copy.set_index("client_id")[["psnr", "mouth_psnr", "shift_psnr", "jitter"]]
    assert len(got) == 4
    pd.testing.assert_frame_equal(got.sort_index(), want.sort_index(), check_exact=False, rtol=1e-9,
                                  check_names=False)
    lossless = root / "s2d.yaml"
    cfg = load_config(root / "tiny.yaml").to_dict()
    cfg["model"].update(autoencoder="space_to_depth", backbone="")
    dump_config(config_from_dict(cfg), lossless)
    rows = autoencoder_rows(dataclasses.replace(grid, seeds=(0,)), lossless)
    assert (rows["psnr"] > 60).all() and (rows["mouth_psnr"] > 60).all()


def test_dp_cells_are_calibrated_to_the_accountants_epsilon(grid_result):
    import pandas as pd

    grid, res, root, lines = grid_result
    units = pd.read_parquet(root / "out" / "units.parquet")
    dp = units[units["factor"] == "dp"]
    assert set(dp["level"]) == {"eps8"}
    eps = float(dp["epsilon"].iloc[0])
    assert 7.0 < eps <= 8.0 + 1e-6  # 1 round at q = 0.9 with the calibrated z: the accountant's epsilon is <= 8
    text = (root / "out" / "summary.md").read_text()
    assert "accountant ε" in text
    # the audit's lower bound beside it, from the run's own audit.json (written by pftray audit's code)
    import json

    run = root / "work" / "runs" / dp["run"].iloc[0]
    rep = json.loads((run / "audit.json").read_text())
    lb = rep["clip_level_shared"]["eps_lb"]
    assert float(dp["audit_eps_lb"].iloc[0]) == pytest.approx(float(lb))
    assert 0.0 <= float(lb) <= eps  # a valid epsilon is never below the audit's lower bound
    row = next(ln for ln in text.split("## DP cells")[1].splitlines() if ln.startswith("| eps8 | fedavg |"))
    assert f"| {eps:.2f} | {float(lb):.2f} |" in row


def test_only_fedavg_runs_sample_the_backbone(grid_result):
    import pandas as pd

    grid, res, root, lines = grid_result
    units = pd.read_parquet(root / "out" / "units.parquet")
    u = units[(units["factor"] == "unreliable") & (units["level"] == "0")]
    models = {m: set(pd.read_parquet(root / "work" / "runs" / u[u["method"] == m]["run"].iloc[0] / "eval.parquet")
                     ["model"]) for m in ("local", "fedavg")}
    assert models["fedavg"] >= {"personalised", "backbone", "copy"}
    assert "backbone" not in models["local"] and "personalised" in models["local"]


def test_a_second_call_keeps_finished_cells(grid_result, tmp_path):
    from bench.federation import run_grid

    grid, res, root, lines = grid_result
    before = {p: p.stat().st_mtime_ns for p in (root / "work" / "runs").glob("*/checkpoints/LATEST")}
    assert len(before) == 5  # local and fedavg at 2 fractions, fedavg of the dp factor
    again = run_grid(grid, config=root / "tiny.yaml", work=root / "work", out=tmp_path / "out2",
                     factors=("unreliable", "dp"), progress=lambda _: None)
    after = {p: p.stat().st_mtime_ns for p in (root / "work" / "runs").glob("*/checkpoints/LATEST")}
    assert after == before
    assert again["units"].drop(columns=["wall_s"]).equals(res["units"].drop(columns=["wall_s"]))


def test_jobs_run_cells_in_worker_processes_with_the_same_answer(grid_result, tmp_path):
    from bench.federation import run_grid

    grid, res, root, lines = grid_result
    par = run_grid(grid, config=root / "tiny.yaml", work=tmp_path / "work", out=tmp_path / "out",
                   factors=("unreliable",), progress=lambda _: None, jobs=2)
    serial = res["units"][res["units"]["factor"] == "unreliable"].reset_index(drop=True)
    got = par["units"].reset_index(drop=True)
    assert len(list((tmp_path / "work" / "runs").iterdir())) == 4  # trained afresh, in the workers
    cols = [c for c in serial.columns if c not in ("wall_s",)]
    # same seeds, one torch thread on both sides: the same numbers, unit for unit
    assert got[cols].equals(serial[cols])


def test_tdc_and_dp_levels_are_paired_against_their_reference_level():
    import pandas as pd

    from bench.federation import METRICS, markdown, vs_level

    rows = []
    for factor, levels in (("tdc", ("lambda0", "lambda0.1")), ("dp", ("nodp", "eps8"))):
        for li, level in enumerate(levels):
            for method in ("isfa", "backbone"):
                for seed in (0, 1):
                    for client in range(4):
                        base = 10.0 + client + 0.5 * seed
                        rows.append({"factor": factor, "level": level, "method": method, "seed": seed,
                                     "client_id": client, "unreliable": "", "run": f"{factor}{li}{method}{seed}",
                                     "epsilon": 8.0 if level == "eps8" else math.nan, "audit_eps_lb": 0.0,
                                     "audit_auc": 0.5, "wall_s": 1.0,
                                     **{m: base + (li * (0.3 + 0.1 * client) if method == "isfa" else 0.0)
                                        for m in METRICS}})
    units = pd.DataFrame(rows)
    vl = vs_level(units, "tdc", "lambda0").set_index(["method", "level", "metric"])
    assert set(vl.index.get_level_values("method")) == {"isfa"}  # the untrained backbone is never compared
    r = vl.loc[("isfa", "lambda0.1", "jitter")]
    d = np.array([0.3 + 0.1 * c for _ in (0, 1) for c in range(4)])  # paired on (seed, client)
    assert r["n_pairs"] == 8 and r["mean_diff"] == pytest.approx(d.mean())
    from scipy import stats

    half = stats.t.ppf(0.975, 7) * d.std(ddof=1) / math.sqrt(8)
    assert r["ci_high"] - r["mean_diff"] == pytest.approx(half)
    text = markdown(units)
    sec = text.split("## TDC: each method against itself without TDC")[1].split("## ")[0]
    row = next(ln for ln in sec.splitlines() if ln.startswith("| isfa | lambda0.1 | lambda0 | jitter |"))
    assert f"{d.mean():.5f} [{d.mean() - half:.5f}, {d.mean() + half:.5f}]" in row  # jitter to 5 decimals
    assert "## DP: each method against itself without DP" in text
    assert vs_level(units, "dp", "nodp").set_index(["level", "metric"]).loc[("eps8", "psnr"), "mean_diff"] == \
        pytest.approx(d.mean())
    assert vs_level(units, "tdc", "lambda9").empty  # no reference level: nothing to pair


def test_report_only_writes_the_answer_from_finished_cells_and_runs_nothing(grid_result, tmp_path):
    import dataclasses

    from bench.federation import run_grid

    grid, res, root, lines = grid_result
    before = sorted(p.name for p in (root / "work" / "runs").iterdir())
    bigger = dataclasses.replace(grid, fractions=(0.0, 0.25, 0.5))  # 0.25: never run
    rep = run_grid(bigger, config=root / "tiny.yaml", work=root / "work", out=tmp_path / "out",
                   factors=("unreliable", "dp"), progress=lambda _: None, report_only=True)
    assert sorted(p.name for p in (root / "work" / "runs").iterdir()) == before  # nothing ran
    assert set(rep["units"]["level"]) == set(res["units"]["level"])
    assert rep["units"].drop(columns=["wall_s"]).equals(res["units"].drop(columns=["wall_s"]))
    assert "**Partial grid: 2 of 7 runs not finished" in (tmp_path / "out" / "summary.md").read_text()
    with pytest.raises(FileNotFoundError, match="no finished cell"):
        run_grid(grid, config=root / "tiny.yaml", work=tmp_path / "empty", out=tmp_path / "o2",
                 factors=("unreliable",), progress=lambda _: None, report_only=True)


def test_mixed_factor_is_paired_against_the_clean_cell_and_reuses_an_equal_run(grid_result, tmp_path):
    """The ``mixed`` factor's cell with the same kinds as the unreliable factor's 0.5 cell is that run (nothing
    trains), and its 'mixed 0.5' harm rows are the 0.5 rows, paired against the unreliable factor's fraction 0."""
    import dataclasses

    from bench.federation import cells, run_grid, vs_clean
    from pftray.data.types import DEFAULT_UNRELIABLE_KINDS

    grid, res, root, lines = grid_result
    mixed = dataclasses.replace(grid, mixed_kinds=tuple(DEFAULT_UNRELIABLE_KINDS), mixed_methods=("fedavg",),
                                mixed_fraction=0.5)
    cs = [c for c in cells(mixed) if c.factor == "mixed"]
    assert [(c.level, c.method) for c in cs] == [("0.5", "fedavg")]
    over = dict(cs[0].overrides)
    assert over["data.unreliable_fraction"] == 0.5
    assert over["data.unreliable_kinds"] == list(DEFAULT_UNRELIABLE_KINDS)
    before = sorted(p.name for p in (root / "work" / "runs").iterdir())
    rep = run_grid(mixed, config=root / "tiny.yaml", work=root / "work", out=tmp_path / "out",
                   factors=("unreliable", "mixed"), progress=lambda _: None, report_only=True)
    assert sorted(p.name for p in (root / "work" / "runs").iterdir()) == before
    u = rep["units"]
    m = u[(u["factor"] == "mixed") & (u["method"] == "fedavg")].drop(columns=["factor"]).reset_index(drop=True)
    h = u[(u["factor"] == "unreliable") & (u["level"] == "0.5") & (u["method"] == "fedavg")]
    assert m.equals(h.drop(columns=["factor"]).reset_index(drop=True))
    vc = vs_clean(u).set_index(["method", "level", "clients", "metric"])
    a, b = vc.loc[("fedavg", "mixed 0.5", "reliable", "psnr")], vc.loc[("fedavg", "0.5", "reliable", "psnr")]
    assert a["n_pairs"] == b["n_pairs"] == 2 and a["mean_diff"] == pytest.approx(b["mean_diff"])
    clean = u[(u["factor"] == "unreliable") & (u["level"] == "0") & (u["method"] == "fedavg")].set_index("client_id")
    rel = h[h["unreliable"] == ""].set_index("client_id")
    assert a["mean_diff"] == pytest.approx((rel["psnr"] - clean.loc[rel.index, "psnr"]).mean())
    assert "| fedavg | mixed 0.5 | reliable | psnr |" in (tmp_path / "out" / "summary.md").read_text()


def test_run_names_ignore_the_kinds_only_without_unreliable_clients(tmp_path):
    from bench.federation import Cell
    from pftray.config import config_from_dict, dump_config

    config = tmp_path / "tiny.yaml"
    dump_config(config_from_dict(tiny_dict()), config)

    def name(fraction, kinds):
        over = (("data.unreliable_fraction", fraction), ("data.unreliable_kinds", list(kinds)))
        return Cell("unreliable", str(fraction), "fedavg", 0, over).run_name(config)

    assert name(0.0, ["wrong_identity"]) == name(0.0, ["noise", "offset"])  # inert kinds: one run
    assert name(0.5, ["wrong_identity"]) != name(0.5, ["noise", "offset"])
    assert name(0.5, ["wrong_identity"]) != name(0.0, ["wrong_identity"])


def test_reuse_units_takes_rows_of_the_same_runs_and_runs_only_the_rest(grid_result, tmp_path):
    """``--reuse-units``: a cell whose run (the same resolved config) has rows in an earlier answer is not run
    when its run directory is absent; the others run; a changed setting is a different run and is not reused."""
    import dataclasses

    import pandas as pd

    from bench.federation import run_grid

    grid, res, root, lines = grid_result
    prev = pd.read_parquet(root / "out" / "units.parquet")
    dp_only = prev[prev["factor"] == "dp"]
    work = tmp_path / "work"
    rep = run_grid(grid, config=root / "tiny.yaml", work=work, out=tmp_path / "out", factors=("dp",),
                   progress=lambda _: None, reuse_units=dp_only)
    assert not (work / "runs").exists() or not any((work / "runs").iterdir())  # nothing trained
    got = rep["units"].reset_index(drop=True)
    assert got.equals(dp_only.reset_index(drop=True))
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "**1 of 1 runs are reused rows of an earlier answer" in text
    # the dp rows are reused, the unreliable cells (absent from the reused rows) train afresh
    both = run_grid(grid, config=root / "tiny.yaml", work=work, out=tmp_path / "out2",
                    factors=("unreliable", "dp"), progress=lambda _: None, reuse_units=dp_only)
    assert len(list((work / "runs").iterdir())) == 4
    assert both["units"][both["units"]["factor"] == "dp"].reset_index(drop=True).equals(dp_only.reset_index(drop=True))
    # another noise level is another run: nothing of the earlier answer matches it
    other = dataclasses.replace(grid, epsilons=(4.0,))
    from bench.federation import cells

    names = {c.run_name(root / "tiny.yaml") for c in cells(other) if c.factor == "dp"}
    assert not names & set(dp_only["run"])

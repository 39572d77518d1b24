"""`pftray eval`, `pftray report` and `pftray compare` on four tiny runs (2 seeds x ISFA/FedAvg, 1 round)."""

from __future__ import annotations

import argparse
import json
import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from pftray.cli import InputError
from pftray.evaluation import add_compare_parser, add_eval_parser, add_report_parser
from pftray.evaluation.compare import method_of
from pftray.evaluation.video import probe_mp4


def _cli(argv):
    ap = argparse.ArgumentParser(prog="pftray")
    sub = ap.add_subparsers(dest="command", required=True)
    for add in (add_eval_parser, add_report_parser, add_compare_parser):
        add(sub)
    args = ap.parse_args([str(a) for a in argv])
    return args.fn(args)


def test_id_encoder_separates_unseen_public_clips(id_encoder_file):
    _, report = id_encoder_file
    held = report["heldout"]
    assert report["identities"] == 4 and held["accuracy"] == 1.0
    assert held["same"] > 0.9 and held["same"] - held["other"] > 0.5


def test_eval_writes_tables_samples_and_agrees_with_training_eval(compare_runs, id_encoder_file, capsys):
    run = compare_runs[("isfa", 0)]
    before = (run / "eval.parquet").read_bytes()
    assert _cli(["eval", run, "--id-encoder", id_encoder_file[0]]) == 0
    assert "eval of round 1" in capsys.readouterr().out
    assert (run / "eval.parquet").read_bytes() == before  # the training-time table is not clobbered
    df = pd.read_parquet(run / "eval" / "eval-round-1.parquet")
    assert len(df) == 2 * 1 * 3  # eval_clients x clips x {personalised, backbone, copy}
    assert sorted(df["model"].unique()) == ["backbone", "copy", "personalised"]
    # same DDIM seeds and settings as the training-time evaluation: the same numbers
    train = pd.read_parquet(run / "eval.parquet")
    key = ["client_id", "clip", "model"]
    merged = df.merge(train, on=key, suffixes=("", "_train"))
    assert len(merged) == 6
    np.testing.assert_allclose(merged["psnr"], merged["psnr_train"], rtol=1e-5)
    np.testing.assert_allclose(merged["ssim"], merged["ssim_train"], rtol=1e-4, atol=1e-6)
    # LPIPS offline: NaN with the reason; id_sim_synth computed with the given encoder
    if df["lpips"].isna().all():
        assert df["lpips_missing"].str.contains("AlexNet").all()
    assert df["id_sim_synth"].between(-1, 1).all()
    copy = df[df["model"] == "copy"]["id_sim_synth"]
    assert (copy > 0.5).all()  # the reference frame of the identity resembles its own clip
    summary = json.loads((run / "eval" / "summary-round-1.json").read_text())
    assert summary["server_round"] == 1 and summary["rows"] == 6
    assert summary["means"]["personalised"]["psnr"] == pytest.approx(
        df[df.model == "personalised"]["psnr"].mean()
    )
    fid = summary["set_metrics"]["personalised"]
    assert (fid["fid"] is None) == (fid["fid_missing"] is not None)
    info = probe_mp4(run / "samples" / "eval-round-1" / "client-0.mp4")
    assert (info["video_streams"], info["audio_streams"], info["frames"]) == (1, 1, 3)
    assert info["video_duration_s"] == pytest.approx(3 / 25)
    assert info["audio_duration_s"] == pytest.approx(3 / 25, abs=0.03)
    for name in ("client-0.png", "client-0.gif", "client-1.mp4"):
        assert (run / "samples" / "eval-round-1" / name).is_file()
    assert not list((run / "samples" / "eval-round-1").glob("*across-rounds*"))  # one checkpoint only


def test_eval_rejects_bad_input(compare_runs, tmp_path):
    run = compare_runs[("fedavg", 0)]
    with pytest.raises(InputError, match="no checkpoint"):
        _cli(["eval", run, "--round", 7])
    with pytest.raises(InputError, match="not a pftray run"):
        _cli(["eval", tmp_path])
    with pytest.raises(InputError, match="--id-encoder"):
        _cli(["eval", run, "--id-encoder", tmp_path / "nope.pt"])
    with pytest.raises(InputError, match="--frames"):
        _cli(["eval", run, "--frames", 0])


def test_report_is_self_contained(compare_runs):
    run = compare_runs[("isfa", 1)]
    assert _cli(["report", run]) == 0
    out = run / "report"
    for name in ("loss.png", "metrics.png", "isfa_weights.png", "client_spread.png"):
        assert (out / name).stat().st_size > 1000, name
    assert not (out / "epsilon.png").exists()  # no DP in this run
    page = (out / "index.html").read_text()
    srcs = re.findall(r"src='([^']*)'", page)
    assert len(srcs) >= 4 and all(s.startswith("data:image/") for s in srcs)
    assert "http://" not in page and "https://" not in page and "<link" not in page and "<script" not in page
    assert page.count("<table") >= 2 and "no finite epsilon" in page


def test_report_of_a_sweep_has_the_pareto_front(tmp_path):
    trials = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "status": ["done"] * 4,
            "config/privacy.noise_multiplier": [0.5, 1.0, 2.0, 0.0],
            "final/psnr": [20.0, 19.0, 15.0, 21.0],
            "epsilon": [8.0, 3.0, 4.0, math.inf],
        }
    )
    trials.to_parquet(tmp_path / "trials.parquet")
    assert _cli(["report", tmp_path]) == 0
    page = (tmp_path / "report" / "index.html").read_text()
    assert (tmp_path / "report" / "privacy_utility.png").is_file()
    assert "Pareto front" in page and "data:image/png;base64," in page
    front = page[page.index("<h2>Pareto front") :]
    front = front[: front.index("</table>")]
    ids = re.findall(r"<tr>\s*<td>(\w)</td>", front)
    assert sorted(ids) == ["a", "b", "d"]  # c is dominated by b (lower psnr, higher epsilon)


def test_compare_table_and_paired_tests(compare_runs, tmp_path, capsys):
    root = compare_runs[("isfa", 0)].parent
    out = tmp_path / "cmp" / "table.md"
    assert _cli(["compare", root, "--metric", "psnr", "--metric", "ssim", "--out", out]) == 0
    printed = capsys.readouterr().out
    assert "| isfa |" in printed and "| fedavg |" in printed
    table = pd.read_parquet(tmp_path / "cmp" / "table.parquet")
    tests = pd.read_csv(tmp_path / "cmp" / "table-tests.csv")
    units = pd.read_csv(tmp_path / "cmp" / "table-units.csv")
    assert len(units) == 2 * 2 * 2  # methods x seeds x eval clients
    assert (tmp_path / "cmp" / "table.md").read_text().startswith("| method | psnr | ssim |")
    # independent recomputation from the per-run evaluation tables
    vals = {}
    for (method, seed), run in compare_runs.items():
        ev = (
            pd.read_parquet(run / "eval" / "eval-round-1.parquet")
            if (run / "eval").exists()
            else pd.read_parquet(run / "eval.parquet")
        )
        pers = ev[ev["model"] == "personalised"].groupby("client_id")["psnr"].mean()
        for cid, v in pers.items():
            vals[(method, seed, cid)] = v
    isfa = np.array([vals[("isfa", s, c)] for s in (0, 1) for c in (0, 1)])
    fedavg = np.array([vals[("fedavg", s, c)] for s in (0, 1) for c in (0, 1)])
    row = table[(table.method == "isfa") & (table.metric == "psnr")].iloc[0]
    lo, hi = stats.t.interval(0.95, df=3, loc=isfa.mean(), scale=stats.sem(isfa))
    assert (row["mean"], row["ci_low"], row["ci_high"], row["n"]) == pytest.approx((isfa.mean(), lo, hi, 4))
    t = tests[(tests.metric == "psnr")].iloc[0]
    assert (t["method_a"], t["method_b"], t["n_pairs"]) == ("isfa", "fedavg", 4)
    assert t["mean_diff"] == pytest.approx((isfa - fedavg).mean(), abs=1e-9)
    if np.any(isfa != fedavg):
        assert t["wilcoxon_pvalue"] == pytest.approx(stats.wilcoxon(isfa - fedavg).pvalue)


def test_compare_rejects_duplicates_and_names_methods(compare_runs, tmp_path):
    import shutil

    run = compare_runs[("isfa", 0)]
    twin = shutil.copytree(run, tmp_path / "twin", ignore=shutil.ignore_patterns("checkpoints", "clients"))
    with pytest.raises(InputError, match="two runs of method 'isfa' with seed 0"):
        _cli(["compare", run, twin, "--out", tmp_path / "x"])
    with pytest.raises(InputError, match="no such directory"):
        _cli(["compare", tmp_path / "absent"])
    assert method_of({"fed": {"strategy": "privfedtalk"}}) == "isfa"
    assert method_of({"fed": {"strategy": "FedProx"}}) == "fedprox"

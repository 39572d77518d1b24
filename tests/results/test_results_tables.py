"""Append-only run tables (pftray.results.RunDir): one part file per round, the same tables as the old
rewrite-everything writer, resume semantics (replace_round, truncate), compaction, old single-file directories."""

from __future__ import annotations

import math
import os

import numpy as np
import pandas as pd
import pytest

from pftray.results import CLIENT_COLUMNS, ROUND_COLUMNS, RunDir, load_run, write_parquet


class LegacyTables:
    """The previous writer, verbatim: every append re-reads and rewrites the whole ``<name>.parquet``."""

    def __init__(self, path):
        self.path = path

    def table(self, name):
        p = self.path / f"{name}.parquet"
        return pd.read_parquet(p) if p.exists() else pd.DataFrame()

    def append(self, name, rows, *, replace_round=None):
        old = self.table(name)
        if replace_round is not None and len(old) and "server_round" in old:
            old = old[old["server_round"] < replace_round]
        new = pd.DataFrame(rows)
        df = new if old.empty else pd.concat([old, new], ignore_index=True)
        write_parquet(df, self.path / f"{name}.parquet")

    def truncate(self, after_round):
        for name in ("rounds", "clients", "eval"):
            df = self.table(name)
            if len(df) and "server_round" in df:
                write_parquet(df[df["server_round"] <= after_round], self.path / f"{name}.parquet")


def round_row(r: int, *, eval_round: bool) -> dict:
    row = {"server_round": r, "status": "ok" if r != 3 else "failed", "train_loss": 0.5 / r,
           "val_loss": math.nan if r == 3 else 0.4 / r, "epsilon": 0.1 * r, "bytes_up": 1000 * r, "bytes_down": 4000,
           "wall_s": 0.01 * r, "n_sampled": 2, "n_ok": 2 if r != 3 else 0, "n_failed": 0 if r != 3 else 2,
           "clipping_norm": 1.0}
    if r == 3:
        row["message"] = "0 successful clients < fed.min_clients 1"  # a column that only failed rounds have
    if eval_round:
        row.update({"psnr": 20.0 + r, "ssim": 0.5, "lip_sync": None})  # columns that only eval rounds have
    return row


def client_rows(r: int) -> list[dict]:
    rows = []
    for k in (0, 1):
        ok = r != 3
        rows.append({"server_round": r, "client_id": k, "num_examples": 3, "loss": 0.3 + k if ok else math.nan,
                     "val_loss": 0.2, "id_sim": 0.9, "temp_stab": 0.8, "score": math.nan, "weight": 0.5 if ok else 0.0,
                     "update_norm": 0.01, "status": "ok" if ok else "failed", "message": "" if ok else "boom",
                     "worker": f"cpu-{k}", "node_id": "n1", "gpu_ids": "", "fit_s": 0.1, "sample_epsilon": math.nan,
                     "view": "clear"})
    return rows


def eval_rows(r: int) -> list[dict]:
    return [{"server_round": r, "client_id": k, "clip": c, "model": m, "psnr": 20.0 + r + k, "ssim": 0.5,
             "lpips": math.nan, "lpips_missing": "AlexNet weights not found", "frames": 4}
            for k in (0, 1) for c in (0, 1) for m in ("personalised", "backbone")]


def write_round(tables, r: int) -> None:
    ev = r % 2 == 0
    tables.append("rounds", [round_row(r, eval_round=ev)], replace_round=r)
    tables.append("clients", client_rows(r), replace_round=r)
    if ev:
        tables.append("eval", eval_rows(r), replace_round=r)


def assert_same_tables(run: RunDir, legacy: LegacyTables) -> None:
    for name in ("rounds", "clients", "eval"):
        pd.testing.assert_frame_equal(run.table(name), legacy.table(name))
    got = load_run(run.path)
    for name in ("rounds", "clients", "eval"):
        pd.testing.assert_frame_equal(got[name], legacy.table(name))


def _run(tmp_path, name="run") -> RunDir:
    run = RunDir(tmp_path / name)
    run.create()
    (run.path / "config.yaml").write_text("experiment: {name: t}\n")
    return run


def test_append_replace_truncate_match_the_rewriting_writer_one_part_per_round(tmp_path):
    run, legacy_dir = _run(tmp_path), tmp_path / "legacy"
    legacy_dir.mkdir()
    legacy = LegacyTables(legacy_dir)
    for r in range(1, 7):
        write_round(run, r)
        write_round(legacy, r)
    assert set(ROUND_COLUMNS) <= set(run.table("rounds").columns)
    assert set(CLIENT_COLUMNS) <= set(run.table("clients").columns)
    parts = sorted(p.name for p in (run.path / "tables" / "rounds").iterdir())
    assert parts == [f"part-{r:05d}.parquet" for r in range(1, 7)]
    assert not (run.path / "rounds.parquet").exists()  # nothing rewrites a whole table while the run goes on
    assert_same_tables(run, legacy)

    # a later round's write leaves the earlier parts as they were (same file, not rewritten)
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run.path / "tables" / "clients").iterdir()}
    write_round(run, 7)
    write_round(legacy, 7)
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (run.path / "tables" / "clients").iterdir()}
    assert {k: after[k] for k in before} == before and len(after) == 7

    # a round re-run after a crash replaces its rows (and drops anything later), it is not duplicated
    for tables in (run, legacy):
        tables.append("rounds", [{**round_row(5, eval_round=False), "train_loss": 9.0}], replace_round=5)
    assert_same_tables(run, legacy)
    rounds = run.table("rounds")
    assert rounds["server_round"].tolist() == [1, 2, 3, 4, 5]
    assert rounds.loc[rounds.server_round == 5, "train_loss"].item() == 9.0

    # resuming from the round-3 checkpoint: every table is cut back to round 3, then the run goes on
    run.truncate(3)
    legacy.truncate(3)
    assert_same_tables(run, legacy)
    assert sorted(p.name for p in (run.path / "tables" / "eval").iterdir()) == ["part-00002.parquet"]
    for r in (4, 5):
        write_round(run, r)
        write_round(legacy, r)
    assert_same_tables(run, legacy)
    assert run.table("clients")["server_round"].tolist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]

    # the end of the run: single files again, the same tables, tables/ gone
    run.update_meta(status="done")
    assert not (run.path / "tables").exists()
    for name in ("rounds", "clients", "eval"):
        pd.testing.assert_frame_equal(pd.read_parquet(run.path / f"{name}.parquet"), legacy.table(name))
    assert_same_tables(run, legacy)


def test_a_run_directory_with_single_file_tables_reads_resumes_and_compacts(tmp_path):
    run = _run(tmp_path, "old")
    legacy = LegacyTables(run.path)  # an old run directory: written by the previous writer, in place
    for r in range(1, 5):
        write_round(legacy, r)
    expected = {n: legacy.table(n) for n in ("rounds", "clients", "eval")}
    got = load_run(run.path)
    for name, df in expected.items():
        pd.testing.assert_frame_equal(got[name], df)

    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = LegacyTables(ref_dir)
    for r in range(1, 5):
        write_round(ref, r)
    # resumed from its round-2 checkpoint: the single files are cut back, new rounds go to parts
    for tables in (run, ref):
        tables.truncate(2)
        for r in (3, 4, 5):
            write_round(tables, r)
    assert (run.path / "rounds.parquet").exists()
    assert sorted(p.name for p in (run.path / "tables" / "rounds").iterdir()) == [
        "part-00003.parquet", "part-00004.parquet", "part-00005.parquet"]
    assert_same_tables(run, ref)
    # a round replaced while the single file still holds it (resume without truncate): the file loses it
    run2 = _run(tmp_path, "old2")
    ref2_dir = tmp_path / "ref2"
    ref2_dir.mkdir()
    ref2 = LegacyTables(ref2_dir)
    for r in range(1, 4):
        write_round(LegacyTables(run2.path), r)
        write_round(ref2, r)
    for tables in (run2, ref2):
        write_round(tables, 3)
    assert_same_tables(run2, ref2)
    assert pd.read_parquet(run2.path / "rounds.parquet")["server_round"].tolist() == [1, 2]

    run.compact()
    assert not (run.path / "tables").exists()
    pd.testing.assert_frame_equal(pd.read_parquet(run.path / "clients.parquet"), ref.table("clients"))


def test_an_interrupted_compaction_is_read_correctly_and_finished(tmp_path, monkeypatch):
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    ref = LegacyTables(ref_dir)
    for r in range(1, 4):
        write_round(ref, r)

    # crash right after the parts were moved aside, before the merged file was written
    run = _run(tmp_path, "a")
    for r in range(1, 4):
        write_round(run, r)
    os.replace(run.path / "tables" / "rounds", run.path / "tables" / ".rounds.compacting-00ff")
    assert_same_tables(RunDir(run.path), ref)
    RunDir(run.path).compact()  # the next writer finishes it
    assert not (run.path / "tables").exists()
    assert_same_tables(RunDir(run.path), ref)

    # crash after the merged files were written, before the moved-aside parts were removed
    run = _run(tmp_path, "b")
    for r in range(1, 4):
        write_round(run, r)
    with monkeypatch.context() as m:
        m.setattr("pftray.results.shutil.rmtree", lambda path: None)
        run.compact()
    pending = sorted(p.name for p in (run.path / "tables").iterdir())
    assert len(pending) == 3 and all(".compacting-" in p for p in pending)
    assert_same_tables(RunDir(run.path), ref)  # the merged files hold them: not read twice
    fresh = RunDir(run.path)
    write_round(fresh, 4)  # the next writer removes them and goes on
    write_round(ref, 4)
    assert sorted(p.name for p in (run.path / "tables").iterdir()) == ["clients", "eval", "rounds"]
    assert_same_tables(fresh, ref)
    fresh.update_meta(status="done")
    assert not (run.path / "tables").exists()
    assert_same_tables(fresh, ref)


def test_append_needs_server_round_and_plain_append_extends_a_round(tmp_path):
    run = _run(tmp_path)
    with pytest.raises(ValueError, match="server_round"):
        run.append("eval", [{"psnr": 1.0}])
    run.append("eval", [{"server_round": 2, "clip": 0}])
    run.append("eval", [{"server_round": 2, "clip": 1}, {"server_round": 3, "clip": 0}])
    df = run.table("eval")
    assert df[["server_round", "clip"]].to_numpy().tolist() == [[2, 0], [2, 1], [3, 0]]
    assert np.array_equal(run.table("rounds").columns, [])  # a table nobody wrote is empty

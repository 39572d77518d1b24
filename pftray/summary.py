"""The end-of-run summary printed by ``pftray run``."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from pftray.results import load_run

#: the columns of the held-out table, when the evaluation has them (the dlib face metrics only on real data)
SUMMARY_METRICS = (
    "psnr", "ssim", "mouth_psnr", "shift_psnr", "lip_sync", "jitter", "csim", "lmd_face", "lmd_mouth", "lip_sync_lmk",
)  # fmt: skip


def eval_table(ev: pd.DataFrame, server_round: int | None = None) -> pd.DataFrame:
    """Mean of each metric per model (copy / backbone / personalised) at one evaluation round (the last)."""
    if ev.empty:
        return pd.DataFrame()
    r = ev["server_round"].max() if server_round is None else server_round
    cols = [c for c in SUMMARY_METRICS if c in ev]
    return ev[ev["server_round"] == r].groupby("model")[cols].mean()


def direction_line(metrics: list[str]) -> str:
    """Which of the table's metrics are better when lower (the others: higher)."""
    from pftray.evaluation.compare import metric_better

    lower = [m for m in metrics if metric_better(m) == "lower"]
    return "higher is better" + (f", except lower is better for {', '.join(lower)}" if lower else "")


def unreliable_line(cfg: dict[str, Any]) -> str:
    """Which clients have corrupted training data (ground truth for analysis; the server never sees it)."""
    from pftray.evaluation.ground_truth import describe, unreliable_clients

    try:
        return describe(unreliable_clients(cfg), (cfg.get("data") or {}).get("num_clients"))
    except Exception:  # noqa: BLE001 - the summary of an odd run still prints
        return ""


def print_run_summary(path: str | Path, summary: dict[str, Any]) -> None:
    run = load_run(path)
    rounds = run["rounds"]
    print()
    print(f"run directory : {path}")
    print(f"status        : {summary.get('status')}  rounds {summary.get('rounds')}  "
          f"wall {summary.get('wall_s', math.nan):.0f}s")
    if len(rounds):
        first, last = rounds.iloc[0], rounds.iloc[-1]
        print(f"train loss    : {first['train_loss']:.4f} (round 1) -> {last['train_loss']:.4f} "
              f"(round {int(last['server_round'])});  val loss {first['val_loss']:.4f} -> {last['val_loss']:.4f}")
        print(f"clients       : {int(rounds['n_ok'].sum())} ok / {int(rounds['n_failed'].sum())} failed updates")
        gt = unreliable_line(run["config"])
        if gt:
            print(f"ground truth  : {gt}")
        if "epsilon" in rounds and rounds["epsilon"].notna().any():
            print(f"privacy       : epsilon {rounds['epsilon'].iloc[-1]:.3f} "
                  f"(delta {run['config']['privacy']['target_delta']}, client-level)")
    table = eval_table(run["eval"])
    if not table.empty:
        local = ", local = local-only (each client alone, same steps)" if "local" in table.index else ""
        print("held-out clips (mean over evaluated clients): copy = reference frame unchanged, "
              f"backbone = before personalisation, personalised = after federation{local}")
        with pd.option_context("display.float_format", "{:.3f}".format):
            print(table.to_string())
        print(direction_line(list(table.columns)))
    print(f"tables        : {Path(path) / 'rounds.parquet'}, clients.parquet, eval.parquet "
          f"(pftray.results.load_run)")
    print(f"samples       : {Path(path) / 'samples'}")

"""Can ISFA's reliability signals see the unreliable clients? The AUC of each signal against the ground truth.

For a run of a synthetic federation (or prepared shards carrying labels), every client report of
``clients.parquet`` carries the on-device scalars ``id_sim`` and ``temp_stab``; ISFA's score is
``s = alpha * id_sim + (1 - alpha) * temp_stab`` (:func:`pftray.fed.strategy.isfa_scores`, recomputed here from the
scalars with the run's ``fed.isfa_alpha``, so runs of any strategy can be scored; ISFA's own ``score`` column
agrees where present).

For each corruption kind, the AUC is ``P[signal(reliable report) > signal(report of a client of that kind)]``
(+ 1/2 for ties; Mann-Whitney, :func:`pftray.privacy.audit_stats.roc_auc`), over the ``status == "ok"`` reports of
the chosen rounds. 1 = the signal ranks every reliable report above that kind, 0.5 = it cannot see the kind, below
0.5 = it prefers the corrupted clients. Reports within a client are not independent, so the AUC is also given
over per-client means (``unit="client"``), which is the honest one when a run has few clients. The labels are
ground truth for analysis only; nothing here is ever given to the server, and no threshold is tuned to them.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SIGNALS = ("score", "id_sim", "temp_stab")


def signal_table(clients: pd.DataFrame, labels: dict[int, str], *, alpha: float,
                 rounds: tuple[int, int] | None = None) -> pd.DataFrame:
    """The ok client reports of ``clients`` (optionally rounds ``lo..hi``) with the recomputed ISFA ``score`` and
    a ``kind`` column: the corruption kind of an unreliable client, ``""`` for a reliable one."""
    from pftray.fed.strategy import isfa_scores

    df = clients[clients["status"] == "ok"].copy()
    if rounds is not None:
        df = df[(df["server_round"] >= rounds[0]) & (df["server_round"] <= rounds[1])]
    df = df[np.isfinite(df["id_sim"].astype(float)) & np.isfinite(df["temp_stab"].astype(float))]
    df["score"] = isfa_scores(df["id_sim"].astype(float), df["temp_stab"].astype(float), alpha=alpha) if len(df) else []
    df["kind"] = [labels.get(int(c), "") for c in df["client_id"]]
    return df


def auc_by_kind(table: pd.DataFrame, *, unit: str = "report") -> pd.DataFrame:
    """One row per (corruption kind, signal): ``auc``, ``n_reliable``, ``n_unreliable`` (units: reports, or
    per-client means with ``unit="client"``). A kind with no reliable or no unreliable unit gets ``auc`` NaN."""
    from pftray.privacy.audit_stats import roc_auc

    if unit not in ("report", "client"):
        raise ValueError(f"auc_by_kind: unit must be 'report' or 'client', got {unit!r}")
    t = table
    if unit == "client":
        t = table.groupby("client_id", as_index=False).agg({**{s: "mean" for s in SIGNALS}, "kind": "first"})
    rows: list[dict[str, Any]] = []
    reliable = t[t["kind"] == ""]
    for kind in sorted(k for k in set(t["kind"]) if k):
        bad = t[t["kind"] == kind]
        for sig in SIGNALS:
            ok = len(reliable) > 0 and len(bad) > 0
            auc = roc_auc(reliable[sig].to_numpy(float), bad[sig].to_numpy(float)) if ok else math.nan
            rows.append({"kind": kind, "signal": sig, "unit": unit, "auc": auc, "n_reliable": len(reliable),
                         "n_unreliable": len(bad)})
    return pd.DataFrame(rows, columns=["kind", "signal", "unit", "auc", "n_reliable", "n_unreliable"])


def run_auc(run_dir: str | Path, *, unit: str = "report", rounds: tuple[int, int] | None = None) -> pd.DataFrame:
    """:func:`auc_by_kind` of a run directory, with its labels (:mod:`pftray.evaluation.ground_truth`) and alpha."""
    from pftray.config import config_from_dict
    from pftray.evaluation.ground_truth import unreliable_clients
    from pftray.results import load_run

    res = load_run(run_dir)
    cfg = config_from_dict(res["config"])
    table = signal_table(res["clients"], unreliable_clients(cfg), alpha=cfg.fed.isfa_alpha, rounds=rounds)
    return auc_by_kind(table, unit=unit)

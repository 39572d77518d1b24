"""Sweep analysis with pandas: one row per trial, Pareto fronts, plots.

``load_sweep`` reads the experiment directory that ``pftray sweep`` writes (Tune's trial directories, each with
``params.json``, ``result.json`` — one JSON line per reported round — ``error.txt`` when the trial failed, and
the trial's pftray run directory ``run/``). It does not need Ray and works on a sweep that is still running or
was interrupted.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pftray.sweep_layout import DONE_MARKER, METRIC_MODES, RUN_SUBDIR


def _read_results(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))  # Tune writes NaN/Infinity, which json.loads accepts
            except json.JSONDecodeError:
                break  # a line cut by a crash: keep what came before it
    return rows


def _error_text(trial_dir: Path) -> str:
    p = trial_dir / "error.txt"
    if not p.exists():
        return ""
    lines = [ln for ln in p.read_text(errors="replace").splitlines() if ln.strip()]
    # the last line of a Python traceback is "ExcType: message"; Ray prefixes causes with several headers
    return lines[-1].strip() if lines else "error (empty error.txt)"


def trial_dirs(sweep_dir: str | Path) -> list[Path]:
    """Tune trial directories of an experiment (folders with a ``params.json``), sorted by name."""
    d = Path(sweep_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such sweep directory")
    return sorted(p for p in d.iterdir() if p.is_dir() and (p / "params.json").exists())


def load_sweep(sweep_dir: str | Path, *, finished: bool | None = None) -> pd.DataFrame:
    """One row per trial of the sweep in ``sweep_dir`` (the experiment dir ``<out>/<name>``).

    Columns: ``trial_id``, ``trial_name``, ``status`` (``done`` | ``budget_exhausted`` | ``error`` | ``stopped``
    — ended early by the scheduler — | ``running`` | ``pending``), ``error`` (last line of Tune's ``error.txt``, else ``""``),
    ``config/<key>`` for each sampled key, ``final/<metric>`` (last reported round), ``best/<metric>`` (best over
    rounds in the metric's direction, :data:`pftray.sweep_layout.METRIC_MODES`), ``epsilon`` (final, ``inf`` without DP),
    ``server_round`` (rounds reported), ``wall_s`` (trial time), ``run_dir``.

    ``finished`` says whether the sweep has ended (default: ``sweep_done.json`` exists); a trial whose run is still
    marked running in a finished sweep was stopped by the scheduler.
    """
    d = Path(sweep_dir)
    dirs = trial_dirs(d)
    if finished is None:
        finished = (d / DONE_MARKER).exists()
    rows = []
    for td in dirs:
        params = json.loads((td / "params.json").read_text())
        results = _read_results(td / "result.json")
        run = td / RUN_SUBDIR
        meta_p = run / "meta.json"
        meta = json.loads(meta_p.read_text()) if meta_p.exists() else {}
        error = _error_text(td)
        if error:
            status = "error"
        else:
            status = str(meta.get("status", "running" if results else "pending"))
            if status == "running" and finished:
                status = "stopped"
        trial_id = str(results[-1].get("trial_id")) if results else str(meta.get("trial_id", td.name))
        row: dict[str, Any] = {"trial_id": trial_id, "trial_name": td.name, "status": status, "error": error}
        for k, v in params.items():
            row[f"config/{k}"] = v
        last = results[-1] if results else {}
        for m, mode in METRIC_MODES.items():
            vals = [
                float(r[m]) for r in results if isinstance(r.get(m), (int, float)) and not math.isnan(r[m])
            ]
            row[f"final/{m}"] = float(last[m]) if isinstance(last.get(m), (int, float)) else math.nan
            if m != "epsilon":  # epsilon only grows with rounds: its "best" would be round 1's
                row[f"best/{m}"] = (max(vals) if mode == "max" else min(vals)) if vals else math.nan
        row["epsilon"] = row["final/epsilon"]
        row["server_round"] = int(last.get("server_round", 0)) if last else 0
        row["wall_s"] = float(
            meta.get("wall_s", last.get("time_total_s", math.nan)) if meta or last else math.nan
        )
        row["run_dir"] = str(run) if run.exists() else ""
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(
            columns=[
                "trial_id",
                "trial_name",
                "status",
                "error",
                "epsilon",
                "server_round",
                "wall_s",
                "run_dir",
            ]
        )
    return df


def pareto_front(
    df: pd.DataFrame, *, maximize: Sequence[str] = (), minimize: Sequence[str] = ()
) -> pd.DataFrame:
    """Rows of ``df`` that no other row Pareto-dominates over the given columns.

    Row ``a`` dominates ``b`` when ``a`` is at least as good in every objective and strictly better in one
    (``maximize`` columns: larger is better; ``minimize``: smaller). Rows with NaN in an objective are left out;
    ``inf`` is an ordinary value (e.g. ``epsilon = inf`` without DP). Duplicated points are all kept. The result
    keeps the index and is sorted by the first objective, best first.
    """
    cols = list(maximize) + list(minimize)
    if not cols:
        raise ValueError("pareto_front: give at least one column in maximize= or minimize=")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ValueError(
            f"pareto_front: column {missing[0]!r} not in the frame; columns are {list(df.columns)}"
        )
    if set(maximize) & set(minimize):
        raise ValueError(
            f"pareto_front: {sorted(set(maximize) & set(minimize))} in both maximize and minimize"
        )
    sub = df[cols].apply(pd.to_numeric, errors="coerce")
    ok = ~sub.isna().any(axis=1)
    # turn every objective into "smaller is better"
    x = np.column_stack(
        [-sub[c].to_numpy(float) for c in maximize] + [sub[c].to_numpy(float) for c in minimize]
    )
    x = x[ok.to_numpy()]
    idx = df.index[ok.to_numpy()]
    keep = np.ones(len(x), dtype=bool)
    for i in range(len(x)):
        le = np.all(x <= x[i], axis=1)
        lt = np.any(x < x[i], axis=1)
        keep[i] = not np.any(le & lt)
    front = df.loc[idx[keep]]
    first = cols[0]
    return front.sort_values(first, ascending=first not in maximize, kind="stable")


def plot_sweep(
    df: pd.DataFrame,
    out_dir: str | Path,
    *,
    utility: str = "final/psnr",
    utility_mode: str | None = None,
    privacy: str = "epsilon",
) -> list[Path]:
    """Write PNGs into ``out_dir``; returns their paths.

    * ``privacy_utility.png``: ``utility`` against ``privacy`` for every finished trial, the Pareto front
      (utility in its direction, privacy minimised) drawn as a step line; trials without DP (``epsilon = inf``)
      are drawn at the right edge with an open marker and labelled "no DP".
    * ``<utility>_vs_<key>.png`` for each swept ``config/<key>`` column (categorical keys as strip plots).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if utility not in df.columns:
        raise ValueError(f"plot_sweep: utility column {utility!r} not in the frame")
    metric = utility.split("/")[-1]
    mode = utility_mode or METRIC_MODES.get(metric, "max")
    if mode not in ("min", "max"):
        raise ValueError(f"plot_sweep: utility_mode {mode!r}; choose 'min' or 'max'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ok = df[df.get("status", pd.Series("done", index=df.index)) != "error"]
    ok = ok[pd.to_numeric(ok[utility], errors="coerce").notna()]
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4.2))
    eps = pd.to_numeric(ok[privacy], errors="coerce") if privacy in ok else pd.Series(np.nan, index=ok.index)
    u = pd.to_numeric(ok[utility], errors="coerce")
    finite = np.isfinite(eps)
    ax.scatter(eps[finite], u[finite], c="tab:blue", label="trials", zorder=2)
    if (~finite).any():
        edge = (eps[finite].max() * 1.15) if finite.any() else 1.0
        ax.scatter(
            np.full((~finite).sum(), edge),
            u[~finite],
            facecolors="none",
            edgecolors="tab:red",
            label="no DP (epsilon = inf)",
            zorder=2,
        )
    if finite.any():
        front_in = ok[finite].assign(_u=u[finite], _e=eps[finite])
        kw = {"maximize": ["_u"], "minimize": ["_e"]} if mode == "max" else {"minimize": ["_u", "_e"]}
        front = pareto_front(front_in, **kw).sort_values("_e")
        ax.step(
            front["_e"], front["_u"], where="post", c="tab:orange", lw=1.5, label="Pareto front", zorder=1
        )
        ax.scatter(front["_e"], front["_u"], c="tab:orange", zorder=3)
    ax.set_xlabel(f"{privacy} (lower = more private)")
    ax.set_ylabel(f"{utility} ({'higher' if mode == 'max' else 'lower'} is better)")
    ax.set_title("privacy-utility trade-off")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out / "privacy_utility.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    paths.append(p)

    for col in [c for c in df.columns if c.startswith("config/")]:
        key = col.split("/", 1)[1]
        fig, ax = plt.subplots(figsize=(5, 3.6))
        vals = ok[col]
        numeric = pd.to_numeric(vals, errors="coerce")
        if numeric.notna().all() and vals.map(lambda v: not isinstance(v, bool)).all() and len(vals):
            ax.scatter(numeric, u)
            if numeric.gt(0).all() and numeric.max() / max(numeric.min(), 1e-300) > 20:
                ax.set_xscale("log")
        else:
            cats = sorted({str(v) for v in vals})
            pos = {c: i for i, c in enumerate(cats)}
            jitter = np.random.default_rng(0).uniform(-0.08, 0.08, len(vals))
            ax.scatter([pos[str(v)] + j for v, j in zip(vals, jitter)], u)
            ax.set_xticks(range(len(cats)), cats)
        ax.set_xlabel(key)
        ax.set_ylabel(utility)
        fig.tight_layout()
        p = out / f"{metric}_vs_{key.replace('.', '_')}.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        paths.append(p)
    return paths

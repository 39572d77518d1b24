"""``pftray report RUN_DIR|SWEEP_DIR``: PNG plots and one self-contained HTML page.

For a run directory (``config.yaml`` + tables, see :mod:`pftray.results`) it plots, when the data is there:

* ``loss.png``            train / validation loss per round (``rounds.parquet``),
* ``metrics.png``         personalised-evaluation metrics per round, one line per model (``eval.parquet``),
* ``epsilon.png``         the privacy ledger's epsilon per round (runs with DP),
* ``isfa_weights.png``    each client's aggregation weight over rounds (``clients.parquet`` ``weight``),
* ``client_spread.png``   per-client spread of the latest evaluation (``eval/eval-round-N.parquet`` from
  ``pftray eval``, else the last round of ``eval.parquet``), one point per client, per model.

For a sweep directory (``trials.parquet`` or Tune trial folders) it adds the trial table and the
privacy-utility Pareto front from :mod:`pftray.analysis` (skipped with a message when that module is absent).

Everything lands in ``DIR/report/``; ``index.html`` embeds every image as base64 and every table as HTML, so
the page has no external references and can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pftray.errors import InputError
from pftray.results import atomic_write_text

REPORT_SUBDIR = "report"
ROUND_METRICS = ("psnr", "ssim", "mouth_psnr", "lip_sync", "jitter", "lpips", "id_sim_synth")
SPREAD_METRICS = ("psnr", "ssim", "mouth_psnr", "lip_sync", "lpips", "id_sim_synth")


@dataclass
class Report:
    """What a report is made of, in page order."""

    title: str
    figures: list[tuple[str, Path]] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    samples: list[tuple[str, Path]] = field(default_factory=list)
    preformatted: list[tuple[str, str]] = field(default_factory=list)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(df[col], errors="coerce") if col in df else pd.Series(np.nan, index=df.index)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=100)
    _plt().close(fig)
    tmp.replace(path)
    return path


def plot_loss(rounds: pd.DataFrame, path: Path) -> Path | None:
    """Train and validation loss per round; None when no finite loss exists."""
    cols = [c for c in ("train_loss", "val_loss") if _numeric(rounds, c).notna().any()]
    if rounds.empty or not cols:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for c in cols:
        ax.plot(rounds["server_round"], _numeric(rounds, c), marker="o", label=c.replace("_", " "))
    ax.set_xlabel("server round")
    ax.set_ylabel("loss")
    ax.legend()
    ax.set_title("training loss")
    return _save(fig, path)


def plot_round_metrics(evals: pd.DataFrame, path: Path) -> Path | None:
    """Mean of each evaluation metric per round and model; None without evaluation rows."""
    if evals.empty or "server_round" not in evals:
        return None
    metrics = [m for m in ROUND_METRICS if _numeric(evals, m).notna().any()]
    if not metrics:
        return None
    plt = _plt()
    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        means = (
            evals.assign(_v=_numeric(evals, m)).groupby(["model", "server_round"])["_v"].mean().reset_index()
        )
        for model, g in means.groupby("model"):
            ax.plot(g["server_round"], g["_v"], marker="o", label=str(model))
        ax.set_title(m)
        ax.set_xlabel("server round")
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8)
    return _save(fig, path)


def plot_epsilon(rounds: pd.DataFrame, path: Path) -> Path | None:
    """Cumulative epsilon per round; None for runs without DP (no finite epsilon)."""
    eps = _numeric(rounds, "epsilon")
    ok = np.isfinite(eps.to_numpy(dtype=float))
    if not ok.any():
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4))
    ax.plot(rounds["server_round"][ok], eps[ok], marker="o", c="tab:red")
    ax.set_xlabel("server round")
    ax.set_ylabel("epsilon")
    ax.set_title("privacy spent (client-level epsilon)")
    return _save(fig, path)


def plot_client_weights(clients: pd.DataFrame, path: Path) -> Path | None:
    """Aggregation weight of each client over the rounds it took part in; None without weights."""
    w = _numeric(clients, "weight")
    if clients.empty or not w.notna().any():
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    df = clients.assign(_w=w).dropna(subset=["_w"])
    for cid, g in df.groupby("client_id"):
        ax.plot(g["server_round"], g["_w"], marker="o", lw=1, label=f"client {cid}")
    ax.set_xlabel("server round")
    ax.set_ylabel("aggregation weight")
    ax.set_title("aggregation weights per client (ISFA: n_k exp(gamma s_k), normalised)")
    if df["client_id"].nunique() <= 12:
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def per_client(evals: pd.DataFrame) -> pd.DataFrame:
    """Mean over clips for each (model, client_id) of the numeric metric columns."""
    metrics = [m for m in SPREAD_METRICS if m in evals]
    df = evals[["model", "client_id"]].copy()
    for m in metrics:
        df[m] = _numeric(evals, m)
    return df.groupby(["model", "client_id"], as_index=False)[metrics].mean()


def plot_client_spread(evals: pd.DataFrame, path: Path, *, title: str) -> Path | None:
    """One panel per metric: each client's mean as a point, per model (with the mean as a bar)."""
    if evals.empty:
        return None
    pc = per_client(evals)
    metrics = [m for m in SPREAD_METRICS if m in pc and pc[m].notna().any()]
    if not metrics:
        return None
    plt = _plt()
    models = [m for m in ("personalised", "backbone", "copy") if m in set(pc["model"])]
    models += sorted(set(pc["model"]) - set(models))
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.4), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        for i, model in enumerate(models):
            v = pc.loc[pc["model"] == model, m].dropna().to_numpy()
            if v.size:
                ax.scatter(i + rng.uniform(-0.12, 0.12, v.size), v, s=14, alpha=0.8)
                ax.hlines(v.mean(), i - 0.25, i + 0.25, colors="k")
        ax.set_xticks(range(len(models)), models, rotation=20)
        ax.set_title(m)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def latest_eval(run_dir: Path) -> tuple[pd.DataFrame, str]:
    """The latest evaluation table and where it came from: ``pftray eval`` output, else training-time eval."""
    from pftray.evaluation.run_eval import latest_eval_file

    p = latest_eval_file(run_dir)
    if p is not None:
        return pd.read_parquet(p), f"{p.relative_to(run_dir)}"
    ev = pd.read_parquet(run_dir / "eval.parquet") if (run_dir / "eval.parquet").exists() else pd.DataFrame()
    if ev.empty or "server_round" not in ev:
        return pd.DataFrame(), ""
    r = int(ev["server_round"].max())
    return ev[ev["server_round"] == r].reset_index(drop=True), f"eval.parquet, round {r}"


def run_report(run_dir: Path, out: Path) -> Report:
    """Figures and tables of one run directory."""
    from pftray.results import load_run

    run = load_run(run_dir)
    rep = Report(title=f"pftray run {run_dir.name}")
    meta = run["meta"]
    rep.preformatted.append(("meta.json", json.dumps(meta, indent=2, default=str)))
    cfg = run["config"]
    fed = cfg.get("fed", {})
    rep.notes.append(
        f"strategy {fed.get('strategy')}, rounds {fed.get('rounds')}, clients "
        f"{cfg.get('data', {}).get('num_clients')}, seed {cfg.get('experiment', {}).get('seed')}, "
        f"status {meta.get('status', '?')}"
    )
    rounds, clients, evals = run["rounds"], run["clients"], run["eval"]
    plots = [
        ("Loss per round", plot_loss(rounds, out / "loss.png"), "no finite losses in rounds.parquet"),
        (
            "Evaluation metrics per round (training-time eval.parquet)",
            plot_round_metrics(evals, out / "metrics.png"),
            "no rows in eval.parquet",
        ),
        (
            "Privacy: epsilon per round",
            plot_epsilon(rounds, out / "epsilon.png"),
            "no finite epsilon (run without DP)",
        ),
        (
            "Aggregation weights per client",
            plot_client_weights(clients, out / "isfa_weights.png"),
            "no weights in clients.parquet",
        ),
    ]
    latest, source = latest_eval(run_dir)
    plots.append(
        (
            f"Per-client spread ({source})" if source else "Per-client spread",
            plot_client_spread(latest, out / "client_spread.png", title=source),
            "no evaluation rows",
        )
    )
    for title, path, why in plots:
        if path is None:
            rep.notes.append(f"{title}: skipped ({why})")
        else:
            rep.figures.append((title, path))
    if not rounds.empty:
        cols = [
            c
            for c in (
                "server_round",
                "status",
                "train_loss",
                "val_loss",
                "epsilon",
                "n_ok",
                "n_failed",
                "psnr",
                "ssim",
                "lip_sync",
                "wall_s",
            )
            if c in rounds
        ]
        rep.tables.append(("Rounds", rounds[cols]))
    if not latest.empty:
        pc = per_client(latest)
        summary = pc.drop(columns="client_id").groupby("model").agg(["mean", "std", "count"])
        summary.columns = [f"{a} {b}" for a, b in summary.columns]
        rep.tables.append((f"Latest evaluation per model ({source})", summary.reset_index()))
        reasons = [c for c in latest.columns if c.endswith("_missing")]
        for c in reasons:
            vals = sorted({str(v) for v in latest[c].dropna() if str(v)})
            if vals:
                rep.notes.append(f"missing {c.removesuffix('_missing')}: {vals[0]}")
    sample_dirs = sorted((run_dir / "samples").glob("eval-round-*"), key=lambda p: int(p.name.split("-")[-1]))
    if sample_dirs:
        for p in sorted(sample_dirs[-1].iterdir()):
            if p.suffix in (".png", ".gif"):
                rep.samples.append((f"{sample_dirs[-1].name}/{p.name}", p))
    else:
        for p in sorted((run_dir / "samples").glob("*.png")):
            rep.samples.append((p.name, p))
    return rep


def is_sweep_dir(d: Path) -> bool:
    """A sweep experiment folder: ``trials.parquet`` or Tune trial folders holding ``params.json``."""
    return (d / "trials.parquet").exists() or any(
        p.is_dir() and (p / "params.json").exists() for p in d.iterdir()
    )


def sweep_report(sweep_dir: Path, out: Path) -> Report:
    """Trial table and privacy-utility Pareto front of a sweep (needs :mod:`pftray.analysis`)."""
    rep = Report(title=f"pftray sweep {sweep_dir.name}")
    try:
        from pftray.analysis import load_sweep, pareto_front, plot_sweep
    except ImportError as exc:
        rep.notes.append(f"sweep analysis skipped: pftray.analysis is not available ({exc})")
        return rep
    df = (
        pd.read_parquet(sweep_dir / "trials.parquet")
        if (sweep_dir / "trials.parquet").exists()
        else load_sweep(sweep_dir)
    )
    rep.tables.append(("Trials", df))
    utility = next(
        (
            u
            for u in ("final/psnr", "best/psnr", "final/ssim")
            if u in df and pd.to_numeric(df[u], errors="coerce").notna().any()
        ),
        None,
    )
    if utility is None:
        rep.notes.append("privacy-utility front skipped: no trial reported psnr or ssim yet")
        return rep
    for p in plot_sweep(df, out, utility=utility):
        rep.figures.append(
            (
                "Privacy-utility trade-off and Pareto front"
                if p.name == "privacy_utility.png"
                else p.stem.replace("_", " "),
                p,
            )
        )
    if "epsilon" in df:
        front = pareto_front(
            df.assign(
                _u=pd.to_numeric(df[utility], errors="coerce"),
                _e=pd.to_numeric(df["epsilon"], errors="coerce"),
            ),
            maximize=["_u"],
            minimize=["_e"],
        ).drop(columns=["_u", "_e"])
        rep.tables.append((f"Pareto front ({utility} up, epsilon down)", front))
    return rep


def _data_uri(path: Path) -> str:
    mime = {".png": "image/png", ".gif": "image/gif"}[path.suffix.lower()]
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"


def render_html(rep: Report) -> str:
    """The report as one HTML page with images inline (``data:`` URIs) and no external references."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        "<html><head><meta charset='utf-8'>",
        f"<title>{e(rep.title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}img{max-width:100%}"
        "pre{background:#f4f4f4;padding:8px;font-size:11px;overflow:auto}</style>",
        "</head><body>",
        f"<h1>{e(rep.title)}</h1>",
    ]
    if rep.notes:
        parts.append("<ul>" + "".join(f"<li>{e(n)}</li>" for n in rep.notes) + "</ul>")
    for title, path in rep.figures:
        parts.append(f"<h2>{e(title)}</h2><img alt='{e(path.name)}' src='{_data_uri(path)}'>")
    for title, df in rep.tables:
        parts.append(f"<h2>{e(title)}</h2>")
        parts.append(df.to_html(index=False, float_format=lambda v: f"{v:.4g}", na_rep="n/a", border=0))
    if rep.samples:
        parts.append("<h2>Samples: ground truth | backbone | personalised</h2>")
        for name, path in rep.samples:
            parts.append(
                f"<figure><img alt='{e(name)}' src='{_data_uri(path)}'><figcaption>{e(name)}"
                "</figcaption></figure>"
            )
    for title, text in rep.preformatted:
        parts.append(f"<details><summary>{e(title)}</summary><pre>{e(text)}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def make_report(path: str | Path) -> Path:
    """Write ``PATH/report/*.png`` and ``PATH/report/index.html`` for a run or sweep directory."""
    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such directory")
    out = d / REPORT_SUBDIR
    if (d / "config.yaml").exists():
        rep = run_report(d, out)
    elif is_sweep_dir(d):
        rep = sweep_report(d, out)
    else:
        raise FileNotFoundError(
            f"{d}: neither a run directory (config.yaml) nor a sweep directory "
            "(trials.parquet or trial folders with params.json)"
        )
    index = out / "index.html"
    atomic_write_text(index, render_html(rep))
    return index


def cmd_report(args) -> int:
    d = Path(args.path)
    if not d.is_dir() or not ((d / "config.yaml").exists() or is_sweep_dir(d)):
        raise InputError(f"{d}: not a pftray run directory (config.yaml) or sweep directory (trials.parquet)")
    index = make_report(d)
    pngs = sorted(p.name for p in index.parent.glob("*.png"))
    print(f"report: {index} ({len(pngs)} plots: {', '.join(pngs)})")
    return 0


def add_report_parser(sub) -> None:
    """Register ``pftray report RUN_DIR|SWEEP_DIR``."""
    p = sub.add_parser("report", help="plots + one self-contained HTML page (DIR/report/index.html)")
    p.add_argument("path", metavar="RUN_DIR|SWEEP_DIR")
    p.set_defaults(fn=cmd_report)

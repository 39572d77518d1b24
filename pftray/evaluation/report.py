"""``pftray report RUN_DIR|SWEEP_DIR``: PNG plots and one self-contained HTML page.

For a run directory (``config.yaml`` + tables, see :mod:`pftray.results`) it plots, when the data is there:

* ``loss.png``            training and validation loss per round (``rounds.parquet``),
* ``metrics.png``         personalised-evaluation metrics per round, one line per model (``eval.parquet``),
* ``epsilon.png``         the privacy ledger's epsilon per round (runs with DP),
* ``isfa_weights.png``    each client's aggregation weight over rounds (``clients.parquet`` ``weight``),
* ``client_spread.png``   per-client spread of the latest evaluation (``eval/eval-round-N.parquet`` from
  ``pftray eval``, else the last round of ``eval.parquet``), one point per client, per model; on real data this
  includes the dlib face metrics ``csim``, ``lmd_face``, ``lmd_mouth``, ``lip_sync_lmk``,
* ``samples/*.png``       the run's sample grids with a label on each row (ground truth, backbone, personalised).

Clients with corrupted training data (the synthetic federation's ground truth, :mod:`.ground_truth`; never given to
the server) are marked in the per-client plots and tables.

For a sweep directory (``trials.parquet`` or Tune trial folders) it adds the trial table and the
privacy-utility Pareto front from :mod:`pftray.analysis` (skipped with a message when that module is absent), a note
on each metric whose spread across trials is within its evaluation noise, and, when no trial had a trained backbone,
"machinery test only: untrained backbone" on every plot.

Everything lands in ``DIR/report/``; ``index.html`` embeds every image as base64 and every table as HTML, so
the page has no external references and can be mailed or archived on its own.
"""

from __future__ import annotations

import base64
import html
import json
import math
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pftray.errors import InputError
from pftray.evaluation.compare import FACE_METRICS  # real-data face metrics: synthetic runs' plots skip them
from pftray.evaluation.ground_truth import UNRELIABLE_COL, describe, label_clients, unreliable_clients
from pftray.results import RunDir, atomic_write_text

REPORT_SUBDIR = "report"
ROUND_METRICS = ("psnr", "ssim", "mouth_psnr", "lip_sync", "jitter", "lpips", "id_sim_synth", *FACE_METRICS)
SPREAD_METRICS = ("psnr", "ssim", "mouth_psnr", "lip_sync", "lpips", "id_sim_synth", *FACE_METRICS)
#: what every plot of a sweep says when none of its trials started from a trained backbone
UNTRAINED_BANNER = "machinery test only: untrained backbone (model.backbone unset), metrics mean nothing"
UNRELIABLE_STYLE = {"marker": "x", "color": "tab:red"}


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


def metric_title(metric: str) -> str:
    """A metric's panel title: its name, with its direction when that is not "higher is better"."""
    from pftray.evaluation.compare import metric_better

    better = metric_better(metric)
    return {"lower": f"{metric} (lower is better)", "near 1": f"{metric} (best at 1)"}.get(better, metric)


def direction_note(metrics) -> str:
    """One sentence naming which of ``metrics`` are better when lower (and when near 1); higher otherwise."""
    from pftray.evaluation.compare import metric_better

    lower = [m for m in metrics if metric_better(m) == "lower"]
    near = [m for m in metrics if metric_better(m) == "near 1"]
    out = "metric directions: higher is better" + (f", except lower is better for {', '.join(lower)}" if lower else "")
    return out + (f"; {', '.join(near)} is best at 1" if near else "")


def _numeric(df: pd.DataFrame, col: str) -> pd.Series:
    return pd.to_numeric(df[col], errors="coerce") if col in df else pd.Series(np.nan, index=df.index)


def text_outside(fig, *, tol: float = 1.0) -> list[str]:
    """The visible, non-empty text artists of ``fig`` that do not lie inside the figure (rendered extents)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    undrawn = set()  # labels of ticks beyond an axis' view limits: matplotlib keeps but never draws them
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if not lo - 1e-9 * (hi - lo) <= tick.get_loc() <= hi + 1e-9 * (hi - lo):
                    undrawn.update({id(tick.label1), id(tick.label2)})
    bad = []
    for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_window_extent")):
        if not t.get_visible() or not str(t.get_text()).strip() or id(t) in undrawn:
            continue
        e = t.get_window_extent(renderer)
        if e.x0 < box.x0 - tol or e.y0 < box.y0 - tol or e.x1 > box.x1 + tol or e.y1 > box.y1 + tol:
            bad.append(str(t.get_text()))
    return bad


def _fit_titles(fig) -> None:
    """Wrap each axes title and the suptitle that is wider than its axes (or the figure) onto more lines."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    titles = [(ax.title, ax.get_window_extent(renderer).width) for ax in fig.axes if ax.get_visible()]
    if fig._suptitle is not None:
        titles.append((fig._suptitle, fig.bbox.width))
    for t, width in titles:
        lines = t.get_text().split("\n")
        chars = max(len(line) for line in lines)
        for _ in range(8):  # shrink the line length until the rendered title fits
            if not chars or t.get_window_extent(renderer).width <= width * 0.98:
                break
            chars = max(8, int(chars * 0.85))
            t.set_text("\n".join(w for line in lines for w in (textwrap.wrap(line, chars) or [""])))


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    _fit_titles(fig)
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
    ax.set_title("training and validation loss")
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
        ax.set_title(metric_title(m))
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


def plot_client_weights(clients: pd.DataFrame, path: Path, *, unreliable: dict[int, str] | None = None
                        ) -> Path | None:
    """Aggregation weight of each client over the rounds it took part in; None without weights. Clients in
    ``unreliable`` (ground truth) are drawn dashed with red crosses."""
    w = _numeric(clients, "weight")
    if clients.empty or not w.notna().any():
        return None
    unreliable = unreliable or {}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    df = clients.assign(_w=w).dropna(subset=["_w"])
    for cid, g in df.groupby("client_id"):
        kind = unreliable.get(int(cid))
        style = {"ls": "--", **UNRELIABLE_STYLE} if kind else {"marker": "o"}
        ax.plot(g["server_round"], g["_w"], lw=1, label=f"client {cid}" + (f" (unreliable: {kind})" if kind else ""),
                **style)
    ax.set_xlabel("server round")
    ax.set_ylabel("aggregation weight")
    ax.set_title("aggregation weight per client\nISFA: n_k exp(gamma s_k), normalised"
                 + ("\ndashed red: unreliable client (ground truth, not known to the server)" if unreliable else ""),
                 fontsize=10)
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


def plot_client_spread(evals: pd.DataFrame, path: Path, *, title: str,
                       unreliable: dict[int, str] | None = None) -> Path | None:
    """One panel per metric: each client's mean as a point, per model (with the mean as a bar); clients in
    ``unreliable`` (ground truth) as red crosses."""
    if evals.empty:
        return None
    unreliable = unreliable or {}
    pc = per_client(evals)
    metrics = [m for m in SPREAD_METRICS if m in pc and pc[m].notna().any()]
    if not metrics:
        return None
    plt = _plt()
    models = [m for m in ("personalised", "backbone", "copy") if m in set(pc["model"])]
    models += sorted(set(pc["model"]) - set(models))
    rng = np.random.default_rng(0)
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.4 * len(metrics), 3.4), squeeze=False)
    bad_seen = False
    for ax, m in zip(axes.flat, metrics):
        for i, model in enumerate(models):
            sel = pc[(pc["model"] == model) & pc[m].notna()]
            v = sel[m].to_numpy()
            if not v.size:
                ax.text(i, 0.5, "n/a", transform=ax.get_xaxis_transform(), ha="center", fontsize=8, color="grey")
                continue
            bad = sel["client_id"].map(lambda c: int(c) in unreliable).to_numpy(bool)
            x = i + rng.uniform(-0.12, 0.12, v.size)
            ax.scatter(x[~bad], v[~bad], s=14, alpha=0.8, color=f"C{i}")
            if bad.any():
                bad_seen = True
                ax.scatter(x[bad], v[bad], s=22, alpha=0.9, label="unreliable (ground truth)", **UNRELIABLE_STYLE)
            ax.hlines(v.mean(), i - 0.25, i + 0.25, colors="k")
        ax.set_xlim(-0.5, len(models) - 0.5)  # every model's tick inside the panel, even one without values
        ax.set_xticks(range(len(models)), models, rotation=20)
        ax.set_title(metric_title(m))
    if bad_seen:
        for ax in axes.flat:
            h, lab = ax.get_legend_handles_labels()
            if h:
                ax.legend(h[:1], lab[:1], fontsize=7)
                break
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


#: rows of the run's sample grids (``samples/client-K_round-N.png``, :func:`pftray.fed.heldout.save_grid`) by count
GRID_ROWS = {3: ("ground truth", "backbone", "personalised"), 2: ("ground truth", "personalised")}


def label_sample_grid(src: Path, dst: Path, *, resolution: int, scale: int = 0) -> Path:
    """Copy of the run's sample grid ``src`` (rows of ``resolution`` pixels) with each row's name on its left."""
    from PIL import Image

    from pftray.evaluation.video import label_rows, write_png

    img = np.asarray(Image.open(src).convert("RGB"))
    n = max(1, img.shape[0] // max(1, resolution))
    names = GRID_ROWS.get(n, tuple(f"row {i + 1}" for i in range(n)))
    scale = scale if scale > 0 else max(1, math.ceil(96 / max(1, img.shape[0] // n)))
    return write_png(dst, label_rows(img, names, scale=scale))


def latest_eval(run_dir: Path) -> tuple[pd.DataFrame, str]:
    """The latest evaluation table and where it came from: ``pftray eval`` output, else training-time eval."""
    from pftray.evaluation.run_eval import latest_eval_file

    p = latest_eval_file(run_dir)
    if p is not None:
        return pd.read_parquet(p), f"{p.relative_to(run_dir)}"
    ev = RunDir(run_dir).table("eval")  # the compacted file and any per-round parts of a run still going
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
    try:
        unreliable = unreliable_clients(cfg)
        rep.notes.append(describe(unreliable, cfg.get("data", {}).get("num_clients")))
    except Exception as exc:  # noqa: BLE001 - a report of an old or odd run still gets made
        unreliable = {}
        rep.notes.append(f"unreliable clients (ground truth): unknown ({type(exc).__name__}: {exc})")
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
            plot_client_weights(clients, out / "isfa_weights.png", unreliable=unreliable),
            "no weights in clients.parquet",
        ),
    ]
    latest, source = latest_eval(run_dir)
    plots.append(
        (
            f"Per-client spread ({source})" if source else "Per-client spread",
            plot_client_spread(latest, out / "client_spread.png", title=source, unreliable=unreliable),
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
        rep.notes.append(direction_note([c for c in pc.columns if c not in ("model", "client_id")]))
        summary = pc.drop(columns="client_id").groupby("model").agg(["mean", "std", "count"])
        summary.columns = [f"{a} {b}" for a, b in summary.columns]
        rep.tables.append((f"Latest evaluation per model ({source})", summary.reset_index()))
        wide = pc.pivot_table(index="client_id", columns="model", values=[c for c in pc.columns
                                                                           if c not in ("model", "client_id")])
        wide.columns = [f"{m} {model}" for m, model in wide.columns]
        rep.tables.append((f"Latest evaluation per client ({source}; {UNRELIABLE_COL}: never given to the server)",
                           label_clients(wide.reset_index(), unreliable)))
        reasons = [c for c in latest.columns if c.endswith("_missing")]
        for c in reasons:
            vals = sorted({str(v) for v in latest[c].dropna() if str(v)})
            if vals:
                rep.notes.append(f"missing {c.removesuffix('_missing')}: {vals[0]}")
    sample_dirs = sorted((run_dir / "samples").glob("eval-round-*"), key=lambda p: int(p.name.split("-")[-1]))
    if sample_dirs:  # `pftray eval` writes its grids labelled already
        for p in sorted(sample_dirs[-1].iterdir()):
            if p.suffix in (".png", ".gif"):
                rep.samples.append((f"{sample_dirs[-1].name}/{p.name}", p))
    else:
        res = int(cfg.get("data", {}).get("resolution") or 0)
        for p in sorted((run_dir / "samples").glob("*.png")):
            try:
                rep.samples.append((p.name, label_sample_grid(p, out / "samples" / p.name, resolution=res)))
            except (OSError, ValueError):
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
    untrained = untrained_backbone(df)
    if untrained:
        rep.title += f" ({UNTRAINED_BANNER.split(' (')[0]})"
        rep.notes.insert(0, UNTRAINED_BANNER + ": no trial's config sets model.backbone or model.pretrained")
    rep.notes += spread_notes(df)
    for p in plot_sweep(df, out, utility=utility):
        if untrained:
            banner_png(p, UNTRAINED_BANNER)
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


def _trial_configs(df: pd.DataFrame) -> list[dict]:
    import yaml

    cfgs = []
    for d in df.get("run_dir", pd.Series(dtype=object)).dropna():
        p = Path(str(d)) / "config.yaml"
        if str(d) and p.exists():
            cfgs.append(yaml.safe_load(p.read_text()) or {})
    return cfgs


def untrained_backbone(df: pd.DataFrame) -> bool:
    """True when the sweep's trials all started from a random backbone (no ``model.backbone`` or
    ``model.pretrained`` in any trial's run config); False when some did or no run config can be read."""
    cfgs = _trial_configs(df)
    return bool(cfgs) and not any((c.get("model") or {}).get(k) for c in cfgs for k in ("backbone", "pretrained"))


def banner_png(path: Path, text: str) -> Path:
    """Put ``text`` in a strip above the image in ``path`` (in place): a subtitle for plots made elsewhere."""
    from PIL import Image, ImageDraw

    from pftray.evaluation.video import write_png

    img = Image.open(path).convert("RGB")
    strip = Image.new("RGB", (img.width, 18), (255, 235, 235))
    ImageDraw.Draw(strip).text((4, 3), text, fill=(170, 0, 0))
    out = Image.new("RGB", (img.width, img.height + strip.height), (255, 255, 255))
    out.paste(strip, (0, 0))
    out.paste(img, (0, strip.height))
    return write_png(path, np.asarray(out))


def trial_noise(df: pd.DataFrame, metric: str) -> float:
    """Median over trials of the standard error of a trial's final ``metric`` (its personalised evaluation rows
    of the last evaluated round: std / sqrt(n)); NaN when no trial has two such rows."""
    from pftray.results import RunDir

    ses = []
    for d in df.get("run_dir", pd.Series(dtype=object)).dropna():
        if not str(d) or not (Path(str(d)) / "config.yaml").exists():
            continue
        try:
            ev = RunDir(str(d)).table("eval")
        except Exception:  # noqa: BLE001 - a trial without a readable table adds no noise estimate
            continue
        if ev.empty or metric not in ev or "server_round" not in ev:
            continue
        last = ev[(ev["server_round"] == ev["server_round"].max()) & (ev.get("model") == "personalised")]
        v = pd.to_numeric(last[metric], errors="coerce").dropna().to_numpy()
        if v.size >= 2:
            ses.append(float(v.std(ddof=1) / math.sqrt(v.size)))
    return float(np.median(ses)) if ses else math.nan


def spread_notes(df: pd.DataFrame) -> list[str]:
    """One honest sentence per ``final/<metric>`` of the trials: its spread across trials against its noise."""
    ok = df[df["status"] != "error"] if "status" in df else df
    notes = []
    for col in [c for c in ok.columns if c.startswith("final/") and c != "final/epsilon"]:
        v = pd.to_numeric(ok[col], errors="coerce").dropna()
        if len(v) < 2:
            continue
        metric, spread = col.split("/", 1)[1], float(v.std(ddof=1))
        noise = trial_noise(ok, metric)
        head = f"{col}: across {len(v)} trials std {spread:.4g} (range {v.min():.4g} to {v.max():.4g})"
        if math.isfinite(noise) and spread <= noise:
            notes.append(f"{head} is within its evaluation noise (standard error of one trial's value, over its "
                         f"evaluated clips, ~{noise:.4g}): the trials do not differ in {metric}, and no ranking by it "
                         "means anything")
        elif math.isfinite(noise):
            notes.append(f"{head}; one trial's evaluation noise (standard error over its clips) ~{noise:.4g}: "
                         "differences smaller than about twice that mean nothing")
        else:
            notes.append(f"{head}; its evaluation noise cannot be estimated from these trials: differences within "
                         "that spread mean nothing")
    return notes


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
        parts.append("<h2>Samples (one row per source, named on its left; frames left to right)</h2>")
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

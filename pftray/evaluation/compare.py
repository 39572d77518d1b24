"""``pftray compare DIR...``: methods side by side, with confidence intervals and paired tests.

Unit of analysis: one (seed, client) pair. For every run found under the given folders, the latest evaluation
(``RUN/eval/eval-round-N.parquet`` from ``pftray eval``, else the last round of the training-time
``RUN/eval.parquet``) is reduced to the ``personalised`` rows, averaged over clips per client. Runs are grouped
by method (``fed.strategy``; the paper's name ``privfedtalk`` is ISFA). For each method and metric the table
gives the mean over (seed, client) units with a 95% Student-t interval; for each pair of methods, the paired
t-test and the Wilcoxon signed-rank test over the (seed, client) units that both methods evaluated, and which
of the two the mean difference favours given the metric's direction (:data:`pftray.metrics.suite.METRIC_BETTER`:
higher is better for psnr, ssim, lip_sync, csim, ...; lower for jitter, lpips, lmd_face, lmd_mouth, ...).

The default metrics are :data:`DEFAULT_METRICS` plus the real-data face metrics :data:`FACE_METRICS` (dlib:
``csim``, ``lmd_face``, ``lmd_mouth``, ``lip_sync_lmk``), which are left out of the tables when no run has a
value for them (synthetic-data runs never compute them).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pftray.errors import InputError
from pftray.evaluation.stats import paired_tests, t_interval

DEFAULT_METRICS = ("psnr", "ssim", "mouth_psnr", "lip_sync", "jitter", "lpips", "id_sim_synth")
#: real-data face metrics (:mod:`pftray.metrics.face`), compared by default when any run has them
FACE_METRICS = ("csim", "lmd_face", "lmd_mouth", "lip_sync_lmk")
METHOD_ORDER = ("isfa", "fedavg", "fedprox")
METHOD_ALIASES = {"privfedtalk": "isfa"}


def method_of(config: dict) -> str:
    """The method of a run's resolved config (a plain dict): ``fed.strategy`` with aliases resolved."""
    strategy = str(config.get("fed", {}).get("strategy", "")).lower()
    if not strategy:
        raise ValueError("config has no fed.strategy")
    return METHOD_ALIASES.get(strategy, strategy)


def find_runs(dirs: Sequence[str | Path]) -> list[Path]:
    """Run directories (folders with ``config.yaml``): each DIR itself, or the runs anywhere below it."""
    runs: list[Path] = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise FileNotFoundError(f"{d}: no such directory")
        found = [d] if (d / "config.yaml").exists() else sorted(p.parent for p in d.rglob("config.yaml"))
        if not found:
            raise FileNotFoundError(f"{d}: holds no pftray run directory (no config.yaml below it)")
        runs += found
    unique = list(dict.fromkeys(p.resolve() for p in runs))
    return unique


def run_client_metrics(run_dir: Path, metrics: Sequence[str]) -> tuple[pd.DataFrame, str]:
    """Per-client means (over clips) of the personalised rows of the run's latest evaluation, and its source."""
    from pftray.evaluation.report import latest_eval

    ev, source = latest_eval(run_dir)
    if ev.empty:
        raise FileNotFoundError(f"{run_dir}: no evaluation yet (run `pftray eval {run_dir}`)")
    ev = ev[ev["model"] == "personalised"]
    cols = {m: pd.to_numeric(ev[m], errors="coerce") if m in ev else math.nan for m in metrics}
    return ev[["client_id"]].assign(**cols).groupby("client_id", as_index=False).mean(), source


def collect(dirs: Sequence[str | Path], metrics: Sequence[str] = DEFAULT_METRICS) -> pd.DataFrame:
    """One row per (run, client): ``method, seed, client_id, run_dir, source`` and the metric columns."""
    import yaml

    frames, seen = [], {}
    for run in find_runs(dirs):
        cfg = yaml.safe_load((run / "config.yaml").read_text()) or {}
        method, seed = method_of(cfg), int(cfg.get("experiment", {}).get("seed", 0))
        if (method, seed) in seen:
            raise ValueError(
                f"two runs of method {method!r} with seed {seed}: {seen[(method, seed)]} and {run}; "
                "pass only one of them"
            )
        seen[(method, seed)] = run
        pc, source = run_client_metrics(run, metrics)
        frames.append(pc.assign(method=method, seed=seed, run_dir=str(run), source=source))
    df = pd.concat(frames, ignore_index=True)
    return df[["method", "seed", "client_id", "run_dir", "source", *metrics]]


def metric_better(metric: str) -> str:
    """``"higher"``, ``"lower"`` or ``"near 1"``: which value of ``metric`` is better ("" when unknown)."""
    from pftray.metrics.suite import METRIC_BETTER

    return METRIC_BETTER.get(metric, "")


def favoured(metric: str, mean_diff: float, a: str, b: str) -> str:
    """The method that a mean difference ``mean(a - b)`` favours under ``metric``'s direction ("" for a tie,
    an undefined difference or a metric without a higher/lower direction)."""
    better = metric_better(metric)
    if better not in ("higher", "lower") or not math.isfinite(mean_diff) or mean_diff == 0:
        return ""
    return a if (mean_diff > 0) == (better == "higher") else b


def _methods(df: pd.DataFrame) -> list[str]:
    present = list(dict.fromkeys(df["method"]))
    return [m for m in METHOD_ORDER if m in present] + sorted(m for m in present if m not in METHOD_ORDER)


def method_table(df: pd.DataFrame, metrics: Sequence[str], *, confidence: float = 0.95) -> pd.DataFrame:
    """Mean and t-interval per method and metric over (seed, client) units with a finite value."""
    rows = []
    for method in _methods(df):
        sub = df[df["method"] == method]
        for m in metrics:
            vals = sub[m].dropna().to_numpy(dtype=float)
            ci = t_interval(vals, confidence=confidence)
            rows.append(
                {
                    "method": method,
                    "metric": m,
                    "better": metric_better(m),
                    "mean": ci.mean,
                    "ci_low": ci.low,
                    "ci_high": ci.high,
                    "half_width": ci.half_width,
                    "n": ci.n,
                    "seeds": int(sub["seed"].nunique()),
                    "clients": int(sub["client_id"].nunique()),
                }
            )
    return pd.DataFrame(rows)


def paired_table(df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """Paired tests for every pair of methods and metric over the (seed, client) units both evaluated."""
    rows = []
    for a, b in itertools.combinations(_methods(df), 2):
        for m in metrics:
            left = df[df["method"] == a].set_index(["seed", "client_id"])[m]
            right = df[df["method"] == b].set_index(["seed", "client_id"])[m]
            pairs = pd.concat([left.rename("a"), right.rename("b")], axis=1, join="inner").dropna()
            res = paired_tests(pairs["a"].to_numpy(float), pairs["b"].to_numpy(float))
            rows.append(
                {
                    "metric": m,
                    "method_a": a,
                    "method_b": b,
                    "n_pairs": res.n,
                    "mean_diff": res.mean_diff,
                    "favours": favoured(m, res.mean_diff, a, b),
                    "t_stat": res.t_stat,
                    "t_pvalue": res.t_pvalue,
                    "wilcoxon_stat": res.wilcoxon_stat,
                    "wilcoxon_pvalue": res.wilcoxon_pvalue,
                }
            )
    return pd.DataFrame(
        rows,
        columns=[
            "metric",
            "method_a",
            "method_b",
            "n_pairs",
            "mean_diff",
            "favours",
            "t_stat",
            "t_pvalue",
            "wilcoxon_stat",
            "wilcoxon_pvalue",
        ],
    )


def _fmt(v: float, digits: int = 4) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}g}"


def markdown_tables(table: pd.DataFrame, tests: pd.DataFrame, *, confidence: float = 0.95) -> str:
    """Methods x metrics as ``mean ± half-width (n)``, then the paired tests, as GitHub markdown."""
    metrics = list(dict.fromkeys(table["metric"]))
    methods = list(dict.fromkeys(table["method"]))
    pct = f"{round(confidence * 100)}%"
    lines = [f"| method | {' | '.join(metrics)} |", "|---" * (len(metrics) + 1) + "|"]
    for method in methods:
        cells = []
        for m in metrics:
            r = table[(table["method"] == method) & (table["metric"] == m)].iloc[0]
            cells.append(
                "n/a" if r["n"] == 0 else f"{_fmt(r['mean'])} ± {_fmt(r['half_width'], 2)} (n={r['n']})"
            )
        lines.append(f"| {method} | {' | '.join(cells)} |")
    lines += ["", f"mean ± {pct} t-interval half-width over (seed, client) units."]
    by_dir = {d: [m for m in metrics if metric_better(m) == d] for d in ("higher", "lower", "near 1")}
    lines += ["; ".join(f"{d} is better: {', '.join(ms)}" for d, ms in by_dir.items() if ms) + ".", ""]
    if len(tests):
        lines += ["| metric | A | B | pairs | mean(A−B) | favours | paired t p | Wilcoxon p |", "|---" * 8 + "|"]
        for _, r in tests.iterrows():
            fav = r["favours"] if isinstance(r.get("favours"), str) else ""
            lines.append(
                f"| {r['metric']} | {r['method_a']} | {r['method_b']} | {r['n_pairs']} | "
                f"{_fmt(r['mean_diff'])} | {fav or '–'} | {_fmt(r['t_pvalue'], 3)} | "
                f"{_fmt(r['wilcoxon_pvalue'], 3)} |"
            )
    return "\n".join(lines) + "\n"


def compare(
    dirs: Sequence[str | Path],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    out: str | Path,
    confidence: float = 0.95,
    optional: Sequence[str] = (),
) -> dict[str, object]:
    """Collect, tabulate, test and write ``<out>.csv/.parquet`` (methods), ``<out>-tests.csv/.parquet``,
    ``<out>-units.csv`` (the per-(seed, client) values) and ``<out>.md``; returns the frames and markdown.

    ``optional`` metrics (e.g. :data:`FACE_METRICS`) are added to ``metrics`` when some run has a value for them.
    """
    from pftray.results import atomic_write_text, write_parquet

    extra = [m for m in optional if m not in metrics]
    units = collect(dirs, [*metrics, *extra])
    absent = [m for m in extra if units[m].isna().all()]
    units = units.drop(columns=absent)
    metrics = [*metrics, *(m for m in extra if m not in absent)]
    table = method_table(units, metrics, confidence=confidence)
    tests = paired_table(units, metrics)
    md = markdown_tables(table, tests, confidence=confidence)
    out = Path(out)
    stem = out.with_suffix("") if out.suffix in (".csv", ".parquet", ".md") else out
    for name, df in ((stem.name, table), (f"{stem.name}-tests", tests)):
        write_parquet(df, stem.with_name(f"{name}.parquet"))
        atomic_write_text(stem.with_name(f"{name}.csv"), df.to_csv(index=False))
    atomic_write_text(stem.with_name(f"{stem.name}-units.csv"), units.to_csv(index=False))
    atomic_write_text(stem.with_name(f"{stem.name}.md"), md)
    return {"units": units, "table": table, "tests": tests, "markdown": md, "out": stem}


def cmd_compare(args) -> int:
    metrics = args.metric or list(DEFAULT_METRICS)
    optional = () if args.metric else FACE_METRICS  # face metrics by default, when the runs have them
    for d in args.dirs:
        if not Path(d).is_dir():
            raise InputError(f"{d}: no such directory")
    if not 0 < args.confidence < 1:
        raise InputError(f"--confidence must lie in (0, 1), got {args.confidence}")
    first = Path(args.dirs[0])
    out = args.out or ((first.parent if (first / "config.yaml").exists() else first) / "compare")
    try:
        res = compare(args.dirs, metrics=metrics, out=out, confidence=args.confidence, optional=optional)
    except ValueError as exc:  # duplicate (method, seed) runs, configs without a strategy
        raise InputError(str(exc)) from None
    units = res["units"]
    absent = [m for m in metrics if units[m].isna().all()]
    print(res["markdown"])
    if absent:
        print(f"no values for: {', '.join(absent)} (missing metrics are NaN in the evaluation tables)")
    print(
        f"runs: {units['run_dir'].nunique()}, written: {res['out']}.md/.csv/.parquet, "
        f"{res['out']}-tests.csv/.parquet, {res['out']}-units.csv"
    )
    return 0


def add_compare_parser(sub) -> None:
    """Register ``pftray compare DIR... [--metric M ...] [--out FILE]``."""
    p = sub.add_parser("compare", help="compare methods over runs: mean ± 95%% CI and paired tests")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="run directories or folders of run directories")
    p.add_argument(
        "--metric",
        action="append",
        metavar="NAME",
        help=f"metric column (repeatable; default: {', '.join(DEFAULT_METRICS)}, and "
        f"{', '.join(FACE_METRICS)} when the runs have them)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="output stem: FILE.md, FILE.csv, FILE.parquet, FILE-tests.*, FILE-units.csv "
        "(default: <folder of the runs>/compare)",
    )
    p.add_argument("--confidence", type=float, default=0.95, help="confidence level of the t-intervals")
    p.set_defaults(fn=cmd_compare)

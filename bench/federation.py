"""The federated benchmark: does each part of PrivFedTalk do something? One command runs the grid and writes the answer.

The grid is built around one **default cell** (the quickstart model and backbone on the synthetic *shifted*
scenario, ``data.shift_severity`` = ``--severity``, 8 clients of :data:`CLIPS_PER_CLIENT` training clips, no
unreliable clients, no DP, TDC at the quickstart's weight) and varies **one factor at a time**, never the full product:

* ``unreliable``: the methods and baselines (``backbone``, ``local``, ``fedavg``, ``fedprox``, ``isfa``,
  ``isfa_z``, ``pooled``) x ``data.unreliable_fraction`` in {0, 0.25, 0.5}, every unreliable client of the kind
  that damages the others under FedAvg (:data:`DAMAGING_KINDS`). ``isfa_z`` is ISFA with round-standardised
  scores (``fed.isfa_weighting: round_z``): the paper's ``exp(gamma * s)`` is uniform to 0.1 % on this benchmark;
* ``mixed``: FedAvg, ISFA and ISFA-z at fraction 0.75 with the six harmful kinds (:data:`HARMFUL_KINDS`) cycled
  over the unreliable clients (one kind each): the ISFA score's AUC per kind, and what a mixed population costs;
* ``dp``: the federated methods x client-level DP {off, epsilon ~ 8, epsilon ~ 2} on a **cohort** of
  ``--cohort-clients`` registered clients (>= 100) with Poisson rate ``--cohort-rate`` (>= 20 expected per round), with
  the default cell's 64 px model and backbone, 1 training clip and 4 local steps per client (a 32 px cohort with a
  small UNet of its own learned nothing measurable even without DP, so it could not show DP's cost); every cohort
  cell clips client updates at the same ``privacy.clipping_norm``, so DP changes only the noise;
* ``tdc``: ISFA with ``train.lambda_tdc`` in {0, the default};

each with ``--seeds`` seeds (>= 3). The default cell also gets rows of method ``autoencoder``
(:func:`autoencoder_rows`): the frozen backbone's round trip ``D(E(x))`` of the same held-out frames, what the
decoder that every method generates through can show (a reference level, not a bound). Outside the DP cohort the
federated runs also evaluate the shared adapter alone (``eval.global_model``, method ``<method>/global``), where unreliable clients' damage to the others shows before the
reliable clients' identity adapters absorb it. ``backbone`` is not trained: its rows are the ``backbone`` rows of the FedAvg
run of the same cell (same clips, same DDIM seeds). A cell shared by two factors (the default cell) runs once.

Every run is a normal run directory under ``--work`` (``pftray report``/``compare`` read them); a finished run is
kept and an interrupted one resumes from its checkpoint, so the command is resumable. The answer goes to
``--out`` (default ``bench/results/federation``):

* ``units.parquet``: one row per (cell, method, seed, client) with the metrics of its held-out clips;
* ``summary.md``: per factor, mean +- 95 % t-interval over (seed, client) units, and paired tests (t and Wilcoxon)
  of each method against FedAvg and against local-only on the same units; for the unreliable factor, the metrics
  over the **reliable** clients only and over the unreliable ones only, and the AUC of ISFA's score per corruption
  kind (:mod:`pftray.evaluation.reliability`); for the DP cells, the accountant's epsilon and ``pftray audit``'s
  clip-level empirical epsilon lower bound beside the utility;
* ``rounds.png`` (quality against rounds per method) and ``utility_vs_epsilon.png``.

    python -m bench federation [--quick] [--work runs/bench-federation] [--out bench/results/federation]

``--quick`` is a small grid for a first answer: 1 seed (its intervals are over clients only); backbone,
local-only, FedAvg and ISFA; 6 rounds of 8 local steps evaluated once, at the end, on 8 frames; fractions {0, 0.5};
TDC {0, default}; DP {off, epsilon ~ 8} for FedAvg on a 4-round cohort. ``--jobs 2`` runs two cells at a time. The full grid
is a benchmark, not CI. ``tests/bench/test_bench_federation.py`` runs the machinery on a tiny grid and recomputes
the table from the Parquet.

Cost. Evaluation dominates a run (an evaluation of 8 clients costs about four rounds), so only the FedAvg run of a
cell samples the backbone (``eval.baseline``), and the DP cells' audit uses 2 noise draws x 2 timesteps.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
METHODS = ("backbone", "local", "fedavg", "fedprox", "isfa", "isfa_z", "pooled")
FEDERATED = ("fedavg", "fedprox", "isfa", "isfa_z")
#: the federated methods of the DP cohort: ``isfa_z`` ranks a client's score against the round's other clients at
#: the server, which client-level DP forbids (the config refuses it)
DP_METHODS = ("fedavg", "fedprox", "isfa")
#: grid methods that are a strategy with settings of their own (the others are ``fed.strategy`` names):
#: ``isfa_z`` is ISFA with round-standardised scores (``fed.isfa_weighting: round_z``), the paper's raw
#: ``exp(gamma * s)`` being uniform to 0.1 % on this benchmark
METHOD_SETTINGS: dict[str, dict[str, Any]] = {"isfa_z": {"fed.strategy": "isfa", "fed.isfa_weighting": "round_z"}}
METRICS = ("shift_psnr", "mouth_psnr", "psnr", "ssim", "lip_sync", "jitter")
REFERENCES = ("fedavg", "local")  # paired tests of every method against these


@dataclasses.dataclass(frozen=True)
class Cell:
    """One point of the grid: a factor's level for one trained method and seed."""

    factor: str  # "unreliable" | "mixed" | "dp" | "tdc"
    level: str  # e.g. "0.25", "eps8", "lambda0"
    method: str  # a trained method (backbone rows come from the fedavg run)
    seed: int
    overrides: tuple[tuple[str, Any], ...]

    def settings(self, backbone: Path | None = None) -> list[str]:
        """``--set`` items of the cell's run."""
        sets = [f"{k}={json.dumps(v)}" for k, v in self.overrides]
        method = METHOD_SETTINGS.get(self.method, {"fed.strategy": self.method})
        sets += [f"{k}={json.dumps(v)}" for k, v in method.items()] + [f"experiment.seed={self.seed}"]
        if backbone is not None:
            sets.append(f"model.backbone={json.dumps(str(backbone))}")
        return sets

    def run_name(self, config: Path, backbone: Path | None = None) -> str:
        """``<method>-s<seed>-<hash of the resolved config>``: cells with the same settings (the default cell of
        two factors, or a factor level equal to the default) are one run; without unreliable clients the kinds
        are not part of the settings."""
        from pftray.config import load_config

        resolved = load_config(config, self.settings(backbone), check_paths=False).to_dict()
        resolved["experiment"].pop("name", None)
        if not resolved["data"]["unreliable_fraction"]:
            resolved["data"].pop("unreliable_kinds")  # inert without unreliable clients: the same run
        if not resolved["eval"].get("global_model"):
            resolved["eval"].pop("global_model", None)  # off = the runs made before the key existed
        if resolved["fed"].get("isfa_weighting") == "raw":
            resolved["fed"].pop("isfa_weighting")  # the default = the runs made before the key existed
        resolved["model"]["backbone"] = Path(str(resolved["model"]["backbone"] or "")).name
        key = hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()[:10]
        return f"{self.method}-s{self.seed}-{key}"


@dataclasses.dataclass(frozen=True)
class Grid:
    base: dict[str, Any]  # dotted overrides on the base config file for every cell
    cohort: dict[str, Any]  # extra overrides of the DP factor's cohort cells
    seeds: tuple[int, ...]
    fractions: tuple[float, ...]
    epsilons: tuple[float, ...]  # target epsilons of the DP cells (0 = DP off)
    lambdas: tuple[float, ...]
    methods: tuple[str, ...] = METHODS
    dp_methods: tuple[str, ...] = DP_METHODS
    #: pre-training overrides of a backbone of the cohort's own (for a cohort whose model differs from the base
    #: config's); empty (the default grids) = the cohort cells use the base config's ``model.backbone``
    cohort_pretrain: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: ``pftray audit`` settings for the DP cells (None = no audit)
    audit: dict[str, Any] | None = dataclasses.field(default_factory=lambda: dict(AUDIT))
    #: the ``mixed`` factor: ``mixed_methods`` at unreliable fraction ``mixed_fraction`` with ``mixed_kinds`` cycled
    #: over the unreliable clients (empty = no such factor)
    mixed_kinds: tuple[str, ...] = ()
    mixed_fraction: float = 0.75
    mixed_methods: tuple[str, ...] = ("fedavg", "isfa", "isfa_z")
    #: the default cell also gets :func:`autoencoder_rows` (the frozen decoder's round trip of its held-out frames)
    autoencoder: bool = True


#: the membership audit of each DP cell: 2 noise draws x 2 timesteps per clip on the first 24 trained clients (the
#: whole cohort costs about 4 min a cell at 64 px); a lower bound only
AUDIT = {"timesteps": (100, 500), "repeats": 2, "max_clients": 24}


#: training clips per client in the synthetic grid: few, so that one client's clips undersample the shared shift
#: (a local-only model sees 2 audio tracks; the federation's shared adapter sees every sampled client's)
CLIPS_PER_CLIENT = 2
#: the cohort's client update clip C: about the median norm of its clients' unclipped updates (0.33-0.68, median
#: 0.44 at 4 local steps on the 64 px default model, measured), so that clipping alone costs little and DP changes
#: only the noise
COHORT_CLIP = 0.45

#: the factors whose cells have unreliable clients (harm against the clean cell, score AUC per kind)
UNRELIABLE_FACTORS = ("unreliable", "mixed")


def _harm_level(factor: str, level: str) -> str:
    """The label of an unreliable-clients level in the harm and AUC tables (``mixed 0.5`` for the mixed factor)."""
    return f"mixed {level}" if factor == "mixed" else level


#: the corruption kinds that break a talking-head model's conditioning or hide what it must learn; the ``mixed``
#: factor cycles them over its unreliable clients (one kind each), which measures the ISFA score's AUC per kind
HARMFUL_KINDS = ("swapped_audio", "heavy_offset", "wrong_identity", "channel_swap", "occluded", "blur")
#: the kind of every unreliable client of the ``unreliable`` factor: a microphone in front of the mouth, the one
#: kind that damaged the shared adapter in probes (8 rounds, FedAvg, 50 % unreliable, seed 0, the 4 reliable
#: clients against the same clients at 0 %). The shared adapter alone (model ``global``): ``occluded`` -0.72 dB
#: shift_psnr (every client lower, -0.20 to -1.65); personalised -0.20 dB shift_psnr, -0.07 lip sync (every client
#: lower). Every other kind left the shared adapter where it was or better (+0.0 to +0.3 dB global shift_psnr):
#: the audio kinds (heavy_offset, swapped_audio), frozen and wrong_identity keep the teeth in view, and noise,
#: blur and channel_swap keep them bright and in place, so those clients still teach the shared shift; only an
#: occluder hides it. An earlier probe's wrong_identity harm (6 rounds) was not confirmed by the previous grid
#: (-0.04 [-0.25, 0.18] shift_psnr at 50 %, 3 seeds).
DAMAGING_KINDS = ("occluded",)


def default_grid(*, quick: bool, severity: float, seeds: int | None = None, cohort_clients: int = 100,
                 cohort_rate: float = 0.2, kinds: tuple[str, ...] = DAMAGING_KINDS,
                 mixed_kinds: tuple[str, ...] | None = None) -> Grid:
    # sized for the 2-core CPU: --quick about 10 min and the full grid (81 runs) under 2 h with --jobs 2 (measured
    # 1 h 31 min). 8 rounds, not more: longer training lets local-only catch up with FedAvg, since each client's
    # personalised model is bounded by its own local steps (the probes' figures: README, "Federation personalises")
    rounds = 6 if quick else 8
    base = {
        "data.shift_severity": severity, "data.unreliable_fraction": 0.0, "data.num_clients": 8,
        "data.clips_per_client": CLIPS_PER_CLIENT, "data.unreliable_kinds": list(kinds),
        "fed.rounds": rounds, "fed.clients_per_round": 4, "fed.eval_every": rounds if quick else rounds // 2,
        "fed.eval_clients": 8, "fed.mu": 0.01, "train.local_steps": 8, "eval.clips": 1,
        "eval.frames": 8, "eval.sample_steps": 10, "eval.local_baseline": False,
        "runtime.resident_clients": 8,
    }
    # the cohort is the default cell's model, backbone and resolution with 100 registered clients of 1 clip each
    # (a client's update is cheap: 4 local steps), so that DP's cost is measured on a model that learns
    cohort = {
        "data.num_clients": cohort_clients, "fed.sample_rate": cohort_rate, "fed.eval_clients": 8,
        "data.clips_per_client": 1, "data.heldout_clips": 1, "train.local_steps": 4,
        "fed.rounds": 4 if quick else 8, "fed.eval_every": 4 if quick else 8, "privacy.clipping_norm": COHORT_CLIP,
        "runtime.resident_clients": 4,
    }
    return Grid(base=base, cohort=cohort, seeds=tuple(range(seeds or (1 if quick else 3))),
                fractions=(0.0, 0.5) if quick else (0.0, 0.25, 0.5), epsilons=(0.0, 8.0) if quick else (0.0, 8.0, 2.0),
                lambdas=(0.0, 0.1),
                methods=("backbone", "local", "fedavg", "isfa") if quick else METHODS,
                dp_methods=("fedavg",) if quick else DP_METHODS,
                mixed_kinds=(() if quick else HARMFUL_KINDS) if mixed_kinds is None else tuple(mixed_kinds))


def dp_overrides(eps: float, *, rounds: int, sample_rate: float, delta: float = 1e-5) -> dict[str, Any]:
    """``privacy.noise_multiplier`` calibrated so that the accountant's epsilon after ``rounds`` is ``eps``."""
    if eps <= 0:
        return {"privacy.noise_multiplier": 0.0}
    from pftray.privacy.accounting import calibrate_noise

    z = calibrate_noise(target_epsilon=eps, sample_rate=sample_rate, rounds=rounds, delta=delta)
    return {"privacy.noise_multiplier": z, "privacy.target_delta": delta}


def _eval_baseline(method: str) -> dict[str, Any]:
    """Only the FedAvg run of a cell samples the backbone (its rows are the cell's ``backbone`` method)."""
    return {} if method == "fedavg" else {"eval.baseline": False}


def _eval_global(method: str) -> dict[str, Any]:
    """The federated runs outside the DP cohort also sample the shared adapter alone (``eval.global_model``; rows
    of method ``<method>/global``): what unreliable clients do to the shared adapter, before the reliable
    clients' own identity adapters absorb it."""
    return {"eval.global_model": True} if method in FEDERATED else {}


def cells(grid: Grid) -> list[Cell]:
    out: list[Cell] = []
    trained = [m for m in grid.methods if m != "backbone"]
    if "backbone" in grid.methods and "fedavg" not in trained:
        trained.append("fedavg")  # the backbone rows come from the FedAvg runs
    rounds = int(grid.cohort.get("fed.rounds", grid.base["fed.rounds"]))
    dp_levels = [(f"eps{eps:g}" if eps > 0 else "nodp",
                  dp_overrides(eps, rounds=rounds, sample_rate=float(grid.cohort["fed.sample_rate"])))
                 for eps in grid.epsilons]  # the noise calibration is the same for every seed
    for seed in grid.seeds:
        for f in grid.fractions:
            for m in trained:
                out.append(Cell("unreliable", f"{f:g}", m, seed, tuple({**grid.base, "data.unreliable_fraction": f,
                                                                        **_eval_baseline(m),
                                                                        **_eval_global(m)}.items())))
        if grid.mixed_kinds:
            for m in grid.mixed_methods:
                out.append(Cell("mixed", f"{grid.mixed_fraction:g}", m, seed, tuple(
                    {**grid.base, "data.unreliable_fraction": grid.mixed_fraction,
                     "data.unreliable_kinds": list(grid.mixed_kinds), **_eval_baseline(m),
                     **_eval_global(m)}.items())))
        for lam in grid.lambdas:
            out.append(Cell("tdc", f"lambda{lam:g}", "isfa", seed, tuple({**grid.base, "train.lambda_tdc": lam,
                                                                          **_eval_baseline("isfa"),
                                                                          **_eval_global("isfa")}.items())))
        for level, dp in dp_levels:
            for m in grid.dp_methods:
                out.append(Cell("dp", level, m, seed, tuple({**grid.base, **grid.cohort, **dp,
                                                             **_eval_baseline(m)}.items())))
    return out


# ------------------------------------------------------------------------------------------------ running
def cohort_backbone(grid: Grid, config: Path, work: Path, *, build: bool = True) -> Path:
    """A backbone of the DP cohort's own (``grid.cohort_pretrain``), pre-trained once on the public identities
    (cached under ``work``); ``build=False`` only names it."""
    from pftray.config import load_config
    from pftray.model.pretrain import pretrain

    cfg = load_config(config, [f"{k}={json.dumps(v)}" for k, v in {**grid.base, **grid.cohort,
                                                                   **grid.cohort_pretrain}.items()])
    key = {k: v for k, v in cfg.to_dict().items() if k in ("data", "model", "pretrain")}
    key["model"] = {k: v for k, v in key["model"].items() if k != "backbone"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    out = work / f"backbone-cohort-{digest}.pt"  # --quick and the full grid pre-train differently
    if out.exists() or not build:
        return out
    t0 = time.perf_counter()
    pretrain(cfg, out)
    print(f"cohort backbone: {out} ({time.perf_counter() - t0:.0f} s)", flush=True)
    return out


def _finished(path: Path) -> bool:
    """A run directory whose run finished (kept, never rerun)."""
    from pftray.runtime.driver import FINISHED_STATUSES

    meta = path / "meta.json"
    return meta.exists() and json.loads(meta.read_text()).get("status") in FINISHED_STATUSES


def run_cell(cell: Cell, config: Path, work: Path, *, backbone: Path | None, name: str) -> Path:
    """Run (or resume, or keep) the cell's run directory ``work/runs/<name>``; returns it."""
    from pftray.config import load_config
    from pftray.results import RunDir
    from pftray.runtime.driver import run_federated

    path = work / "runs" / name
    if _finished(path):
        return path
    t0 = time.perf_counter()
    if (path / "config.yaml").exists():
        run_federated(resume=str(path), use_ray=False)
    else:
        cfg = load_config(config, [*cell.settings(backbone), f"experiment.name={name}"])
        run_federated(cfg, out=str(path), use_ray=False)
    RunDir(path).update_meta(bench_wall_s=time.perf_counter() - t0)
    return path


def audit_cell(run_dir: Path, settings: dict[str, Any]) -> dict[str, float]:
    """``pftray audit`` of a DP cell's run (kept in its ``audit.json``): the empirical epsilon lower bound and AUC
    of the clip-level membership attack under the released shared adapter alone. Clips are a subset of a
    client's data, so a valid client-level epsilon bounds this one too; like every audit it is a lower bound
    (a weak attack gives a small one), and its train/held-out split is a fixed partition (see
    :mod:`pftray.evaluation.audit`), so it is indicative."""
    from pftray.evaluation.audit import audit_run

    path = run_dir / "audit.json"
    want = {"timesteps": [int(t) for t in settings["timesteps"]], "repeats": int(settings["repeats"]),
            "max_clients": settings.get("max_clients")}
    rep = json.loads(path.read_text()) if path.exists() else None
    if rep is None or {k: rep["settings"].get(k) for k in want} != want:
        if not (run_dir / "clients.parquet").exists():  # no client was ever sampled: nothing to attack
            return {"audit_eps_lb": math.nan, "audit_auc": math.nan}
        rep = audit_run(run_dir, timesteps=tuple(want["timesteps"]), repeats=want["repeats"], canaries=False,
                        max_clients=want["max_clients"])
    shared = rep["clip_level_shared"]

    def num(x: Any) -> float:
        return math.inf if x == "inf" else (math.nan if x is None else float(x))

    return {"audit_eps_lb": num(shared.get("eps_lb")), "audit_auc": num(shared.get("auc"))}


def _client_means(clips: pd.DataFrame) -> pd.DataFrame:
    """Per-client means of :data:`METRICS` over clip rows (a metric a row lacks is NaN)."""
    cols = {m: pd.to_numeric(clips[m], errors="coerce") if m in clips else math.nan for m in METRICS}
    return clips[["client_id"]].assign(**cols).groupby("client_id", as_index=False).mean()


def unit_rows(cell: Cell, run_dir: Path, name: str, audit: dict[str, float] | None = None) -> pd.DataFrame:
    """Per-client means over clips of the run's final evaluation: the trained method's ``personalised`` rows
    (and, from a FedAvg run, the ``backbone`` rows as method ``backbone``; with ``eval.global_model``, the
    ``global`` rows as method ``<method>/global``), with the ground-truth label."""
    from pftray.evaluation.ground_truth import unreliable_clients
    from pftray.results import load_run

    res = load_run(run_dir)
    ev = res["eval"]
    ev = ev[ev["server_round"] == ev["server_round"].max()]
    labels = unreliable_clients(res["config"])
    frames = []
    pick = {"personalised": cell.method, "global": f"{cell.method}/global"}
    if cell.method == "fedavg":
        pick["backbone"] = "backbone"
    pick = {model: method for model, method in pick.items() if (ev["model"] == model).any()}
    for model, method in pick.items():
        per = _client_means(ev[ev["model"] == model])
        per["method"] = method
        frames.append(per)
    df = pd.concat(frames, ignore_index=True)
    meta = res["meta"]
    rounds = res["rounds"]
    eps = float(rounds["epsilon"].iloc[-1]) if len(rounds) and "epsilon" in rounds else math.nan
    audit = audit or {}
    return df.assign(factor=cell.factor, level=cell.level, seed=cell.seed, run=name,
                     unreliable=[labels.get(int(c), "") for c in df["client_id"]], epsilon=eps,
                     audit_eps_lb=audit.get("audit_eps_lb", math.nan), audit_auc=audit.get("audit_auc", math.nan),
                     wall_s=float(meta.get("bench_wall_s", meta.get("wall_s", math.nan)) or math.nan))


#: method name of the rows of :func:`autoencoder_rows`
AUTOENCODER = "autoencoder"


def _round_trip(model, x, reference, pose):
    """``D(E(x))``: frames in [-1, 1] through the backbone's autoencoder (posterior mean), [-1, 1]."""
    return model.decode(model.encode(x, reference, pose), reference, pose)


def autoencoder_rows(grid: Grid, config: Path, *, reconstruct=_round_trip) -> pd.DataFrame:
    """Rows of method :data:`AUTOENCODER` for the default cell (unreliable factor, fraction 0), one per (seed,
    client): the frozen backbone's autoencoder round trip ``D(E(x))`` of the very held-out frames the methods are
    scored on (the same clips, frames and metric code, :func:`pftray.fed.heldout.clip_scores`).

    Every method here (adapters on the UNet) generates through the backbone's frozen decoder, so this is what the
    decoder can show of the ground truth: a reference level for any UNet adapter on this backbone, not a bound
    (another latent than ``E(x)`` may decode closer, and methods do beat it on some clients). No training, no sampling: a few seconds a seed.
    ``reconstruct(model, frames, reference, pose)`` (frames in [-1, 1]) is the round trip; a test passes another.
    """
    import torch

    from pftray.config import load_config
    from pftray.fed.heldout import clip_scores, heldout_inputs, to01
    from pftray.fed.host import ClientProvider
    from pftray.model.factory import build_model

    frames = []
    base = {**grid.base, "data.unreliable_fraction": 0.0}
    for seed in grid.seeds:
        cfg = load_config(config, Cell("unreliable", "0", "fedavg", seed, tuple(base.items())).settings())
        with torch.random.fork_rng():
            torch.manual_seed(cfg.experiment.seed)  # as a run's client host does (a backbone-less model is random)
            model = build_model(cfg)
        provider = ClientProvider(cfg)
        rows = []
        for cid in range(min(cfg.fed.eval_clients, cfg.data.num_clients)):
            client = provider.get(cid)
            for x in heldout_inputs(client, cfg):
                n, clip = x.gt01.shape[0], x.clip
                with torch.no_grad():
                    rec = to01(reconstruct(model, x.gt01 * 2 - 1, x.reference, x.pose))
                rows.append({"client_id": cid, **clip_scores(rec, x.gt01, clip.mouth_box[:n], clip.mouth[:n],
                                                             clip.extras)})
        per = _client_means(pd.DataFrame(rows))
        frames.append(per.assign(method=AUTOENCODER, factor="unreliable", level="0", seed=seed,
                                 run=f"{AUTOENCODER}-s{seed}", unreliable="", epsilon=math.nan,
                                 audit_eps_lb=math.nan, audit_auc=math.nan, wall_s=0.0))
    return pd.concat(frames, ignore_index=True)


# ------------------------------------------------------------------------------------------------ the answer
def ci_table(units: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """Mean and 95 % t-interval per (factor, level, method, metric) over (seed, client) units."""
    from pftray.evaluation.stats import t_interval

    rows = []
    for (factor, level, method), g in units.groupby(["factor", "level", "method"], sort=False):
        for m in metrics:
            vals = g[m].dropna().to_numpy(float)
            ci = t_interval(vals)
            rows.append({"factor": factor, "level": level, "method": method, "metric": m, "mean": ci.mean,
                         "ci_low": ci.low, "ci_high": ci.high, "n": ci.n})
    return pd.DataFrame(rows)


def paired_vs(units: pd.DataFrame, metrics=METRICS, references=REFERENCES) -> pd.DataFrame:
    """Paired tests of each method against each reference method, within each (factor, level), over the (seed,
    client) units both evaluated: the mean difference ``method - reference`` with its 95 % t-interval."""
    from pftray.evaluation.stats import paired_difference

    rows = []
    for (factor, level), g in units.groupby(["factor", "level"], sort=False):
        for ref in references:
            r = g[g["method"] == ref].set_index(["seed", "client_id"])
            if r.empty:
                continue
            for method in [m for m in dict.fromkeys(g["method"]) if m != ref]:
                a = g[g["method"] == method].set_index(["seed", "client_id"])
                for m in metrics:
                    d = paired_difference(a[m], r[m])
                    if d["n_pairs"] >= 2:
                        rows.append({"factor": factor, "level": level, "method": method, "vs": ref, "metric": m,
                                     **d})
    return pd.DataFrame(rows)


def vs_clean(units: pd.DataFrame, metrics=METRICS) -> pd.DataFrame:
    """Each method of the unreliable factor at fraction f > 0 (and of the ``mixed`` factor, level ``mixed <f>``)
    against ITSELF at the unreliable factor's fraction 0, paired on the same (seed, client), separately on the
    clients that are reliable at f and on those that are unreliable at f: what the corrupted clients cost the
    others (through the shared adapter) and themselves."""
    from pftray.evaluation.stats import paired_difference

    u = units[units["factor"] == "unreliable"]
    if u.empty:
        return pd.DataFrame()
    clean_level = min(u["level"], key=float)
    levels = [("unreliable", lv) for lv in sorted(set(u["level"]) - {clean_level}, key=float)]
    levels += [("mixed", lv) for lv in dict.fromkeys(units.loc[units["factor"] == "mixed", "level"])]
    rows = []
    for method in dict.fromkeys(units.loc[units["factor"].isin(UNRELIABLE_FACTORS), "method"]):
        base = u[(u["method"] == method) & (u["level"] == clean_level)].set_index(["seed", "client_id"])
        if base.empty:
            continue
        for factor, level in levels:
            cur = units[(units["factor"] == factor) & (units["method"] == method) & (units["level"] == level)]
            cur = cur.set_index(["seed", "client_id"])
            for group, mask in (("reliable", cur["unreliable"] == ""), ("unreliable", cur["unreliable"] != "")):
                for m in metrics:
                    d = paired_difference(cur[mask][m], base[m])
                    if d["n_pairs"] >= 2:
                        rows.append({"method": method, "level": _harm_level(factor, level), "clients": group,
                                     "metric": m, **d})
    return pd.DataFrame(rows)


def vs_level(units: pd.DataFrame, factor: str, reference: str, metrics=METRICS) -> pd.DataFrame:
    """Each trained method of ``factor`` at every other level against ITSELF at level ``reference`` (TDC against
    ``lambda0``, DP against ``nodp``), paired on the same (seed, client): what the factor changes."""
    from pftray.evaluation.stats import paired_difference

    u = units[(units["factor"] == factor) & (units["method"] != "backbone")]
    rows = []
    for method in dict.fromkeys(u["method"]):
        base = u[(u["method"] == method) & (u["level"] == reference)].set_index(["seed", "client_id"])
        if base.empty:
            continue
        for level in [lv for lv in dict.fromkeys(u["level"]) if lv != reference]:
            cur = u[(u["method"] == method) & (u["level"] == level)].set_index(["seed", "client_id"])
            for m in metrics:
                d = paired_difference(cur[m], base[m])
                if d["n_pairs"] >= 2:
                    rows.append({"method": method, "level": level, "vs": reference, "metric": m, **d})
    return pd.DataFrame(rows)


#: decimals of a metric in the tables (jitter is a mean absolute frame difference of a few 1e-3)
DIGITS = {"jitter": 5, "ssim": 4}


def _fmt(x: float, digits: int = 3) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"


def _fm(metric: str, x: float) -> str:
    return _fmt(x, DIGITS.get(metric, 3))


def _delta(r: pd.Series) -> str:
    """``metric | Δ [low, high] | n`` cells of a paired-difference row."""
    m = r["metric"]
    return f"{m} | {_fm(m, r['mean_diff'])} [{_fm(m, r['ci_low'])}, {_fm(m, r['ci_high'])}] | {r['n_pairs']}"


def markdown(units: pd.DataFrame, aucs: pd.DataFrame | None = None, *, metrics=METRICS, command: str = "",
             missing_runs: tuple[int, int] | None = None, reused_runs: int = 0) -> str:
    """The summary; ``missing_runs`` = (not finished, of all) marks a partial grid; ``reused_runs`` counts the
    runs whose rows came from an earlier answer (``--reuse-units``)."""
    lines = ["# Federated benchmark (`python -m bench federation`)", ""]
    trained = units[units["method"] != AUTOENCODER]  # the autoencoder rows are not a run
    if missing_runs and missing_runs[0]:
        lines += [f"**Partial grid: {missing_runs[0]} of {missing_runs[1]} runs not finished (not in these "
                  "tables).**", ""]
    if reused_runs:
        lines += [f"**{reused_runs} of {trained['run'].nunique()} runs are reused rows of an earlier answer (`--reuse-units`: the "
                  "same run names, i.e. the same resolved configs; their run directories were not kept, so the "
                  "plots and AUCs leave them out).**", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += ["Mean ± 95 % t-interval over (seed, client) units of the held-out clips; Δ = paired mean difference "
              "(method − reference) with its 95 % t-interval over the same units.", ""]
    subsets = {"all clients": units}
    if (units["unreliable"] != "").any():
        subsets = {"reliable clients": units[units["unreliable"] == ""],
                   "unreliable clients": units[units["unreliable"] != ""], "all clients": units}
    for factor in dict.fromkeys(units["factor"]):
        for name, sub in subsets.items():
            sub = sub[sub["factor"] == factor]
            if sub.empty:
                continue
            lines += [f"## {factor}: {name}", ""]
            ci = ci_table(sub, metrics)
            head = "| level | method | n | " + " | ".join(metrics) + " |"
            lines += [head, "|" + "---|" * (3 + len(metrics))]
            for (level, method), g in ci.groupby(["level", "method"], sort=False):
                cells_ = [f"{_fm(r['metric'], r['mean'])} ± {_fm(r['metric'], (r['ci_high'] - r['ci_low']) / 2)}"
                          for _, r in g.iterrows()]
                lines.append(f"| {level} | {method} | {int(g['n'].max())} | " + " | ".join(cells_) + " |")
            lines.append("")
            pv = paired_vs(sub, metrics)
            if not pv.empty:
                lines += ["| level | method | vs | metric | Δ [95 % CI] | n | p (t) | p (Wilcoxon) |",
                          "|---|---|---|---|---|---:|---:|---:|"]
                for _, r in pv.iterrows():
                    lines.append(f"| {r['level']} | {r['method']} | {r['vs']} | {_delta(r)} | "
                                 f"{_fmt(r['t_pvalue'], 4)} | {_fmt(r['wilcoxon_pvalue'], 4)} |")
                lines.append("")
    vc = vs_clean(units, metrics)
    if not vc.empty:
        lines += ["## Unreliable clients: each method against itself without them", "",
                  "Δ = (fraction f) − (fraction 0) for the same method, paired on the same (seed, client); 'reliable' "
                  "= the clients whose own data is clean at f (the harm done to them through the shared adapter), "
                  "'unreliable' = the corrupted clients' own personalised models.", "",
                  "| method | f | clients | metric | Δ [95 % CI] | n | p (t) |", "|---|---|---|---|---|---:|---:|"]
        for _, r in vc.iterrows():
            lines.append(f"| {r['method']} | {r['level']} | {r['clients']} | {_delta(r)} | {_fmt(r['t_pvalue'], 4)} |")
        lines.append("")
    for factor, reference, title in (("tdc", "lambda0", "TDC: each method against itself without TDC"),
                                     ("dp", "nodp", "DP: each method against itself without DP")):
        vl = vs_level(units, factor, reference, metrics)
        if vl.empty:
            continue
        lines += [f"## {title}", "", f"Δ = (level) − ({reference}) for the same method, paired on the same (seed, "
                  "client), all clients.", "",
                  "| method | level | vs | metric | Δ [95 % CI] | n | p (t) | p (Wilcoxon) |",
                  "|---|---|---|---|---|---:|---:|---:|"]
        for _, r in vl.iterrows():
            lines.append(f"| {r['method']} | {r['level']} | {r['vs']} | {_delta(r)} | "
                         f"{_fmt(r['t_pvalue'], 4)} | {_fmt(r['wilcoxon_pvalue'], 4)} |")
        lines.append("")
    dp = units[units["factor"] == "dp"]
    if not dp.empty:
        lines += ["## DP cells: privacy beside utility", "",
                  "Accountant: the run's client-level ε at its δ. Audit: `pftray audit`'s clip-level membership "
                  "attack under the released shared adapter (members = training clips, non-members = held-out "
                  "clips), its 95 % empirical ε lower bound and AUC, mean over seeds; a valid ε must be ≥ it.", "",
                  "| level | method | accountant ε (client-level) | audit ε lower bound | audit AUC | "
                  + " | ".join(metrics[:3]) + " |", "|---|---|---:|---:|---:|" + "---:|" * 3]
        for (level, method), g in dp.groupby(["level", "method"], sort=False):
            runs = g.drop_duplicates("run")
            util = " | ".join(_fm(m, float(g[m].mean())) for m in metrics[:3])
            lines.append(f"| {level} | {method} | {_fmt(float(g['epsilon'].max()), 2)} | "
                         f"{_fmt(float(runs['audit_eps_lb'].mean()), 2)} | {_fmt(float(runs['audit_auc'].mean()))} "
                         f"| {util} |")
        lines.append("")
    if aucs is not None and not aucs.empty:
        lines += ["## ISFA score AUC against the ground-truth unreliable label, per corruption kind", "",
                  "AUC = P[signal of a reliable client > signal of a client of that kind]; 0.5 = the signal cannot "
                  "see the kind. Per-client means over the rounds, pooled over seeds and methods of the cell.", "",
                  "| level | kind | signal | AUC | n reliable | n unreliable |", "|---|---|---|---:|---:|---:|"]
        for _, r in aucs.iterrows():
            lines.append(f"| {r['level']} | {r['kind']} | {r['signal']} | {_fmt(r['auc'])} | {r['n_reliable']} | "
                         f"{r['n_unreliable']} |")
        lines.append("")
    walls = trained.drop_duplicates("run")["wall_s"]
    lines += [f"Runs: {trained['run'].nunique()}, run wall time {walls.sum() / 60:.1f} min in all.", ""]
    if (units["method"] == AUTOENCODER).any():
        lines += [f"`{AUTOENCODER}`: not a trained method but the frozen backbone's autoencoder round trip D(E(x)) of "
                  "the default cell's held-out frames, scored by the same code: what the decoder every method "
                  "generates through can show: a reference level for the UNet adapters, not a bound.", ""]
    return "\n".join(lines)


def reliability_aucs(units: pd.DataFrame, run_dirs: dict[str, Path]) -> pd.DataFrame:
    """AUC per kind of the unreliable and ``mixed`` factors' cells (level ``mixed <f>``), over per-client means of
    each run, pooled per level."""
    from pftray.config import config_from_dict
    from pftray.evaluation.ground_truth import unreliable_clients
    from pftray.evaluation.reliability import auc_by_kind, signal_table
    from pftray.results import load_run

    out = []
    cells_ = units[units["factor"].isin(UNRELIABLE_FACTORS) & (units["method"] != "backbone")]
    cells_ = cells_.assign(level=[_harm_level(f, lv) for f, lv in zip(cells_["factor"], cells_["level"])])
    for level, g in cells_.groupby("level", sort=False):
        tables = []
        for run in [r for r in dict.fromkeys(g["run"]) if r in run_dirs]:
            res = load_run(run_dirs[run])
            cfg = config_from_dict(res["config"])
            labels = unreliable_clients(cfg)
            if not labels:
                continue
            t = signal_table(res["clients"], labels, alpha=cfg.fed.isfa_alpha)
            per = t.groupby("client_id", as_index=False).agg(score=("score", "mean"), id_sim=("id_sim", "mean"),
                                                             temp_stab=("temp_stab", "mean"), kind=("kind", "first"))
            tables.append(per.assign(client_id=per["client_id"].astype(str) + f"@{run}"))
        if tables:
            out.append(auc_by_kind(pd.concat(tables, ignore_index=True), unit="client").assign(level=level))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame()


def _finish(fig, ax, path: Path, *, xlabel: str, ylabel: str, title: str) -> Path:
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plots(units: pd.DataFrame, run_dirs: dict[str, Path], out: Path, metric: str = "shift_psnr") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pftray.results import load_run

    paths = []
    fig, ax = plt.subplots(figsize=(6.4, 4))
    default = units[(units["factor"] == "unreliable") & (units["level"] == units["level"].min())]
    for method in dict.fromkeys(default["method"]):
        if method in ("backbone", AUTOENCODER):  # untrained: a level, drawn as a line
            if metric in default:
                ax.axhline(float(default.loc[default["method"] == method, metric].mean()), linestyle="--",
                           color="grey" if method == "backbone" else "black", linewidth=1,
                           label=method if method == "backbone" else "autoencoder round trip")
            continue
        series = []
        model = "global" if method.endswith("/global") else "personalised"
        for run in [r for r in dict.fromkeys(default[default["method"] == method]["run"]) if r in run_dirs]:
            ev = load_run(run_dirs[run])["eval"]
            ev = ev[ev["model"] == model]
            if metric in ev:
                series.append(ev.groupby("server_round")[metric].mean())
        if series:
            s = pd.concat(series, axis=1).mean(axis=1)
            ax.plot(s.index, s.to_numpy(), marker="o", label=method)
    paths.append(_finish(fig, ax, out / "rounds.png", xlabel="round",
                         ylabel=f"{metric} (mean over clients, seeds)",
                         title="Quality against rounds (default cell; /global = shared adapter alone)"))
    dp = units[units["factor"] == "dp"]
    if not dp.empty:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        for method, g in dp.groupby("method"):
            pts = g.groupby("level").agg(eps=("epsilon", "max"), y=(metric, "mean")).reset_index()
            pts["eps"] = pts["eps"].where(np.isfinite(pts["eps"]), np.nan)
            ax.plot(pts["eps"].fillna(pts["eps"].max() * 1.5 if pts["eps"].notna().any() else 16), pts["y"],
                    marker="o", linestyle="", label=method)
        paths.append(_finish(fig, ax, out / "utility_vs_epsilon.png", ylabel=metric,
                             xlabel="accountant's client-level ε (no-DP cells drawn right of the largest ε)",
                             title="Utility against ε (DP cohort)"))
    return paths


def _one_thread() -> None:
    """Worker initialiser of ``--jobs``: one torch thread per process (two threads under CPU contention run
    several times slower than one)."""
    import os

    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


def _run_and_audit(cell: Cell, config: Path, work: Path, backbone: Path | None, name: str,
                   audit: dict[str, Any] | None) -> tuple[Path, dict[str, float] | None]:
    path = run_cell(cell, config, work, backbone=backbone, name=name)
    return path, (audit_cell(path, audit) if cell.factor == "dp" and audit else None)


def _reusable(prev: pd.DataFrame | None, cell: Cell, name: str) -> pd.DataFrame | None:
    """The rows of ``cell`` in an earlier answer's units (``--reuse-units``), matched by run name (a hash of the
    run's whole resolved config, so only a run of the very same settings matches), factor and level."""
    if prev is None:
        return None
    rows = prev[(prev["run"] == name) & (prev["factor"] == cell.factor) & (prev["level"] == cell.level)]
    return rows.reset_index(drop=True) if len(rows) else None


def run_grid(grid: Grid, *, config: Path, work: Path, out: Path, factors: tuple[str, ...], command: str = "",
             progress=print, jobs: int = 1, report_only: bool = False,
             reuse_units: pd.DataFrame | None = None) -> dict[str, Any]:
    """Run (or keep) every cell of ``factors``, ``jobs`` runs at a time (each in its own process with one torch
    thread when ``jobs`` > 1), then write the answer to ``out``. ``report_only`` runs nothing: the answer is
    written from the cells already finished under ``work`` (a partial grid says so in its summary).
    ``reuse_units`` (an earlier ``units.parquet``): a cell whose run directory is not finished under ``work`` but
    whose run (same name, i.e. the same resolved config) has rows there is not run; its rows are taken as they are
    (the summary counts them; the plots and AUCs, which read run directories, leave them out)."""
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    todo = [c for c in cells(grid) if c.factor in factors]
    needs_backbone = grid.cohort_pretrain and any(c.factor == "dp" for c in todo)
    backbone = cohort_backbone(grid, config, work, build=not report_only) if needs_backbone else None
    named = [(cell, backbone if cell.factor == "dp" else None) for cell in todo]
    named = [(cell, bb, cell.run_name(config, bb)) for cell, bb in named]
    unique: dict[str, tuple[Cell, Path | None]] = {}
    reused: dict[tuple[str, str, str], pd.DataFrame] = {}
    for cell, bb, name in named:
        rows = None if _finished(work / "runs" / name) else _reusable(reuse_units, cell, name)
        if rows is not None:
            reused[(name, cell.factor, cell.level)] = rows
        else:
            unique.setdefault(name, (cell, bb))
    named = [x for x in named if (x[2], x[0].factor, x[0].level) not in reused]
    missing = 0
    if report_only:
        kept = {n: v for n, v in unique.items() if _finished(work / "runs" / n)}
        missing = len(unique) - len(kept)
        if not kept and not reused:
            raise FileNotFoundError(f"{work}: no finished cell of this grid to report")
        unique, named = kept, [x for x in named if x[2] in kept]
    t0 = time.perf_counter()
    results: dict[str, tuple[Path, dict[str, float] | None]] = {}

    def report(i: int, name: str) -> None:
        cell = unique[name][0]
        progress(f"[{i}/{len(unique)}] {cell.factor}={cell.level} {cell.method} seed {cell.seed}: "
                 f"{results[name][0]} ({time.perf_counter() - t0:.0f} s so far)")

    if jobs <= 1:
        for i, (name, (cell, bb)) in enumerate(unique.items(), 1):
            results[name] = _run_and_audit(cell, config, work, bb, name, grid.audit)
            report(i, name)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(max_workers=jobs, mp_context=mp.get_context("spawn"),
                                 initializer=_one_thread) as pool:
            futures = {pool.submit(_run_and_audit, cell, config, work, bb, name, grid.audit): name
                       for name, (cell, bb) in unique.items()}
            for i, fut in enumerate(as_completed(futures), 1):
                results[futures[fut]] = fut.result()
                report(i, futures[fut])
    frames, run_dirs = [], {}
    for cell, _bb, name in named:
        path, audit = results[name]
        run_dirs[name] = path
        frames.append(unit_rows(cell, path, name, audit))
    frames += list(reused.values())
    if grid.autoencoder and "unreliable" in factors and 0.0 in grid.fractions:
        frames.append(autoencoder_rows(grid, config))
    units = pd.concat(frames, ignore_index=True)
    units.to_parquet(out / "units.parquet", index=False)
    aucs = reliability_aucs(units, run_dirs)
    if not aucs.empty:
        aucs.to_parquet(out / "reliability_auc.parquet", index=False)
    n_reused = len({name for name, _f, _lv in reused})
    (out / "summary.md").write_text(markdown(units, aucs, command=command,
                                             missing_runs=(missing, missing + len(unique) + n_reused),
                                             reused_runs=n_reused))
    figs = plots(units, run_dirs, out)
    return {"units": units, "aucs": aucs, "summary": out / "summary.md", "plots": figs,
            "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench federation", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(REPO / "configs" / "quickstart.yaml"))
    ap.add_argument("--work", default=str(REPO / "runs" / "bench-federation"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "federation"))
    ap.add_argument("--quick", action="store_true", help="the small grid (first answer; not the full benchmark)")
    ap.add_argument("--severity", type=float, default=1.0, help="data.shift_severity of every cell")
    ap.add_argument("--seeds", type=int, default=None, help="seeds per cell (default 3; --quick 2)")
    factors = [*UNRELIABLE_FACTORS, "tdc", "dp"]
    ap.add_argument("--factors", nargs="+", default=factors, choices=factors)
    ap.add_argument("--cohort-clients", type=int, default=100)
    ap.add_argument("--cohort-rate", type=float, default=0.2)
    ap.add_argument("--jobs", type=int, default=1,
                    help="runs at a time, each in its own process with one torch thread (2 on a 2-core machine)")
    ap.add_argument("--report-only", action="store_true",
                    help="run nothing: write the answer from the cells already finished under --work")
    ap.add_argument("--reuse-units", default=None, metavar="PARQUET",
                    help="an earlier answer's units.parquet: cells not finished under --work whose run (same "
                         "resolved config) has rows there are not run, and their rows are reused (said in the "
                         "summary)")
    ap.add_argument("--kinds", nargs="+", default=list(DAMAGING_KINDS),
                    help="data.unreliable_kinds of the unreliable factor (default: the damaging kind)")
    ap.add_argument("--mixed-kinds", nargs="+", default=None,
                    help="kinds the mixed factor cycles over its unreliable clients (default: the six harmful "
                         "kinds; none with --quick)")
    args = ap.parse_args(argv)
    if args.cohort_clients < 100 or args.cohort_clients * args.cohort_rate < 20:
        print("python -m bench federation: the DP cohort needs >= 100 clients and >= 20 expected per round "
              f"(got {args.cohort_clients} x {args.cohort_rate})", file=sys.stderr)
        return 2
    grid = default_grid(quick=args.quick, severity=args.severity, seeds=args.seeds,
                        cohort_clients=args.cohort_clients, cohort_rate=args.cohort_rate, kinds=tuple(args.kinds),
                        mixed_kinds=None if args.mixed_kinds is None else tuple(args.mixed_kinds))
    command = "python -m bench federation " + " ".join(argv if argv is not None else sys.argv[1:])
    res = run_grid(grid, config=Path(args.config), work=Path(args.work), out=Path(args.out),
                   factors=tuple(args.factors), command=command.strip(), jobs=max(1, args.jobs),
                   report_only=args.report_only,
                   reuse_units=None if args.reuse_units is None else pd.read_parquet(args.reuse_units))
    print(res["summary"].read_text())
    print(f"wrote {res['summary']}, {Path(args.out) / 'units.parquet'}, " + ", ".join(map(str, res["plots"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

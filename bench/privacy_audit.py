"""Accountant epsilon next to the membership-inference audit's empirical lower bound, under the valid accounting
(Poisson sampling, ``fed.sample_rate``), for three settings:

* ``quickstart``: ``configs/quickstart.yaml`` with ``privacy.noise_multiplier=5.0445 privacy.clipping_norm=0.05
  fed.sample_rate=0.5`` (20 rounds, 8 clients). The clip-level audit (:func:`pftray.evaluation.audit.audit_run`,
  timesteps 100/300/500, 4 noise draws): the personalised and the shared model's AUC, TPR at 1 % FPR and
  epsilon lower bound, beside the accountant's client-level epsilon from ``privacy.json``.
* ``cohort``: a small fast model at 32 px (``TINY``-like sizes, random backbone) with ``--clients`` regular
  clients plus ``--canaries`` canaries each included with probability 1/2
  (:func:`pftray.evaluation.audit.canary_config`), Poisson sampling at ``--sample-rate``, client-level DP with
  ``--noise`` and ``--clip``. Reported: the accountant's epsilon at delta = 1e-5 and the client-level canary
  audit (the rigorous one-run bound of Steinke, Nasr, Jagielski 2023) with its AUC.
* ``cohort-nodp``: the same cohort, the same canaries (same data folder, same coin flips), the same sampling
  and clipping, no noise: a positive control of the canary audit.

Resumable: a stage whose ``bench/results/privacy_audit_<stage>.json`` exists is skipped (its RESULT line is
printed again); an interrupted run is resumed from its latest checkpoint; a finished run is audited without
training. One ``RESULT {json}`` line per stage. Runs are in-process (no Ray).

    python -m bench privacy-audit [--stages quickstart cohort cohort-nodp] [--work runs/bench-privacy-audit]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Any

STAGES = ("quickstart", "cohort", "cohort-nodp")
QUICKSTART_SETS = ["privacy.noise_multiplier=5.0445", "privacy.clipping_norm=0.05", "fed.sample_rate=0.5"]


def cohort_dict(*, clients: int, rounds: int, sample_rate: float, noise: float, clip: float,
                local_steps: int) -> dict[str, Any]:
    """The cohort's experiment: ``tests/tinycfg.py``'s TINY sizes at 32 px, a larger federation."""
    return {
        "experiment": {"name": "privacy-audit-cohort", "seed": 0},
        "data": {"resolution": 32, "num_clients": clients, "clips_per_client": 2, "heldout_clips": 1,
                 "frames_per_clip": 8, "n_mels": 16, "audio_window": 8, "public_identities": 4,
                 "public_clips_per_identity": 1, "unreliable_fraction": 0.0},
        "model": {"vae_channels": [16, 32], "unet_channels": [32, 32], "attention_head_dim": 8,
                  "cross_attention_dim": 32, "sample_steps": 2},
        "lora": {"shared_rank": 4, "identity_rank": 2},
        "train": {"local_steps": local_steps, "batch_clips": 1, "window": 2},
        "fed": {"strategy": "fedavg", "rounds": rounds, "sample_rate": sample_rate, "clients_per_round": 1, "eval_every": 0,
                "eval_clients": 1},
        "privacy": {"noise_multiplier": noise, "clipping_norm": clip, "target_delta": 1e-5},
        "eval": {"clips": 1, "frames": 4, "sample_steps": 2},
        "runtime": {"resident_clients": 2},
    }


def train(cfg, run_dir: Path) -> dict[str, Any]:
    """Train ``cfg`` in ``run_dir`` (resume it when it holds a started run; nothing to do when it is finished)."""
    from pftray.runtime.driver import run_federated

    if run_dir.exists() and not (run_dir / "meta.json").exists():
        shutil.rmtree(run_dir)  # died before the run was prepared: start over
    t0 = time.perf_counter()
    if run_dir.exists():
        _, summary = run_federated(resume=str(run_dir), use_ray=False)
    else:
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        _, summary = run_federated(cfg, out=str(run_dir), use_ray=False)
    meta = json.loads((run_dir / "meta.json").read_text())
    return {"status": summary.get("status", meta.get("status")), "rounds": meta.get("rounds_completed"),
            "wall_s": meta.get("wall_s"), "this_call_s": time.perf_counter() - t0}


def update_norms(run_dir: Path) -> dict[str, Any]:
    """Median / max of the clients' (pre-clipping) shared-adapter update norms, to read the choice of C."""
    import numpy as np

    from pftray.results import RunDir

    df = RunDir(run_dir).table("clients")
    if "update_norm" not in df:
        return {}
    v = df["update_norm"].to_numpy(np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return {}
    return {"median": float(np.median(v)), "p90": float(np.quantile(v, 0.9)), "max": float(v.max()),
            "updates": int(v.size)}


def canary_audit(run_dir: Path, *, server_round: int | None, timesteps: tuple[int, ...],
                 repeats: int, seed: int = 0) -> dict[str, Any]:
    """The client-level canary audit alone, with :func:`pftray.evaluation.audit.audit_run`'s statistic (calibrated
    denoising error under the global shared adapter, a data-independent identity adapter), in the shape of its
    report. The clip-level part of ``audit_run`` (every trained regular client) is skipped: at 100+ clients it
    costs far more than the canaries on this machine, and the canaries are the audit comparable to the
    accountant's client-level epsilon."""
    import numpy as np
    import torch

    from pftray.data import load_client_shard
    from pftray.evaluation.audit import CANARY_MANIFEST, clip_errors, one_run_guesses
    from pftray.fed.client import ClientState
    from pftray.model.factory import initial_identity_state
    from pftray.privacy.audit_stats import roc_auc, tpr_at_fpr
    from pftray.results import RunDir
    from pftray.runtime.driver import initial_shared, load_run_model

    cfg, trainer, global_shared, _ = load_run_model(run_dir, server_round=server_round)
    if server_round is None:
        server_round = int((run_dir / "checkpoints" / "LATEST").read_text().strip()[len("round-"):-len(".pt")])
    root = Path(cfg.data.source)
    manifest = json.loads((root / CANARY_MANIFEST).read_text())
    delta = cfg.privacy.target_delta if cfg.privacy.target_delta > 0 else 1e-5
    kw = {"timesteps": tuple(int(t) for t in timesteps), "repeats": repeats, "seed": seed}
    with torch.random.fork_rng():  # initial_shared seeds torch's global generator
        reference_shared = initial_shared(cfg)
    fresh = ClientState(initial_identity_state(trainer.model, 0, cfg.experiment.seed))  # B = 0: no effect
    clients = [load_client_shard(root / rec["shard"]) for rec in manifest["canaries"]]
    errors = {}
    for name, shared in (("model", global_shared), ("reference", reference_shared)):
        trainer.load(shared, fresh)  # one load per model (audit_run reloads per client)
        errors[name] = [clip_errors(trainer, c, c.train + c.heldout, **kw) for c in clients]
    s = np.array([float(-(e - r).mean()) for e, r in zip(errors["model"], errors["reference"], strict=True)])
    m = np.array([bool(rec["included"]) for rec in manifest["canaries"]])
    block: dict[str, Any] = {"num_canaries": int(m.size), "num_included": int(m.sum())}
    if m.all() or not m.any():
        block.update(auc=None, tpr_at_1pct_fpr=None)
    else:
        block.update(auc=roc_auc(s[m], s[~m]), tpr_at_1pct_fpr=tpr_at_fpr(s[m], s[~m], 0.01),
                     mean_score_members=float(s[m].mean()), mean_score_nonmembers=float(s[~m].mean()))
    block.update(one_run_guesses(m, s, delta=delta))
    rounds = RunDir(run_dir).table("rounds")
    eps = None
    if cfg.privacy.noise_multiplier > 0 and "epsilon" in rounds:
        at = rounds.loc[rounds["server_round"] == server_round, "epsilon"]
        eps = float(at.iloc[-1]) if len(at) else None
    accountant = {"epsilon": eps, "delta": delta, "noise_multiplier": cfg.privacy.noise_multiplier,
                  "rounds": server_round} if cfg.privacy.noise_multiplier > 0 else None
    return {"server_round": server_round, "settings": {**kw, "delta": delta, "calibrate": True},
            "accountant": accountant, "client_level_canaries": block}


def summarise(stage: str, command: str, report: dict[str, Any], run: dict[str, Any], audit_s: float,
              extra: dict[str, Any]) -> dict[str, Any]:
    acc = report.get("accountant") or {}

    def block(name: str) -> dict[str, Any] | None:
        b = report.get(name)
        if b is None:
            return None
        keep = ("auc", "tpr_at_1pct_fpr", "eps_lb", "num_members", "num_nonmembers", "num_canaries",
                "num_included", "num_guesses", "num_correct", "mean_score_members", "mean_score_nonmembers")
        out = {k: b[k] for k in keep if k in b}
        if "one_run" in b:
            out.update(num_guesses=b["one_run"]["num_guesses"], num_correct=b["one_run"]["num_correct"])
        return out

    return {
        "stage": stage,
        "command": command,
        "accountant_epsilon": acc.get("epsilon"),
        "accountant_delta": acc.get("delta"),
        "noise_multiplier": acc.get("noise_multiplier"),
        "rounds": report.get("server_round"),
        "personalised": block("clip_level_personalised"),
        "shared": block("clip_level_shared"),
        "canaries": block("client_level_canaries"),
        "audit_settings": report.get("settings"),
        "train": run,
        "audit_s": audit_s,
        **extra,
    }


def stage_quickstart(args, work: Path) -> tuple[str, Any, dict[str, Any]]:
    from pftray.config import load_config

    sets = [*QUICKSTART_SETS, *args.quickstart_set]
    cfg = load_config(args.quickstart_config, sets)
    command = f"pftray run {args.quickstart_config} " + " ".join(f"--set {s}" for s in sets)
    return command, cfg, {"config": args.quickstart_config, "set": sets}


def canary_data(args, work: Path, base) -> Any:
    """The cohort's data folder with canaries (made once; both cohort stages read the same one)."""
    from pftray.evaluation.audit import CANARY_MANIFEST, canary_config

    data = work / "cohort-data"
    manifest = data / CANARY_MANIFEST
    if manifest.exists():
        m = json.loads(manifest.read_text())
        if m["num_regular"] != args.clients or m["num_canaries"] != args.canaries:
            raise SystemExit(f"{data} holds {m['num_regular']} clients + {m['num_canaries']} canaries, asked for "
                             f"{args.clients} + {args.canaries}: use another --work")
        n = m["num_regular"] + sum(r["included"] for r in m["canaries"])
        return base.replace(**{"data.source": str(data.resolve()), "data.num_clients": n})
    if data.exists():
        shutil.rmtree(data)  # an interrupted preparation
    data.mkdir(parents=True)
    return canary_config(base, args.canaries, data_dir=data, seed=args.canary_seed)


def stage_cohort(args, work: Path, *, dp: bool) -> tuple[str, Any, dict[str, Any]]:
    from pftray.config import config_from_dict

    noise = args.noise if dp else 0.0
    d = cohort_dict(clients=args.clients, rounds=args.rounds, sample_rate=args.sample_rate, noise=noise,
                    clip=args.clip, local_steps=args.local_steps)
    cfg = canary_data(args, work, config_from_dict(d))
    command = (f"python -m bench privacy-audit --stages {'cohort' if dp else 'cohort-nodp'} --clients {args.clients} "
               f"--canaries {args.canaries} --rounds {args.rounds} --sample-rate {args.sample_rate} "
               f"--noise {args.noise if dp else 0} --clip {args.clip} --local-steps {args.local_steps}")
    return command, cfg, {"regular_clients": args.clients, "canaries_made": args.canaries,
                          "registered_clients": cfg.data.num_clients, "sample_rate": args.sample_rate,
                          "expected_clients_per_round": args.sample_rate * cfg.data.num_clients,
                          "clipping_norm": args.clip, "local_steps": args.local_steps,
                          "fed_rounds": args.rounds, "noise_multiplier_set": noise}


def print_result(res: dict[str, Any]) -> None:
    print("RESULT " + json.dumps(res), flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument("--work", default="runs/bench-privacy-audit", help="run directories and the canary data")
    ap.add_argument("--results", default="bench/results", help="privacy_audit_<stage>.json go here")
    ap.add_argument("--quickstart-config", default="configs/quickstart.yaml")
    ap.add_argument("--quickstart-set", action="append", default=[], help="extra KEY=VALUE for the quickstart")
    ap.add_argument("--clients", type=int, default=100, help="cohort: regular clients")
    ap.add_argument("--canaries", type=int, default=40, help="cohort: canaries, each included with prob. 1/2")
    ap.add_argument("--canary-seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--sample-rate", type=float, default=0.2, help="cohort: Poisson sampling rate q")
    ap.add_argument("--noise", type=float, default=1.0, help="cohort: noise multiplier z of the DP stage")
    ap.add_argument("--clip", type=float, default=1.0,
                    help="cohort: clipping norm C (both stages; just above the update norms at 5 local steps)")
    ap.add_argument("--local-steps", type=int, default=5)
    ap.add_argument("--timesteps", type=int, nargs="+", default=[100, 300, 500])
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--audit-only", action="store_true",
                    help="no training: audit each stage's latest checkpoint as it is (a time-boxed run); an "
                         "unfinished run's figures go to privacy_audit_<stage>_round<r>.json")
    args = ap.parse_args(argv)
    from pftray.evaluation.audit import audit_run

    work, results = Path(args.work), Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for stage in args.stages:
        out = results / f"privacy_audit_{stage.replace('-', '_')}.json"
        if out.exists():
            print(f"{stage}: {out} exists, skipped", flush=True)
            print_result(json.loads(out.read_text()))
            continue
        if stage == "quickstart":
            command, cfg, extra = stage_quickstart(args, work)
            run_dir = work / "quickstart_dp"
        else:
            command, cfg, extra = stage_cohort(args, work, dp=stage == "cohort")
            run_dir = work / stage.replace("-", "_")
        if args.audit_only:
            if not (run_dir / "checkpoints" / "LATEST").exists():
                print(f"{stage}: no checkpoint in {run_dir}, skipped", flush=True)
                continue
            meta = json.loads((run_dir / "meta.json").read_text())
            run = {"status": meta.get("status"), "rounds": meta.get("rounds_completed"), "wall_s": meta.get("wall_s")}
        else:
            print(f"{stage}: training in {run_dir}", flush=True)
            run = train(cfg, run_dir)
            print(f"{stage}: {run}; auditing", flush=True)
        t0 = time.perf_counter()
        kw = {"timesteps": tuple(args.timesteps), "repeats": args.repeats}
        report = (audit_run(run_dir, **kw) if stage == "quickstart"
                  else canary_audit(run_dir, server_round=None, **kw))
        res = summarise(stage, command, report, run, time.perf_counter() - t0,
                        {**extra, "update_norms": update_norms(run_dir)})
        done = report["server_round"] >= cfg.fed.rounds
        res["complete"] = done
        target = out if done else results / f"privacy_audit_{stage.replace('-', '_')}_round{report['server_round']}.json"
        target.write_text(json.dumps(res, indent=2))
        print_result(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

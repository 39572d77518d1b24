"""``pftray`` command line.

Exit codes (:mod:`pftray.errors`): 0 done; 2 bad config or input, including a bad flag (the message names the
key, flag or file); 1 runtime failure (the message says what failed and where the partial results are); 130
interrupted. Every error is one line on stderr, never a traceback (``PFTRAY_DEBUG=1`` re-raises it).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from pftray.config import explain, load_config
from pftray.errors import EXIT_INPUT, EXIT_INTERRUPTED, ConfigError, InputError, error_line, exit_code

__all__ = ["ArgParser", "ConfigError", "InputError", "build_parser", "dispatch", "main"]


class ArgParser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line naming the flag (exit 2), like every input error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(EXIT_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _load(args, *, check_paths: bool = True) -> Any:
    """The config of CONFIG + --set; input paths absolute and (unless ``check_paths`` is off) existing."""
    return load_config(args.config, args.set or [], check_paths=check_paths)


def _fmt_eta(elapsed: float, done: int, total: int) -> str:
    if done <= 0:
        return "?"
    return f"{elapsed / done * (total - done):.0f}s"


class RoundPrinter:
    def __init__(self, start_round: int = 0):
        self.t0 = time.perf_counter()
        self.start = start_round

    def __call__(self, row: dict[str, Any]) -> None:
        r, n = row.get("server_round", 0), row.get("rounds", 0)
        elapsed = time.perf_counter() - self.t0
        parts = [f"round {r}/{n}", f"loss {row.get('train_loss', math.nan):.4f}",
                 f"val {row.get('val_loss', math.nan):.4f}",
                 f"clients ok {row.get('n_ok', 0)}/{row.get('n_sampled', 0)} failed {row.get('n_failed', 0)}"]
        if isinstance(row.get("epsilon"), float) and math.isfinite(row["epsilon"]):
            parts.append(f"eps {row['epsilon']:.2f}")
        if "psnr" in row:
            parts.append(f"psnr {row['psnr']:.2f} lip_sync {row.get('lip_sync', math.nan):.2f}")
        parts.append(f"elapsed {elapsed:.0f}s eta {_fmt_eta(elapsed, r - self.start, n - self.start)}")
        if row.get("status") not in (None, "ok"):
            parts.append(f"[{row['status']}: {row.get('message', '')}]")
        print(" | ".join(parts), flush=True)


# ---------------------------------------------------------------------------------------------- commands


def cmd_run(args) -> int:
    from pftray.runtime.driver import run_federated
    from pftray.summary import print_run_summary

    if args.resume:
        if args.config or args.set:
            raise InputError("--resume DIR takes the config of the run directory; drop CONFIG and --set")
        run, summary = run_federated(resume=args.resume, use_ray=not args.local, progress=RoundPrinter())
        if summary.get("already_finished"):
            why = ("privacy budget exhausted" if summary["status"] == "budget_exhausted"
                   else f"all {summary['of_rounds']} rounds done")
            print(f"run {run.path} is complete ({why}, {summary['rounds']}/{summary['of_rounds']} rounds); "
                  "nothing to resume, nothing changed")
    else:
        if not args.config:
            raise InputError("pftray run needs CONFIG (or --resume DIR)")
        cfg = _load(args)
        run, summary = run_federated(cfg, out=args.out, use_ray=not args.local, progress=RoundPrinter())
    print_run_summary(run.path, summary)
    return 0


def cmd_pretrain(args) -> int:
    from tqdm import tqdm

    from pftray.model.pretrain import pretrain

    cfg = _load(args, check_paths=False)  # model.backbone is what pretraining writes
    out = Path(args.out or cfg.model.backbone or "checkpoints/backbone.pt")
    bars: dict[str, Any] = {}

    def progress(phase: str, step: int, total: int, loss: float) -> None:
        if phase not in bars:
            for b in bars.values():
                b.close()
            bars[phase] = tqdm(total=total, initial=step - 1, desc=f"pretrain {phase}", unit="step")
        bars[phase].update(1)
        bars[phase].set_postfix(loss=f"{loss:.4f}")

    res = pretrain(cfg, out, progress=progress)
    for b in bars.values():
        b.close()
    print(json.dumps(res["times"]), f"-> {res['out']}")
    return 0


def cmd_data_prepare(args) -> int:
    from pftray.data.ingest import prepare_dataset

    src = Path(args.source)
    if not src.is_dir():
        raise InputError(f"--source {src}: not a folder of <speaker>/<clip>.mp4 files")
    rep = prepare_dataset(src, Path(args.out), resolution=args.resolution, frames_per_clip=args.frames_per_clip)
    print(json.dumps(_jsonable(rep), indent=2, default=str))
    return 0


def _check_privacy_args(args) -> None:
    """Name the flag of a bad accounting input (the accountant itself only names its own parameters)."""
    checks = [("--sample-rate", args.sample_rate, 0 < args.sample_rate <= 1, "must lie in (0, 1]"),
              ("--rounds", args.rounds, args.rounds >= 1, "must be >= 1"),
              ("--delta", args.delta, 0 < args.delta < 1, "must lie in (0, 1)")]
    if args.what == "epsilon":
        z = args.noise_multiplier
        checks.insert(0, ("--noise-multiplier", z, math.isfinite(z) and z >= 0, "must be finite and >= 0"))
    else:
        e = args.target_epsilon
        checks.insert(0, ("--target-epsilon", e, math.isfinite(e) and e > 0, "must be finite and > 0"))
    for flag, value, ok, rule in checks:
        if not ok:  # NaN fails every comparison, so it lands here too
            raise InputError(f"{flag} {value}: {rule}")


def cmd_privacy(args) -> int:
    from pftray.privacy.accounting import calibrate_noise, compute_epsilon

    _check_privacy_args(args)
    if args.what == "epsilon":
        eps = compute_epsilon(noise_multiplier=args.noise_multiplier, sample_rate=args.sample_rate,
                              rounds=args.rounds, delta=args.delta, accountant=args.accountant)
        out = {"epsilon": eps}
    else:
        z = calibrate_noise(target_epsilon=args.target_epsilon, sample_rate=args.sample_rate, rounds=args.rounds,
                            delta=args.delta, accountant=args.accountant)
        out = {"noise_multiplier": z}
    out.update(sample_rate=args.sample_rate, rounds=args.rounds, delta=args.delta, accountant=args.accountant,
               guarantee="client-level (epsilon, delta)-DP of the sampled Gaussian mechanism over `rounds` rounds")
    if args.what == "epsilon":
        out["noise_multiplier"] = args.noise_multiplier
    else:
        out["target_epsilon"] = args.target_epsilon
    print(json.dumps(out))
    return 0


def cmd_audit(args) -> int:
    from pftray.privacy.audit import audit_run

    run = Path(args.run_dir)
    if not (run / "config.yaml").exists():
        raise InputError(f"{run}: not a pftray run directory (no config.yaml)")
    res = audit_run(run, timesteps=tuple(args.timesteps), repeats=args.repeats, seed=args.seed,
                    server_round=args.server_round, calibrate=not args.no_calibrate)
    for name, block in res.items():
        if isinstance(block, dict) and "auc" in block:
            print(f"{name:26s} AUC {block['auc']:.3f}  TPR@1%FPR {block.get('tpr_at_1pct_fpr', math.nan):.3f}  "
                  f"eps_lb {block.get('eps_lb', math.nan):.3f}")
    acc = res.get("accountant") or {}
    print(f"accountant epsilon (client-level): {acc.get('epsilon', 'n/a')}  -> {run / 'audit.json'}")
    return 0


def cmd_config(args) -> int:
    if args.config:
        cfg = _load(args)
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    else:
        print("\n".join(explain()))
    return 0


def _jsonable(obj: Any) -> Any:
    import dataclasses

    if dataclasses.is_dataclass(obj):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


# -------------------------------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    ap = ArgParser(prog="pftray", description="Privacy-aware federated talking-head training on Ray")
    sub = ap.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser, required: bool = True) -> None:
        p.add_argument("config", nargs=None if required else "?", help="YAML preset (configs/*.yaml)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. fed.rounds=3")

    p = sub.add_parser("run", help="run federated training")
    with_config(p, required=False)
    p.add_argument("--out", help="run directory (default: <experiment.out_dir>/<name>-<time>)")
    p.add_argument("--resume", metavar="DIR", help="resume the run in DIR from its latest checkpoint")
    p.add_argument("--local", action="store_true", help="run in this process without Ray (debugging)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("pretrain", help="pre-train the backbone on the public synthetic identities")
    with_config(p)
    p.add_argument("--out", help="backbone file (default: model.backbone)")
    p.set_defaults(fn=cmd_pretrain)

    p = sub.add_parser("data", help="data tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("prepare", help="ingest <speaker>/<clip>.mp4 videos into per-client shards")
    q.add_argument("--source", required=True)
    q.add_argument("--out", required=True)
    q.add_argument("--resolution", type=int, default=64)
    q.add_argument("--frames-per-clip", type=int, default=16)
    q.set_defaults(fn=cmd_data_prepare)

    p = sub.add_parser("privacy", help="privacy accounting (prints JSON)")
    psub = p.add_subparsers(dest="what", required=True)
    for name in ("epsilon", "noise"):
        q = psub.add_parser(name)
        if name == "epsilon":
            q.add_argument("--noise-multiplier", type=float, required=True)
        else:
            q.add_argument("--target-epsilon", type=float, required=True)
        q.add_argument("--sample-rate", type=float, required=True)
        q.add_argument("--rounds", type=int, required=True)
        q.add_argument("--delta", type=float, default=1e-5)
        q.add_argument("--accountant", choices=("rdp", "prv"), default="rdp")
        q.set_defaults(fn=cmd_privacy)

    from pftray.evaluation import add_compare_parser, add_eval_parser, add_report_parser
    from pftray.tune import add_sweep_parser

    add_eval_parser(sub)
    add_report_parser(sub)
    add_compare_parser(sub)
    add_sweep_parser(sub)

    p = sub.add_parser("audit", help="membership-inference audit of a run (AUC, TPR@1%%FPR, empirical epsilon)")
    p.add_argument("run_dir")
    p.add_argument("--timesteps", type=int, nargs="+", default=[100, 300, 500])
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--round", type=int, default=None, dest="server_round")
    p.add_argument("--no-calibrate", action="store_true", help="raw denoising error instead of the calibrated score")
    p.set_defaults(fn=cmd_audit)

    p = sub.add_parser("config", help="print the resolved config, or every key with its default and reason")
    with_config(p, required=False)
    p.set_defaults(fn=cmd_config)
    return ap


def dispatch(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; every error becomes one line on stderr and its exit code."""
    import os

    args = parser.parse_args(argv)
    command = getattr(args, "command", "")
    try:
        return int(args.fn(args) or 0)
    except KeyboardInterrupt:
        print("pftray: interrupted; the run directory keeps everything up to the last checkpoint "
              "(resume with `pftray run --resume DIR`)", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - the CLI's contract: one clear line, exit 2 or 1
        code = exit_code(exc)
        line = error_line(exc, command)
        if code != EXIT_INPUT and command == "run":
            line += ("" if line.endswith(".") else ".") + " Partial results (tables, checkpoints) are in the run directory; resume with --resume DIR."
        print(line, file=sys.stderr)
        if "PFTRAY_DEBUG" in os.environ:
            raise
        return code


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

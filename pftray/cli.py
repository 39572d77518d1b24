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
from pftray.entry import QUIET_IN_WORKERS, ArgParser, dispatch, quiet_library_warnings  # noqa: F401 - re-exported
from pftray.errors import ConfigError, InputError

__all__ = ["ArgParser", "ConfigError", "InputError", "build_parser", "dispatch", "main"]


def _load(args, *, check_paths: bool = True) -> Any:
    """The config of CONFIG + --set; input paths absolute and (unless ``check_paths`` is off) existing."""
    return load_config(args.config, args.set or [], check_paths=check_paths)


class EtaEstimator:
    """Seconds left in a run, from the durations of the rounds this process ran after its first one.

    The first round a process runs also pays for start-up (Ray, worker actors, model build, compilation), so it
    says little about the rounds after it: the estimate is ``mean(duration of round k, k > first) * rounds
    left``, with the duration of round ``k`` the time between the ends of rounds ``k - 1`` and ``k``. A resumed
    run counts only the rounds of this process. When a report skips rounds (the Ray driver is polled), each
    skipped round is charged an equal share of the gap."""

    def __init__(self) -> None:
        self.durations: list[float] = []
        self._last: tuple[int, float] | None = None  # (round, time) of the latest report

    def observe(self, server_round: int, t: float) -> None:
        """Round ``server_round`` ended at time ``t`` (seconds on any monotonic clock)."""
        if self._last is not None and server_round <= self._last[0]:
            return
        if self._last is not None:
            k = server_round - self._last[0]
            self.durations += [(t - self._last[1]) / k] * k
        self._last = (server_round, t)

    def eta(self, total_rounds: int) -> float | None:
        """Seconds for the rounds left after the latest one; None until a round after the first has ended."""
        if not self.durations or self._last is None:
            return None
        return sum(self.durations) / len(self.durations) * max(0, total_rounds - self._last[0])


def _fmt_s(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}min" if seconds < 7200 else f"{seconds / 3600:.1f}h"


class RoundPrinter:
    """``pftray run``'s progress: one line per finished client (:meth:`client_done`, which the pool calls as each
    fit report arrives) and one per finished round (``__call__``, with an :class:`EtaEstimator` ETA)."""

    def __init__(self, *, clock=time.perf_counter, file=None):
        self.clock = clock
        self.t0 = clock()
        self.file = file
        self.eta = EtaEstimator()

    def _print(self, line: str) -> None:
        print(line, file=self.file if self.file is not None else sys.stdout, flush=True)

    def client_done(self, rep: dict[str, Any]) -> None:
        fit = rep.get("fit_s")  # absent under secure aggregation
        line = (f"  round {rep.get('server_round', '?')} client {rep.get('client_id', '?')}: "
                f"{rep.get('status', '?')}, fit {f'{fit:.1f}s' if isinstance(fit, (int, float)) else 'n/a'} "
                f"on {rep.get('worker', '?')}")
        if "n_done" in rep and "n_clients" in rep:
            line += f" ({rep['n_done']}/{rep['n_clients']})"
        if rep.get("status") not in (None, "ok") and rep.get("message"):
            line += f" [{str(rep['message'])[:120]}]"
        self._print(line)

    def __call__(self, row: dict[str, Any]) -> None:
        r, n = row.get("server_round", 0), row.get("rounds", 0)
        now = self.clock()
        self.eta.observe(r, now)
        eta = self.eta.eta(n)
        parts = [f"round {r}/{n}", f"loss {row.get('train_loss', math.nan):.4f}",
                 f"val {row.get('val_loss', math.nan):.4f}",
                 f"clients ok {row.get('n_ok', 0)}/{row.get('n_sampled', 0)} failed {row.get('n_failed', 0)}"]
        if isinstance(row.get("epsilon"), float) and math.isfinite(row["epsilon"]):
            parts.append(f"eps {row['epsilon']:.2f}")
        if "psnr" in row:
            parts.append(f"psnr {row['psnr']:.2f} lip_sync {row.get('lip_sync', math.nan):.2f}")
        parts.append(f"elapsed {_fmt_s(now - self.t0)} eta "
                     + (_fmt_s(eta) if eta is not None else "after the next round (the first includes start-up)"))
        if row.get("status") not in (None, "ok"):
            parts.append(f"[{row['status']}: {row.get('message', '')}]")
        self._print(" | ".join(parts))



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
    sys.stderr.flush()  # what libraries warned during the run comes before the summary
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
    if args.heldout_clips < 0 or args.frames_per_clip < 1:
        raise InputError("--heldout-clips must be >= 0 and --frames-per-clip >= 1")
    rep = prepare_dataset(src, Path(args.out), resolution=args.resolution, frames_per_clip=args.frames_per_clip,
                          heldout_clips=args.heldout_clips, crop=args.crop, progress_bar=False if args.no_progress else None)
    print(json.dumps(_jsonable(rep), indent=2, default=str))
    return 0


def cmd_generate(args) -> int:
    from pftray.pipeline import generate_video

    out = generate_video(args.run_dir, args.out, audio=args.audio, client=args.client, reference=args.reference,
                         server_round=args.server_round, pose=args.pose_video, steps=args.steps, seed=args.seed,
                         audio_norm=args.audio_norm, device=args.device)
    who = f"client {out.info['client']}" if out.info["client"] is not None else f"reference {args.reference}"
    print(f"{args.out}: {out.num_frames} frames ({out.duration_s:.2f} s at {out.fps} fps, audio "
          f"{out.info['source_duration_s']:.2f} s) of {who}, round {out.info['server_round']}, "
          f"{out.info['steps']} DDIM steps, seed {out.info['seed']}")
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
    from pftray.evaluation.audit import audit_run

    run = Path(args.run_dir)
    if not (run / "config.yaml").exists():
        raise InputError(f"{run}: not a pftray run directory (no config.yaml)")
    res = audit_run(run, timesteps=tuple(args.timesteps), repeats=args.repeats, seed=args.seed,
                    server_round=args.server_round, calibrate=not args.no_calibrate, max_clients=args.max_clients)
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
    q.add_argument("--heldout-clips", type=int, default=1,
                   help="the last K clips of each speaker (file-name order) are held out for evaluation")
    q.add_argument("--crop", choices=("face", "center"), default="face",
                   help="face: track the face and crop around it (default); center: centre square crop, for "
                        "videos that are already face crops")
    q.add_argument("--no-progress", action="store_true", help="no progress bar on stderr (shown only on a terminal)")
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
    p.add_argument("--max-clients", type=int, default=None, help="audit only the first N trained clients (cheaper)")
    p.set_defaults(fn=cmd_audit)

    p = sub.add_parser("generate", help="drive a trained run with an audio file: an mp4 of a client or a photo")
    p.add_argument("run_dir", help="run directory (made by `pftray run`)")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--client", type=int, metavar="K", help="a client of the run: its identity adapter and frame")
    who.add_argument("--reference", metavar="PHOTO", help="a photo of a new person (face-cropped with dlib)")
    p.add_argument("--audio", required=True, metavar="FILE", help="any audio file PyAV reads (wav, mp3, m4a, ...)")
    p.add_argument("--out", required=True, metavar="OUT.mp4", help="mp4 to write (atomically)")
    p.add_argument("--round", type=int, default=None, dest="server_round", help="checkpoint round (default: latest)")
    p.add_argument("--pose-video", metavar="VIDEO", help="take the head pose from this video (default: neutral)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: eval.sample_steps)")
    p.add_argument("--seed", type=int, default=None, help="noise seed (default: experiment.seed)")
    p.add_argument("--audio-norm", choices=("clip", "file"), default="clip",
                   help="standardise the audio features per training-length clip around each frame (as in training) "
                        "or once over the whole file")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("config", help="print the resolved config, or every key with its default and reason")
    with_config(p, required=False)
    p.set_defaults(fn=cmd_config)
    return ap


def main(argv: list[str] | None = None) -> int:
    return dispatch(build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())

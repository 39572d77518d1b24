"""``pftray eval RUN_DIR``: personalised evaluation of a finished (or running) run from its checkpoint.

For every evaluation client (the first ``fed.eval_clients`` clients, as during training, or ``--clients K``)
and each of its held-out clips, frames are generated exactly as :func:`pftray.fed.evaluate.evaluate_client`
generates them (same DDIM seed per client and clip, so the numbers agree with the training-time evaluation
at equal settings) by

* ``personalised``: the round's global shared adapter + the client's identity adapter,
* ``backbone``: the pre-trained backbone alone (both adapters disabled),
* ``copy``: the reference frame repeated (the trivial baseline),

and scored with the training-time metrics (:func:`pftray.fed.evaluate.clip_scores`) plus

* ``lpips`` (LPIPS-Alex; ``NaN`` and a ``lpips_missing`` reason offline without the AlexNet file),
* ``id_sim_synth`` (cosine identity similarity under the synthetic-benchmark encoder, a metric of its own and
  not a face-recogniser ``id_sim``; ``NaN`` + reason when no encoder file is given),
* set metric ``fid`` per model over all generated vs all real frames (summary only; missing offline).

Outputs (never the training-time ``RUN/eval.parquet``)::

    RUN/eval/eval-round-N.parquet     one row per client per clip per model
    RUN/eval/summary-round-N.json     settings, per-model means, set metrics, missing reasons, sample files
    RUN/samples/eval-round-N/         client-K.mp4 (+ audio), client-K.png, client-K.gif,
                                      client-K_across-rounds.png (when several checkpoints exist)
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pftray.errors import InputError
from pftray.metrics.base import Missing, is_missing

MODELS = ("personalised", "backbone", "copy")
EVAL_SUBDIR = "eval"
_ROUND_FILE = re.compile(r"eval-round-(\d+)\.parquet$")
_CKPT_FILE = re.compile(r"round-(\d+)\.pt$")


@dataclass
class ClipSample:
    """Generated frames of one held-out clip: ``gt01`` and each ``outputs[model]`` are ``[T, 3, H, W]`` in [0, 1]."""

    client_id: int
    clip: Any
    gt01: torch.Tensor
    outputs: dict[str, torch.Tensor]


def _to01(x: torch.Tensor) -> torch.Tensor:
    return ((x.float().clamp(-1, 1) + 1) / 2).cpu()


def generation_seed(*, seed: int, client_id: int, clip_index: int) -> int:
    """DDIM noise seed of one evaluated clip: the formula of :func:`pftray.fed.evaluate.evaluate_client`."""
    return seed * 100_003 + client_id * 101 + clip_index


@torch.no_grad()
def sample_client(
    trainer,
    client,
    state,
    global_shared: np.ndarray,
    *,
    cfg,
    baseline: bool = True,
    personalised: bool = True,
) -> list[ClipSample]:
    """Generate the held-out clips of ``client`` (``cfg.eval.clips`` clips, ``cfg.eval.frames`` frames each)."""
    from pftray.fed.client import ClientState, initial_identity_state

    if not (baseline or personalised):
        raise ValueError("sample_client: nothing to generate (baseline=False and personalised=False)")
    model = trainer.model
    if state is None:
        state = ClientState(initial_identity_state(model, client.client_id, cfg.experiment.seed))
    trainer.load(global_shared, state)
    device = trainer.device
    ref = torch.from_numpy(client.reference).permute(2, 0, 1).float().div(127.5).sub(1).to(device)
    out = []
    for ci, clip in enumerate(client.heldout[: cfg.eval.clips]):
        n = min(cfg.eval.frames, clip.num_frames)
        gt = torch.from_numpy(clip.frames[:n]).permute(0, 3, 1, 2).float().div(255.0)
        audio = torch.from_numpy(clip.audio_feats[:n]).to(device)
        pose = torch.from_numpy(clip.pose[:n]).to(device)
        seed = generation_seed(seed=cfg.experiment.seed, client_id=client.client_id, clip_index=ci)
        outputs: dict[str, torch.Tensor] = {}
        args = (model, ref, audio, pose)
        if personalised:
            outputs["personalised"] = _generate(*args, steps=cfg.eval.sample_steps, seed=seed)
        if baseline:
            model.unet.disable_adapters()
            try:
                outputs["backbone"] = _generate(*args, steps=cfg.eval.sample_steps, seed=seed)
            finally:
                model.unet.enable_adapters()
                model.unet.set_adapters(["shared", "identity"])
            outputs["copy"] = _to01(ref[None].expand(n, -1, -1, -1))
        out.append(ClipSample(client.client_id, clip, gt, outputs))
    return out


def _generate(model, ref, audio, pose, *, steps: int, seed: int) -> torch.Tensor:
    """DDIM frames in [0, 1]; every model gets the same seed, so only the weights differ between them."""
    return _to01(model.sample(ref, audio, pose, steps=steps, generator=torch.Generator().manual_seed(seed)))


def score_samples(samples: list[ClipSample], suite, *, server_round: int) -> list[dict[str, Any]]:
    """One table row per clip per model: training-time metrics + lpips + id_sim_synth (flattened, with
    ``<name>_missing`` reason columns for metrics that could not be computed)."""
    from pftray.fed.evaluate import clip_scores
    from pftray.metrics.identity import id_sim
    from pftray.metrics.suite import flatten_for_table

    encoder = (
        suite.synth_id_encoder
        if suite.synth_id_encoder is not None
        else Missing(
            "no synthetic identity encoder given (--id-encoder PATH; train one with scripts/train_id_encoder.py)"
        )
    )
    rows = []
    for s in samples:
        clip = s.clip
        n = s.gt01.shape[0]
        for name, pred in s.outputs.items():
            extra = {"lpips": suite.lpips(pred, s.gt01), "id_sim_synth": id_sim(encoder, pred, s.gt01)}
            rows.append(
                {
                    "server_round": server_round,
                    "client_id": s.client_id,
                    "clip": clip.clip_id,
                    "model": name,
                    "frames": n,
                    **clip_scores(pred, s.gt01, clip.mouth_box[:n], clip.mouth[:n]),
                    **flatten_for_table(extra),
                }
            )
    return rows


def set_metrics(samples: list[ClipSample], suite) -> dict[str, dict[str, float | str | None]]:
    """FID per model over all generated frames vs all ground-truth frames: ``{model: {"fid", "fid_missing"}}``."""
    out: dict[str, dict[str, float | str | None]] = {}
    if not samples:
        return out
    real = torch.cat([s.gt01 for s in samples])
    for name in samples[0].outputs:
        pred = torch.cat([s.outputs[name] for s in samples])
        if real.shape[0] < 2:
            value: float | Missing = Missing(f"FID needs >= 2 frames per set, got {real.shape[0]}")
        else:
            value = suite.set_metrics(pred, real)["fid"]
        out[name] = (
            {"fid": None, "fid_missing": value.reason}
            if is_missing(value)
            else {"fid": float(value), "fid_missing": None}
        )
    return out


def checkpoint_rounds(run_dir: str | Path) -> list[int]:
    """Rounds with a checkpoint file ``checkpoints/round-NNNNN.pt``, ascending."""
    d = Path(run_dir) / "checkpoints"
    return sorted(int(m.group(1)) for p in d.glob("round-*.pt") if (m := _CKPT_FILE.search(p.name)))


def latest_eval_file(run_dir: str | Path) -> Path | None:
    """The ``RUN/eval/eval-round-N.parquet`` with the largest N, or None."""
    files = [
        (int(m.group(1)), p)
        for p in (Path(run_dir) / EVAL_SUBDIR).glob("eval-round-*.parquet")
        if (m := _ROUND_FILE.search(p.name))
    ]
    return max(files)[1] if files else None


def _round_weights(run_dir: Path, server_round: int):
    """``(global_shared, states)`` of another checkpointed round (the model itself is reused)."""
    from pftray.fed.host import ClientStateStore

    blob = torch.load(
        run_dir / "checkpoints" / f"round-{server_round:05d}.pt", map_location="cpu", weights_only=False
    )
    store = ClientStateStore(run_dir / "clients", resident=0)
    return blob["global_shared"], (lambda cid: store.load(cid, before_round=server_round + 1))


def _model_means(df: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    metrics = [
        c
        for c in df.columns
        if c not in ("server_round", "client_id", "clip", "model", "frames")
        and not c.endswith("_missing")
        and pd.api.types.is_numeric_dtype(df[c])
    ]
    out = {}
    for name, g in df.groupby("model", sort=False):
        out[str(name)] = {m: (None if g[m].isna().all() else float(g[m].mean())) for m in metrics}
    return out


def _missing_reasons(df: pd.DataFrame) -> dict[str, list[str]]:
    out = {}
    for c in df.columns:
        if c.endswith("_missing"):
            reasons = sorted({str(r) for r in df[c].dropna() if str(r)})
            if reasons:
                out[c.removesuffix("_missing")] = reasons
    return out


def evaluate_run(
    run_dir: str | Path,
    *,
    server_round: int | None = None,
    clients: int | None = None,
    clips: int | None = None,
    frames: int | None = None,
    steps: int | None = None,
    id_encoder: str | Path | None = None,
    lpips_weights: str | Path | None = None,
    fid_weights: str | Path | None = None,
    save_samples: bool = True,
    video_scale: int = 0,
    across_rounds: bool = True,
) -> dict[str, Any]:
    """Evaluate ``run_dir`` at ``server_round`` (default: its latest checkpoint); returns the summary dict
    (also written as ``RUN/eval/summary-round-N.json``). See the module docstring for what is written."""
    from pftray.fed.host import ClientProvider
    from pftray.metrics.identity import SynthIdentityEncoder
    from pftray.metrics.suite import MetricSuite
    from pftray.results import atomic_write_text, write_parquet
    from pftray.runtime.driver import load_run_model

    t0 = time.perf_counter()
    run_dir = Path(run_dir)
    for name, value in (("clients", clients), ("clips", clips), ("frames", frames), ("steps", steps)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if video_scale < 0:
        raise ValueError(f"video_scale must be >= 0 (0 = automatic), got {video_scale}")
    encoder = None
    peek = _peek_config(run_dir)
    if id_encoder is None:
        id_encoder = getattr(peek.eval, "id_encoder", "") or None
    if id_encoder is not None:
        if not Path(id_encoder).is_file():
            raise FileNotFoundError(
                f"--id-encoder {id_encoder}: no such file (train one with scripts/train_id_encoder.py)"
            )
        encoder = SynthIdentityEncoder.load(id_encoder)
    # Without a backbone file the base weights are the seeded random init: seed as ClientHost does before it
    # builds its trainer, so that the model evaluated here is the model that was trained.
    torch.manual_seed(peek.experiment.seed)
    cfg, trainer, global_shared, states = load_run_model(run_dir, server_round=server_round)
    rounds_avail = checkpoint_rounds(run_dir)
    if server_round is None:
        latest = (run_dir / "checkpoints" / "LATEST").read_text().strip()
        server_round = int(_CKPT_FILE.search(latest).group(1))
    overrides = {
        k: v
        for k, v in (("eval.clips", clips), ("eval.frames", frames), ("eval.sample_steps", steps))
        if v is not None
    }
    if overrides:
        cfg = cfg.replace(**overrides)
    provider = ClientProvider(cfg)
    n_clients = min(clients if clients is not None else cfg.fed.eval_clients, provider.num_clients)
    suite = MetricSuite(lpips_weights, fid_weights, synth_id_encoder=encoder, device=trainer.device)

    all_samples: list[ClipSample] = []
    rows: list[dict[str, Any]] = []
    sample_files: list[str] = []
    sample_dir = run_dir / "samples" / f"eval-round-{server_round}"
    for cid in range(n_clients):
        client = provider.get(cid)
        samples = sample_client(trainer, client, states(cid), global_shared, cfg=cfg)
        rows += score_samples(samples, suite, server_round=server_round)
        all_samples += samples
        if save_samples and samples:
            sample_files += [str(p) for p in write_client_samples(sample_dir, samples[0], scale=video_scale)]
    if save_samples and across_rounds and len(rounds_avail) > 1:
        others = {r: _round_weights(run_dir, r) for r in rounds_avail}
        for cid in range(n_clients):
            client = provider.get(cid)
            per_round = {}
            for r, (shared_r, states_r) in others.items():
                s = sample_client(
                    trainer,
                    client,
                    states_r(cid),
                    shared_r,
                    cfg=cfg.replace(**{"eval.clips": 1}),
                    baseline=False,
                )
                per_round[r] = s[0]
            sample_files.append(
                str(
                    write_across_rounds(
                        sample_dir / f"client-{cid}_across-rounds.png", per_round, scale=video_scale
                    )
                )
            )

    df = pd.DataFrame(rows)
    out_dir = run_dir / EVAL_SUBDIR
    table = out_dir / f"eval-round-{server_round}.parquet"
    write_parquet(df, table)
    summary = {
        "run_dir": str(run_dir),
        "server_round": server_round,
        "checkpoint_rounds": rounds_avail,
        "settings": {
            "clients": n_clients,
            "clips": cfg.eval.clips,
            "frames": cfg.eval.frames,
            "sample_steps": cfg.eval.sample_steps,
            "id_encoder": str(id_encoder) if id_encoder else None,
        },
        "rows": len(df),
        "table": str(table),
        "means": _model_means(df) if len(df) else {},
        "set_metrics": set_metrics(all_samples, suite),
        "missing": _missing_reasons(df) if len(df) else {},
        "samples": sample_files,
        "wall_s": time.perf_counter() - t0,
    }
    atomic_write_text(
        out_dir / f"summary-round-{server_round}.json",
        json.dumps(summary, indent=2, default=_json_default, allow_nan=False),
    )
    return summary


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return str(obj)


def _peek_config(run_dir: Path):
    from pftray.config import load_config

    p = run_dir / "config.yaml"
    if not p.exists():
        raise FileNotFoundError(f"{run_dir}: not a pftray run directory (no config.yaml)")
    return load_config(p)


def _auto_scale(height: int, scale: int) -> int:
    return scale if scale > 0 else max(1, math.ceil(128 / height))


def write_client_samples(out_dir: Path, sample: ClipSample, *, scale: int = 0) -> list[Path]:
    """mp4 (side by side, clip audio), PNG grid and GIF of one clip: ground truth | backbone | personalised."""
    from pftray.data.types import SAMPLES_PER_FRAME
    from pftray.evaluation.video import labelled_grid, side_by_side, to_uint8, write_gif, write_mp4, write_png

    scale = _auto_scale(sample.gt01.shape[2], scale)
    n = sample.gt01.shape[0]
    panels = [("ground truth", to_uint8(sample.gt01))]
    panels += [(k, to_uint8(sample.outputs[k])) for k in ("backbone", "personalised") if k in sample.outputs]
    stem = f"client-{sample.client_id}"
    movie = side_by_side(panels, scale=scale)
    audio = np.asarray(sample.clip.audio[: n * SAMPLES_PER_FRAME], np.float32)
    grid = labelled_grid(panels, scale=scale)
    return [
        write_mp4(out_dir / f"{stem}.mp4", movie, audio),
        write_png(out_dir / f"{stem}.png", grid),
        write_gif(out_dir / f"{stem}.gif", movie),
    ]


def write_across_rounds(path: Path, per_round: dict[int, ClipSample], *, scale: int = 0) -> Path:
    """PNG grid: ground truth, then the personalised frames of each checkpointed round, one row each."""
    from pftray.evaluation.video import labelled_grid, to_uint8, write_png

    first = next(iter(per_round.values()))
    rows = [("ground truth", to_uint8(first.gt01))]
    rows += [(f"round {r}", to_uint8(s.outputs["personalised"])) for r, s in sorted(per_round.items())]
    return write_png(path, labelled_grid(rows, scale=_auto_scale(first.gt01.shape[2], scale)))


# ------------------------------------------------------------------------------------------------ CLI


def cmd_eval(args) -> int:
    run = Path(args.run_dir)
    if not (run / "config.yaml").exists():
        raise InputError(f"{run}: not a pftray run directory (no config.yaml)")
    if args.round is not None and args.round not in checkpoint_rounds(run):
        raise InputError(
            f"--round {args.round}: no checkpoint in {run / 'checkpoints'} "
            f"(available: {checkpoint_rounds(run)}; only the last two are kept)"
        )
    for flag in ("clients", "clips", "frames", "steps"):
        v = getattr(args, flag)
        if v is not None and v < 1:
            raise InputError(f"--{flag} must be >= 1, got {v}")
    if args.id_encoder and not Path(args.id_encoder).is_file():
        raise InputError(
            f"--id-encoder {args.id_encoder}: no such file (make one with scripts/train_id_encoder.py)"
        )
    summary = evaluate_run(
        run,
        server_round=args.round,
        clients=args.clients,
        clips=args.clips,
        frames=args.frames,
        steps=args.steps,
        id_encoder=args.id_encoder,
        lpips_weights=args.lpips_weights,
        fid_weights=args.fid_weights,
        save_samples=not args.no_samples,
        video_scale=args.video_scale,
    )
    print(format_summary(summary))
    return 0


def format_summary(summary: dict[str, Any]) -> str:
    """A few human lines: per-model means of the headline metrics, missing metrics and where files went."""
    head = ("psnr", "ssim", "mouth_psnr", "lpips", "lip_sync", "jitter", "id_sim_synth")
    lines = [f"eval of round {summary['server_round']}: {summary['rows']} rows -> {summary['table']}"]
    for model, means in summary["means"].items():
        vals = " ".join(
            f"{k} {means[k]:.4f}" if means.get(k) is not None else f"{k} n/a" for k in head if k in means
        )
        fid = summary["set_metrics"].get(model, {}).get("fid")
        lines.append(f"  {model:<13} {vals} fid {'n/a' if fid is None else f'{fid:.2f}'}")
    for metric, reasons in summary["missing"].items():
        lines.append(f"  missing {metric}: {reasons[0]}")
    fid_missing = {v["fid_missing"] for v in summary["set_metrics"].values() if v.get("fid_missing")}
    for reason in sorted(fid_missing):
        lines.append(f"  missing fid: {reason}")
    if summary["samples"]:
        lines.append(f"  samples: {Path(summary['samples'][0]).parent}")
    return "\n".join(lines)


def add_eval_parser(sub) -> None:
    """Register ``pftray eval RUN_DIR`` on an argparse subparsers object."""
    p = sub.add_parser("eval", help="personalised evaluation of a run from its checkpoint (writes RUN/eval/)")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--round", type=int, default=None, help="checkpointed round (default: the latest)")
    p.add_argument(
        "--clients", type=int, default=None, help="evaluate the first K clients (default: fed.eval_clients)"
    )
    p.add_argument("--clips", type=int, default=None, help="held-out clips per client (default: eval.clips)")
    p.add_argument("--frames", type=int, default=None, help="frames per clip (default: eval.frames)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: eval.sample_steps)")
    p.add_argument(
        "--id-encoder",
        default=None,
        metavar="PATH",
        help="SynthIdentityEncoder file for id_sim_synth (scripts/train_id_encoder.py)",
    )
    p.add_argument(
        "--lpips-weights",
        default=None,
        metavar="PATH",
        help="torchvision AlexNet weights (default: $TORCH_HOME/hub/checkpoints; absent -> missing)",
    )
    p.add_argument(
        "--fid-weights",
        default=None,
        metavar="PATH",
        help="pytorch-fid Inception weights (default: $TORCH_HOME/hub/checkpoints; absent -> missing)",
    )
    p.add_argument("--no-samples", action="store_true", help="skip videos, grids and GIFs")
    p.add_argument(
        "--video-scale", type=int, default=0, help="integer upscaling of samples (0 = to >= 128 px)"
    )
    p.set_defaults(fn=cmd_eval)

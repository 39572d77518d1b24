"""When does a trained model open the mouth? Lagged lip sync of finished runs on the synthetic shifted scenario.

``lip_sync`` (:mod:`pftray.fed.heldout`) is the correlation of the generated mouth openness with the ground truth's
at lag 0. On the shifted scenario every client's mouth leads its audio by ``data.shift_severity * 1.5`` frames
(:mod:`pftray.data.synthetic`), so a model can be low at lag 0 for two different reasons: it opens the mouth in time
with the audio, like the public identities the backbone was trained on (then the correlation peaks at a positive
lag, the generated mouth lagging the ground truth), or it hardly moves the mouth at all (then the openness varies
little, whatever the lag). This bench tells the two apart. For each run directory it regenerates the held-out clips
of the evaluated clients with :func:`pftray.fed.heldout.sample_heldout` (the training-time evaluation's sampler and
DDIM seeds) over ``--frames`` frames of ``--clips`` clips, measures the openness of every model's frames with
:func:`pftray.data.synthetic.estimate_mouth_openness` and writes, per model:

* ``r[k]``: the mean over clips of ``corr(openness_generated[t + k], openness_truth[t])`` for k in
  [-``--max-lag``, ``--max-lag``] (:func:`pftray.metrics.sync.offset_correlations`; k > 0: the generated mouth lags);
* ``peak lag``: the k of the largest mean ``r[k]``;
* ``motion``: the mean over clips of the openness's standard deviation over the clip, over the same for the
  ground-truth frames measured by the same estimator (1 = the ground truth's amount of mouth motion).

The rows ``truth frames`` (the ground-truth frames measured by the same estimator) and ``audio timing`` (the
clip's audio-synchronous openness ``extras["mouth_base"]``, no lead: what a model that follows the audio without
the lead would show, up to the estimator) calibrate the others.

    python -m bench mouth-timing RUN_DIR [RUN_DIR ...] [--frames 16 --clips 2 --out bench/results/mouth_timing.md]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

TRUTH = "truth frames"
AUDIO = "audio timing"


def timing_row(pred: list[np.ndarray], truth: list[np.ndarray], *, max_lag: int,
               scale: list[np.ndarray] | None = None) -> dict[str, float]:
    """The summary of one model over clips: ``r[k]`` (mean over the clips where it is computable), the peak lag
    and the motion ratio: the mean std of ``pred`` over the mean std of ``scale`` (default ``truth``; pass the
    ground-truth frames measured by the same estimator, so that the estimator's units cancel)."""
    from pftray.metrics.sync import offset_correlations

    if len(pred) != len(truth) or not pred:
        raise ValueError(f"need the same number (>= 1) of generated and ground-truth series, got {len(pred)} "
                         f"and {len(truth)}")
    per_lag: dict[int, list[float]] = {k: [] for k in range(-max_lag, max_lag + 1)}
    for p, g in zip(pred, truth):
        for k, r in offset_correlations(p, g, max_offset=max_lag).items():
            per_lag[k].append(r)
    row = {f"r[{k:+d}]": (float(np.mean(v)) if v else math.nan) for k, v in per_lag.items()}
    finite = {k: float(np.mean(v)) for k, v in per_lag.items() if v}
    row["peak lag"] = float(max(finite, key=lambda k: (finite[k], -abs(k)))) if finite else math.nan
    truth_std = float(np.mean([np.std(g) for g in (truth if scale is None else scale)]))
    row["motion"] = float(np.mean([np.std(p) for p in pred])) / truth_std if truth_std > 0 else math.nan
    return row


def run_series(run_dir: Path, *, frames: int, clips: int) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """``{model: (openness series, ground-truth openness series)}`` over the evaluated clients' clips of a run;
    the series of :data:`TRUTH` are the ground-truth frames measured by the estimator."""
    from pftray.data.synthetic import estimate_mouth_openness
    from pftray.fed.heldout import sample_heldout
    from pftray.fed.host import ClientProvider
    from pftray.runtime.driver import load_run_model

    cfg, trainer, global_shared, states = load_run_model(run_dir)
    cfg = cfg.replace(**{"eval.clips": clips, "eval.frames": frames})
    provider = ClientProvider(cfg)
    out: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}

    def add(name: str, series: np.ndarray, truth: np.ndarray) -> None:
        out.setdefault(name, ([], []))
        out[name][0].append(np.asarray(series, dtype=np.float64))
        out[name][1].append(np.asarray(truth, dtype=np.float64))

    for cid in range(min(cfg.fed.eval_clients, provider.num_clients)):
        client = provider.get(cid)
        for s in sample_heldout(trainer, client, states(cid), global_shared, cfg=cfg):
            n = s.gt01.shape[0]
            box, truth = s.clip.mouth_box[:n], s.clip.mouth[:n]
            for name, pred01 in s.outputs.items():
                if name != "copy":  # a still frame has no timing
                    add(name, estimate_mouth_openness(pred01.permute(0, 2, 3, 1).numpy(), box,
                                                      value_range=(0.0, 1.0)), truth)
            add(TRUTH, estimate_mouth_openness(s.gt01.permute(0, 2, 3, 1).numpy(), box, value_range=(0.0, 1.0)),
                truth)
            if "mouth_base" in s.clip.extras:
                add(AUDIO, s.clip.extras["mouth_base"][:n], truth)
    return out


def markdown(tables: dict[str, dict[str, dict[str, float]]], *, command: str, max_lag: int) -> str:
    lags = [f"r[{k:+d}]" for k in range(-max_lag, max_lag + 1)]
    lines = ["# Mouth timing of trained runs (`python -m bench mouth-timing`)", "", f"Command: `{command}`", "",
             "r[k] = mean over clips of corr(generated openness[t + k], true openness[t]); k > 0: the generated "
             "mouth lags the truth. motion = the openness's std over the truth frames' (same estimator).", ""]
    for run, rows in tables.items():
        lines += [f"## {run}", "", "| model | " + " | ".join(lags) + " | peak lag | motion |",
                  "|---|" + "---:|" * (len(lags) + 2)]
        for model, row in rows.items():
            cells = [f"{row[c]:.2f}" for c in lags] + [f"{row['peak lag']:+.0f}", f"{row['motion']:.2f}"]
            lines.append(f"| {model} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench mouth-timing", description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="finished run directories (synthetic data)")
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--clips", type=int, default=2)
    ap.add_argument("--max-lag", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the markdown tables here too")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    tables: dict[str, dict[str, dict[str, float]]] = {}
    for run in args.runs:
        t0 = time.perf_counter()
        series = run_series(Path(run), frames=args.frames, clips=args.clips)
        measured = series[TRUTH][0]  # the models' openness is in the estimator's units, as the truth frames'
        tables[Path(run).name] = {m: timing_row(p, g, max_lag=args.max_lag, scale=None if m == AUDIO else measured)
                                  for m, (p, g) in series.items()}
        print(f"{run}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    text = markdown(tables, command="python -m bench mouth-timing " + " ".join(argv if argv is not None
                                                                                else sys.argv[1:]),
                    max_lag=args.max_lag)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

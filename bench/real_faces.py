"""Real-face quality (issue #14): pre-train on public real speakers, federate on other real speakers, evaluate on
their held-out clips beside copy-the-reference, then drive the run with real speech through ``pftray generate``.

Every step is the user's command (``python -m pftray ...`` in a subprocess, from the repository root), timed, and
skipped when its output already exists, so the benchmark is resumable and its wall times are those of a user:

1. ``data prepare`` of the public speakers (``--public``) and of the client speakers (``--clients``, the last
   ``--heldout-clips`` clips of each held out), from ``--videos`` (default ``../shared/data/real-faces``);
2. ``pretrain`` of the backbone on the public speakers only (the preset's recipe);
3. ``run`` (the preset's federated rounds on the clients), 4. ``eval`` (personalised / backbone / copy rows);
5. ``generate`` with ``--audio`` on client 0 and on a new face (``--photo``, default scikit-image's
   ``astronaut()``, a real photo of someone in no training set), then for each video: duration against the
   audio's, the audio stream, and Pearson r of the landmark mouth openness of the generated frames against the
   audio's RMS energy per video frame (and against the time-reversed energy, a control that should be near 0).

Held-out clips are never trained on and belong to speakers the backbone never saw. The answer goes to
``--out``/summary-<res>.md (per-model means with 95 % t-intervals over clips, the paired difference personalised -
copy per metric, the issue's targets, the wall times) and ``clips-<res>.parquet``.

    python -m bench real-faces --resolution 64         # ~30 min on an idle 2-core CPU, ~16 of them pre-training
    python -m bench real-faces --resolution 128 --set pretrain.unet_steps=500   # a cheaper 128 px backbone
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
PUBLIC = ("speaker_d3", "speaker_d9", "speaker_d12", "hdtf_katiehill")
CLIENTS = ("speaker_d19", "speaker_s20_fullbody")
METRICS = ("psnr", "ssim", "mouth_psnr", "csim", "lmd_face", "lmd_mouth", "lip_sync_lmk")
MODELS = ("personalised", "backbone", "copy")
#: the issue's targets: (metric, comparison against copy's mean, margin)
TARGETS = (("psnr", ">=", 1.0), ("ssim", ">=", 0.0), ("lip_sync_lmk", "abs>=", 0.5), ("csim", "within", 0.05))


class Steps:
    """Timed, resumable steps; the wall time of each finished step is kept in ``work/times-<res>.json``."""

    def __init__(self, path: Path):
        self.path = path
        self.times: dict[str, float] = json.loads(path.read_text()) if path.exists() else {}

    def run(self, name: str, argv: list[str], done: Path | None = None) -> float:
        if done is not None and done.exists() and name in self.times:
            print(f"[{name}] kept ({self.times[name]:.0f} s when it ran)", flush=True)
            return self.times[name]
        cmd = [sys.executable, "-m", "pftray", *argv]
        print(f"[{name}] {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - t0
        log = self.path.parent / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text(proc.stdout)
        if proc.returncode != 0:
            raise SystemExit(f"[{name}] exit {proc.returncode} after {wall:.0f} s; see {log}:\n"
                             + proc.stdout[-2000:])
        self.times[name] = wall
        on_disk = json.loads(self.path.read_text()) if self.path.exists() else {}  # another resolution's steps
        self.path.write_text(json.dumps({**on_disk, **self.times}, indent=2))
        print(f"[{name}] {wall:.0f} s", flush=True)
        return wall


def link_speakers(videos: Path, dest: Path, speakers: tuple[str, ...]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for s in speakers:
        if not (videos / s).is_dir():
            raise SystemExit(f"--videos {videos}: no speaker folder {s}")
        link = dest / s
        if not link.exists():
            link.symlink_to((videos / s).resolve(), target_is_directory=True)
    return dest


def write_photo(path: Path, photo: str | None) -> Path:
    if photo:
        return Path(photo)
    if not path.exists():
        from PIL import Image
        from skimage.data import astronaut

        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(astronaut()).save(path)
    return path


# ------------------------------------------------------------------------------------------------ generation
def video_frames(path: Path) -> tuple[np.ndarray, float, int]:
    """uint8 [T, H, W, 3] frames of an mp4, its audio duration (s) and the number of audio streams."""
    import av

    with av.open(str(path)) as f:
        frames = np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)])
    with av.open(str(path)) as f:
        streams = list(f.streams.audio)
        audio_s = float(streams[0].duration * streams[0].time_base) if streams and streams[0].duration else math.nan
    return frames, audio_s, len(streams)


def energy_envelope(wave: np.ndarray, num_frames: int, samples_per_frame: int = 640) -> np.ndarray:
    """RMS of the 16 kHz waveform over each 40 ms video frame (zero-padded at the end)."""
    n = num_frames * samples_per_frame
    w = np.zeros(n, np.float64)
    w[: min(n, wave.size)] = wave[:n]
    return np.sqrt((w.reshape(num_frames, samples_per_frame) ** 2).mean(axis=1))


def mouth_vs_energy(video: Path, audio: Path, resolution: int) -> dict[str, Any]:
    """Pearson r of landmark mouth openness of the generated frames against the audio energy (and reversed)."""
    import torch

    from pftray.data.landmarks import mouth_openness
    from pftray.metrics.face import predict_landmarks
    from pftray.pipeline import load_audio

    frames, audio_s, n_audio = video_frames(video)
    wave, duration = load_audio(audio)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
    if frames.shape[1] != resolution:  # written upscaled: landmarks at the model's resolution are what we read
        x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="area")
    mouth = mouth_openness(predict_landmarks(x)).astype(np.float64)
    energy = energy_envelope(wave, len(frames))
    r = float(np.corrcoef(mouth, energy)[0, 1]) if mouth.std() > 0 else math.nan
    r_rev = float(np.corrcoef(mouth, energy[::-1])[0, 1]) if mouth.std() > 0 else math.nan
    shown = video.relative_to(REPO) if video.is_relative_to(REPO) else video
    return {"video": str(shown), "frames": int(len(frames)), "video_s": len(frames) / 25.0, "audio_file_s": duration,
            "audio_stream_s": audio_s, "audio_streams": n_audio, "r_mouth_energy": r, "r_reversed_control": r_rev,
            "mouth_openness_std": float(mouth.std())}


# ------------------------------------------------------------------------------------------------ the answer
def clip_table(run_dir: Path) -> pd.DataFrame:
    files = sorted((run_dir / "eval").glob("eval-round-*.parquet"),
                   key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    if not files:
        raise SystemExit(f"{run_dir}: no eval/eval-round-*.parquet (did `pftray eval` run?)")
    df = pd.read_parquet(files[-1])
    for m in METRICS:
        df[m] = pd.to_numeric(df[m], errors="coerce") if m in df else math.nan
    return df


def model_table(df: pd.DataFrame) -> pd.DataFrame:
    from pftray.evaluation.stats import t_interval

    rows = []
    for model in [m for m in MODELS if m in set(df["model"])]:
        g = df[df["model"] == model]
        for m in METRICS:
            ci = t_interval(g[m].dropna().to_numpy(float))
            rows.append({"model": model, "metric": m, "mean": ci.mean, "ci_low": ci.low, "ci_high": ci.high,
                         "n": ci.n})
    return pd.DataFrame(rows)


def paired_vs_copy(df: pd.DataFrame, model: str = "personalised") -> pd.DataFrame:
    from pftray.evaluation.stats import paired_difference

    key = ["client_id", "clip"]
    a = df[df["model"] == model].set_index(key)
    b = df[df["model"] == "copy"].set_index(key)
    cols = ["n_pairs", "mean_diff", "ci_low", "ci_high", "t_pvalue"]
    return pd.DataFrame([{"metric": m, **{k: v for k, v in paired_difference(a[m], b[m]).items() if k in cols}}
                         for m in METRICS])


def targets(models: pd.DataFrame, model: str = "personalised") -> list[dict[str, Any]]:
    mean = models.set_index(["model", "metric"])["mean"]
    out = []
    for metric, op, margin in TARGETS:
        ours, copy = float(mean.get((model, metric), math.nan)), float(mean.get(("copy", metric), math.nan))
        if op == ">=":
            ok, want = ours >= copy + margin, f">= copy + {margin:g} = {copy + margin:.3f}"
        elif op == "abs>=":
            ok, want = ours >= margin, f">= {margin:g}"
        else:
            ok, want = abs(ours - copy) <= margin, f"within {margin:g} of copy's {copy:.3f}"
        out.append({"metric": metric, "value": ours, "copy": copy, "target": want,
                    "met": bool(ok) if math.isfinite(ours) and (op == "abs>=" or math.isfinite(copy)) else None})
    return out


def _f(x: Any, d: int = 3) -> str:
    return "–" if x is None or not isinstance(x, int | float) or not math.isfinite(x) else f"{x:.{d}f}"


def markdown(res: int, df: pd.DataFrame, times: dict[str, float], gens: list[dict[str, Any]], *, command: str,
             run_dir: Path) -> str:
    models = model_table(df)
    lines = [f"# Real-face quality at {res} px (`python -m bench real-faces`)", "", f"Command: `{command}`", "",
             f"Run: `{run_dir.relative_to(REPO) if run_dir.is_relative_to(REPO) else run_dir}`. Held-out clips of "
             f"the client speakers {', '.join(CLIENTS)} (never trained on; the backbone was pre-trained on "
             f"{', '.join(PUBLIC)} only). Mean ± 95 % t-interval over the held-out clips "
             f"(n = {df[df['model'] == 'copy'].shape[0]}).", "",
             "| model | " + " | ".join(METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for model, g in models.groupby("model", sort=False):
        cells = [f"{_f(r['mean'])} ± {_f((r['ci_high'] - r['ci_low']) / 2)}" for _, r in g.iterrows()]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", "Paired difference personalised − copy, per clip:", "",
              "| metric | Δ [95 % CI] | n | p (t) |", "|---|---|---:|---:|"]
    for _, r in paired_vs_copy(df).iterrows():
        lines.append(f"| {r['metric']} | {_f(r['mean_diff'])} [{_f(r['ci_low'])}, {_f(r['ci_high'])}] | "
                     f"{r['n_pairs']} | {_f(r['t_pvalue'], 4)} |")
    lines += ["", "Targets of the issue (personalised against copy-the-reference):", "",
              "| metric | personalised | copy | target | met |", "|---|---:|---:|---|---|"]
    for t in targets(models):
        lines.append(f"| {t['metric']} | {_f(t['value'])} | {_f(t['copy'])} | {t['target']} | "
                     f"{'yes' if t['met'] else ('no' if t['met'] is False else '–')} |")
    lines += ["", "Wall times of the steps (s):", "", "| step | wall s |", "|---|---:|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in times.items()]
    if gens:
        lines += ["", "`pftray generate` with real speech:", "",
                  "| identity | frames | video s | audio s | audio streams | r(mouth, energy) | r reversed |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for g in gens:
            lines.append(f"| {g['identity']} | {g['frames']} | {g['video_s']:.3f} | {g['audio_file_s']:.3f} | "
                         f"{g['audio_streams']} | {_f(g['r_mouth_energy'])} | {_f(g['r_reversed_control'])} |")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench real-faces", description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolution", type=int, choices=(64, 128), default=64)
    ap.add_argument("--videos", default=str(REPO.parent / "shared" / "data" / "real-faces"))
    ap.add_argument("--work", default=str(REPO / "runs" / "real-faces"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "real_faces"))
    ap.add_argument("--audio", default=None, help="speech for generate (default: VIDEOS/audio/speech_radio34.wav)")
    ap.add_argument("--photo", default=None, help="a new face for generate --reference (default: astronaut())")
    ap.add_argument("--heldout-clips", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra overrides of the preset, for pretrain and run (e.g. pretrain.unet_steps=500)")
    args = ap.parse_args(argv)
    res, videos, work = args.resolution, Path(args.videos), Path(args.work).resolve()
    if not videos.is_dir():
        print(f"python -m bench real-faces: --videos {videos}: no such folder", file=sys.stderr)
        return 2
    config = REPO / "configs" / ("real_faces.yaml" if res == 64 else "real_faces_128.yaml")
    audio = Path(args.audio) if args.audio else videos / "audio" / "speech_radio34.wav"
    steps = Steps(work / f"times-{res}.json")
    public, clients = work / f"public-{res}", work / f"clients-{res}"
    tag = "" if not args.set else "-" + "-".join(s.replace("=", "").replace(".", "_") for s in args.set)[:40]
    backbone = work / f"backbone-real{res}{tag}.pt"
    run_dir = work / "runs" / f"real{res}{tag}"
    sets = [f"data.source={clients}", f"data.public_source={public}", f"model.backbone={backbone}", *args.set]
    setargs = [x for s in sets for x in ("--set", s)]

    steps.run(f"prepare-public-{res}", ["data", "prepare", "--source", str(link_speakers(videos, work / "src-public",
              PUBLIC)), "--out", str(public), "--resolution", str(res), "--no-progress"], public / "manifest.json")
    steps.run(f"prepare-clients-{res}", ["data", "prepare", "--source", str(link_speakers(videos, work / "src-clients",
              CLIENTS)), "--out", str(clients), "--resolution", str(res), "--heldout-clips", str(args.heldout_clips),
              "--no-progress"], clients / "manifest.json")
    steps.run(f"pretrain-{res}{tag}", ["pretrain", str(config), "--out", str(backbone), *setargs], backbone)
    meta = run_dir / "meta.json"
    finished = meta.exists() and json.loads(meta.read_text()).get("status") == "done"
    if not finished and (run_dir / "config.yaml").exists():
        steps.run(f"run-{res}{tag}", ["run", "--resume", str(run_dir), "--local"])
    else:
        steps.run(f"run-{res}{tag}", ["run", str(config), "--out", str(run_dir), "--local", *setargs], meta)
    steps.run(f"eval-{res}{tag}", ["eval", str(run_dir), "--clips", str(args.heldout_clips)],
              run_dir / "eval")
    gens = []
    photo = write_photo(work / "astronaut.png", args.photo)
    for identity, extra in (("client 0", ["--client", "0"]), ("new photo", ["--reference", str(photo)])):
        mp4 = work / "generate" / f"real{res}{tag}-{identity.replace(' ', '_')}.mp4"
        mp4.parent.mkdir(parents=True, exist_ok=True)
        steps.run(f"generate-{res}{tag}-{identity.replace(' ', '_')}",
                  ["generate", str(run_dir), *extra, "--audio", str(audio), "--out", str(mp4), "--seed", "0"], mp4)
        gens.append({"identity": identity, **mouth_vs_energy(mp4, audio, res)})
    df = clip_table(run_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out / f"clips-{res}{tag}.parquet", index=False)
    (out / f"generate-{res}{tag}.json").write_text(json.dumps(gens, indent=2))
    command = "python -m bench real-faces " + " ".join(argv if argv is not None else sys.argv[1:])
    text = markdown(res, df, steps.times, gens, command=command.strip(), run_dir=run_dir)
    (out / f"summary-{res}{tag}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

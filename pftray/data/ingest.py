"""Real-video ingestion: ``<source>/<speaker>/<clip>.mp4`` (LRS3 / HDTF layout) -> one shard per speaker.

Scope and honest limitations (documented here and in the manifest):

* **Face crops.** There is no face detector offline: each frame is centre-cropped to a square and resized to
  ``resolution``. Real data must therefore be pre-cropped face tracks, as LRS3 and HDTF distribute them.
* **Frame rate.** Video is brought to 25 fps by nearest-frame selection on the decoded timestamps.
* **Audio.** Decoded with PyAV, down-mixed to mono, resampled to 16 kHz with ``scipy.signal.resample_poly``
  and aligned to the first video frame using the streams' timestamps.
* **Pose** is all zeros (no pose estimator offline).
* **Mouth** is not ground truth: it is :func:`pftray.data.synthetic.estimate_mouth_openness` (soft fraction
  of dark pixels) on a fixed lower-centre box ``y in [0.62, 0.88) R, x in [0.3, 0.7) R``; ``mouth_box`` is
  that box.
* **Reference frame.** Frame 0 of each speaker's first usable video is held out of all clips; the reference
  is the candidate frame (that frame and every video's tail frames that do not fill a clip) with the lowest
  estimated mouth openness, so it is never a training or held-out frame.
* **Splits.** The last ``heldout_clips`` clips of a speaker (in file-name order) are held out.

Files that cannot be decoded, have no audio (or no video) stream, or are shorter than one clip are listed in
:attr:`IngestReport.skipped` with the reason and skipped; the other files are kept.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.signal import resample_poly

from pftray.data.audio import log_mel_features
from pftray.data.dataset import load_client_shard, save_client_shard
from pftray.data.synthetic import estimate_mouth_openness
from pftray.data.types import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, ClientData, Clip, DataError

MANIFEST_FORMAT = "pftray.prepared-dataset"
MANIFEST_VERSION = 1
MOUTH_BOX_FRACTIONS = (0.62, 0.88, 0.3, 0.7)  # y0, y1, x0, x1 as fractions of the resolution


@dataclass(frozen=True)
class SkippedFile:
    """A source file (path relative to the source root) or speaker left out, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class PreparedClient:
    client_id: int
    speaker: str
    shard: str
    train_clips: int
    heldout_clips: int
    train_frames: int
    files: int


@dataclass
class IngestReport:
    """Outcome of :func:`prepare_dataset`; mirrors ``<out>/manifest.json``."""

    out: Path
    clients: list[PreparedClient] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)

    @property
    def num_clips(self) -> int:
        return sum(c.train_clips + c.heldout_clips for c in self.clients)

    @property
    def manifest(self) -> Path:
        return self.out / "manifest.json"


class _Skip(Exception):
    """Internal: the current file is unusable for the given reason."""


def _to_float(frame) -> np.ndarray:
    """Decoded audio frame -> float64 ``[channels, samples]`` in [-1, 1]."""
    x = frame.to_ndarray()
    channels = (
        frame.layout.nb_channels if hasattr(frame.layout, "nb_channels") else len(frame.layout.channels)
    )
    if not frame.format.is_planar:
        x = x.reshape(-1, channels).T
    if x.dtype == np.int16:
        return x / 32768.0
    if x.dtype == np.int32:
        return x / 2147483648.0
    if x.dtype == np.uint8:
        return (x.astype(np.float64) - 128.0) / 128.0
    return x.astype(np.float64)


def _crop_resize(rgb: np.ndarray, resolution: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    crop = Image.fromarray(np.ascontiguousarray(rgb[y0 : y0 + side, x0 : x0 + side]))
    if side != resolution:
        crop = crop.resize((resolution, resolution), Image.Resampling.BILINEAR)
    return np.asarray(crop, dtype=np.uint8)


def decode_video(path: Path, *, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Decode one file to 25 fps uint8 frames ``[N, R, R, 3]`` and aligned 16 kHz mono audio ``[N * 640]``.

    Raises ``_Skip`` for files without a video or audio stream or without decodable frames; PyAV errors for
    corrupt files propagate (the caller reports them).
    """
    import av  # PyAV (FFmpeg) is loaded only when videos are read

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise _Skip("no video stream")
        if not container.streams.audio:
            raise _Skip("no audio stream")
        vstream, astream = container.streams.video[0], container.streams.audio[0]
        rate = float(vstream.average_rate or vstream.guessed_rate or VIDEO_FPS)
        frames, times, chunks = [], [], []
        audio_t0, audio_rate = None, None
        for packet in container.demux(vstream, astream):
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    times.append(frame.time if frame.time is not None else len(times) / rate)
                    frames.append(_crop_resize(frame.to_ndarray(format="rgb24"), resolution))
                elif isinstance(frame, av.AudioFrame):
                    if audio_t0 is None:
                        audio_t0 = frame.time if frame.time is not None else 0.0
                        audio_rate = frame.sample_rate
                    chunks.append(_to_float(frame).mean(axis=0))
    if not frames:
        raise _Skip("no decodable video frames")
    if not chunks:
        raise _Skip("no decodable audio frames")
    order = np.argsort(times, kind="stable")
    ts = np.asarray(times, dtype=np.float64)[order]
    video_t0 = ts[0]
    duration = ts[-1] - video_t0 + 1.0 / rate
    num = int(math.floor(duration * VIDEO_FPS + 1e-6))
    targets = np.arange(num) / VIDEO_FPS + video_t0
    pick = np.clip(np.searchsorted(ts, targets), 1, len(ts) - 1) if len(ts) > 1 else np.zeros(num, dtype=int)
    if len(ts) > 1:
        pick = np.where(np.abs(ts[pick - 1] - targets) <= np.abs(ts[pick] - targets), pick - 1, pick)
    video = (
        np.stack([frames[order[i]] for i in pick])
        if num
        else np.zeros((0, resolution, resolution, 3), np.uint8)
    )

    audio = np.concatenate(chunks)
    g = math.gcd(int(audio_rate), SAMPLE_RATE)
    audio = (
        resample_poly(audio, SAMPLE_RATE // g, int(audio_rate) // g) if audio_rate != SAMPLE_RATE else audio
    )
    lag = int(round((audio_t0 - video_t0) * SAMPLE_RATE))  # audio starts `lag` samples after the video
    audio = np.concatenate([np.zeros(lag), audio]) if lag > 0 else audio[-lag:]
    need = num * SAMPLES_PER_FRAME
    audio = np.pad(audio[:need], (0, max(0, need - audio.size))).astype(np.float32)
    return video, audio


def _mouth_boxes(num: int, resolution: int) -> np.ndarray:
    y0, y1, x0, x1 = (int(round(f * resolution)) for f in MOUTH_BOX_FRACTIONS)
    return np.tile(np.array([y0, y1, x0, x1], dtype=np.int32), (num, 1))


def _write_json_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2))
    os.replace(tmp, path)


def prepare_dataset(
    source: Path,
    out: Path,
    *,
    resolution: int = 64,
    frames_per_clip: int = 16,
    heldout_clips: int = 1,
    n_mels: int = 32,
    audio_window: int = 16,
    max_clips_per_speaker: int | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> IngestReport:
    """Ingest ``<source>/<speaker>/<clip>.mp4`` into ``<out>/client-<idx>.parquet`` + ``<out>/manifest.json``.

    Speakers are numbered in sorted order among those with at least ``heldout_clips + 1`` usable clips.
    ``progress(done, total, relative_path)`` is called after each file.
    """
    import av

    source, out = Path(source), Path(out)
    if resolution < 16 or resolution % 16:
        raise ValueError(f"resolution must be a positive multiple of 16, got {resolution}")
    if frames_per_clip < 1:
        raise ValueError(f"frames_per_clip must be >= 1, got {frames_per_clip}")
    if heldout_clips < 0:
        raise ValueError(f"heldout_clips must be >= 0, got {heldout_clips}")
    if max_clips_per_speaker is not None and max_clips_per_speaker < heldout_clips + 1:
        raise ValueError(f"max_clips_per_speaker must be >= heldout_clips + 1, got {max_clips_per_speaker}")
    if not source.is_dir():
        raise DataError(f"source directory {source} does not exist")
    speakers = sorted(p for p in source.iterdir() if p.is_dir())
    files = [(spk, f) for spk in speakers for f in sorted(spk.glob("*.mp4"))]
    if not files:
        raise DataError(f"no <speaker>/<clip>.mp4 files under {source}")
    out.mkdir(parents=True, exist_ok=True)
    report = IngestReport(out=out)
    box = _mouth_boxes(1, resolution)[0]
    done = 0
    for spk in speakers:
        spk_files = [f for s, f in files if s == spk]
        clips: list[Clip] = []
        candidates: list[np.ndarray] = []
        used_files = 0
        for path in spk_files:
            rel = str(path.relative_to(source))
            try:
                if max_clips_per_speaker is not None and len(clips) >= max_clips_per_speaker:
                    raise _Skip(f"speaker already has max_clips_per_speaker={max_clips_per_speaker} clips")
                video, audio = decode_video(path, resolution=resolution)
                offset = 1 if used_files == 0 else 0  # frame 0 of the first usable file: reference candidate
                count = (len(video) - offset) // frames_per_clip
                if count < 1:
                    raise _Skip(f"too short: {len(video)} frames at 25 fps, need {frames_per_clip + offset}")
                if max_clips_per_speaker is not None:
                    count = min(count, max_clips_per_speaker - len(clips))
                candidates.extend(video[:offset])
                candidates.extend(video[offset + count * frames_per_clip :])
                for k in range(count):
                    s = offset + k * frames_per_clip
                    seg = video[s : s + frames_per_clip]
                    wav = audio[s * SAMPLES_PER_FRAME : (s + frames_per_clip) * SAMPLES_PER_FRAME]
                    boxes = _mouth_boxes(frames_per_clip, resolution)
                    clips.append(
                        Clip(
                            frames=seg,
                            audio=wav,
                            audio_feats=log_mel_features(
                                wav, n_mels=n_mels, window=audio_window, num_frames=frames_per_clip
                            ),
                            pose=np.zeros((frames_per_clip, 4), np.float32),
                            mouth=estimate_mouth_openness(seg, boxes),
                            mouth_box=boxes,
                            identity=spk.name,
                            clip_id=f"{spk.name}/{path.stem}/{k}",
                        )
                    )
                used_files += 1
            except _Skip as why:
                report.skipped.append(SkippedFile(rel, str(why)))
            except (av.FFmpegError, OSError, ValueError, EOFError) as err:
                report.skipped.append(SkippedFile(rel, f"cannot decode: {type(err).__name__}: {err}"))
            done += 1
            if progress is not None:
                progress(done, len(files), rel)
        if len(clips) <= heldout_clips:
            reason = f"only {len(clips)} usable clips, need more than heldout_clips={heldout_clips}"
            report.skipped.append(SkippedFile(spk.name, reason))
            continue
        cand = np.stack(candidates)
        openness = estimate_mouth_openness(cand, np.tile(box, (len(cand), 1)))
        idx = len(report.clients)
        split = len(clips) - heldout_clips
        client = ClientData(
            client_id=idx,
            identity=spk.name,
            reference=cand[int(np.argmin(openness))].copy(),
            train=clips[:split],
            heldout=clips[split:],
            unreliable=None,
        )
        shard = f"client-{idx}.parquet"
        save_client_shard(client, out / shard)
        report.clients.append(
            PreparedClient(
                client_id=idx,
                speaker=spk.name,
                shard=shard,
                train_clips=split,
                heldout_clips=heldout_clips,
                train_frames=client.num_examples,
                files=used_files,
            )
        )
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "source": str(source),
        "resolution": resolution,
        "frames_per_clip": frames_per_clip,
        "heldout_clips": heldout_clips,
        "n_mels": n_mels,
        "audio_window": audio_window,
        "notes": {
            "crop": "centre square crop; inputs must be pre-cropped face tracks (no face detector)",
            "pose": "zeros (no pose estimator offline)",
            "mouth": "estimate_mouth_openness heuristic on the fixed lower-centre mouth_box, not ground truth",
        },
        "clients": [asdict(c) for c in report.clients],
        "skipped": [asdict(s) for s in report.skipped],
    }
    _write_json_atomic(manifest, report.manifest)
    return report


def load_prepared_dataset(out: Path) -> list[ClientData]:
    """Load every client listed in ``<out>/manifest.json`` (in client-id order)."""
    manifest_path = Path(out) / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != MANIFEST_FORMAT:
            raise DataError(f"unexpected format {manifest.get('format')!r}")
        entries = manifest["clients"]
    except FileNotFoundError as err:
        raise DataError(f"manifest {manifest_path} does not exist; run prepare_dataset first") from err
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise DataError(f"corrupt manifest {manifest_path}: {err}") from err
    clients = []
    for entry in entries:
        client = load_client_shard(Path(out) / entry["shard"])
        if client.client_id != entry["client_id"] or client.identity != entry["speaker"]:
            raise DataError(f"shard {Path(out) / entry['shard']} does not match {manifest_path}")
        clients.append(client)
    return clients

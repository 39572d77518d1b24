"""Real-video ingestion: ``<source>/<speaker>/<clip>.mp4`` (LRS3 / HDTF layout) -> one shard per speaker.

What each file goes through (the manifest's ``fields`` says the same for each stored array):

* **Face crops** (``crop="face"``, the default): every decoded frame goes through
  :class:`pftray.data.facetrack.FaceDetector` (dlib HOG on the frame scaled to a 320-px shorter side, the
  upsampled HOG and, sparingly, the CNN detector where it misses; boxes refined by the 68 landmarks); the boxes
  of the 25-fps frames are smoothed over time (:func:`pftray.data.facetrack.smooth_track`: outlier rejection,
  Kalman/RTS smoother, gaps bridged) and each frame is cut to a square of ``CROP_MARGIN`` (1.8) times the face
  box around the face centre, from the full-resolution frame. Any frame shape works (portrait, landscape, a
  small face in a full-body shot). ``crop="center"`` keeps the centre square crop for pre-cropped face tracks.
* **Frame rate.** Video is brought to 25 fps by nearest-frame selection on the decoded timestamps (30 fps drops
  one frame in six; 25 fps is unchanged).
* **Audio.** Any sample rate and channel count: decoded with PyAV, down-mixed to mono, resampled to 16 kHz with
  ``scipy.signal.resample_poly`` and aligned to the first video frame using the streams' timestamps.
* **Landmarks, pose, blink, mouth** (:mod:`pftray.data.landmarks`): 68 dlib landmarks predicted on each crop
  (cut at ``max(resolution, LANDMARK_SIDE)`` px for the prediction, with the tracked face box as dlib's
  rectangle; ``crop="center"``: the crop's centre, refined), stored in ``Clip.extras["landmarks"]`` in the
  crop's pixel coordinates at ``resolution``; ``pose[:, :3]`` = weak-perspective PnP yaw, pitch, roll / 45 deg,
  **relative to the speaker's reference frame** (the frame's angles minus the reference's, clipped to [-1, 1]: the
  model animates the reference, so pose 0 means "as in the reference"; the reference's own angles are the
  client's ``reference_pose`` in the manifest); ``pose[:, 3]`` = blink from the eye aspect ratio relative to the file's median; ``mouth`` = inner-lip gap
  over mouth width, mapped to [0, 1]; ``mouth_box`` = the lip landmarks' box with a margin.
* **Reference frame.** Frame 0 of each speaker's first usable video is held out of all clips; the reference
  is the candidate frame (that frame and every video's tail frames that do not fill a clip) with the most
  neutral landmarks (lowest mouth openness + blink + mean |yaw, pitch, roll|), so it is never a training or
  held-out frame.
* **Splits.** The last ``heldout_clips`` clips of a speaker (in file-name order) are held out.

Files that cannot be decoded, have no audio (or no video) stream, have a face in fewer than
``MIN_FACE_FRACTION`` of their frames, or are shorter than one clip are listed in :attr:`IngestReport.skipped`
with the reason and skipped; the other files are kept. Missing dlib models stop the run
(:class:`pftray.faces.FaceModelsMissing`, an input error).
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.signal import resample_poly

from pftray.data import facetrack, landmarks
from pftray.data.audio import log_mel_features
from pftray.data.dataset import load_client_shard, save_client_shard
from pftray.data.types import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, ClientData, Clip, DataError
from pftray.errors import InputError

MANIFEST_FORMAT = "pftray.prepared-dataset"
MANIFEST_VERSION = 3  # 2: face tracking, landmark signals, extras["landmarks"], per-file records, fields;
#                       3: head pose relative to the reference frame (manifest "pose_frame"), clients' reference_pose
#: what ``pose[:, :3]`` is measured against in a manifest (absent in versions < 3: the camera, "absolute")
POSE_FRAME = "reference"
CROP_MODES = ("face", "center")
LANDMARK_SIDE = 192  # crops are cut at least this large for landmark prediction, then resized to `resolution`
MIN_FACE_FRACTION = 0.5  # a file needs a detected face in at least this fraction of its 25-fps frames


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
    reference_pose: list[float] | None = None  # yaw, pitch, roll, blink of the reference frame (Clip.pose units)


@dataclass
class IngestReport:
    """Outcome of :func:`prepare_dataset`; mirrors ``<out>/manifest.json``."""

    out: Path
    clients: list[PreparedClient] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)  # per source file: what was decoded, tracked, kept

    @property
    def num_clips(self) -> int:
        return sum(c.train_clips + c.heldout_clips for c in self.clients)

    @property
    def manifest(self) -> Path:
        return self.out / "manifest.json"


class _Skip(Exception):
    """Internal: the current file is unusable for the given reason."""


def audio_frame_to_float(frame) -> np.ndarray:
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



def _centre_box(h: int, w: int) -> np.ndarray:
    side = min(h, w)
    y0, x0 = (h - side) // 2, (w - side) // 2
    return np.array([x0, y0, x0 + side, y0 + side], dtype=np.float64)


def _resize_square(img: np.ndarray, side: int) -> np.ndarray:
    if img.shape[0] == side and img.shape[1] == side:
        return img
    return np.asarray(Image.fromarray(img).resize((side, side), Image.Resampling.BILINEAR), dtype=np.uint8)


@dataclass
class DecodedVideo:
    """One file at 25 fps: uint8 crops ``[N, R, R, 3]``, landmarks float32 ``[N, 68, 2]`` (crop pixels at ``R``),
    16 kHz mono audio ``[N * 640]`` and a record of what was done (for the manifest)."""

    frames: np.ndarray
    landmarks: np.ndarray
    audio: np.ndarray
    info: dict


def _pick_25fps(ts: np.ndarray, rate: float) -> tuple[np.ndarray, float]:
    """Indices into the sorted timestamps ``ts`` of the frame nearest each 25-fps instant, and the first time."""
    video_t0 = ts[0]
    duration = ts[-1] - video_t0 + 1.0 / rate
    num = int(math.floor(duration * VIDEO_FPS + 1e-6))
    targets = np.arange(num) / VIDEO_FPS + video_t0
    if len(ts) == 1:
        return np.zeros(num, dtype=int), video_t0
    pick = np.clip(np.searchsorted(ts, targets), 1, len(ts) - 1)
    pick = np.where(np.abs(ts[pick - 1] - targets) <= np.abs(ts[pick] - targets), pick - 1, pick)
    return pick, video_t0


def decode_video(path: Path, *, resolution: int, crop: str = "face") -> DecodedVideo:
    """Decode, face-track (``crop="face"``) or centre-crop, resample to 25 fps and landmark one file.

    Two passes over the video for face crops: the first decodes audio and runs the detector on every frame
    (small frames only), the second cuts the smoothed crops out of the full-resolution frames. Raises ``_Skip``
    (with the reason) for files without a video or audio stream, without decodable frames, or without a face in
    ``MIN_FACE_FRACTION`` of the frames; PyAV errors for corrupt files propagate (the caller reports them).
    """
    import av  # PyAV (FFmpeg) is loaded only when videos are read

    if crop not in CROP_MODES:
        raise InputError(f"crop must be one of {', '.join(CROP_MODES)}, got {crop!r}")
    work = max(resolution, LANDMARK_SIDE)
    detector = facetrack.FaceDetector() if crop == "face" else None
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise _Skip("no video stream")
        if not container.streams.audio:
            raise _Skip("no audio stream")
        vstream, astream = container.streams.video[0], container.streams.audio[0]
        rate = float(vstream.average_rate or vstream.guessed_rate or VIDEO_FPS)
        times, crops, dets, chunks = [], [], [], []
        frame_hw = None
        audio_t0, audio_rate, channels = None, None, None
        for packet in container.demux(vstream, astream):
            for frame in packet.decode():
                if isinstance(frame, av.VideoFrame):
                    times.append(frame.time if frame.time is not None else len(times) / rate)
                    rgb = frame.to_ndarray(format="rgb24")
                    frame_hw = rgb.shape[:2]
                    if detector is not None:
                        dets.append(detector.detect(rgb))
                    else:
                        crops.append(facetrack.crop_frame(rgb, _centre_box(*frame_hw), work))
                elif isinstance(frame, av.AudioFrame):
                    if audio_t0 is None:
                        audio_t0 = frame.time if frame.time is not None else 0.0
                        audio_rate = frame.sample_rate
                    x = audio_frame_to_float(frame)
                    channels = x.shape[0]
                    chunks.append(x.mean(axis=0))
    if not times:
        raise _Skip("no decodable video frames")
    if not chunks:
        raise _Skip("no decodable audio frames")
    order = np.argsort(times, kind="stable")
    ts = np.asarray(times, dtype=np.float64)[order]
    pick, video_t0 = _pick_25fps(ts, rate)
    num = len(pick)
    src = order[pick]  # decode-order index of each 25-fps frame
    info = {
        "source_fps": round(rate, 3),
        "source_size": [int(frame_hw[1]), int(frame_hw[0])],  # width, height
        "frames_decoded": len(times),
        "frames_25fps": num,
        "audio_rate": int(audio_rate),
        "audio_channels": int(channels),
        "crop": crop,
    }
    if num == 0:
        video = np.zeros((0, work, work, 3), np.uint8)
        rects = None
    elif detector is not None:
        det = facetrack.detections_from([dets[i] for i in src])
        found = int(det.found.sum())
        info["face"] = {"detected_frames": found}
        if found == 0:
            raise _Skip(f"no face detected in {num} frames")
        if found < MIN_FACE_FRACTION * num:
            raise _Skip(f"face detected in only {found} of {num} frames (need {MIN_FACE_FRACTION:.0%})")
        face_boxes, inlier = facetrack.smooth_track(det.boxes, fps=VIDEO_FPS)
        track = facetrack.FaceTrack(boxes=face_boxes, detections=det, inlier=inlier)
        boxes = facetrack.crop_boxes(face_boxes, frame_hw)
        info["face"] = {
            **track.summary(),
            "crop_side": round(float(np.median(boxes[:, 2] - boxes[:, 0])), 1),  # source pixels
            "crop_centre": [round(float(v), 1) for v in np.median((boxes[:, :2] + boxes[:, 2:]) / 2, axis=0)],
        }
        video = np.zeros((num, work, work, 3), np.uint8)
        wanted: dict[int, list[int]] = {}
        for k, i in enumerate(src):
            wanted.setdefault(int(i), []).append(k)
        decoded = 0
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                if decoded in wanted:
                    rgb = frame.to_ndarray(format="rgb24")
                    for k in wanted[decoded]:
                        video[k] = facetrack.crop_frame(rgb, boxes[k], work)
                decoded += 1
        if max(wanted) >= decoded:
            raise _Skip(f"the second decoding pass gave {decoded} frames, the first {len(times)}")
        side = (boxes[:, 2] - boxes[:, 0])[:, None]
        rects = (face_boxes - np.tile(boxes[:, :2], 2)) * (work / np.tile(side, 4))  # face box in crop pixels
    else:
        video = np.stack([crops[i] for i in src])
        rects = None

    lm = landmarks.landmarks_for_frames(video, rects=rects) if num else np.zeros((0, 68, 2), np.float32)
    if work != resolution:
        video = np.stack([_resize_square(f, resolution) for f in video]) if num else video[:, :resolution, :resolution]
        lm = ((lm + 0.5) * (resolution / work) - 0.5).astype(np.float32)

    audio = np.concatenate(chunks)
    g = math.gcd(int(audio_rate), SAMPLE_RATE)
    audio = (
        resample_poly(audio, SAMPLE_RATE // g, int(audio_rate) // g) if audio_rate != SAMPLE_RATE else audio
    )
    lag = int(round((audio_t0 - video_t0) * SAMPLE_RATE))  # audio starts `lag` samples after the video
    audio = np.concatenate([np.zeros(lag), audio]) if lag > 0 else audio[-lag:]
    need = num * SAMPLES_PER_FRAME
    audio = np.pad(audio[:need], (0, max(0, need - audio.size))).astype(np.float32)
    return DecodedVideo(frames=video, landmarks=lm.astype(np.float32), audio=audio, info=info)


def landmark_signals(lm: np.ndarray, resolution: int) -> dict[str, np.ndarray]:
    """``pose`` float32 ``[N, 4]``, ``mouth`` float32 ``[N]`` and ``mouth_box`` int32 ``[N, 4]`` of one file's
    landmarks (crop pixels at ``resolution``); blink is relative to the file's median eye aspect ratio."""
    pose = np.zeros((len(lm), 4), np.float32)
    if len(lm):
        pose[:, :3] = landmarks.pose_to_unit(landmarks.head_pose(lm, resolution))
        pose[:, 3] = landmarks.blink_from_ear(landmarks.eye_aspect_ratio(lm))
    return {
        "pose": pose,
        "mouth": landmarks.mouth_openness(lm).astype(np.float32),
        "mouth_box": landmarks.mouth_box_from_landmarks(lm, resolution).astype(np.int32).reshape(-1, 4),
    }


def _fields(crop: str, resolution: int) -> dict[str, str]:
    """What each stored array is and how it was computed (written into the manifest)."""
    frames = (
        f"uint8 [T,{resolution},{resolution},3] RGB at 25 fps: square crop of {facetrack.CROP_MARGIN}x the tracked "
        f"face box (dlib HOG/upsampled HOG/CNN detections refined by landmarks, outlier rejection, Kalman+RTS "
        f"smoothing; pftray.data.facetrack v{facetrack.METHOD_VERSION}), bilinear resize"
        if crop == "face"
        else f"uint8 [T,{resolution},{resolution},3] RGB at 25 fps: centre square crop (input assumed pre-cropped), "
        "bilinear resize"
    )
    lm = f"pftray.data.landmarks v{landmarks.METHOD_VERSION}"
    return {
        "frames": frames,
        "audio": "float32 [T*640] mono 16 kHz: channels averaged, resample_poly, aligned to the first video frame",
        "audio_feats": "float32 [T,A,M] per-clip standardised log-mel windows (pftray.data.audio.log_mel_features)",
        "pose": (
            "float32 [T,4]: yaw, pitch, roll = weak-perspective PnP fit (scipy least_squares) of a 12-point mean 3-D "
            "face to the landmarks, radians / (pi/4) clipped to [-1,1] (yaw>0 face turned to image right, pitch>0 "
            "chin up, roll>0 clockwise), minus those of the client's reference frame (its reference_pose) and "
            "clipped to [-1,1] again: 0 = the reference's head pose; blink = eye aspect ratio mapped to [0,1] between the file's median "
            f"(open, 0) and 0.45x that (closed, 1); {lm}"
        ),
        "mouth": (
            f"float32 [T] in [0,1]: inner-lip gap / mouth width / {landmarks.MOUTH_RATIO_OPEN}, clipped; {lm}"
        ),
        "mouth_box": f"int32 [T,4] y0,y1,x0,x1 (half-open): lip landmarks' box + 35% of mouth width; {lm}",
        "extras.landmarks": (
            "float32 [T,68,2] x,y crop pixel coordinates (iBUG-300W order), dlib shape_predictor_68 on the crop "
            f"cut at max(resolution, {LANDMARK_SIDE}) px, rectangle = "
            + ("the tracked face box" if crop == "face" else "the crop centre, refined once")
            + f"; {lm}"
        ),
        "reference": "uint8 [R,R,3]: the candidate frame with the lowest mouth + blink + mean |yaw,pitch,roll|",
    }


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
    crop: str = "face",
    progress: Callable[[int, int, str], None] | None = None,
    progress_bar: bool | None = None,
) -> IngestReport:
    """Ingest ``<source>/<speaker>/<clip>.mp4`` into ``<out>/client-<idx>.parquet`` + ``<out>/manifest.json``.

    Speakers are numbered in sorted order among those with at least ``heldout_clips + 1`` usable clips.
    ``crop`` is ``"face"`` (track the face, the default) or ``"center"`` (pre-cropped face videos).
    ``progress(done, total, relative_path)`` is called after each file; ``progress_bar`` shows a tqdm bar over
    the files on stderr (default: only when stderr is a terminal).
    """
    import av
    from tqdm import tqdm

    source, out = Path(source), Path(out)
    if crop not in CROP_MODES:
        raise InputError(f"crop must be one of {', '.join(CROP_MODES)}, got {crop!r}")
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
    show = sys.stderr.isatty() if progress_bar is None else progress_bar
    bar = tqdm(total=len(files), unit="file", desc="prepare", file=sys.stderr, disable=not show, leave=False)
    done = 0
    try:
        for spk in speakers:
            spk_files = [f for s, f in files if s == spk]
            if not spk_files:
                report.skipped.append(SkippedFile(spk.name, "no .mp4 files"))
                continue
            clips: list[Clip] = []
            candidates: list[tuple[np.ndarray, float]] = []  # (frame, neutrality score: lower is more neutral)
            used_files = 0
            for path in spk_files:
                rel = str(path.relative_to(source))
                bar.set_postfix_str(rel, refresh=False)
                record: dict = {"path": rel}
                try:
                    if max_clips_per_speaker is not None and len(clips) >= max_clips_per_speaker:
                        raise _Skip(f"speaker already has max_clips_per_speaker={max_clips_per_speaker} clips")
                    dec = decode_video(path, resolution=resolution, crop=crop)
                    record.update(dec.info)
                    video, audio = dec.frames, dec.audio
                    offset = 1 if used_files == 0 else 0  # frame 0 of the first usable file: reference candidate
                    count = (len(video) - offset) // frames_per_clip
                    if count < 1:
                        raise _Skip(f"too short: {len(video)} frames at 25 fps, need {frames_per_clip + offset}")
                    if max_clips_per_speaker is not None:
                        count = min(count, max_clips_per_speaker - len(clips))
                    sig = landmark_signals(dec.landmarks, resolution)
                    neutral = sig["mouth"] + sig["pose"][:, 3] + np.abs(sig["pose"][:, :3]).mean(axis=1)
                    tail = range(offset + count * frames_per_clip, len(video))
                    candidates.extend((video[i], float(neutral[i]), sig["pose"][i].copy())
                                      for i in [*range(offset), *tail])
                    for k in range(count):
                        s = offset + k * frames_per_clip
                        w = slice(s, s + frames_per_clip)
                        wav = audio[s * SAMPLES_PER_FRAME : (s + frames_per_clip) * SAMPLES_PER_FRAME]
                        clips.append(
                            Clip(
                                frames=video[w],
                                audio=wav,
                                audio_feats=log_mel_features(
                                    wav, n_mels=n_mels, window=audio_window, num_frames=frames_per_clip
                                ),
                                pose=sig["pose"][w],
                                mouth=sig["mouth"][w],
                                mouth_box=sig["mouth_box"][w],
                                identity=spk.name,
                                clip_id=f"{spk.name}/{path.stem}/{k}",
                                extras={"landmarks": dec.landmarks[w]},
                            )
                        )
                    used_files += 1
                    record.update(status="kept", clips=count)
                except _Skip as why:
                    report.skipped.append(SkippedFile(rel, str(why)))
                    record.update(status="skipped", reason=str(why))
                except (av.FFmpegError, OSError, ValueError, EOFError) as err:
                    if isinstance(err, InputError):
                        raise
                    reason = f"cannot decode: {type(err).__name__}: {err}"
                    report.skipped.append(SkippedFile(rel, reason))
                    record.update(status="skipped", reason=reason)
                report.files.append(record)
                done += 1
                bar.update(1)
                if progress is not None:
                    progress(done, len(files), rel)
            if len(clips) <= heldout_clips:
                reason = f"only {len(clips)} usable clips, need more than heldout_clips={heldout_clips}"
                report.skipped.append(SkippedFile(spk.name, reason))
                continue
            idx = len(report.clients)
            split = len(clips) - heldout_clips
            ref_frame, _, ref_pose = min(candidates, key=lambda c: c[1])
            for clip in clips:  # head pose relative to the reference frame (see the module docstring)
                clip.pose[:, :3] = np.clip(clip.pose[:, :3] - ref_pose[None, :3], -1.0, 1.0)
            client = ClientData(
                client_id=idx,
                identity=spk.name,
                reference=ref_frame.copy(),
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
                    reference_pose=[round(float(v), 6) for v in ref_pose],
                )
            )
    finally:
        bar.close()
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "source": str(source),
        "resolution": resolution,
        "frames_per_clip": frames_per_clip,
        "heldout_clips": heldout_clips,
        "n_mels": n_mels,
        "audio_window": audio_window,
        "crop": crop,
        "pose_frame": POSE_FRAME,
        "methods": _methods(),
        "fields": _fields(crop, resolution),
        "clients": [asdict(c) for c in report.clients],
        "skipped": [asdict(s) for s in report.skipped],
        "files": report.files,
    }
    _write_json_atomic(manifest, report.manifest)
    return report


def _methods() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        dlib_version = version("dlib-bin")
    except PackageNotFoundError:
        dlib_version = "unknown"
    return {
        "facetrack": facetrack.METHOD_VERSION,
        "landmarks": landmarks.METHOD_VERSION,
        "dlib": dlib_version,
        "crop_margin": facetrack.CROP_MARGIN,
        "min_face_fraction": MIN_FACE_FRACTION,
    }


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

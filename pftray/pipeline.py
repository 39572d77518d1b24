"""Drive a trained run with any audio file: :class:`TalkingHeadPipeline` (the diffusers-style API behind
``pftray generate``).

::

    pipe = TalkingHeadPipeline.from_run("runs/quickstart", client=3)       # a client of the run
    out = pipe(audio="speech.m4a", steps=10, seed=0)                        # GenerationOutput
    pipe.write_mp4(out, "talk.mp4")                                         # mp4 with the audio muxed in

    pipe = TalkingHeadPipeline.from_run("runs/quickstart")                 # a new person
    out = pipe(audio="speech.wav", reference="photo.png", pose="driving.mp4")

What is generated, step by step:

* **Identity.** With ``client=k`` the model is the run's backbone + the global shared adapter of the chosen
  round + client ``k``'s private identity adapter as of that round (a data-independent one when the client never
  trained), and the reference frame is the client's own (from the run's data, as the run's hosts read it:
  :class:`pftray.fed.host.ClientProvider`). Without a client the model is the backbone + the shared adapter + a
  fresh identity adapter with ``B = 0`` (:func:`pftray.model.factory.initial_identity_state`: it changes
  nothing), and the reference is a **photo**: the face is found with dlib (:class:`pftray.data.facetrack.FaceDetector`,
  HOG refined by the 68 landmarks), cut out as the square of :data:`pftray.data.facetrack.CROP_MARGIN` times the face
  box that the real-data pipeline crops, and resized to the run's resolution. A photo without a face is an
  :class:`~pftray.errors.InputError`.
* **Audio.** Any file PyAV decodes (wav, mp3, m4a, a video's audio track; any rate; mono or stereo) is down-mixed
  to mono (channel mean) and resampled to 16 kHz with ``scipy.signal.resample_poly``, as real-data ingestion
  does. The video has ``T = round(duration * 25)`` frames and the output audio is the decoded audio trimmed or
  zero-padded to exactly ``T * 640`` samples (at most half a frame, 20 ms), so picture and sound end together.
* **Audio features** are the training data's: :func:`pftray.data.audio.log_mel_features` with the run's
  ``data.n_mels`` / ``data.audio_window``, standardised per clip of ``data.frames_per_clip`` frames. Training
  clips are standardised one by one, so for each frame ``t`` the features come from the training-length clip of
  audio centred on ``t`` (clamped to the file; the whole file when it is shorter than a clip): every frame sees
  exactly the statistics the model was trained with, and there are no jumps at clip boundaries.
  ``audio_norm="file"`` (``--audio-norm file``) standardises once over the whole file instead, which keeps the
  loudness of pauses relative to speech.
* **Pose.** Neutral (zeros: frontal, eyes open) by default; or a ``[N, 4]`` track (yaw, pitch, roll, blink at
  25 fps); or a **driving video**, whose face is tracked (:mod:`pftray.data.facetrack`) and whose landmark head
  pose and blink (:mod:`pftray.data.landmarks`, the functions real-data ingestion uses) become the track. A track
  longer than the audio is cut; a shorter one is played forwards and backwards (ping-pong) until it covers ``T``
  frames, so the head never jumps.
* **Sampling.** :meth:`pftray.model.generator.TalkingHeadModel.sample` (DDIM) denoises each frame on its own,
  conditioned on that frame's audio window and pose; with its shared initial noise every frame starts from the
  same noise. Frames are therefore generated in batches of ``batch_frames`` (memory stays bounded for any length)
  with the generator re-seeded per batch, which gives the same frames as one batch of all ``T``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pftray.data.audio import log_mel_features
from pftray.data.ingest import audio_frame_to_float
from pftray.data.types import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS
from pftray.errors import InputError

#: frames denoised in one UNet batch (memory bound; the frames do not depend on it)
BATCH_FRAMES = 32
#: side of the face crops the landmarks of a driving video are predicted on
POSE_CROP_SIDE = 192
#: shorter side a driving video's frames are scaled to (at most) before tracking
POSE_VIDEO_SIDE = 480
#: longest audio accepted (one hour): beyond it the frames alone would not fit in memory at common resolutions
MAX_SECONDS = 3600.0
#: decoded audio beyond the container's stated duration that counts as codec padding (one AAC frame at 8 kHz is
#: 0.128 s) and is cut; a larger excess means the stated duration is wrong, and the decoded samples are kept
MAX_TAIL_PADDING_S = 0.25
#: how the audio features are standardised (see :func:`audio_features`)
AUDIO_NORMS = ("clip", "file")


@dataclass
class GenerationOutput:
    """What :class:`TalkingHeadPipeline` returns.

    Attributes:
        frames: uint8 ``[T, H, W, 3]`` RGB at ``fps``.
        audio: float32 ``[T * 640]`` mono waveform at ``sample_rate`` (16 kHz), aligned with the frames.
        fps: video frame rate (25).
        sample_rate: audio sample rate (16000).
        pose: float32 ``[T, 4]`` the pose track the frames were generated with.
        reference: uint8 ``[H, W, 3]`` the reference frame (the face crop of a photo, or the client's frame).
        info: what was generated: client (or None), server round, steps, seed, source audio duration, ...
    """

    frames: np.ndarray
    audio: np.ndarray
    fps: int = VIDEO_FPS
    sample_rate: int = SAMPLE_RATE
    pose: np.ndarray | None = None
    reference: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps


# ------------------------------------------------------------------------------------------------------ audio


def num_video_frames(duration_s: float) -> int:
    """``round(duration * 25)`` (halves round up): the frame count of a video as long as the audio."""
    return int(math.floor(duration_s * VIDEO_FPS + 0.5))


def resample_to_16k(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """Mono float waveform at ``sample_rate`` -> float32 at 16 kHz (polyphase, as real-data ingestion does)."""
    from scipy.signal import resample_poly

    x = np.asarray(wave, dtype=np.float64)
    if sample_rate != SAMPLE_RATE and x.size:
        g = math.gcd(int(sample_rate), SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, int(sample_rate) // g)
    return x.astype(np.float32)


def load_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, float]:
    """Decode the first audio stream of any file PyAV reads -> ``(float32 mono 16 kHz waveform, duration_s)``.

    ``duration_s`` is that of the decoded samples at the file's own rate, cut to the stream's duration as the
    container states it when the decoder returns up to :data:`MAX_TAIL_PADDING_S` more (frame-based codecs such as
    AAC decode whole frames: the encoder's padding of the last one follows the real end). Raises
    :class:`InputError` for a missing file, a file PyAV cannot read, or one without an audio stream or samples.
    """
    import av

    p = Path(path)
    if not p.is_file():
        raise InputError(f"--audio {p}: no such file")
    chunks: list[np.ndarray] = []
    rate = None
    total = 0
    declared = None  # the stream's duration in seconds, when the container states it
    try:
        with av.open(str(p)) as box:
            if not box.streams.audio:
                raise InputError(f"--audio {p}: the file has no audio stream")
            st = box.streams.audio[0]
            if st.duration and st.time_base:
                declared = float(st.duration * st.time_base)
            for frame in box.decode(audio=0):
                if rate is None:
                    rate = int(frame.sample_rate)
                elif int(frame.sample_rate) != rate:
                    raise InputError(f"--audio {p}: the sample rate changes inside the stream ({rate} -> "
                                     f"{frame.sample_rate} Hz)")
                mono = audio_frame_to_float(frame).mean(axis=0).astype(np.float32)
                chunks.append(mono)
                total += mono.size
                if total > MAX_SECONDS * rate:
                    raise InputError(f"--audio {p}: longer than {MAX_SECONDS:.0f} s; cut it into parts")
    except av.FFmpegError as err:
        raise InputError(f"--audio {p}: cannot decode ({type(err).__name__}: {err})") from err
    if not chunks or rate is None or total == 0:
        raise InputError(f"--audio {p}: the audio stream holds no decodable samples")
    wave = np.concatenate(chunks)
    if declared is not None:
        n = int(round(declared * rate))
        if 0 < n < wave.size <= n + MAX_TAIL_PADDING_S * rate:
            wave = wave[:n]
    return resample_to_16k(wave, rate), wave.size / rate


def fit_audio(wave: np.ndarray, num_frames: int) -> np.ndarray:
    """The waveform trimmed or zero-padded to exactly ``num_frames * 640`` samples (float32)."""
    n = num_frames * SAMPLES_PER_FRAME
    x = np.asarray(wave, dtype=np.float32)[:n]
    return np.pad(x, (0, n - x.size)) if x.size < n else x


def audio_features(wave: np.ndarray, *, num_frames: int, n_mels: int, audio_window: int,
                   clip_frames: int, norm: str = "clip") -> np.ndarray:
    """Per-frame audio features ``[T, audio_window, n_mels]`` as the training data computes them.

    ``norm="clip"`` (the training data's statistics): frame ``t`` gets its window from :func:`log_mel_features`
    of the ``clip_frames``-frame clip of audio centred on ``t`` (clamped to ``[0, T)``; the whole waveform when
    ``T <= clip_frames``), i.e. standardised over one training-length clip, as every training clip is.
    ``norm="file"``: one standardisation over the whole waveform (keeps the loudness differences between
    sentences and pauses, which per-clip standardisation removes). ``wave`` is 16 kHz mono, ``T * 640`` samples.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if norm not in AUDIO_NORMS:
        raise InputError(f"audio normalisation must be one of {AUDIO_NORMS}, got {norm!r}")
    x = fit_audio(wave, num_frames)
    kw = dict(n_mels=n_mels, window=audio_window)
    if num_frames <= clip_frames or norm == "file":
        return log_mel_features(x, num_frames=num_frames, **kw)
    out = np.empty((num_frames, audio_window, n_mels), np.float32)
    half = clip_frames // 2
    cache: dict[int, np.ndarray] = {}
    for t in range(num_frames):
        s = min(max(0, t - half), num_frames - clip_frames)
        if s not in cache:  # starts repeat at both ends of the file
            seg = x[s * SAMPLES_PER_FRAME : (s + clip_frames) * SAMPLES_PER_FRAME]
            cache = {s: log_mel_features(seg, num_frames=clip_frames, **kw)}
        out[t] = cache[s][t - s]
    return out


# ------------------------------------------------------------------------------------------------ reference


def load_image(image: str | os.PathLike[str] | np.ndarray, *, what: str = "--reference") -> np.ndarray:
    """A photo (path or array) -> uint8 RGB ``[H, W, 3]`` (grey and RGBA images are converted)."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, np.ndarray):
        arr = image
        if arr.dtype != np.uint8:
            if np.issubdtype(arr.dtype, np.floating) and arr.size and float(np.nanmax(arr)) <= 1.0:
                arr = np.clip(np.rint(arr * 255.0), 0, 255)
            arr = np.clip(arr, 0, 255).astype(np.uint8)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] not in (3, 4) or min(arr.shape[:2]) < 1:
            raise InputError(f"{what}: an image must be [H, W, 3] RGB, got shape {image.shape}")
        return np.ascontiguousarray(arr[:, :, :3])
    p = Path(image)
    if not p.is_file():
        raise InputError(f"{what} {p}: no such file")
    try:
        with Image.open(p) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{what} {p}: not an image PIL can read ({err})") from err


def crop_face(image: np.ndarray, resolution: int, *, what: str = "--reference") -> np.ndarray:
    """The face of a photo as the real-data pipeline crops it: uint8 ``[resolution, resolution, 3]``.

    dlib's HOG detector (with its upsampled and CNN fallbacks, the largest face when there are several), the box
    refined by the 68 landmarks, a square of :data:`pftray.data.facetrack.CROP_MARGIN` times its side around its
    centre (capped at the photo's shorter side), resized bilinearly. Raises :class:`InputError` when no face is
    found (or :class:`pftray.faces.FaceModelsMissing` when dlib is not installed).
    """
    from pftray.data import facetrack

    img = load_image(image, what=what)
    det = facetrack.detect_faces([img])
    if not det.found[0]:
        raise InputError(f"{what}: no face found in the photo ({img.shape[1]}x{img.shape[0]} px); use a photo "
                         "with a frontal face")
    box = facetrack.crop_boxes(det.boxes[:1], img.shape[:2])[0]
    return facetrack.crop_frame(img, box, resolution)


# ------------------------------------------------------------------------------------------------------- pose


def fit_track(track: np.ndarray, num_frames: int) -> np.ndarray:
    """A ``[N, C]`` track at 25 fps cut to ``num_frames`` rows, or played forwards-backwards until it has them."""
    x = np.asarray(track)
    if x.shape[0] < 1:
        raise ValueError("the track is empty")
    if x.shape[0] >= num_frames:
        return x[:num_frames].copy()
    n = x.shape[0]
    period = 2 * n - 2 if n > 1 else 1
    k = np.arange(num_frames) % period
    idx = np.where(k < n, k, period - k)
    return x[idx].copy()


def check_pose(pose: np.ndarray, num_frames: int) -> np.ndarray:
    """A user's pose track ``[N, 4]`` (yaw, pitch, roll, blink at 25 fps) -> float32 ``[T, 4]``."""
    p = np.asarray(pose, dtype=np.float32)
    if p.ndim != 2 or p.shape[1] != 4 or p.shape[0] < 1:
        raise InputError(f"pose must be an array [N, 4] (yaw, pitch, roll, blink), got shape {p.shape}")
    if not np.isfinite(p).all():
        raise InputError("pose contains NaN or infinite values")
    return fit_track(p, num_frames).astype(np.float32)


def _video_frames_25fps(path: Path, max_frames: int, side: int):
    """Yield RGB frames of the first video stream resampled to 25 fps (nearest frame by timestamp), scaled so
    the shorter side is at most ``side``; at most ``max_frames`` frames."""
    import av
    from PIL import Image

    def small(frame) -> np.ndarray:
        rgb = frame.to_ndarray(format="rgb24")
        s = side / min(rgb.shape[:2])
        if s < 1:
            size = (max(1, round(rgb.shape[1] * s)), max(1, round(rgb.shape[0] * s)))
            rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BILINEAR))
        return rgb

    with av.open(str(path)) as box:
        if not box.streams.video:
            raise InputError(f"--pose-video {path}: the file has no video stream")
        vs = box.streams.video[0]
        rate = float(vs.average_rate or vs.guessed_rate or VIDEO_FPS)
        t0, prev, k, i = None, None, 0, 0
        for frame in box.decode(video=0):
            ts = frame.time if frame.time is not None else i / rate
            i += 1
            if t0 is None:
                t0 = ts
            cur = (ts - t0, frame)
            # emit every target time k/25 that lies before this frame, from the nearer of prev and this frame
            while k < max_frames and k / VIDEO_FPS <= cur[0]:
                target = k / VIDEO_FPS
                use = prev if prev is not None and abs(prev[0] - target) <= abs(cur[0] - target) else cur
                yield small(use[1])
                k += 1
            if k >= max_frames:
                return
            prev = cur
        if prev is not None:  # the last frame holds until one frame period after it
            while k < max_frames and k / VIDEO_FPS < prev[0] + 1.0 / rate - 1e-6:
                yield small(prev[1])
                k += 1


def pose_from_video(path: str | os.PathLike[str], num_frames: int) -> np.ndarray:
    """The head pose track of a driving video, float32 ``[T, 4]`` (``Clip.pose`` units), fitted to ``T`` frames.

    Two streaming passes over at most ``T`` frames at 25 fps (memory independent of the length): (1) dlib face
    detection per frame (:class:`pftray.data.facetrack.FaceDetector`) and the smoothed track
    (:func:`pftray.data.facetrack.smooth_track`); (2) the tracked face cropped (:func:`crop_frame`, the ingestion
    margin) and its 68 landmarks (:func:`pftray.data.landmarks.landmarks_for_frames`) -> yaw, pitch, roll
    (:func:`head_pose`, :func:`pose_to_unit`), relative to the video's median head pose, and blink (eye aspect
    ratio relative to the video's median). A track
    shorter than ``T`` is played forwards-backwards (:func:`fit_track`).
    """
    import av

    from pftray.data import facetrack, landmarks

    p = Path(path)
    if not p.is_file():
        raise InputError(f"--pose-video {p}: no such file")
    try:
        det = facetrack.FaceDetector()
        results, size = [], None
        for rgb in _video_frames_25fps(p, num_frames, POSE_VIDEO_SIDE):
            size = rgb.shape[:2]
            results.append(det.detect(rgb))
        if not results:
            raise InputError(f"--pose-video {p}: no decodable video frames")
        found = facetrack.detections_from(results)
        try:
            boxes, _ = facetrack.smooth_track(found.boxes)
        except ValueError as err:
            raise InputError(f"--pose-video {p}: no face found in any frame") from err
        crops = facetrack.crop_boxes(boxes, size)
        lm = np.zeros((len(results), 68, 2), np.float32)
        for k, rgb in enumerate(_video_frames_25fps(p, len(results), POSE_VIDEO_SIDE)):
            crop = facetrack.crop_frame(rgb, crops[k], POSE_CROP_SIDE)
            lm[k] = landmarks.landmarks_for_frames(crop[None])[0]
    except av.FFmpegError as err:
        raise InputError(f"--pose-video {p}: cannot decode ({type(err).__name__}: {err})") from err
    pose = np.zeros((len(lm), 4), np.float32)
    angles = landmarks.pose_to_unit(landmarks.head_pose(lm, POSE_CROP_SIDE))
    # relative to the driving video's median head pose, as a prepared clip's pose is relative to its reference
    # frame: the reference is animated by the driving head's motion, not moved to the driving head's pose
    pose[:, :3] = np.clip(angles - np.median(angles, axis=0), -1.0, 1.0)
    pose[:, 3] = landmarks.blink_from_ear(landmarks.eye_aspect_ratio(lm))
    return fit_track(pose, num_frames).astype(np.float32)


# --------------------------------------------------------------------------------------------------- pipeline


def make_pose(pose, num_frames: int) -> np.ndarray:
    """None (neutral: zeros), an ``[N, 4]`` array at 25 fps, or a driving video's path -> float32 ``[T, 4]``."""
    if pose is None:
        return np.zeros((num_frames, 4), np.float32)
    if isinstance(pose, (str, os.PathLike)):
        return pose_from_video(pose, num_frames)
    return check_pose(pose, num_frames)


def read_run_config(run_dir: str | os.PathLike[str]):
    """The config of a run directory; :class:`InputError` when it is not one."""
    from pftray.results import RunDir
    from pftray.runtime.driver import resume_config

    run = Path(run_dir)
    if not (run / "config.yaml").is_file():
        raise InputError(f"{run}: not a pftray run directory (no config.yaml)")
    return resume_config(RunDir(run))


def client_provider(cfg, client: int, *, run_dir: str | os.PathLike[str] = ""):
    """The run's :class:`pftray.fed.host.ClientProvider` after checking that ``client`` is one of its clients;
    :class:`InputError` when the run has no such client or its data is gone."""
    from pftray.fed.host import ClientProvider

    try:
        provider = ClientProvider(cfg)
    except FileNotFoundError as err:
        raise InputError(f"{run_dir}: the run's data is not available ({err})") from err
    n = provider.num_clients
    if isinstance(client, bool) or not isinstance(client, (int, np.integer)) or not 0 <= int(client) < n:
        raise InputError(f"--client {client}: not a client of the run {run_dir} (its clients are 0..{n - 1})")
    return provider


def client_reference(cfg, client: int, *, run_dir: str | os.PathLike[str] = "") -> np.ndarray:
    """Client ``client``'s reference frame from the run's data, read as the run's hosts read it."""
    return client_provider(cfg, client, run_dir=run_dir).get(int(client)).reference


class TalkingHeadPipeline:
    """A trained run's generator with one identity loaded; call it with audio to get frames (see the module
    docstring). Build it with :meth:`from_run`."""

    def __init__(self, cfg, trainer, *, client: int | None, server_round: int, reference: np.ndarray | None,
                 identity_state: dict, run_dir: Path):
        self.cfg = cfg
        self.trainer = trainer
        self.model = trainer.model
        self.client = client
        self.server_round = server_round
        self.reference = reference
        self.identity_state = identity_state
        self.run_dir = run_dir

    @property
    def resolution(self) -> int:
        return int(self.cfg.data.resolution)

    @property
    def device(self):
        return self.trainer.device

    @classmethod
    def from_run(cls, run_dir: str | os.PathLike[str], client: int | None = None, server_round: int | None = None,
                 device: str = "cpu") -> TalkingHeadPipeline:
        """Load a run's model of ``server_round`` (default: the latest checkpoint) with client ``client``'s
        identity adapter and reference frame, or (``client=None``) a neutral identity adapter for a new person's
        photo. Raises :class:`InputError` for a missing run, checkpoint or client."""
        import torch

        from pftray.fed.client import ClientState
        from pftray.model.factory import initial_identity_state
        from pftray.runtime.driver import load_run_model

        run = Path(run_dir)
        cfg = read_run_config(run)
        reference = client_reference(cfg, client, run_dir=run) if client is not None else None
        try:
            cfg, trainer, global_shared, states = load_run_model(run, server_round=server_round)
        except FileNotFoundError as err:
            raise InputError(f"--round {server_round}: {err}" if server_round is not None else str(err)) from err
        if server_round is None:
            name = (run / "checkpoints" / "LATEST").read_text().strip()
            server_round = int("".join(ch for ch in name if ch.isdigit()))
        if client is not None:
            client = int(client)
            state = states(client)
            if state is None:  # sampled in no round up to this one: its adapter is still the initial one
                state = ClientState(initial_identity_state(trainer.model, client, cfg.experiment.seed))
        else:  # a new person: B = 0, so the identity adapter changes nothing (an id past the run's clients)
            state = ClientState(initial_identity_state(trainer.model, 1_000_000, cfg.experiment.seed))
        dev = torch.device(device)
        if dev != trainer.device:
            trainer.model.to(dev)
            trainer.device = dev
        trainer.load(global_shared, state)
        trainer.model.eval()
        return cls(cfg, trainer, client=client, server_round=int(server_round), reference=reference,
                   identity_state={k: v.detach().cpu().clone() for k, v in state.identity.items()}, run_dir=run)

    # ----------------------------------------------------------------------------------------------- inputs
    @staticmethod
    def prepare_audio(audio, sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, float]:
        """``audio`` (a path, or a waveform at ``sample_rate``: 1-D, or 2-D with the channels on the shorter
        axis) -> (16 kHz mono float32, duration in seconds)."""
        if isinstance(audio, (str, os.PathLike)):
            return load_audio(audio)
        x = np.asarray(audio, dtype=np.float64)
        if x.ndim == 2:
            x = x.mean(axis=int(np.argmin(x.shape)))
        if x.ndim != 1 or x.size == 0:
            raise InputError(f"audio must be a file or a non-empty 1-D / 2-D waveform, got shape {np.shape(audio)}")
        if not np.isfinite(x).all():
            raise InputError("audio contains NaN or infinite values")
        return resample_to_16k(x, int(sample_rate)), x.size / float(sample_rate)

    def prepare_reference(self, reference=None, *, crop: bool = True) -> np.ndarray:
        """The uint8 ``[R, R, 3]`` reference: the client's frame when ``reference`` is None, else the photo's face
        crop (``crop=False``: the image is used as it is, resized to ``R``)."""
        if reference is None:
            if self.reference is None:
                raise InputError("a new identity needs a reference photo (--reference PHOTO) or a client (--client K)")
            return self.reference
        if crop:
            return crop_face(reference, self.resolution)
        from PIL import Image

        img = load_image(reference)
        if img.shape[:2] != (self.resolution, self.resolution):
            img = np.asarray(Image.fromarray(img).resize((self.resolution,) * 2, Image.Resampling.BILINEAR))
        return img

    # --------------------------------------------------------------------------------------------- generate
    def __call__(self, audio, reference=None, pose=None, *, steps: int | None = None, seed: int | None = None,
                 sample_rate: int = SAMPLE_RATE, crop_reference: bool = True, audio_norm: str = "clip",
                 batch_frames: int = BATCH_FRAMES, progress: Callable[[int, int], None] | None = None) -> GenerationOutput:
        """Generate a video for ``audio`` (a file, or a waveform at ``sample_rate``) with ``reference`` (None: the
        client's frame; a photo path or array: its face crop) and ``pose`` (None: neutral; ``[N, 4]``; a driving
        video's path). ``steps`` DDIM steps (default ``eval.sample_steps``), ``seed`` of the initial noise (default
        ``experiment.seed``); ``progress(done, total)`` after each batch of ``batch_frames`` frames."""
        wave, duration = self.prepare_audio(audio, sample_rate)
        t_len = num_video_frames(duration)
        if t_len < 1:
            raise InputError(f"audio of {duration * 1000:.0f} ms is shorter than half a video frame (20 ms)")
        ref = self.prepare_reference(reference, crop=crop_reference)
        return self.generate(wave, duration, ref, make_pose(pose, t_len), steps=steps, seed=seed,
                             audio_norm=audio_norm, batch_frames=batch_frames, progress=progress)

    def generate(self, wave: np.ndarray, duration_s: float, reference: np.ndarray, pose: np.ndarray, *,
                 steps: int | None = None, seed: int | None = None, audio_norm: str = "clip",
                 batch_frames: int = BATCH_FRAMES,
                 progress: Callable[[int, int], None] | None = None) -> GenerationOutput:
        """:meth:`__call__` on prepared inputs: 16 kHz mono ``wave`` of ``duration_s`` seconds, a uint8
        ``[R, R, 3]`` reference and a float32 ``[T, 4]`` pose with ``T = round(duration_s * 25)``."""
        import torch

        from pftray.fed.heldout import to01

        steps = int(self.cfg.eval.sample_steps if steps is None else steps)
        seed = int(self.cfg.experiment.seed if seed is None else seed)
        if steps < 1:
            raise InputError(f"--steps {steps}: must be >= 1")
        if batch_frames < 1:
            raise ValueError(f"batch_frames must be >= 1, got {batch_frames}")
        t_len = num_video_frames(duration_s)
        r = self.resolution
        ref = np.asarray(reference)
        if ref.dtype != np.uint8 or ref.shape != (r, r, 3):
            raise ValueError(f"reference must be uint8 [{r}, {r}, 3], got {ref.dtype} {ref.shape}")
        if pose.shape != (t_len, 4):
            raise ValueError(f"pose must be [{t_len}, 4] for {duration_s:.3f} s of audio, got {pose.shape}")
        wave = fit_audio(wave, t_len)
        d = self.cfg.data
        feats = audio_features(wave, num_frames=t_len, n_mels=d.n_mels, audio_window=d.audio_window,
                               clip_frames=d.frames_per_clip, norm=audio_norm)
        dev = self.device
        ref_t = torch.from_numpy(np.array(ref, dtype=np.uint8)).permute(2, 0, 1).float().div(127.5).sub(1).to(dev)
        pose = np.ascontiguousarray(pose, dtype=np.float32)
        frames = np.empty((t_len, r, r, 3), np.uint8)
        with torch.no_grad():
            for s in range(0, t_len, batch_frames):
                e = min(t_len, s + batch_frames)
                out = self.model.sample(ref_t, torch.from_numpy(feats[s:e]).to(dev),
                                        torch.from_numpy(pose[s:e]).to(dev), steps=steps,
                                        generator=torch.Generator().manual_seed(seed))
                frames[s:e] = (to01(out).permute(0, 2, 3, 1).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
                if progress is not None:
                    progress(e, t_len)
        info = {"client": self.client, "server_round": self.server_round, "steps": steps, "seed": seed,
                "audio_norm": audio_norm,
                "source_duration_s": float(duration_s), "run_dir": str(self.run_dir),
                "identity": f"client {self.client}" if self.client is not None else "new (identity adapter B = 0)"}
        return GenerationOutput(frames=frames, audio=wave, pose=pose, reference=ref, info=info)

    @staticmethod
    def write_mp4(output: GenerationOutput, path: str | os.PathLike[str]) -> Path:
        """Write ``output`` as an mp4 (h264 video, AAC audio) atomically: a temporary file in the destination
        folder, moved into place when complete (:func:`pftray.evaluation.video.write_mp4`)."""
        from pftray.evaluation.video import write_mp4

        return write_mp4(path, output.frames, output.audio, fps=output.fps, sample_rate=output.sample_rate)


def generate_video(run_dir, out: str | os.PathLike[str], *, audio, client: int | None = None, reference=None,
                   server_round: int | None = None, pose=None, steps: int | None = None, seed: int | None = None,
                   audio_norm: str = "clip", device: str = "cpu",
                   progress: Callable[[int, int], None] | None = None) -> GenerationOutput:
    """``pftray generate`` as one call: check every input, generate, write ``out`` atomically.

    The inputs are checked before the model is built, in the order run, identity, audio, photo, driving video;
    when one is bad an :class:`InputError` names it and nothing is written."""
    if (client is None) == (reference is None):
        raise InputError("give exactly one identity: --client K (a client of the run) or --reference PHOTO")
    out = Path(out)
    if out.is_dir():
        raise InputError(f"--out {out}: is a folder; give the mp4 file to write")
    if steps is not None and steps < 1:
        raise InputError(f"--steps {steps}: must be >= 1")
    cfg = read_run_config(run_dir)
    if client is not None:
        client_provider(cfg, client, run_dir=run_dir)  # the client exists (the pipeline loads its frame)
    wave, duration = load_audio(audio)
    t_len = num_video_frames(duration)
    if t_len < 1:
        raise InputError(f"--audio {audio}: {duration * 1000:.0f} ms of audio, shorter than half a video frame")
    ref = crop_face(reference, cfg.data.resolution) if reference is not None else None
    pose_t = make_pose(pose, t_len)
    pipe = TalkingHeadPipeline.from_run(run_dir, client=client, server_round=server_round, device=device)
    result = pipe.generate(wave, duration, ref if ref is not None else pipe.reference, pose_t, steps=steps,
                           seed=seed, audio_norm=audio_norm, progress=progress)
    pipe.write_mp4(result, out)
    return result

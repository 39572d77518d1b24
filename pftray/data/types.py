"""Plain data containers shared by the synthetic generator, real-data ingestion and the trainer.

Conventions (fixed across pftray):

* video runs at ``VIDEO_FPS`` = 25 frames/s, audio at ``SAMPLE_RATE`` = 16 kHz, so one video frame spans
  ``SAMPLES_PER_FRAME`` = 640 audio samples;
* log-mel features use a hop of 160 samples (10 ms), i.e. 4 mel frames per video frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from pftray.errors import InputError

VIDEO_FPS = 25
SAMPLE_RATE = 16_000
SAMPLES_PER_FRAME = SAMPLE_RATE // VIDEO_FPS  # 640
#: corruptions of an unreliable client's training clips (:func:`pftray.data.synthetic.corrupt_clip`): the first
#: three degrade the data mildly, the last four break the audio-mouth or reference-frame link the model learns from.
UNRELIABLE_KINDS = ("offset", "noise", "frozen", "heavy_offset", "swapped_audio", "wrong_identity",
                    "channel_swap", "blur", "occluded")
#: the kinds cycled when none are given (``data.unreliable_kinds``' default): the original three, so runs made before
#: the new kinds existed keep their data.
DEFAULT_UNRELIABLE_KINDS = ("offset", "noise", "frozen")
ARRAY_FIELDS = ("frames", "audio", "audio_feats", "pose", "mouth", "mouth_box")


class DataError(InputError):
    """Bad data on disk or in memory (exit 2); the message names the offending file or field."""


def _arrays_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and bool(np.array_equal(a, b))


@dataclass(eq=False)
class Clip:
    """One talking-head clip: ``T`` video frames with the aligned audio and labels.

    Attributes:
        frames: uint8 ``[T, H, W, 3]`` RGB at 25 fps.
        audio: float32 ``[T * 640]`` mono waveform at 16 kHz.
        audio_feats: float32 ``[T, A, M]`` per-clip normalised log-mel window of ``A`` mel frames (hop 10 ms)
            centred on each video frame, ``M`` mel bands (see :func:`pftray.data.audio.log_mel_features`).
        pose: float32 ``[T, 4]`` yaw, pitch, roll (each roughly in [-1, 1]) and blink in [0, 1]. Ground truth for
            synthetic data; for real data (``pftray data prepare``) the head pose of a PnP fit of a 3-D face
            model to dlib's 68 landmarks and the eye-aspect-ratio blink (:mod:`pftray.data.landmarks`).
        mouth: float32 ``[T]`` mouth openness in [0, 1]. Ground truth for synthetic data; for real data the
            inner-lip gap over the mouth width of the landmarks.
        mouth_box: int32 ``[T, 4]`` ``y0, y1, x0, x1`` pixel box (half-open) around the mouth in each frame.
        identity: identity name (``"client-3"``, ``"pub-3"``, or the speaker directory for real data).
        clip_id: unique id of the clip within its identity.
        extras: optional per-frame arrays keyed by name, each with the frame count as its first dimension, e.g.
            ``"landmarks"`` float32 ``[T, 68, 2]`` (real data, pixel coordinates in the crop) or the synthetic
            scenario's ground truth. Empty for data made before they existed; stored in the shard beside the
            fixed fields and covered by the same checksum.
    """

    frames: np.ndarray
    audio: np.ndarray
    audio_feats: np.ndarray
    pose: np.ndarray
    mouth: np.ndarray
    mouth_box: np.ndarray
    identity: str
    clip_id: str
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def __eq__(self, other: object) -> bool:
        """Exact equality: same ids and bit-identical arrays (dtype, shape and values)."""
        if not isinstance(other, Clip):
            return NotImplemented
        return (self.identity, self.clip_id) == (other.identity, other.clip_id) and all(
            _arrays_equal(getattr(self, f), getattr(other, f)) for f in ARRAY_FIELDS
        ) and sorted(self.extras) == sorted(other.extras) and all(
            _arrays_equal(self.extras[k], other.extras[k]) for k in self.extras
        )

    __hash__ = None  # mutable container of arrays

    def validate(self) -> None:
        """Raise :class:`DataError` naming the field if shapes, dtypes or ranges break the contract."""
        t = self.frames.shape[0] if getattr(self.frames, "ndim", 0) == 4 else -1
        checks = [
            ("frames", self.frames, np.uint8, (t, None, None, 3)),
            ("audio", self.audio, np.float32, (t * SAMPLES_PER_FRAME,)),
            ("audio_feats", self.audio_feats, np.float32, (t, None, None)),
            ("pose", self.pose, np.float32, (t, 4)),
            ("mouth", self.mouth, np.float32, (t,)),
            ("mouth_box", self.mouth_box, np.int32, (t, 4)),
        ]
        for name, arr, dtype, shape in checks:
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype:
                got = getattr(arr, "dtype", type(arr).__name__)
                raise DataError(f"clip {self.clip_id!r}: {name} must be a {np.dtype(dtype)} array, got {got}")
            if arr.ndim != len(shape) or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
                raise DataError(f"clip {self.clip_id!r}: {name} has shape {arr.shape}, expected {shape}")
        if t < 1:
            raise DataError(f"clip {self.clip_id!r}: needs at least one frame, got {t}")
        for name, arr in self.extras.items():
            if not isinstance(arr, np.ndarray) or arr.ndim < 1 or arr.shape[0] != t:
                got = getattr(arr, "shape", type(arr).__name__)
                raise DataError(f"clip {self.clip_id!r}: extras[{name!r}] must be an array with {t} frames first, "
                                f"got {got}")
        if not np.isfinite(self.mouth).all() or self.mouth.min() < 0 or self.mouth.max() > 1:
            raise DataError(f"clip {self.clip_id!r}: mouth must be finite and in [0, 1]")


@dataclass(eq=False)
class ClientData:
    """Everything one federated client holds locally (its clips never leave it).

    Attributes:
        client_id: index of the client in the federation.
        identity: the single identity this client owns (natural non-IID partition).
        reference: uint8 ``[H, W, 3]`` neutral frame of this identity (mouth closed, frontal pose), not one
            of the training or held-out frames.
        train: training clips (corrupted when ``unreliable`` is set).
        heldout: clean held-out clips for evaluation.
        unreliable: ``None`` or the corruption kind applied to the training clips, one of ``UNRELIABLE_KINDS``
            ("offset", "noise", "frozen", "heavy_offset", "swapped_audio", "wrong_identity", "channel_swap",
            "blur", "occluded");
            evaluation reads it as the client's label (e.g. per-kind detection AUC).
    """

    client_id: int
    identity: str
    reference: np.ndarray
    train: list[Clip]
    heldout: list[Clip]
    unreliable: str | None = None

    def __eq__(self, other: object) -> bool:
        """Exact equality of metadata, reference and every clip (so ``make_client(k) == federation[k]``)."""
        if not isinstance(other, ClientData):
            return NotImplemented
        return (
            (self.client_id, self.identity, self.unreliable)
            == (other.client_id, other.identity, other.unreliable)
            and _arrays_equal(self.reference, other.reference)
            and self.train == other.train
            and self.heldout == other.heldout
        )

    __hash__ = None

    @property
    def num_examples(self) -> int:
        """Number of training frames (the FedAvg weight ``n_k``)."""
        return int(sum(c.num_frames for c in self.train))

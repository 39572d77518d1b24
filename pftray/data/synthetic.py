"""Synthetic talking heads: speech-like audio and a 2-D cartoon face whose mouth follows the audio.

The generator is the embedded default dataset of pftray (no download). It is built so that the quantities a
talking-head model must learn are present and measurable:

* **lip sync** — the mouth openness at video frame ``t`` is the mean of the audio amplitude envelope over the
  640 samples of that frame; the audio's short-time energy is that envelope times a unit-power source, so the
  openness is a deterministic function of the audio energy around ``t`` and learnable from ``audio_feats``;
* **identity** — face shape, skin / hair / eye / lip / background colours, eye spacing, mouth width, hair
  style, voice pitch and speaking rate are sampled per identity (:func:`sample_identity`);
* **motion** — smooth head pose (yaw, pitch, roll move and rotate the face, with a parallax shift of the inner
  features) and blinks, exposed as ``Clip.pose``.

Audio is a source-filter model: a harmonic glottal source at the identity's pitch (with intonation and
jitter), harmonic amplitudes shaped by two Lorentzian formant resonances that move per syllable, multiplied by
a syllable-rate envelope with pauses, plus a little aspiration and background noise.

Rendering is vectorised numpy over ``[T, H, W]`` with anti-aliased soft edges: every shape is an ellipse (or a
half-plane) whose coverage is ``clip(1/2 - d / pixel, 0, 1)`` with ``d`` the first-order signed distance
``(r - 1) / |grad r|`` (bounded below by the distance to the bounding box); head and facial features are
drawn only inside pixel windows that contain them in every frame. ``supersample > 1`` additionally renders at
a multiple of the resolution and box-filters down.

The "shifted" scenario (``data.shift_severity`` = ``s`` in (0, 1]; ``s = 0`` is the i.i.d. scenario)
----------------------------------------------------------------------------------------------------
By default client and public (pre-training) identities come from the same distribution, so a backbone
pre-trained on the public clips already fits the clients and federated adapters have little to learn. With
``s > 0`` every client identity (never a public one, :func:`make_public_clips` takes no severity) gets a
:class:`ClientShift` from :func:`sample_shift`:

* **shared shift, appearance — visible upper teeth.** When the mouth opens, the upper part of the mouth
  interior (above ``0.25 * inner_h`` over the mouth centre, i.e. the top 37.5 % of its height) shows teeth,
  composited with opacity ``s`` over the dark interior. No public identity has teeth, every client has them,
  and they are invisible in the closed-mouth reference frame: the *shared* adapter must learn to draw them from
  the audio (how far the mouth opens) and the mouth position. The region is small (a few pixels at 64 px), so
  measure it with ``extras["shift_box"]`` or the mouth box, not the whole frame. (A backbone's autoencoder
  trained on the public clips may not be able to decode teeth at all: ``bench/shift_gap.py`` measures it.)
* **shared shift, dynamics — the mouth anticipates the sound.** Client mouths move ``1.5 * s`` frames
  (60 ms at ``s = 1``) ahead of the audio (co-articulation): the openness is computed from the envelope
  advanced by that many samples (the last envelope value continues past the clip end), while the public
  mouths are synchronous. The audio features' window (+-80 ms at the default 16 mel frames) covers the lead,
  so it is learnable from the audio; it stays within what the backbone's decoder can draw (only the
  openness changes).
* **per-client traits — mouth gain and teeth colour.** The mouth opens by a client-specific gain,
  ``mouth = clip(g * lead(mouth_base), 0, 1)`` with ``ln g = 0.45 s z``, ``z ~ U(-1, 1)`` per client (``g``
  in [0.64, 1.57] at ``s = 1``), and the teeth colour is
  ``(1 - 0.5 s) * base + 0.5 s * c`` with ``c ~ U(0.35, 1)^3`` per client, darkened where needed so that its
  luma is at most the skin's (teeth in the mouth's shade; brighter teeth would lift the reference level of
  :func:`estimate_mouth_openness`, which then misreads open mouths). Neither is visible in the
  reference frame (mouth closed) nor predictable from the audio alone: only the client's own clips reveal
  them, which is the *identity* adapter's work. ``z`` and ``c`` are drawn from a stream of their own
  (``[0x5A1F7, seed, client]``) independently of ``s``, so one client keeps the same traits at every
  severity, scaled by it.

``Clip.mouth`` stays what the frames show (after the gain). Ground truth per frame, in ``Clip.extras`` of
every shifted clip (train and held-out; absent, ``extras == {}``, at ``s = 0`` and on public clips):

* ``"mouth_base"`` float32 ``[T]``: audio-synchronous openness, no lead, no gain (today's ``mouth``);
* ``"mouth_lead"`` float32 ``[T]``: the shared lead in video frames (``1.5 * s``, constant);
* ``"mouth_gain"`` float32 ``[T]``: the client's gain ``g`` (constant within a client);
* ``"teeth_rgb"`` float32 ``[T, 3]``: the client's teeth colour in [0, 1] (constant within a client);
* ``"shift_box"`` int32 ``[T, 4]``: ``y0, y1, x0, x1`` (half-open) bounding box of the pixels the teeth
  cover in that frame, ``[0, 0, 0, 0]`` when none (mouth closed) — a region for a shift-region PSNR;
* ``"shift_area"`` float32 ``[T]``: the teeth's geometric coverage in output pixels (before opacity).

Boxes and scalars rather than masks keep shards small (44 bytes a frame). With ``s = 0`` nothing is drawn
and no random number is consumed: clips are bit-for-bit those of the i.i.d. scenario. The teeth are not dark, so
:func:`estimate_mouth_openness` (a dark-pixel count) reads a shifted open mouth ~1/3 less open; its correlation
with ``Clip.mouth`` at ``s = 1`` stays >= 0.95 at 64 px (0.65-0.94 at 32 px, where the interior is a few pixels,
against 0.94-0.98 without the shift).

Unreliable clients (:func:`corrupt_clip`, ``data.unreliable_kinds``): besides the original ``offset``, ``noise``
and ``frozen``, ``heavy_offset`` (audio half a clip away), ``swapped_audio`` (another speaker's utterance:
the audio carries no information about the mouth), ``wrong_identity`` (frames of another face under the
client's own reference) and ``channel_swap`` (BGR frames under an RGB reference) break the very conditioning a
talking-head model learns from. ``ClientData.unreliable`` holds each unreliable client's kind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pftray.data.audio import log_mel_features
from pftray.data.types import SAMPLE_RATE, SAMPLES_PER_FRAME, UNRELIABLE_KINDS, VIDEO_FPS, Clip

RGB = tuple[float, float, float]

_STREAMS = {"client": 0, "public": 1, "donor": 2}
_NAME_PREFIX = {"client": "client", "public": "pub", "donor": "donor"}
_HAIR_PALETTE = np.array(
    [
        [0.08, 0.06, 0.05],
        [0.24, 0.14, 0.08],
        [0.45, 0.30, 0.15],
        [0.83, 0.68, 0.40],
        [0.58, 0.24, 0.10],
        [0.62, 0.62, 0.62],
    ]
)
_IRIS_PALETTE = np.array(
    [[0.36, 0.21, 0.10], [0.28, 0.48, 0.74], [0.30, 0.53, 0.33], [0.50, 0.40, 0.20], [0.14, 0.09, 0.06]]
)
_SKIN_LIGHT = np.array([0.96, 0.80, 0.69])
_SKIN_DARK = np.array([0.36, 0.22, 0.15])
_MOUTH_INTERIOR = (0.11, 0.03, 0.04)
_PUPIL = (0.03, 0.03, 0.03)
_EYE_WHITE = (0.95, 0.94, 0.92)
_MAX_OPEN = 0.15  # mouth-interior half-height at openness 1, as a fraction of the face half-height
_LIP_HALF_HEIGHT = 0.065  # closed-lips half-height, fraction of the face half-height
_MOUTH_V = 0.5  # mouth centre below the face centre, fraction of the face half-height
_TEETH = (0.93, 0.91, 0.84)  # base teeth colour of the shifted scenario
_TEETH_EDGE = 0.25  # teeth reach down to this fraction of the interior half-height above the mouth centre
_GAIN_LOG_SPAN = 0.45  # ln(mouth gain) lies in [-0.45 s, 0.45 s]
_TEETH_MIX = 0.5  # per-client teeth colour: (1 - 0.5 s) * base + 0.5 s * c
_LEAD_FRAMES = 1.5  # shared lead of the mouth over the audio at severity 1, video frames
_TEETH_MAX_LUMA = 1.0  # teeth luma <= skin luma


@dataclass(frozen=True)
class IdentityParams:
    """Appearance and voice of one synthetic identity. Lengths are in normalised image units ([-1, 1])."""

    name: str
    face_axes: tuple[float, float]  # horizontal, vertical semi-axes of the skin ellipse
    skin: RGB
    hair: RGB
    eye: RGB  # iris colour
    lip: RGB
    background: RGB
    shirt: RGB
    eye_spacing: float  # distance between eye centres, fraction of the face width (2 * ax)
    eye_size: float  # eye semi-width, fraction of ax
    mouth_width: float  # mouth semi-width, fraction of ax
    hair_length: float  # how far down (fraction of ay below the face centre) the hair reaches at the back
    hairline: float  # forehead hairline height, fraction of ay above the face centre
    hair_part: float  # asymmetry of the hairline (side parting), in [-1, 1]
    f0: float  # mean voice pitch, Hz
    speaking_rate: float  # syllables per second
    motion: float  # head-pose amplitude, pose values lie in [-motion, motion]
    blink_rate: float  # blinks per second


def _stream_code(stream: str) -> int:
    if stream not in _STREAMS:
        raise ValueError(f"stream must be one of {sorted(_STREAMS)}, got {stream!r}")
    return _STREAMS[stream]


def _rgb(x: np.ndarray) -> RGB:
    c = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1.0)
    return (float(c[0]), float(c[1]), float(c[2]))


def _luma(c: Sequence[float]) -> float:
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


def sample_identity(seed: int, index: int, *, stream: str = "client") -> IdentityParams:
    """Draw identity ``index`` of the ``stream`` ("client", "public" or "donor") deterministically from ``seed``.

    The streams use disjoint seed sequences, so public (pre-training) identities never coincide with client
    identities; names are ``"client-<index>"``, ``"pub-<index>"`` and ``"donor-<index>"`` (the voices and faces
    that :func:`corrupt_clip` swaps in).
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    code = _stream_code(stream)
    rng = np.random.default_rng([0x1D5EED, code, int(seed), int(index)])
    tone = rng.uniform(0.0, 1.0)
    skin = (1 - tone) * _SKIN_LIGHT + tone * _SKIN_DARK + rng.normal(0.0, 0.025, 3)
    hair = _HAIR_PALETTE[rng.integers(len(_HAIR_PALETTE))] + rng.normal(0.0, 0.03, 3)
    eye = _IRIS_PALETTE[rng.integers(len(_IRIS_PALETTE))] + rng.normal(0.0, 0.03, 3)
    lip = skin * np.array([0.80, 0.50, 0.52]) + np.array([0.10, 0.0, 0.02]) + rng.normal(0.0, 0.02, 3)
    # Background: any muted colour whose brightness differs clearly from the skin so the face outline shows.
    while True:
        background = rng.uniform(0.1, 0.9, 3)
        if abs(_luma(background) - _luma(skin)) > 0.15:
            break
    shirt = rng.uniform(0.05, 0.85, 3)
    return IdentityParams(
        name=f"{_NAME_PREFIX[stream]}-{index}",
        face_axes=(float(rng.uniform(0.36, 0.46)), float(rng.uniform(0.52, 0.62))),
        skin=_rgb(skin),
        hair=_rgb(hair),
        eye=_rgb(eye),
        lip=_rgb(lip),
        background=_rgb(background),
        shirt=_rgb(shirt),
        eye_spacing=float(rng.uniform(0.36, 0.48)),
        eye_size=float(rng.uniform(0.16, 0.22)),
        mouth_width=float(rng.uniform(0.28, 0.42)),
        hair_length=float(rng.uniform(-0.3, 1.3)),
        hairline=float(rng.uniform(0.45, 0.7)),
        hair_part=float(rng.uniform(-1.0, 1.0)),
        f0=float(np.exp(rng.uniform(np.log(90.0), np.log(250.0)))),
        speaking_rate=float(rng.uniform(2.5, 6.0)),
        motion=float(rng.uniform(0.3, 0.8)),
        blink_rate=float(rng.uniform(0.2, 0.5)),
    )


@dataclass(frozen=True)
class ClientShift:
    """What the "shifted" scenario changes for one client identity (see the module docstring).

    ``teeth_alpha`` is the opacity of the shared teeth (= severity), ``mouth_lead`` the shared lead of the mouth
    over the audio in video frames (``1.5 * severity``), ``teeth`` this client's teeth colour and ``mouth_gain``
    its mouth-motion gain (rendered openness = ``clip(mouth_gain * lead(audio openness), 0, 1)``).
    """

    severity: float
    teeth_alpha: float
    teeth: RGB
    mouth_gain: float
    mouth_lead: float = 0.0


def sample_shift(
    seed: int, index: int, severity: float, *, identity: IdentityParams | None = None
) -> ClientShift | None:
    """The shift of client ``index`` at ``severity`` in [0, 1]; ``None`` (and no random draw) at 0.

    The client's traits (``z``, ``c`` of the module docstring) come from their own stream
    ``[0x5A1F7, seed, index]`` and do not depend on ``severity``, which only scales them. ``identity`` (default:
    client ``index`` of :func:`sample_identity`) sets the skin that caps the teeth's brightness.
    """
    severity = float(severity)
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"shift severity must be in [0, 1], got {severity}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    if severity == 0.0:
        return None
    rng = np.random.default_rng([0x5A1F7, int(seed), int(index)])
    z = rng.uniform(-1.0, 1.0)
    tint = rng.uniform(0.35, 1.0, 3)
    teeth = (1.0 - _TEETH_MIX * severity) * np.asarray(_TEETH) + _TEETH_MIX * severity * tint
    skin = (identity if identity is not None else sample_identity(seed, index, stream="client")).skin
    teeth = teeth * min(1.0, _TEETH_MAX_LUMA * _luma(skin) / _luma(teeth))
    return ClientShift(
        severity=severity,
        teeth_alpha=severity,
        teeth=_rgb(teeth),
        mouth_gain=float(np.exp(_GAIN_LOG_SPAN * severity * z)),
        mouth_lead=_LEAD_FRAMES * severity,
    )


# ----------------------------------------------------------------------------------------------- audio


def synthesize_speech(
    identity: IdentityParams, *, num_frames: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Speech-like audio for ``num_frames`` video frames and its amplitude envelope.

    Returns ``(audio, envelope)``, both float32 ``[num_frames * 640]`` at 16 kHz, ``envelope`` in [0, 1].
    ``audio ~ 0.3 * envelope * source + noise`` where ``source`` has unit power at every sample (the harmonic
    amplitudes are renormalised after formant shaping), so the local energy is a function of the envelope.
    """
    n = num_frames * SAMPLES_PER_FRAME
    sr = SAMPLE_RATE
    t = np.arange(n) / sr
    duration = n / sr
    env = np.zeros(n)
    centres, f1s, f2s = [], [], []
    start = rng.uniform(-0.25, 0.05)  # clips may begin mid-syllable
    while start < duration:
        if rng.random() < 0.15:  # pause between phrases: mouth closed, silence
            start += rng.uniform(0.12, 0.45)
            continue
        length = rng.uniform(0.7, 1.3) / identity.speaking_rate
        peak = rng.uniform(0.45, 1.0)
        lo, hi = max(0, int(np.ceil(start * sr))), min(n, int(np.ceil((start + length) * sr)))
        if hi > lo:
            x = (t[lo:hi] - start) / length
            env[lo:hi] = np.maximum(env[lo:hi], peak * np.sin(np.pi * x) ** 0.8)
        centres.append(start + length / 2)
        f1s.append(rng.uniform(300.0, 850.0))
        f2s.append(rng.uniform(850.0, 2400.0))
        start += length
    if not centres:
        centres, f1s, f2s = [0.0], [500.0], [1500.0]
    f1 = np.interp(t, centres, f1s)
    f2 = np.interp(t, centres, f2s)
    # Pitch: intonation (slow sinusoid + declination) and ~1% smoothed jitter.
    jitter = np.convolve(rng.normal(0.0, 1.0, n), np.ones(80) / np.sqrt(80), mode="same") * 0.01
    f0 = identity.f0 * (1 + 0.08 * np.sin(2 * np.pi * rng.uniform(0.3, 0.8) * t + rng.uniform(0, 2 * np.pi)))
    f0 = f0 * (1 - 0.05 * t / max(duration, 1e-3)) * (1 + jitter)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    source = np.zeros(n)
    power = np.zeros(n)
    for k in range(1, int(4000.0 / identity.f0 * 1.1) + 1):
        fk = k * f0
        gain = (1.0 + 8.0 / (1.0 + ((fk - f1) / 80.0) ** 2) + 5.0 / (1.0 + ((fk - f2) / 120.0) ** 2)) / k
        gain = gain * (fk < sr / 2 - 200)
        source += gain * np.sin(k * phase)
        power += 0.5 * gain**2
    source /= np.sqrt(np.maximum(power, 1e-12))
    audio = 0.3 * env * source + 0.02 * env * rng.normal(0.0, 1.0, n) + 0.002 * rng.normal(0.0, 1.0, n)
    return audio.astype(np.float32), env.astype(np.float32)


def mouth_from_envelope(envelope: np.ndarray, *, num_frames: int) -> np.ndarray:
    """Mouth openness per video frame: the mean envelope over the frame's 640 samples, float32 in [0, 1]."""
    env = np.asarray(envelope, dtype=np.float64)[: num_frames * SAMPLES_PER_FRAME]
    return np.clip(env.reshape(num_frames, SAMPLES_PER_FRAME).mean(axis=1), 0.0, 1.0).astype(np.float32)


def sample_pose(identity: IdentityParams, *, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth yaw/pitch/roll (sums of three random low-frequency sinusoids, within ``±motion``) and blinks.

    Blinks are a Poisson process at ``identity.blink_rate`` with a triangular closing profile of 4-6 frames
    (1 = fully closed). Returns float32 ``[num_frames, 4]``.
    """
    t = np.arange(num_frames) / VIDEO_FPS
    pose = np.zeros((num_frames, 4))
    for j, scale in enumerate((1.0, 0.6, 0.5)):
        freqs = rng.uniform(0.08, 0.7, 3)
        amps = rng.uniform(0.3, 1.0, 3)
        phases = rng.uniform(0.0, 2 * np.pi, 3)
        wave = (amps[:, None] * np.sin(2 * np.pi * freqs[:, None] * t[None, :] + phases[:, None])).sum(0)
        pose[:, j] = identity.motion * scale * wave / amps.sum()
    duration = num_frames / VIDEO_FPS
    onset = -0.25 + rng.exponential(1.0 / identity.blink_rate)
    while onset < duration:
        length = rng.integers(4, 7) / VIDEO_FPS
        x = 1.0 - np.abs((t - onset) / (length / 2) - 1.0)
        pose[:, 3] = np.maximum(pose[:, 3], np.clip(x, 0.0, 1.0))
        onset += length + rng.exponential(1.0 / identity.blink_rate)
    return pose.astype(np.float32)


# ----------------------------------------------------------------------------------------------- video


def _ellipse(u, v, u0, v0, a, b, px):
    """Anti-aliased coverage of the ellipse ``((u-u0)/a)^2 + ((v-v0)/b)^2 <= 1``.

    Signed distance ``max((r - 1) / |grad r|, bounding-box distance)`` (first order, Quilez), coverage
    ``clip(1/2 - d / px, 0, 1)``.
    """
    du = (u - u0) / a
    dv = (v - v0) / b
    r = np.sqrt(du * du + dv * dv)
    g = np.sqrt((du / a) ** 2 + (dv / b) ** 2)  # = r * |grad r|
    inv_grad = np.where(g > 1e-9, r / np.maximum(g, 1e-9), np.minimum(a, b))
    # The first-order distance collapses far from thin ellipses (streaks along the major axis); the distance
    # to the bounding box is a lower bound of the true one and removes them.
    box = np.maximum(np.abs(u - u0) - a, np.abs(v - v0) - b)
    return np.clip(0.5 - np.maximum((r - 1.0) * inv_grad, box) / px, 0.0, 1.0)


def _over(img: np.ndarray, mask: np.ndarray, colour) -> None:
    """Alpha-composite ``colour`` (RGB triple or ``[3, ...]`` per-pixel array) with coverage ``mask`` in place.

    ``img`` is channel-first ``[3, T, H, W]`` so each channel update is one contiguous broadcast.
    """
    for ch in range(3):
        img[ch] += mask * (colour[ch] - img[ch])


def _as_col(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32).reshape(-1, 1, 1)


def render_frames(
    identity: IdentityParams,
    *,
    pose: np.ndarray,
    mouth: np.ndarray,
    resolution: int,
    supersample: int = 1,
    shift: ClientShift | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw the face for each frame; returns uint8 frames ``[T, R, R, 3]`` and int32 mouth boxes ``[T, 4]``.

    ``pose[:, :3]`` (yaw, pitch, roll) shift the head (``0.12 yaw``, ``0.06 pitch``), rotate it (``0.15 roll``
    rad) and shift the inner features by a parallax offset (``0.2 yaw * ax``, ``0.12 pitch * ay``);
    ``pose[:, 3]`` closes the eyes; ``mouth`` in [0, 1] sets the mouth-interior half-height
    (``0.15 * ay * mouth``). The mouth box has a constant size per identity and resolution and follows the
    mouth centre. ``shift`` draws the shifted scenario's teeth (``mouth`` is taken as given: the client's
    gain is applied by :func:`render_clip`); ``None`` draws exactly the i.i.d. face.
    """
    frames, box, _ = _render_frames(
        identity, pose=pose, mouth=mouth, resolution=resolution, supersample=supersample, shift=shift
    )
    return frames, box


def _render_frames(
    identity: IdentityParams,
    *,
    pose: np.ndarray,
    mouth: np.ndarray,
    resolution: int,
    supersample: int = 1,
    shift: ClientShift | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """:func:`render_frames` plus the teeth coverage ``[T, R, R]`` float32 in [0, 1] (``None`` without shift)."""
    pose = np.asarray(pose, dtype=np.float32)
    mouth = np.clip(np.asarray(mouth, dtype=np.float32), 0.0, 1.0)
    if pose.ndim != 2 or pose.shape[1] != 4:
        raise ValueError(f"pose must have shape [T, 4], got {pose.shape}")
    if mouth.shape != (pose.shape[0],):
        raise ValueError(f"mouth must have shape [{pose.shape[0]}], got {mouth.shape}")
    if resolution < 16 or resolution % 16:
        raise ValueError(f"resolution must be a positive multiple of 16, got {resolution}")
    if supersample < 1:
        raise ValueError(f"supersample must be >= 1, got {supersample}")
    num = pose.shape[0]
    res = resolution * supersample
    px = np.float32(2.0 / res)
    coords = ((np.arange(res, dtype=np.float32) + 0.5) * px - 1.0).astype(np.float32)
    y, x = coords[None, :, None], coords[None, None, :]
    ax, ay = identity.face_axes
    yaw, pitch, roll, blink = (_as_col(pose[:, j]) for j in range(4))
    cx, cy = 0.12 * yaw, -0.12 + 0.06 * pitch
    theta = 0.15 * roll
    cos, sin = np.cos(theta), np.sin(theta)
    fu, fv = 0.2 * yaw * ax, 0.12 * pitch * ay  # parallax shift of eyes, nose, mouth

    def local(u_lo: float, u_hi: float, v_lo: float, v_hi: float):
        """Pixel window covering the face-local box in every frame (+2 px), and (u, v) on that window.

        Only the head and its features are drawn inside such windows: the same pixels, a fraction of the
        work (every mask is exactly zero more than half a pixel outside its shape).
        """
        cu = np.array([u_lo, u_hi, u_lo, u_hi], dtype=np.float32)
        cv = np.array([v_lo, v_lo, v_hi, v_hi], dtype=np.float32)
        xs = cx.reshape(-1, 1) + cos.reshape(-1, 1) * cu - sin.reshape(-1, 1) * cv
        ys = cy.reshape(-1, 1) + sin.reshape(-1, 1) * cu + cos.reshape(-1, 1) * cv
        c0, c1 = ((xs.min() + 1) / px - 0.5, (xs.max() + 1) / px - 0.5)
        r0, r1 = ((ys.min() + 1) / px - 0.5, (ys.max() + 1) / px - 0.5)
        rows = slice(int(np.clip(np.floor(r0) - 2, 0, res)), int(np.clip(np.ceil(r1) + 3, 0, res)))
        cols = slice(int(np.clip(np.floor(c0) - 2, 0, res)), int(np.clip(np.ceil(c1) + 3, 0, res)))
        dx, dy = x[:, :, cols] - cx, y[:, rows, :] - cy
        window["rows"], window["cols"] = rows, cols
        return img[:, :, rows, cols], cos * dx + sin * dy, -sin * dx + cos * dy

    window: dict[str, slice] = {}

    skin = np.asarray(identity.skin, dtype=np.float32)
    img = np.empty((3, num, res, res), dtype=np.float32)
    shade = 1.0 - 0.25 * (y + 1.0) / 2.0  # vertical background gradient
    img[:] = np.asarray(identity.background, dtype=np.float32).reshape(3, 1, 1, 1) * shade

    # Body: shoulders and neck (image coordinates, follow the head's horizontal shift only a little).
    _over(img, _ellipse(x, y, 0.3 * cx, np.float32(1.18), 0.9, 0.45, px), identity.shirt)
    neck_w = 0.45 * ax
    neck = np.clip(0.5 - (np.abs(x - 0.6 * cx) - neck_w) / px, 0, 1) * np.clip(
        0.5 - (cy + 0.3 - y) / px, 0, 1
    )
    _over(img, neck, skin * 0.82)
    # Hair behind the head (long hair reaches down the sides).
    v_bottom = max(1.15, identity.hair_length + 0.05) * ay
    img_head, u, v = local(-1.3 * ax, 1.3 * ax, -1.2 * ay, v_bottom)
    back = _ellipse(u, v, 0.0, -0.06 * ay, 1.12 * ax, 1.1 * ay, px)
    back = back * np.clip(0.5 + (identity.hair_length * ay - v) / px, 0, 1)
    if identity.hair_length > 0.3:
        curtain = np.clip(0.5 - (np.abs(u) - 1.2 * ax) / px, 0, 1) * np.clip(0.5 + v / px, 0, 1)
        curtain = curtain * np.clip(0.5 + (identity.hair_length * ay - v) / px, 0, 1)
        back = np.maximum(back, curtain)
    _over(img_head, back, identity.hair)
    # Ears, then the face with a soft radial shading.
    ears = _ellipse(np.abs(u), v, 0.97 * ax, 0.02 * ay, 0.13 * ax, 0.2 * ay, px)
    _over(img_head, ears, skin * 0.9)
    face = _ellipse(u, v, 0.0, 0.0, ax, ay, px)
    r2 = (u / ax) ** 2 + (v / ay) ** 2
    _over(img_head, face, skin.reshape(3, 1, 1, 1) * (1.04 - 0.16 * np.clip(r2, 0, 1)))
    # Hair cap over the forehead: inside a slightly larger ellipse and above a curved, parted hairline.
    line = -identity.hairline * ay + 0.35 * ay * (u / ax) ** 2 + 0.08 * ay * identity.hair_part * (u / ax)
    cap = _ellipse(u, v, 0.0, -0.04 * ay, 1.06 * ax, 1.08 * ay, px) * np.clip(0.5 + (line - v) / px, 0, 1)
    _over(img_head, cap, identity.hair)

    # Eyes (mirrored about the feature axis): outline, white, iris, pupil, lids closing in blinks, brows.
    u_side = (max(identity.eye_spacing + 1.25 * identity.eye_size, identity.mouth_width) + 0.22) * ax
    v_top = -0.1 * ay - 1.4 * identity.eye_size * ax - 0.13 * ay
    img_feat, u, v = local(
        -u_side, u_side, v_top, (_MOUTH_V + _LIP_HALF_HEIGHT + 0.8 * _MAX_OPEN + 0.13) * ay
    )
    ue = np.abs(u - fu)
    ex, ey = identity.eye_spacing * ax, -0.1 * ay + fv
    ew, eh = identity.eye_size * ax, 0.5 * identity.eye_size * ax
    open_h = eh * (1.0 - 0.92 * blink)
    eye_open = _ellipse(ue, v, ex, ey, ew, open_h, px)
    _over(img_feat, _ellipse(ue, v, ex, ey, ew + 0.6 * px, open_h + 0.6 * px, px), skin * 0.45)
    _over(img_feat, eye_open, _EYE_WHITE)
    gaze = 0.25 * ew * np.tanh(2 * yaw)
    _over(
        img_feat,
        _ellipse(u - fu, v, np.where(u > fu, ex, -ex) + gaze, ey, 0.55 * eh, 0.95 * eh, px) * eye_open,
        identity.eye,
    )
    _over(
        img_feat,
        _ellipse(u - fu, v, np.where(u > fu, ex, -ex) + gaze, ey, 0.28 * eh, 0.5 * eh, px) * eye_open,
        _PUPIL,
    )
    lid = _ellipse(ue, v, ex, ey, ew, np.maximum(0.6 * px, 0.18 * eh), px) * np.clip(blink * 1.5 - 0.2, 0, 1)
    _over(img_feat, lid, skin * 0.35)
    brow = _ellipse(ue, v, ex, ey - 1.9 * eh, 1.2 * ew, np.maximum(0.7 * px, 0.22 * eh), px)
    _over(img_feat, brow, np.asarray(identity.hair, dtype=np.float32) * 0.8)

    # Nose: a soft darker ridge and two nostrils.
    _over(
        img_feat, 0.35 * _ellipse(u, v, fu + 0.05 * ax, 0.12 * ay + fv, 0.07 * ax, 0.16 * ay, px), skin * 0.78
    )
    _over(img_feat, 0.7 * _ellipse(ue, v, 0.08 * ax, 0.27 * ay + fv, 0.05 * ax, 0.03 * ay, px), skin * 0.5)

    # Mouth: lips whose height grows with openness, a dark interior of half-height 0.15 * ay * mouth.
    m = _as_col(mouth)
    mw, mv = identity.mouth_width * ax, _MOUTH_V * ay + fv
    inner_h = np.maximum(_MAX_OPEN * ay * m, 1e-4)
    _over(img_feat, _ellipse(u, v, fu, mv, mw, _LIP_HALF_HEIGHT * ay + 0.8 * inner_h, px), identity.lip)
    _over(
        img_feat,
        _ellipse(u, v, fu, mv, mw * 0.9, np.maximum(0.35 * px, 0.01 * ay), px),
        np.asarray(identity.lip) * 0.75,
    )
    interior = _ellipse(u, v, fu, mv, 0.8 * mw, inner_h, px) * np.clip(m * 8.0, 0, 1)
    _over(img_feat, interior, _MOUTH_INTERIOR)
    teeth_cov = None
    if shift is not None:
        # Upper teeth: the interior above 0.25 * inner_h over the mouth centre (v grows downwards).
        teeth = interior * np.clip(0.5 + (mv - _TEETH_EDGE * inner_h - v) / px, 0, 1)
        _over(img_feat, np.float32(shift.teeth_alpha) * teeth, np.asarray(shift.teeth, dtype=np.float32))
        teeth_cov = np.zeros((num, res, res), dtype=np.float32)
        teeth_cov[:, window["rows"], window["cols"]] = teeth
        if supersample > 1:
            teeth_cov = teeth_cov.reshape(num, resolution, supersample, resolution, supersample).mean(axis=(2, 4))

    if supersample > 1:
        img = img.reshape(3, num, resolution, supersample, resolution, supersample).mean(axis=(3, 5))
    frames = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8).transpose(1, 2, 3, 0).copy()

    # Mouth box: constant size, centred on the mouth centre mapped back to image coordinates.
    mu, mvv = fu[:, 0, 0], mv[:, 0, 0]
    c, s = cos[:, 0, 0], sin[:, 0, 0]
    mx_img = cx[:, 0, 0] + c * mu - s * mvv
    my_img = cy[:, 0, 0] + s * mu + c * mvv
    half_w = max(2.0, 1.45 * mw * resolution / 2.0)
    half_h = max(2.0, 1.5 * (_LIP_HALF_HEIGHT + 0.8 * _MAX_OPEN) * ay * resolution / 2.0)
    cpx, cpy = (mx_img + 1.0) * resolution / 2.0, (my_img + 1.0) * resolution / 2.0
    box = np.stack(
        [
            np.round(cpy - half_h),
            np.round(cpy - half_h) + round(2 * half_h),
            np.round(cpx - half_w),
            np.round(cpx - half_w) + round(2 * half_w),
        ],
        axis=1,
    )
    box = np.clip(box, 0, resolution).astype(np.int32)
    return frames, box, teeth_cov


def _coverage_boxes(cov: np.ndarray) -> np.ndarray:
    """Half-open ``y0, y1, x0, x1`` bounding box of ``cov > 0`` per frame, int32 ``[T, 4]``; zeros if empty."""
    out = np.zeros((cov.shape[0], 4), dtype=np.int32)
    for t in range(cov.shape[0]):
        rows = np.nonzero(cov[t].max(axis=1) > 0)[0]
        if rows.size:
            cols = np.nonzero(cov[t].max(axis=0) > 0)[0]
            out[t] = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1)
    return out


def _shift_extras(shift: ClientShift, mouth_base: np.ndarray, teeth_cov: np.ndarray) -> dict[str, np.ndarray]:
    """The ground truth of the shifted scenario for one clip (keys in the module docstring)."""
    num = mouth_base.shape[0]
    return {
        "mouth_base": np.asarray(mouth_base, dtype=np.float32).copy(),
        "mouth_lead": np.full(num, shift.mouth_lead, dtype=np.float32),
        "mouth_gain": np.full(num, shift.mouth_gain, dtype=np.float32),
        "teeth_rgb": np.tile(np.asarray(shift.teeth, dtype=np.float32), (num, 1)),
        "shift_box": _coverage_boxes(teeth_cov),
        "shift_area": teeth_cov.sum(axis=(1, 2), dtype=np.float64).astype(np.float32),
    }


def reference_frame(identity: IdentityParams, resolution: int) -> np.ndarray:
    """The identity's neutral frame: frontal pose, eyes open, mouth closed. uint8 ``[R, R, 3]``."""
    frames, _ = render_frames(identity, pose=np.zeros((1, 4)), mouth=np.zeros(1), resolution=resolution)
    return frames[0]


def render_clip(
    identity: IdentityParams,
    *,
    num_frames: int,
    resolution: int,
    seed: int | Sequence[int],
    n_mels: int = 32,
    audio_window: int = 16,
    clip_id: str | None = None,
    supersample: int = 1,
    shift: ClientShift | None = None,
) -> Clip:
    """Render one synthetic clip (audio, features, frames, pose, mouth, boxes), deterministic from ``seed``.

    Audio, pose and blinks use independent child streams of ``seed``. With ``shift`` (the shifted scenario,
    see the module docstring) the mouth follows the client's gain, the teeth are drawn and ``extras`` holds
    the scenario's ground truth; the random streams are the same with and without it.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    audio_ss, pose_ss = np.random.SeedSequence(seed).spawn(2)
    audio, env = synthesize_speech(identity, num_frames=num_frames, rng=np.random.default_rng(audio_ss))
    mouth = mouth_from_envelope(env, num_frames=num_frames)
    mouth_base = mouth
    if shift is not None:
        lead = int(round(shift.mouth_lead * SAMPLES_PER_FRAME))
        if lead > 0:
            ahead = np.concatenate([env[lead:], np.full(min(lead, env.size), env[-1], dtype=env.dtype)])
            mouth = mouth_from_envelope(ahead, num_frames=num_frames)
        mouth = np.clip(np.float32(shift.mouth_gain) * mouth, 0.0, 1.0).astype(np.float32)
    pose = sample_pose(identity, num_frames=num_frames, rng=np.random.default_rng(pose_ss))
    frames, box, teeth_cov = _render_frames(
        identity, pose=pose, mouth=mouth, resolution=resolution, supersample=supersample, shift=shift
    )
    extras = {} if shift is None else _shift_extras(shift, mouth_base, teeth_cov)
    feats = log_mel_features(audio, n_mels=n_mels, window=audio_window, num_frames=num_frames)
    if clip_id is None:
        seed_tag = "-".join(str(int(s)) for s in np.atleast_1d(np.asarray(seed)))
        clip_id = f"{identity.name}/{seed_tag}"
    return Clip(
        frames=frames,
        audio=audio,
        audio_feats=feats,
        pose=pose,
        mouth=mouth,
        mouth_box=box,
        identity=identity.name,
        clip_id=clip_id,
        extras=extras,
    )


# ------------------------------------------------------------------------------------ lip-sync measure


def estimate_mouth_openness(
    frames: np.ndarray, mouth_box: np.ndarray, *, value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Soft fraction of dark pixels inside each frame's mouth box, float32 ``[T]`` in [0, 1].

    A pixel's darkness is ``clip((0.55 L_ref - L) / (0.3 L_ref), 0, 1)`` where ``L`` is its Rec.601 luma
    (shifted so that the ``value_range`` minimum is 0) and ``L_ref`` the 75th percentile of the box's luma
    (the skin / lip level). The mouth interior is much darker than lips and skin for every skin tone, so this
    is proportional to the visible mouth-interior area: a monotone (uncalibrated) proxy of openness that works
    on any frames, including a generator's outputs. ``frames`` is ``[T, H, W, 3]``; ``value_range`` defaults
    to ``(0, 255)`` for integer and ``(0, 1)`` for float frames (pass ``(-1, 1)`` for model outputs).
    """
    f = np.asarray(frames)
    if f.ndim != 4 or f.shape[-1] != 3:
        raise ValueError(f"frames must have shape [T, H, W, 3], got {f.shape}")
    box = np.asarray(mouth_box)
    if box.shape != (f.shape[0], 4):
        raise ValueError(f"mouth_box must have shape [{f.shape[0]}, 4], got {box.shape}")
    if value_range is None:
        value_range = (0.0, 255.0) if np.issubdtype(f.dtype, np.integer) else (0.0, 1.0)
    lo, hi = value_range
    if not hi > lo:
        raise ValueError(f"value_range must be (low, high) with high > low, got {value_range}")
    out = np.zeros(f.shape[0], dtype=np.float32)
    for t in range(f.shape[0]):
        y0, y1, x0, x1 = (int(b) for b in box[t])
        patch = f[t, max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)].astype(np.float32)
        if patch.size == 0:
            continue
        luma = ((patch @ np.array([0.299, 0.587, 0.114], dtype=np.float32)) - lo) / (hi - lo)
        ref = float(np.percentile(luma, 75))
        if ref <= 1e-6:
            continue
        out[t] = np.clip((0.55 * ref - luma) / (0.3 * ref), 0.0, 1.0).mean()
    return out


# -------------------------------------------------------------------------------- unreliable clients


def corrupt_clip(clip: Clip, kind: str, rng: np.random.Generator, *, shift: ClientShift | None = None) -> Clip:
    """Return a corrupted copy of ``clip`` (the input is not modified).

    * ``"offset"``: audio and ``audio_feats`` circularly shifted by 3-8 frames (random sign) relative to the
      video; ``mouth``, ``pose`` and ``mouth_box`` stay tied to the video.
    * ``"noise"``: strong i.i.d. Gaussian pixel noise (std 40-80 grey levels).
    * ``"frozen"``: the video freezes on one frame for one or two stretches covering at least half the clip
      while the audio continues; the labels of the frozen frames are those of the frame shown.
    * ``"heavy_offset"``: audio and ``audio_feats`` circularly lagged by 40-60 % of the clip length (at least
      one frame): the largest misalignment a circular shift allows, so the mouth follows the audio of half a
      clip away (at 16 frames, 7-9 frames: the top of ``offset``'s range; the gap widens with clip length).
    * ``"swapped_audio"``: audio and ``audio_feats`` replaced by another speaker's utterance (a "donor"
      identity of :func:`sample_identity`, its own pitch and speaking rate), features computed with the clip's
      window and mel bands: the mouth no longer follows the audio at all.
    * ``"wrong_identity"``: the frames show another face (a donor identity) with the clip's pose and mouth
      motion, while the client's reference frame stays its own; ``mouth_box`` follows the new face. Pass the
      client's ``shift`` for shifted clips so the donor has the same teeth (the only change is the face).
    * ``"channel_swap"``: the frames' colour channels reversed (RGB stored as BGR, the OpenCV capture-pipeline
      bug) while the client's reference frame, taken elsewhere, stays right: the face's colours no longer
      match the reference, every frame, every pixel. Geometry, audio and labels are unchanged.
    * ``"blur"``: every frame defocused (an out-of-focus or smeared webcam): a Gaussian blur of standard
      deviation 4-6 % of the frame width (2.6-3.8 px at 64 px), per clip. Unlike ``noise``, whose pixel mean is
      the clean frame, a blurred frame is a biased target: teeth and lip edges are smeared in expectation.
      Audio, geometry and labels are unchanged.
    * ``"occluded"``: a microphone held in front of the mouth (an interview or podcast capture): a flat dark disc
      (grey level 40-70, radius 0.5-0.65 of the mouth box's larger side) centred on the mouth in every frame,
      so the training frames never show the lips or the teeth. Audio, geometry and labels (those of the
      face behind it) are unchanged.

    Per-frame ``extras`` describe the video shown: they follow the frames of ``frozen``, and ``shift_box`` /
    ``shift_area`` are recomputed for ``wrong_identity``; the audio corruptions leave them as they were.
    Video corruptions assume ``supersample == 1`` renders (as :func:`pftray.data.make_client` makes).
    """
    if kind not in UNRELIABLE_KINDS:
        raise ValueError(f"kind must be one of {UNRELIABLE_KINDS}, got {kind!r}")
    if kind == "wrong_identity" and shift is None and "shift_box" in clip.extras:
        raise ValueError("wrong_identity on a shifted clip needs the client's shift (shift=...)")
    out = dataclasses.replace(
        clip,
        frames=clip.frames.copy(),
        audio=clip.audio.copy(),
        audio_feats=clip.audio_feats.copy(),
        pose=clip.pose.copy(),
        mouth=clip.mouth.copy(),
        mouth_box=clip.mouth_box.copy(),
        extras={k: v.copy() for k, v in clip.extras.items()},
    )
    num = clip.num_frames
    if kind == "offset":
        lag = int(rng.integers(3, 9)) * (1 if rng.random() < 0.5 else -1)
        out.audio = np.roll(clip.audio, lag * SAMPLES_PER_FRAME)
        out.audio_feats = np.roll(clip.audio_feats, lag, axis=0)
    elif kind == "noise":
        sigma = rng.uniform(40.0, 80.0)
        noisy = clip.frames.astype(np.float32) + rng.normal(0.0, sigma, clip.frames.shape).astype(np.float32)
        out.frames = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    elif kind == "frozen":
        src = np.arange(num)
        if num >= 2:
            stretches = 1 if num < 8 or rng.random() < 0.5 else 2
            seg = num // stretches
            for j in range(stretches):
                length = int(rng.integers(max(2, (seg + 1) // 2), seg + 1))
                start = j * seg + int(rng.integers(0, seg - length + 1))
                src[start : start + length] = start
        out.frames, out.pose, out.mouth, out.mouth_box = (
            clip.frames[src],
            clip.pose[src],
            clip.mouth[src],
            clip.mouth_box[src],
        )
        out.extras = {k: v[src] for k, v in clip.extras.items()}
    elif kind == "heavy_offset":
        lo = max(1, int(np.ceil(0.4 * num)))
        hi = max(lo, int(np.floor(0.6 * num)))
        lag = int(rng.integers(lo, hi + 1))
        out.audio = np.roll(clip.audio, lag * SAMPLES_PER_FRAME)
        out.audio_feats = np.roll(clip.audio_feats, lag, axis=0)
    elif kind == "swapped_audio":
        donor = sample_identity(int(rng.integers(2**62)), 0, stream="donor")
        audio, _ = synthesize_speech(donor, num_frames=num, rng=rng)
        _, window, n_mels = clip.audio_feats.shape
        out.audio = audio
        out.audio_feats = log_mel_features(audio, n_mels=n_mels, window=window, num_frames=num)
    elif kind == "channel_swap":
        out.frames = np.ascontiguousarray(clip.frames[..., ::-1])
    elif kind == "occluded":
        grey = rng.uniform(40.0, 70.0)
        scale = rng.uniform(0.5, 0.65)
        h, w = clip.frames.shape[1:3]
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        for t in range(num):
            y0, y1, x0, x1 = (float(v) for v in clip.mouth_box[t])
            r = scale * max(y1 - y0, x1 - x0)
            disc = (yy - (y0 + y1) / 2) ** 2 + (xx - (x0 + x1) / 2) ** 2 <= r * r
            out.frames[t][disc] = np.uint8(round(grey))
    elif kind == "blur":
        from scipy.ndimage import gaussian_filter

        sigma = rng.uniform(0.04, 0.06) * clip.frames.shape[2]
        blurred = gaussian_filter(clip.frames.astype(np.float32), sigma=(0.0, sigma, sigma, 0.0), mode="nearest")
        out.frames = np.clip(np.rint(blurred), 0, 255).astype(np.uint8)
    else:  # wrong_identity
        donor = sample_identity(int(rng.integers(2**62)), 0, stream="donor")
        out.frames, out.mouth_box, teeth_cov = _render_frames(
            donor, pose=clip.pose, mouth=clip.mouth, resolution=clip.frames.shape[1], shift=shift
        )
        if teeth_cov is not None:
            out.extras["shift_box"] = _coverage_boxes(teeth_cov)
            out.extras["shift_area"] = teeth_cov.sum(axis=(1, 2), dtype=np.float64).astype(np.float32)
    return out

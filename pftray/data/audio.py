"""Log-mel audio features aligned to 25 fps video (numpy only; shared by synthetic and real data).

The pipeline is the usual speech front end (as in Whisper / Wav2Lip): centred STFT with a periodic Hann
window (``n_fft`` = 400 = 25 ms, hop 160 = 10 ms at 16 kHz), power spectrum, triangular mel filterbank on the
HTK mel scale ``mel(f) = 2595 log10(1 + f / 700)``, ``log10`` with an 80 dB dynamic-range floor, then one
per-clip standardisation (zero mean, unit variance over the whole clip). For each video frame ``t`` a window
of ``window`` consecutive mel frames centred on the frame's centre time ``(t + 1/2) / fps`` is cut out
(edge-padded at the clip boundaries).
"""

from __future__ import annotations

import functools

import numpy as np

from pftray.data.types import SAMPLE_RATE, VIDEO_FPS


def hz_to_mel(f: np.ndarray | float) -> np.ndarray:
    """HTK mel scale: ``2595 log10(1 + f / 700)``."""
    return 2595.0 * np.log10(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


def mel_to_hz(m: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    return 700.0 * (10.0 ** (np.asarray(m, dtype=np.float64) / 2595.0) - 1.0)


@functools.lru_cache(maxsize=16)
def mel_filterbank(
    *,
    sample_rate: int = SAMPLE_RATE,
    n_fft: int = 400,
    n_mels: int = 32,
    fmin: float = 0.0,
    fmax: float | None = None,
) -> np.ndarray:
    """Triangular mel filterbank ``[n_mels, n_fft // 2 + 1]`` (peak 1, HTK scale, no area normalisation).

    Filter ``m`` rises linearly from mel point ``m`` to ``m + 1`` and falls to ``m + 2``, with ``n_mels + 2``
    points equally spaced on the mel scale between ``fmin`` and ``fmax`` (default Nyquist).
    """
    fmax = sample_rate / 2.0 if fmax is None else fmax
    if n_mels < 1:
        raise ValueError(f"n_mels must be >= 1, got {n_mels}")
    if not 0.0 <= fmin < fmax <= sample_rate / 2.0:
        raise ValueError(f"need 0 <= fmin < fmax <= sample_rate/2, got fmin={fmin}, fmax={fmax}")
    freqs = np.linspace(0.0, sample_rate / 2.0, n_fft // 2 + 1)
    pts = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lo, centre, hi = pts[:-2, None], pts[1:-1, None], pts[2:, None]
    up = (freqs[None, :] - lo) / (centre - lo)
    down = (hi - freqs[None, :]) / (hi - centre)
    bank = np.clip(np.minimum(up, down), 0.0, None)
    bank.setflags(write=False)
    return bank


def power_spectrogram(audio: np.ndarray, *, n_fft: int = 400, hop_length: int = 160) -> np.ndarray:
    """``|STFT|^2`` as ``[num_frames, n_fft // 2 + 1]`` float64, ``num_frames = len(audio) // hop + 1``.

    Centred frames (frame ``j`` is centred on sample ``j * hop``; the signal is reflect-padded by
    ``n_fft // 2``), periodic Hann window; matches ``torch.stft(center=True, pad_mode="reflect")``.
    """
    x = np.asarray(audio, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"audio must be 1-D, got shape {x.shape}")
    pad = n_fft // 2
    mode = "reflect" if x.size > pad else "constant"
    x = np.pad(x, pad, mode=mode)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop_length]
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n_fft) / n_fft)
    spec = np.fft.rfft(frames * window, axis=-1)
    return spec.real**2 + spec.imag**2


def log_mel_spectrogram(
    audio: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    n_mels: int = 32,
    n_fft: int = 400,
    hop_length: int = 160,
    top_db: float = 80.0,
) -> np.ndarray:
    """Un-normalised ``log10`` mel power ``[num_mel_frames, n_mels]`` floored at ``max - top_db / 10``."""
    power = power_spectrogram(audio, n_fft=n_fft, hop_length=hop_length)
    mel = power @ mel_filterbank(sample_rate=sample_rate, n_fft=n_fft, n_mels=n_mels).T
    logmel = np.log10(np.maximum(mel, 1e-10))
    return np.maximum(logmel, logmel.max() - top_db / 10.0)


def log_mel_features(
    audio: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    n_mels: int = 32,
    window: int = 16,
    num_frames: int,
    fps: int = VIDEO_FPS,
    n_fft: int = 400,
    hop_length: int = 160,
) -> np.ndarray:
    """Per-video-frame log-mel windows, float32 ``[num_frames, window, n_mels]``, per-clip standardised.

    ``audio`` covers ``num_frames`` video frames (``num_frames * sample_rate / fps`` samples; shorter audio is
    zero-padded, longer audio truncated). Window ``t`` holds mel frames ``c_t - window // 2 ... c_t + window
    - window // 2 - 1`` with ``c_t = round((t + 1/2) * sample_rate / (fps * hop))`` the mel frame centred on
    the middle of video frame ``t`` (``4 t + 2`` at 16 kHz / 25 fps / hop 160).
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if sample_rate % fps:
        raise ValueError(f"sample_rate ({sample_rate}) must be a multiple of fps ({fps})")
    spf = sample_rate // fps
    x = np.asarray(audio, dtype=np.float64).ravel()
    n = num_frames * spf
    x = np.pad(x[:n], (0, max(0, n - x.size)))
    logmel = log_mel_spectrogram(
        x, sample_rate=sample_rate, n_mels=n_mels, n_fft=n_fft, hop_length=hop_length
    )
    std = logmel.std()
    logmel = (logmel - logmel.mean()) / (std if std > 1e-8 else 1.0)
    centres = np.round((np.arange(num_frames) + 0.5) * spf / hop_length).astype(np.int64)
    idx = centres[:, None] + np.arange(window)[None, :] - window // 2
    idx = np.clip(idx, 0, logmel.shape[0] - 1)
    return logmel[idx].astype(np.float32)


def frame_energy(audio_feats: np.ndarray, *, reduce: str = "mean") -> np.ndarray:
    """Per-video-frame loudness ``[T]`` from ``[T, A, M]`` features (the 4 mel frames nearest the centre).

    ``reduce="mean"`` averages the log level over mel bands (good for broadband speech); ``reduce="max"``
    takes the loudest band (good for tonal signals, where most bands sit at the noise floor whether the tone
    is on or off).
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}")
    a = audio_feats.shape[1]
    lo, hi = max(0, a // 2 - 2), min(a, a // 2 + 2)
    centre = audio_feats[:, lo:hi, :]
    per_frame = centre.mean(axis=2) if reduce == "mean" else centre.max(axis=2)
    return per_frame.mean(axis=1)

"""Lip-sync metrics.

* Synthetic benchmark (mouth openness is known per frame): :func:`mouth_sync_correlation` and
  :func:`best_offset_correlation` compare a per-frame mouth-openness series measured on the generated clip
  with the ground-truth (audio-driven) series.
* Real data: :class:`SyncNetScorer` computes LSE-D / LSE-C (Prajwal et al. 2020, "A Lip Sync Expert Is All
  You Need", Wav2Lip, §4.1) with the SyncNet of Chung & Zisserman 2016 ("Out of time: automated lip sync in
  the wild", ACCV workshops) in the architecture and evaluation protocol of ``joonson/syncnet_python``
  (``SyncNetModel.S``, ``SyncNetInstance.evaluate``). The pretrained weights (``syncnet_v2.model``) are
  loaded from a local file; without it the scores are ``Missing``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.fft import dct
from torch import nn

from pftray.metrics.base import Missing, check_frames

MIN_CORRELATION_POINTS = 3


def _as_series(x: np.ndarray | torch.Tensor | list[float], name: str) -> np.ndarray:
    arr = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D series, got shape {arr.shape}")
    if np.isinf(arr).any():
        raise ValueError(f"{name} contains infinite values")
    return arr


def _pearson(a: np.ndarray, b: np.ndarray) -> float | Missing:
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if a.size < MIN_CORRELATION_POINTS:
        return Missing(f"fewer than {MIN_CORRELATION_POINTS} frames with both values present ({a.size})")
    da, db = a - a.mean(), b - b.mean()
    na, nb = math.sqrt(float(da @ da)), math.sqrt(float(db @ db))
    # constant up to the rounding of its mean (np.full(n, 0.3) leaves deviations of ~1e-17, not 0)
    flat_a = na <= 1e-12 * math.sqrt(a.size) * float(np.abs(a).max())
    flat_b = nb <= 1e-12 * math.sqrt(b.size) * float(np.abs(b).max())
    if flat_a or flat_b:
        which = "generated" if flat_a else "ground-truth"
        return Missing(f"constant {which} series: correlation undefined")
    return float(np.clip((da @ db) / (na * nb), -1.0, 1.0))


def mouth_sync_correlation(
    pred_openness: np.ndarray | torch.Tensor, gt_openness: np.ndarray | torch.Tensor
) -> float | Missing:
    """Pearson correlation r in [-1, 1] of generated vs ground-truth mouth openness over the frames of a clip.

    NaN-safe: frames where either series is NaN (e.g. mouth not detected) are dropped. Returns ``Missing``
    when fewer than 3 frames remain or either series is constant (r is 0/0: a frozen mouth is reported as
    missing, not as "uncorrelated"; a consumer that wants a number can treat it as 0).
    """
    pred = _as_series(pred_openness, "pred_openness")
    gt = _as_series(gt_openness, "gt_openness")
    if pred.shape != gt.shape:
        raise ValueError(f"pred_openness and gt_openness lengths differ: {pred.size} vs {gt.size}")
    return _pearson(pred, gt)


@dataclass(frozen=True)
class OffsetCorrelation:
    """Result of :func:`best_offset_correlation`.

    ``offset``: k maximising r_k (k > 0: the generated series lags the ground truth by k frames);
    ``correlation``: r at that offset; ``confidence``: r_best − median_k r_k over the searched offsets — the
    analogue of SyncNet's LSE-C (a sharp, unique peak gives high confidence).
    """

    offset: int
    correlation: float
    confidence: float


def offset_correlations(
    pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, *, max_offset: int
) -> dict[int, float]:
    """Pearson ``r_k = corr(pred[t + k], gt[t])`` for every offset k in [−max_offset, max_offset] that is
    computable (k > 0: the generated series lags the ground truth by k frames). Each r_k uses the overlapping
    frames only, NaN-safe as :func:`mouth_sync_correlation`; offsets with < 3 valid frames in the overlap or a
    constant series are left out of the dict."""
    p = _as_series(pred, "pred")
    g = _as_series(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred and gt lengths differ: {p.size} vs {g.size}")
    if not isinstance(max_offset, int) or max_offset < 0:
        raise ValueError(f"max_offset must be a non-negative int, got {max_offset!r}")
    n = p.size
    results: dict[int, float] = {}
    for k in range(-max_offset, max_offset + 1):
        if abs(k) >= n:
            continue
        r = _pearson(p[max(k, 0) : n + min(k, 0)], g[max(-k, 0) : n - max(k, 0)])
        if not isinstance(r, Missing):
            results[k] = r
    return results


def best_offset_correlation(
    pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, *, max_offset: int
) -> OffsetCorrelation | Missing:
    """Search offsets k in [−max_offset, max_offset] for the best Pearson r_k = corr(pred[t + k], gt[t]).

    r_k is computed on the overlapping frames only (t and t + k both inside the clip), NaN-safe as in
    :func:`mouth_sync_correlation`; offsets whose overlap has < 3 valid frames or a constant series are
    skipped. Ties go to the smallest |k| (then the negative one). ``Missing`` if no offset is computable.
    """
    results = offset_correlations(pred, gt, max_offset=max_offset)
    if not results:
        return Missing(f"no offset in [-{max_offset}, {max_offset}] has a computable correlation")
    best = max(results, key=lambda k: (results[k], -abs(k), -k))
    median = float(np.median(list(results.values())))
    return OffsetCorrelation(offset=best, correlation=results[best], confidence=results[best] - median)


# ----------------------------------------------------------------------------------------------- SyncNet


def _hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mfcc(
    signal: np.ndarray,
    *,
    samplerate: int = 16000,
    winlen: float = 0.025,
    winstep: float = 0.01,
    numcep: int = 13,
    nfilt: int = 26,
    nfft: int = 512,
    preemph: float = 0.97,
    ceplifter: int = 22,
) -> np.ndarray:
    """MFCCs ``[num_frames, numcep]`` exactly as ``python_speech_features.mfcc`` (v0.6) with its defaults,
    which is what syncnet_python feeds SyncNet (100 frames/s at 16 kHz).

    Steps: pre-emphasis y[n] = s[n] − 0.97 s[n−1]; rectangular 25 ms frames every 10 ms, the last one
    zero-padded; power spectrum |rfft|^2 / nfft; 26 triangular mel filters over [0, samplerate/2] (bin edges
    floor((nfft + 1) f / samplerate)); log; DCT-II (orthonormal), first 13; sinusoidal lifter
    1 + (L/2) sin(π n / L), L = 22; coefficient 0 replaced by the log total frame energy. Zero energies are
    replaced by float eps before the log, as in the original.
    """
    sig = np.asarray(signal, dtype=np.float64)
    if sig.ndim != 1 or sig.size == 0:
        raise ValueError(f"signal must be a non-empty 1-D array, got shape {sig.shape}")
    sig = np.append(sig[0], sig[1:] - preemph * sig[:-1])
    frame_len = int(math.floor(winlen * samplerate + 0.5))
    frame_step = int(math.floor(winstep * samplerate + 0.5))
    num_frames = 1 if sig.size <= frame_len else 1 + int(math.ceil((sig.size - frame_len) / frame_step))
    pad_len = (num_frames - 1) * frame_step + frame_len
    sig = np.concatenate([sig, np.zeros(pad_len - sig.size)])
    idx = np.arange(frame_len)[None, :] + frame_step * np.arange(num_frames)[:, None]
    frames = sig[idx]
    pspec = np.abs(np.fft.rfft(frames, nfft)) ** 2 / nfft
    energy = pspec.sum(axis=1)
    energy = np.where(energy == 0, np.finfo(float).eps, energy)
    mel_points = np.linspace(_hz_to_mel(0.0), _hz_to_mel(samplerate / 2), nfilt + 2)
    bins = np.floor((nfft + 1) * _mel_to_hz(mel_points) / samplerate)
    fbank = np.zeros((nfilt, nfft // 2 + 1))
    for j in range(nfilt):
        lo, mid, hi = int(bins[j]), int(bins[j + 1]), int(bins[j + 2])
        for i in range(lo, mid):
            fbank[j, i] = (i - bins[j]) / (bins[j + 1] - bins[j])
        for i in range(mid, hi):
            fbank[j, i] = (bins[j + 2] - i) / (bins[j + 2] - bins[j + 1])
    feat = pspec @ fbank.T
    feat = np.where(feat == 0, np.finfo(float).eps, feat)
    cep = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :numcep]
    lift = 1 + (ceplifter / 2.0) * np.sin(np.pi * np.arange(numcep) / ceplifter)
    cep = cep * lift
    cep[:, 0] = np.log(energy)
    return cep


class SyncNetModel(nn.Module):
    """SyncNet (Chung & Zisserman 2016) as ``syncnet_python``'s ``SyncNetModel.S``; same parameter names.

    Audio stream: MFCC ``[N, 1, 13, 20]`` (0.2 s) -> 512 -> fc 512 -> ``embed_dim``.
    Lip stream: 5 face frames ``[N, 3, 5, 224, 224]`` (BGR, 0..255) -> 3-D conv -> 512 -> fc 512 -> ``embed_dim``.
    """

    def __init__(self, embed_dim: int = 1024):
        super().__init__()

        def bn_relu2(c: int) -> list[nn.Module]:
            return [nn.BatchNorm2d(c), nn.ReLU(inplace=True)]

        def bn_relu3(c: int) -> list[nn.Module]:
            return [nn.BatchNorm3d(c), nn.ReLU(inplace=True)]

        # the identity max pool (1x1) keeps the module indices of the original state dict
        self.netcnnaud = nn.Sequential(
            nn.Conv2d(1, 64, kernel_size=3, stride=1, padding=1), *bn_relu2(64),
            nn.MaxPool2d(kernel_size=1, stride=1),
            nn.Conv2d(64, 192, kernel_size=3, stride=1, padding=1), *bn_relu2(192),
            nn.MaxPool2d(kernel_size=3, stride=(1, 2)),
            nn.Conv2d(192, 384, kernel_size=3, padding=1), *bn_relu2(384),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), *bn_relu2(256),
            nn.Conv2d(256, 256, kernel_size=3, padding=1), *bn_relu2(256),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(256, 512, kernel_size=(5, 4), padding=0), *bn_relu2(512),
        )  # fmt: skip
        self.netfcaud = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim)
        )  # fmt: skip
        self.netfclip = nn.Sequential(
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed_dim)
        )  # fmt: skip
        self.netcnnlip = nn.Sequential(
            nn.Conv3d(3, 96, kernel_size=(5, 7, 7), stride=(1, 2, 2), padding=0), *bn_relu3(96),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(96, 256, kernel_size=(1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), *bn_relu3(256),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), *bn_relu3(256),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), *bn_relu3(256),
            nn.Conv3d(256, 256, kernel_size=(1, 3, 3), padding=(0, 1, 1)), *bn_relu3(256),
            nn.MaxPool3d(kernel_size=(1, 3, 3), stride=(1, 2, 2)),
            nn.Conv3d(256, 512, kernel_size=(1, 6, 6), padding=0), *bn_relu3(512),
        )  # fmt: skip

    def forward_aud(self, mfcc_windows: torch.Tensor) -> torch.Tensor:
        return self.netfcaud(self.netcnnaud(mfcc_windows).flatten(1))

    def forward_lip(self, frame_windows: torch.Tensor) -> torch.Tensor:
        return self.netfclip(self.netcnnlip(frame_windows).flatten(1))


@dataclass(frozen=True)
class SyncScores:
    """LSE-D (lower is better), LSE-C (higher is better) and the AV offset in video frames (0 = in sync)."""

    lse_d: float
    lse_c: float
    offset: int


def lse_from_embeddings(video_emb: torch.Tensor, audio_emb: torch.Tensor, *, vshift: int = 15) -> SyncScores:
    """LSE-D / LSE-C from per-window embeddings ``[M, D]``, following syncnet_python's ``calc_pdist``.

    For each video window i and shift s in [−vshift, vshift], d_i(s) = ||v_i − a_{i+s}||_2 (audio embeddings
    zero-padded by vshift at both ends). D(s) = mean_i d_i(s). LSE-D = min_s D(s);
    LSE-C = median_s D(s) − min_s D(s); offset = −argmin_s D(s) (syncnet_python's ``vshift − minidx``).
    """
    if video_emb.ndim != 2 or video_emb.shape != audio_emb.shape or video_emb.shape[0] < 1:
        raise ValueError(
            f"embeddings must both be [M, D] with M >= 1, got {tuple(video_emb.shape)}, {tuple(audio_emb.shape)}"
        )
    if vshift < 0:
        raise ValueError(f"vshift must be >= 0, got {vshift}")
    m = video_emb.shape[0]
    padded = F.pad(audio_emb, (0, 0, vshift, vshift))
    win = 2 * vshift + 1
    dists = torch.stack(
        [F.pairwise_distance(video_emb[i : i + 1].expand(win, -1), padded[i : i + win]) for i in range(m)]
    )
    mean_dist = dists.mean(dim=0)
    min_val, min_idx = torch.min(mean_dist, dim=0)
    # torch.median returns the lower middle value for an even count, as in syncnet_python
    conf = torch.median(mean_dist) - min_val
    return SyncScores(lse_d=float(min_val), lse_c=float(conf), offset=int(vshift - int(min_idx)))


class SyncNetScorer:
    """LSE-D / LSE-C of a talking-face clip with its audio, using pretrained SyncNet weights from a file.

    ``weights_path``: a state dict of :class:`SyncNetModel` (e.g. syncnet_python's ``syncnet_v2.model``,
    keys ``netcnnaud.0.weight`` ...). Missing file -> :meth:`score` returns ``Missing``.

    Protocol (syncnet_python ``SyncNetInstance.evaluate``): video at 25 fps, audio mono 16 kHz; frames are
    face crops (whole face) resized to 224x224, fed as BGR 0..255; MFCCs at 100 Hz; window i pairs video
    frames [i, i+5) with MFCC frames [4i, 4i+20); M = min(T, floor(len(audio)/640)) − 5 windows.
    """

    def __init__(
        self,
        weights_path: str | os.PathLike[str] | None,
        *,
        vshift: int = 15,
        batch_size: int = 20,
        device: str | torch.device = "cpu",
    ):
        if vshift < 0 or batch_size < 1:
            raise ValueError(f"need vshift >= 0 and batch_size >= 1, got {vshift}, {batch_size}")
        self.weights_path = None if weights_path is None else Path(weights_path)
        self.vshift, self.batch_size = vshift, batch_size
        self.device = torch.device(device)
        self._model: SyncNetModel | None = None
        if self.weights_path is None:
            self.missing: Missing | None = Missing("SyncNet weights not configured (weights_path=None)")
        elif not self.weights_path.is_file():
            self.missing = Missing(f"SyncNet weights not found at {self.weights_path} (syncnet_v2.model)")
        else:
            self.missing = None

    def _get_model(self) -> SyncNetModel:
        if self._model is None:
            assert self.weights_path is not None
            state = torch.load(self.weights_path, map_location="cpu", weights_only=True)
            if not isinstance(state, dict):
                raise ValueError(
                    f"{self.weights_path}: expected a SyncNet state dict, got {type(state).__name__}"
                )
            state = {k.removeprefix("__S__."): v for k, v in state.items()}
            model = SyncNetModel()
            try:
                model.load_state_dict(state, strict=True)
            except RuntimeError as err:
                raise ValueError(
                    f"{self.weights_path}: not a SyncNet (syncnet_python S) state dict ({err})"
                ) from err
            self._model = model.eval().to(self.device)
        return self._model

    @torch.no_grad()
    def score(
        self, face_frames: torch.Tensor, audio: np.ndarray, *, samplerate: int = 16000
    ) -> SyncScores | Missing:
        """Score a clip: ``face_frames`` ``[T, 3, H, W]`` RGB in [0, 1] at 25 fps; ``audio`` mono at 16 kHz,
        either int16 PCM or float in [-1, 1] (scaled by 32768 to int16 units, as syncnet_python reads wav)."""
        if self.missing is not None:
            return self.missing
        if samplerate != 16000:
            raise ValueError(f"samplerate must be 16000 (SyncNet's MFCC rate), got {samplerate}")
        frames = check_frames(face_frames, "face_frames", min_frames=6)
        audio = np.asarray(audio)
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono 1-D, got shape {audio.shape}")
        if np.issubdtype(audio.dtype, np.floating):
            if np.abs(audio).max(initial=0.0) > 1.0:
                raise ValueError("float audio must lie in [-1, 1]")
            audio = audio * 32768.0
        elif audio.dtype != np.int16:
            raise ValueError(f"audio must be int16 PCM or float in [-1, 1], got dtype {audio.dtype}")
        num_windows = min(frames.shape[0], audio.size // 640) - 5
        if num_windows < 1:
            return Missing(f"clip too short for SyncNet: {frames.shape[0]} frames, {audio.size} samples")
        cc = torch.from_numpy(mfcc(audio).T.copy()).float()[None, None]  # [1, 1, 13, A]
        video = F.interpolate(frames, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        video = (video.flip(1) * 255.0).permute(1, 0, 2, 3)[None]  # RGB -> BGR, [1, 3, T, 224, 224]
        model = self._get_model()
        v_emb, a_emb = [], []
        for start in range(0, num_windows, self.batch_size):
            idx = range(start, min(num_windows, start + self.batch_size))
            v_in = torch.cat([video[:, :, i : i + 5] for i in idx]).to(self.device)
            a_in = torch.cat([cc[:, :, :, 4 * i : 4 * i + 20] for i in idx]).to(self.device)
            v_emb.append(model.forward_lip(v_in).cpu())
            a_emb.append(model.forward_aud(a_in).cpu())
        return lse_from_embeddings(torch.cat(v_emb), torch.cat(a_emb), vshift=self.vshift)

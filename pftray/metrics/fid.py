"""Fréchet Inception Distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge
to a Local Nash Equilibrium", NeurIPS, eq. 6) with the standard FID Inception-v3 network.

FID = ||mu_1 − mu_2||^2 + Tr(S_1 + S_2 − 2 (S_1 S_2)^{1/2}) over the 2048-d pool3 features of Inception-v3.
The network is the TensorFlow FID Inception (``inception-2015-12-05``) as ported by pytorch-fid
(Seitzer 2020): torchvision's Inception-v3 with 1008 classes and four patched blocks (average pools that
exclude padding, a max pool in the last block). Its weights ``pt_inception-2015-12-05-6726825d.pth`` are
pytorch-fid's file and are only read from disk; without them FID is ``Missing``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.inception import InceptionA, InceptionC, InceptionE

from pftray.metrics.base import Missing, check_frames, resolve_weights

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_FEATURE_DIM = 2048


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric PSD square root by eigendecomposition; tiny negative eigenvalues (round-off) become 0."""
    vals, vecs = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0.0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein) distance squared between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = ||mu1 − mu2||^2 + Tr(S1) + Tr(S2) − 2 Tr((S1 S2)^{1/2}) (Dowson & Landau 1982).

    Numerically stable form: (S1 S2)^{1/2} is similar to (S1^{1/2} S2 S1^{1/2})^{1/2}, a symmetric PSD matrix,
    so Tr((S1 S2)^{1/2}) = sum_i sqrt(max(lambda_i, 0)) over the eigenvalues lambda_i of
    S1^{1/2} S2 S1^{1/2}. This needs only symmetric eigendecompositions (no complex parts, no eps offset as
    in ``scipy.linalg.sqrtm`` of the non-symmetric product) and is exact for singular covariances.
    """
    mu1, mu2 = (
        np.atleast_1d(np.asarray(mu1, dtype=np.float64)),
        np.atleast_1d(np.asarray(mu2, dtype=np.float64)),
    )
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,):
        raise ValueError(f"mu1 and mu2 must be vectors of the same length, got {mu1.shape} and {mu2.shape}")
    if sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"sigma1 and sigma2 must be {d}x{d}, got {sigma1.shape} and {sigma2.shape}")
    for name, arr in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    root1 = _sqrtm_psd(sigma1)
    inner = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((inner + inner.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (``np.cov``, rowvar=False) of ``features`` ``[N, D]``, N >= 2."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"features must have shape [N, D] with N >= 2, got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance_features(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted (mean, unbiased covariance) to two feature sets ``[N, D]``.

    When a set has fewer samples than dimensions (e.g. a few hundred frames of 2048-d Inception features) the
    covariances are low-rank and the trace term is computed exactly without any D x D matrix: with A_i the
    centred features and S_i = A_iᵀ A_i / (n_i − 1), the non-zero eigenvalues of S_1 S_2 are those of
    (A_1 A_2ᵀ)(A_1 A_2ᵀ)ᵀ / ((n_1 − 1)(n_2 − 1)), so Tr((S_1 S_2)^{1/2}) = ||A_1 A_2ᵀ||_* / sqrt((n_1 − 1)(n_2 − 1))
    (nuclear norm), and Tr(S_i) = ||A_i||_F^2 / (n_i − 1). Otherwise :func:`frechet_distance` is used.
    """
    f1 = np.asarray(feats1, dtype=np.float64)
    f2 = np.asarray(feats2, dtype=np.float64)
    for name, f in (("feats1", f1), ("feats2", f2)):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(f"{name} must have shape [N, D] with N >= 2, got {f.shape}")
        if not np.isfinite(f).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} vs {f2.shape[1]}")
    n1, n2, d = f1.shape[0], f2.shape[0], f1.shape[1]
    if min(n1, n2) > d:
        mu1, s1 = gaussian_stats(f1)
        mu2, s2 = gaussian_stats(f2)
        return frechet_distance(mu1, s1, mu2, s2)
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    a1, a2 = f1 - mu1, f2 - mu2
    tr_covmean = float(np.linalg.svd(a1 @ a2.T, compute_uv=False).sum()) / np.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    value = float(diff @ diff + (a1 * a1).sum() / (n1 - 1) + (a2 * a2).sum() / (n2 - 1) - 2.0 * tr_covmean)
    return max(value, 0.0)


def _avg_pool_no_pad(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool excludes the zero padding from the mean
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class _FIDInceptionA(InceptionA):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_no_pad(x))], 1)


class _FIDInceptionC(InceptionC):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        b7d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            b7d = layer(b7d)
        return torch.cat([self.branch1x1(x), b7, b7d, self.branch_pool(_avg_pool_no_pad(x))], 1)


class _FIDInceptionE(InceptionE):
    def __init__(self, in_channels: int, *, max_pool: bool):
        super().__init__(in_channels)
        # the second E block of the TF graph max-pools its pool branch (pytorch-fid's FIDInceptionE_2)
        self.max_pool = max_pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.max_pool else _avg_pool_no_pad(x)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """FID Inception-v3 returning the 2048-d pool3 features of images in [0, 1].

    Input is resized to 299x299 (bilinear, align_corners=False) and scaled to [-1, 1], as pytorch-fid does.
    ``inception`` holds a torchvision ``Inception3`` (num_classes=1008, no aux head) whose ``state_dict``
    keys are those of ``pt_inception-2015-12-05-6726825d.pth``.
    """

    def __init__(self) -> None:
        super().__init__()
        net = torchvision.models.inception_v3(
            weights=None, aux_logits=False, init_weights=False, num_classes=1008
        )
        net.Mixed_5b = _FIDInceptionA(192, pool_features=32)
        net.Mixed_5c = _FIDInceptionA(256, pool_features=64)
        net.Mixed_5d = _FIDInceptionA(288, pool_features=64)
        net.Mixed_6b = _FIDInceptionC(768, channels_7x7=128)
        net.Mixed_6c = _FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6d = _FIDInceptionC(768, channels_7x7=160)
        net.Mixed_6e = _FIDInceptionC(768, channels_7x7=192)
        net.Mixed_7b = _FIDInceptionE(1280, max_pool=False)
        net.Mixed_7c = _FIDInceptionE(2048, max_pool=True)
        self.inception = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n = self.inception
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = F.max_pool2d(n.Conv2d_2b_3x3(n.Conv2d_2a_3x3(n.Conv2d_1a_3x3(x))), kernel_size=3, stride=2)
        x = F.max_pool2d(n.Conv2d_4a_3x3(n.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
        for block in (n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a, n.Mixed_6b, n.Mixed_6c, n.Mixed_6d):
            x = block(x)
        x = n.Mixed_6e(x)
        x = n.Mixed_7c(n.Mixed_7b(n.Mixed_7a(x)))
        return torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)


def load_fid_inception(path: str | os.PathLike[str]) -> FIDInceptionV3:
    """Build :class:`FIDInceptionV3` and load pytorch-fid's state dict from ``path`` (strict keys)."""
    model = FIDInceptionV3()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected an Inception-v3 state dict, got {type(state).__name__}")
    try:
        model.inception.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{path}: not a pytorch-fid FID Inception state dict ({err})") from err
    return model.eval()


class FIDMetric:
    """FID between a set of generated frames and a set of real frames.

    ``weights_path`` is pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``; when None it is looked up in
    ``torch.hub.get_dir()/checkpoints`` (under ``$TORCH_HOME``). Absent -> every call returns ``Missing``.

    FID is a set statistic: it needs many frames (the covariance is 2048x2048; conventionally >= 2048 and
    preferably ~10k frames per set). With fewer frames it is computable (>= 2 per set) but biased upwards
    and only comparable between runs with the same frame counts.
    """

    def __init__(
        self,
        weights_path: str | os.PathLike[str] | None = None,
        *,
        device: str | torch.device = "cpu",
        batch_size: int = 32,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.weights = resolve_weights(weights_path, FID_WEIGHTS_NAME, "FID: Inception-v3 (pytorch-fid)")
        self.device = torch.device(device)
        self.batch_size = batch_size
        self._model: FIDInceptionV3 | None = None

    @property
    def missing(self) -> Missing | None:
        return self.weights if isinstance(self.weights, Missing) else None

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray | Missing:
        """Pool3 features ``[N, 2048]`` (float64) of images ``[N, 3, H, W]`` in [0, 1]."""
        if self.missing is not None:
            return self.missing
        images = check_frames(images, "images")
        if self._model is None:
            assert isinstance(self.weights, Path)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                self._model = load_fid_inception(self.weights).to(self.device)
        chunks = [
            self._model(images[i : i + self.batch_size].to(self.device)).double().cpu()
            for i in range(0, images.shape[0], self.batch_size)
        ]
        return torch.cat(chunks).numpy()

    def __call__(self, pred_frames: torch.Tensor, real_frames: torch.Tensor) -> float | Missing:
        """FID(pred set, real set); each needs at least 2 frames."""
        for name, x in (("pred_frames", pred_frames), ("real_frames", real_frames)):
            if x.ndim != 4 or x.shape[0] < 2:
                raise ValueError(
                    f"{name} must be [N, 3, H, W] with N >= 2 for a covariance, got {tuple(x.shape)}"
                )
        f1 = self.features(pred_frames)
        if isinstance(f1, Missing):
            return f1
        f2 = self.features(real_frames)
        assert not isinstance(f2, Missing)
        return frechet_distance_features(f1, f2)

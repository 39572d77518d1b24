"""LPIPS (Zhang, Isola, Efros, Shechtman, Wang 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric", CVPR), AlexNet variant (``net="alex"``, v0.1) — offline-safe.

d(x, y) = sum_l 1/(H_l W_l) sum_{h,w} || w_l ⊙ (ŷ^l_hw − ŷ'^l_hw) ||^2, with ŷ^l the channel-normalised
AlexNet activations of layer l and w_l the learned linear weights (shipped inside the ``lpips`` package).
The AlexNet trunk weights are torchvision's ImageNet weights (``alexnet-owt-7be5be79.pth``), which torchvision
would download; here they are only ever read from a local file, and without it the metric is ``Missing``.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import torch

from pftray.metrics.base import Missing, check_pair, resolve_weights

ALEXNET_WEIGHTS_NAME = "alexnet-owt-7be5be79.pth"
# lpips' AlexNet trunk keeps torchvision's ``features`` indices inside five slices (lpips/pretrained_networks.py)
_ALEXNET_CONV_SLICES = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
LPIPS_MIN_SIZE = 31
"""Smallest frame side AlexNet's conv/pool stack (stride 4, two 3x3/2 pools) leaves at least one pixel for."""


def _build_lpips(alexnet_path: Path) -> torch.nn.Module:
    import lpips

    # pnet_rand=True: torchvision builds an uninitialised AlexNet and downloads nothing; pretrained=True
    # loads only the linear calibration layers that ship with the lpips package. Its banner is silenced.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(pretrained|weight enum).*", category=UserWarning)
        model = lpips.LPIPS(pretrained=True, net="alex", version="0.1", pnet_rand=True, verbose=False)
    state = torch.load(alexnet_path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(
            f"{alexnet_path}: expected a torchvision AlexNet state dict, got {type(state).__name__}"
        )
    trunk = {}
    for index, slice_no in _ALEXNET_CONV_SLICES.items():
        for kind in ("weight", "bias"):
            key = f"features.{index}.{kind}"
            if key not in state:
                raise ValueError(
                    f"{alexnet_path}: key {key!r} missing; expected a torchvision AlexNet state dict"
                )
            trunk[f"slice{slice_no}.{index}.{kind}"] = state[key]
    model.net.load_state_dict(trunk, strict=True)
    return model.eval()


class LPIPSMetric:
    """LPIPS-Alex distance between frame stacks, mean over frames (lower is more similar).

    ``weights_path`` points at torchvision's AlexNet state dict; when None it is looked up as
    ``torch.hub.get_dir()/checkpoints/alexnet-owt-7be5be79.pth`` (i.e. under ``$TORCH_HOME``) at construction.
    Calling the metric returns ``Missing`` when that file is absent — it never downloads and never falls back
    to a random trunk.
    """

    def __init__(
        self, weights_path: str | os.PathLike[str] | None = None, *, device: str | torch.device = "cpu"
    ):
        self.weights = resolve_weights(weights_path, ALEXNET_WEIGHTS_NAME, "LPIPS: AlexNet")
        self.device = torch.device(device)
        self._model: torch.nn.Module | None = None

    @property
    def missing(self) -> Missing | None:
        """The reason the metric cannot be computed, or None when weights are available."""
        return self.weights if isinstance(self.weights, Missing) else None

    def _get_model(self) -> torch.nn.Module:
        if self._model is None:
            assert isinstance(self.weights, Path)
            self._model = _build_lpips(self.weights).to(self.device)
        return self._model

    @torch.no_grad()
    def per_frame(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor | Missing:
        """LPIPS of each frame pair, shape ``[N]``; inputs in [0, 1] are mapped to [-1, 1] internally."""
        if self.missing is not None:
            return self.missing
        pred, target = check_pair(pred, target, min_size=LPIPS_MIN_SIZE)
        model = self._get_model()
        out = model(pred.to(self.device), target.to(self.device), normalize=True)
        return out.flatten().cpu()

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> float | Missing:
        """Mean over frames of LPIPS(pred_i, target_i), or ``Missing`` without AlexNet weights."""
        values = self.per_frame(pred, target)
        if isinstance(values, Missing):
            return values
        return float(values.mean())

"""Shared pieces of the metrics package: the ``Missing`` value and input validation.

A metric that cannot be computed honestly (pretrained weights absent offline, a constant series for a
correlation, too few samples) returns ``Missing(reason)`` instead of a number. Nothing in this package
substitutes a randomly initialised backbone for a pretrained one under the same metric name.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Missing:
    """A metric value that could not be computed; ``reason`` says why (shown in tables and logs)."""

    reason: str

    def __post_init__(self) -> None:
        if not isinstance(self.reason, str) or not self.reason:
            raise ValueError(f"Missing.reason must be a non-empty string, got {self.reason!r}")


def is_missing(value: Any) -> bool:
    """True when ``value`` is a :class:`Missing` (and not a number)."""
    return isinstance(value, Missing)


def check_frames(x: torch.Tensor, name: str, *, min_frames: int = 1, min_size: int = 1) -> torch.Tensor:
    """Validate a frame stack ``[N, 3, H, W]`` of floats in [0, 1] and return it as float32.

    Raises ``ValueError`` naming ``name`` and what was wrong; nothing is silently corrected.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} must have shape [N, 3, H, W], got {tuple(x.shape)}")
    if not torch.is_floating_point(x):
        raise ValueError(f"{name} must be a float tensor with values in [0, 1], got dtype {x.dtype}")
    if x.shape[0] < min_frames:
        raise ValueError(f"{name} needs at least {min_frames} frames, got {x.shape[0]}")
    if min(x.shape[2], x.shape[3]) < min_size:
        raise ValueError(f"{name} frames must be at least {min_size}x{min_size}, got {tuple(x.shape[2:])}")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"{name} values must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]")
    return x.float()


def check_pair(pred: torch.Tensor, target: torch.Tensor, **kwargs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``pred`` and ``target`` as frame stacks of identical shape."""
    pred = check_frames(pred, "pred", **kwargs)
    target = check_frames(target, "target", **kwargs)
    if pred.shape != target.shape:
        raise ValueError(f"pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    return pred, target.to(pred.device)


def hub_checkpoint_dir() -> Path:
    """``torch.hub.get_dir()/checkpoints`` — where torchvision/torch.hub cache downloaded weights.

    Read at call time, so it follows ``$TORCH_HOME`` as set when a metric is constructed.
    """
    return Path(torch.hub.get_dir()) / "checkpoints"


def resolve_weights(
    weights_path: str | os.PathLike[str] | None, default_name: str, what: str
) -> Path | Missing:
    """Find a weights file: the configured ``weights_path`` if given, else ``<hub checkpoints>/default_name``.

    Returns ``Missing`` (never downloads) when the file is absent.
    """
    path = Path(weights_path) if weights_path is not None else hub_checkpoint_dir() / default_name
    if not path.is_file():
        return Missing(
            f"{what} weights not found at {path} (offline: place the file there or pass weights_path)"
        )
    return path

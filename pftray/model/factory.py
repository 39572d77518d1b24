"""Building the talking-head model of a run: the backbone with both LoRA adapters, a client's fresh identity
adapter, and the precision checks that must hold before any of it runs."""

from __future__ import annotations

import math

import numpy as np
import torch

from pftray.config import Config
from pftray.errors import ConfigError
from pftray.model.adapters import adapter_parameters, add_adapters, flatten_state, get_adapter_state
from pftray.model.generator import TalkingHeadModel


def build_model(cfg: Config, *, device: str | torch.device = "cpu") -> TalkingHeadModel:
    """The backbone (loaded from ``model.backbone`` when set) with both adapters added and everything frozen."""
    model = TalkingHeadModel(cfg.model, cfg.data)
    if cfg.model.backbone:
        model.load_backbone(cfg.model.backbone)
    model.requires_grad_(False)
    add_adapters(model.unet, cfg.lora, seed=cfg.experiment.seed)
    return model.to(device).eval()


def initial_identity_state(model: TalkingHeadModel, client_id: int, seed: int) -> dict[str, torch.Tensor]:
    """Fresh identity adapter for a client: A from a per-client seed (kaiming as peft does), B = 0."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + client_id)
    out = {}
    for k, p in adapter_parameters(model.unet, "identity").items():
        if ".lora_A." in k:
            bound = 1.0 / math.sqrt(p.shape[1])  # kaiming_uniform(a=sqrt(5)) bound used by peft
            out[k] = (torch.rand(p.shape, generator=g) * 2 - 1) * bound
        else:
            out[k] = torch.zeros(p.shape)
    return out


def check_precision(precision: str, dp_sgd: bool, *, key: str = "train.precision") -> None:
    """Refuse ``fp16`` with DP-SGD: fp16 needs a GradScaler, whose scaled (possibly overflowed, then skipped)
    gradients DP-SGD's per-clip clipping and noise must not see; the DP-SGD step runs in fp32 anyway."""
    if precision == "fp16" and dp_sgd:
        raise ConfigError(f"{key}: 'fp16' cannot be used with privacy.dp_sgd (DP-SGD clips per-clip gradients, a "
                          f"GradScaler would scale them); use 'fp32' (the DP-SGD step runs in fp32)")


def initial_shared(cfg: Config) -> np.ndarray:
    """The round-0 global shared adapter: LoRA A from the experiment seed, B = 0 (the identity map)."""
    torch.manual_seed(cfg.experiment.seed)
    model = build_model(cfg)
    return flatten_state(get_adapter_state(model.unet, "shared"))

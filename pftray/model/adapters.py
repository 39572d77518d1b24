"""The two LoRA adapters on the UNet: ``shared`` (federated) and ``identity`` (never leaves its client).

Both are peft LoRA layers injected with diffusers' ``add_adapter`` on the same attention projections (and
optionally the resnet convs); both are active in the forward pass, so the UNet computes
``W x + B_s A_s x * s_s + B_i A_i x * s_i``. The base weights are frozen; which adapter trains is set explicitly
with :func:`set_trainable`. State is moved as plain ``{key: tensor}`` dicts with strict key checks, and the
shared adapter as one flat float32 vector in a fixed key order (what DP and secure aggregation operate on).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from peft import LoraConfig

from pftray.config import LoraConfigSpec

ADAPTERS = ("shared", "identity")


def lora_config(spec: LoraConfigSpec, rank: int) -> LoraConfig:
    targets = list(spec.target_modules) + (["conv1", "conv2"] if spec.include_conv else [])
    return LoraConfig(r=rank, lora_alpha=spec.alpha_ratio * rank, lora_dropout=spec.dropout,
                      target_modules=targets, init_lora_weights=True)


def add_adapters(unet: torch.nn.Module, spec: LoraConfigSpec, *, seed: int = 0) -> None:
    """Inject ``shared`` and ``identity`` adapters, activate both, freeze everything.

    LoRA A matrices are initialised from ``seed`` (identical on every client for ``shared``), B to zero, so a
    fresh adapter is the identity map.
    """
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        unet.add_adapter(lora_config(spec, spec.shared_rank), adapter_name="shared")
        unet.add_adapter(lora_config(spec, spec.identity_rank), adapter_name="identity")
    finally:
        torch.random.set_rng_state(state)
    unet.set_adapters(list(ADAPTERS))
    set_trainable(unet, ())


def set_trainable(unet: torch.nn.Module, adapters: Iterable[str]) -> list[torch.nn.Parameter]:
    """Freeze the base and every adapter not named; return the trainable parameters (in key order)."""
    wanted = set(adapters)
    unknown = wanted - set(ADAPTERS)
    if unknown:
        raise ValueError(f"unknown adapter(s) {sorted(unknown)}; known: {list(ADAPTERS)}")
    params = []
    for name, p in unet.named_parameters():
        owner = _adapter_of(name)
        p.requires_grad_(owner in wanted)
        if owner in wanted:
            params.append(p)
    return params


def _adapter_of(param_name: str) -> str | None:
    for a in ADAPTERS:
        if f".lora_A.{a}." in param_name or f".lora_B.{a}." in param_name:
            return a
    return None


def adapter_parameters(unet: torch.nn.Module, adapter: str) -> dict[str, torch.nn.Parameter]:
    if adapter not in ADAPTERS:
        raise ValueError(f"unknown adapter {adapter!r}; known: {list(ADAPTERS)}")
    out = {n: p for n, p in unet.named_parameters() if _adapter_of(n) == adapter}
    if not out:
        raise ValueError(f"the UNet has no {adapter!r} adapter; call add_adapters first")
    return dict(sorted(out.items()))


def get_adapter_state(unet: torch.nn.Module, adapter: str) -> dict[str, torch.Tensor]:
    """A detached CPU copy of one adapter's weights, keys as in ``unet.named_parameters()``."""
    return {k: p.detach().to("cpu", torch.float32).clone() for k, p in adapter_parameters(unet, adapter).items()}


@torch.no_grad()
def load_adapter_state(unet: torch.nn.Module, adapter: str, state: dict[str, torch.Tensor]) -> None:
    """Copy weights into one adapter; keys and shapes must match exactly."""
    params = adapter_parameters(unet, adapter)
    missing, unexpected = set(params) - set(state), set(state) - set(params)
    if missing or unexpected:
        raise KeyError(f"adapter {adapter!r} state does not match the model: missing {sorted(missing)[:3]}, "
                       f"unexpected {sorted(unexpected)[:3]} ({len(missing)} missing, {len(unexpected)} unexpected)")
    for k, p in params.items():
        v = state[k]
        if tuple(v.shape) != tuple(p.shape):
            raise ValueError(f"adapter {adapter!r} key {k}: shape {tuple(v.shape)} != model {tuple(p.shape)}")
        p.copy_(v.to(p.device, p.dtype))


def adapter_numel(unet: torch.nn.Module, adapter: str) -> int:
    return sum(p.numel() for p in adapter_parameters(unet, adapter).values())


def flatten_state(state: dict[str, torch.Tensor]) -> np.ndarray:
    """Concatenate a state dict into one float32 vector in sorted key order."""
    return np.concatenate([state[k].detach().cpu().numpy().astype(np.float32).ravel() for k in sorted(state)])


def unflatten_state(vector: np.ndarray, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`flatten_state` for the keys and shapes of ``template``."""
    total = sum(t.numel() for t in template.values())
    if vector.shape != (total,):
        raise ValueError(f"flat vector has shape {vector.shape}, the adapter has {total} parameters")
    out, i = {}, 0
    for k in sorted(template):
        n = template[k].numel()
        out[k] = torch.from_numpy(np.array(vector[i: i + n], dtype=np.float32)).reshape(template[k].shape)
        i += n
    return out


def export_identity_adapter(unet: torch.nn.Module, path: str | Path) -> Path:
    """Save the identity adapter as diffusers-format LoRA safetensors (``unet.load_lora_adapter(path)`` loads it).

    Keys are written as peft names without the adapter name (``...to_q.lora_A.weight``) under the ``unet.``
    prefix, with the LoRA config alongside as safetensors metadata, which is the format of
    ``StableDiffusionPipeline.save_lora_weights``.
    """
    import json

    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sd = get_peft_model_state_dict(unet, adapter_name="identity")
    sd = {f"unet.{k}": v.detach().cpu().contiguous() for k, v in sd.items()}
    cfg = unet.peft_config["identity"]
    meta = {"format": "pt", "lora_adapter_metadata": json.dumps(
        {"r": cfg.r, "lora_alpha": cfg.lora_alpha, "target_modules": sorted(cfg.target_modules),
         "lora_dropout": cfg.lora_dropout})}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(sd, str(tmp), metadata=meta)
    tmp.replace(path)
    return path

"""fp16 local training: a GradScaler on CUDA (disabled on CPU, where autocast is off), unscaled before the gradient
clip; fp16 with DP-SGD is refused with the key named. All on CPU: the scaler logic runs on a CPU GradScaler."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pftray.data import make_client
from pftray.errors import ConfigError
from pftray.fed.client import ClientTrainer, optimizer_step
from pftray.fed.host import ClientProvider
from pftray.model.adapters import flatten_state, get_adapter_state
from pftray.model.factory import check_precision
from tests.tinycfg import tiny_config


def _params():
    torch.manual_seed(0)
    a, b = torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(3))
    return a, b


def _loss(a, b, x):
    return ((x @ a + b) ** 2).sum()


def _step(scaler, *, grad_clip, x):
    a, b = _params()
    opts = [torch.optim.SGD([a], lr=0.1), torch.optim.Adam([b], lr=0.1)]
    applied = optimizer_step(_loss(a, b, x), opts, [a, b], scaler=scaler, grad_clip=grad_clip)
    return applied, a.detach().clone(), b.detach().clone()


def _reference(*, grad_clip, x):
    """The plain fp32 step: backward, clip, step."""
    a, b = _params()
    opts = [torch.optim.SGD([a], lr=0.1), torch.optim.Adam([b], lr=0.1)]
    _loss(a, b, x).backward()
    torch.nn.utils.clip_grad_norm_([a, b], grad_clip)
    for o in opts:
        o.step()
    return a.detach(), b.detach()


@pytest.mark.parametrize("grad_clip", [0.5, 0.0])
def test_scaled_step_unscales_before_the_clip_and_matches_the_plain_step(grad_clip):
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(1))
    ref_a, ref_b = _reference(grad_clip=grad_clip if grad_clip else 1e9, x=x)
    # disabled scaler (what CPU, fp32 and bf16 get): exactly the plain step
    applied, a, b = _step(torch.amp.GradScaler("cpu", enabled=False), grad_clip=grad_clip, x=x)
    assert applied and torch.equal(a, ref_a) and torch.equal(b, ref_b)
    # enabled scaler (fp16 on CUDA), here on CPU: gradients 1024x scaled, unscaled before the clip -> same step
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    applied, a, b = _step(scaler, grad_clip=grad_clip, x=x)
    assert applied and scaler.get_scale() == 1024.0
    torch.testing.assert_close(a, ref_a, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(b, ref_b, rtol=1e-6, atol=1e-6)


def test_an_overflowing_step_is_skipped_and_the_scale_backs_off():
    x = torch.full((5, 4), math.inf)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    applied, a, b = _step(scaler, grad_clip=1.0, x=x)
    a0, b0 = _params()
    assert not applied and scaler.get_scale() == 512.0
    assert torch.equal(a, a0.detach()) and torch.equal(b, b0.detach())  # parameters untouched


def test_fp16_with_dp_sgd_is_refused_naming_the_key():
    check_precision("fp16", False)
    check_precision("bf16", True)
    with pytest.raises(ConfigError, match=r"^train.precision: 'fp16' cannot be used with privacy.dp_sgd"):
        check_precision("fp16", True)
    with pytest.raises(ConfigError, match=r"runtime.tiers\[gpu\].precision"):
        check_precision("fp16", True, key="runtime.tiers[gpu].precision")
    with pytest.raises(ConfigError, match="train.precision: 'fp16'"):
        ClientTrainer(tiny_config(**{"train.precision": "fp16", "privacy.dp_sgd": True}))


def test_fp16_on_cpu_trains_as_fp32_with_the_scaler_disabled():
    cfg = tiny_config()
    client = make_client(0, **ClientProvider(cfg).synthetic_kwargs())
    t32 = ClientTrainer(cfg)
    t16 = ClientTrainer(cfg.replace(**{"train.precision": "fp16"}), model=t32.model)
    assert not t16._grad_scaler().is_enabled()
    g = flatten_state(get_adapter_state(t32.model.unet, "shared"))
    u32, _ = t32.fit(client, None, g, server_round=1)
    u16, _ = t16.fit(client, None, g, server_round=1)
    np.testing.assert_array_equal(u16.delta, u32.delta)
    assert u16.status == "ok" and u16.message == "" and u16.loss == u32.loss and np.any(u16.delta != 0)

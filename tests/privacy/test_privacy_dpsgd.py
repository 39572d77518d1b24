"""Sample-level DP-SGD: opacus per-clip gradients vs a microbatch loop, clipping, noise scale, plain-SGD limit."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pftray.data import clips_to_batch
from pftray.fed.host import ClientProvider
from pftray.model.adapters import ADAPTERS, adapter_parameters, set_trainable
from pftray.model.factory import build_model
from pftray.model.losses import diffusion_losses, encode_batch
from pftray.privacy.accounting import PrivacyLedger, compute_epsilon
from pftray.privacy.dpsgd import (
    clip_losses,
    dp_sgd_event,
    dp_sgd_step,
    draw_noise,
    per_clip_gradients,
    poisson_clip_indices,
    privatize_gradients,
)
from tests.tinycfg import tiny_config

FRAMES = 3


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg)
    g = torch.Generator().manual_seed(1)
    with (
        torch.no_grad()
    ):  # B = 0 at init makes every LoRA A gradient zero: give both adapters non-trivial weights
        for a in ADAPTERS:
            for p in adapter_parameters(model.unet, a).values():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    client = ClientProvider(cfg).get(0)
    clips = client.train + client.heldout  # 3 clips of one identity
    batch = clips_to_batch(clips, frames=FRAMES, rng=np.random.default_rng(0), reference=client.reference)
    return model, batch


@pytest.fixture
def model_batch(base):
    model, batch = base
    model = copy.deepcopy(model)
    model.train()
    return model, batch


def _params(model):
    return {**adapter_parameters(model.unet, "shared"), **adapter_parameters(model.unet, "identity")}


@pytest.mark.parametrize("tdc_space", ["x0", "eps"])
def test_clip_losses_equal_diffusion_losses_with_the_same_generator(model_batch, tdc_space):
    model, batch = model_batch
    ref = diffusion_losses(
        model,
        batch,
        lambda_tdc=0.7,
        tdc_space=tdc_space,
        generator=torch.Generator().manual_seed(5),
        reduce=False,
    )["loss"]
    lat = encode_batch(model, batch)
    t, eps = draw_noise(model, lat[0], frames=FRAMES, generator=torch.Generator().manual_seed(5))
    got = clip_losses(model, batch, timesteps=t, noise=eps, lambda_tdc=0.7, tdc_space=tdc_space, latents=lat)
    assert got.shape == (3,)
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_per_clip_gradients_match_a_microbatch_loop(model_batch):
    model, batch = model_batch
    params = _params(model)
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    got = per_clip_gradients(
        model, batch, params, lambda_tdc=0.5, tdc_space="x0", generator=torch.Generator().manual_seed(3)
    )
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags  # left as found
    assert all(p.grad is None for p in params.values())
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # opacus hooks and attributes gone
    assert not any(m._forward_hooks or m._backward_hooks for m in model.unet.modules())

    x0, ref = encode_batch(model, batch)
    t, eps = draw_noise(model, x0, frames=FRAMES, generator=torch.Generator().manual_seed(3))
    set_trainable(model.unet, ADAPTERS)
    for b in range(3):
        rows = slice(b * FRAMES, (b + 1) * FRAMES)
        sub = {k: v[b : b + 1] for k, v in batch.items()}
        loss = clip_losses(
            model,
            sub,
            timesteps=t[b : b + 1],
            noise=eps[rows],
            lambda_tdc=0.5,
            tdc_space="x0",
            latents=(x0[rows], ref[b : b + 1]),
        )
        grads = torch.autograd.grad(loss.sum(), list(params.values()))
        scale = max(float(g.abs().max()) for g in grads)
        assert scale > 1e-3  # the comparison is not between zeros
        for (k, _), g in zip(params.items(), grads):
            assert got[k].shape == (3, *g.shape)
            torch.testing.assert_close(got[k][b], g, rtol=1e-5, atol=1e-5 * scale)


def test_clipping_bounds_each_clips_contribution(model_batch):
    model, batch = model_batch
    params = _params(model)
    per_clip = per_clip_gradients(
        model, batch, params, lambda_tdc=0.5, tdc_space="x0", generator=torch.Generator().manual_seed(3)
    )
    norms = torch.sqrt(sum(g.reshape(3, -1).pow(2).sum(1) for g in per_clip.values()))
    c = float(norms.min()) * 0.5  # every clip gets clipped
    full, frac = privatize_gradients(
        per_clip, noise_multiplier=0.0, max_grad_norm=c, expected_batch_size=3, generator=None
    )
    assert frac == 1.0
    for drop in range(3):
        keep = [i for i in range(3) if i != drop]
        part, _ = privatize_gradients(
            {k: g[keep] for k, g in per_clip.items()},
            noise_multiplier=0.0,
            max_grad_norm=c,
            expected_batch_size=3,
            generator=None,
        )
        diff = math.sqrt(sum(float((full[k] - part[k]).pow(2).sum()) for k in full))
        assert diff == pytest.approx(c / 3, rel=1e-5)  # exactly C/L: the clipped clip has norm C


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.floats(0.01, 10.0), st.integers(0, 2**31 - 1))
def test_sensitivity_of_the_clipped_sum_is_at_most_c(b, c, seed):
    g = torch.Generator().manual_seed(seed)
    per_clip = {"a": torch.randn(b, 3, 2, generator=g) * 5, "b": torch.randn(b, 4, generator=g)}
    full, frac = privatize_gradients(
        per_clip, noise_multiplier=0.0, max_grad_norm=c, expected_batch_size=2.0, generator=None
    )
    norms = torch.sqrt(per_clip["a"].reshape(b, -1).pow(2).sum(1) + per_clip["b"].pow(2).sum(1))
    assert frac == pytest.approx(float((norms > c).double().mean()))
    part, _ = privatize_gradients(
        {k: v[1:] for k, v in per_clip.items()},
        noise_multiplier=0.0,
        max_grad_norm=c,
        expected_batch_size=2.0,
        generator=None,
    )
    diff = math.sqrt(sum(float((full[k] - part[k]).pow(2).sum()) for k in full))
    assert diff <= min(c, float(norms[0])) / 2.0 * (1 + 1e-6)


def test_noise_std_matches_sigma_c_over_l():
    per_clip = {"w": torch.zeros(4, 200_000)}
    out, _ = privatize_gradients(
        per_clip,
        noise_multiplier=1.7,
        max_grad_norm=0.3,
        expected_batch_size=4,
        generator=torch.Generator().manual_seed(0),
    )
    std, mean = float(out["w"].std()), float(out["w"].mean())
    assert std == pytest.approx(1.7 * 0.3 / 4, rel=0.01)
    assert abs(mean) < 4 * std / math.sqrt(200_000)


def test_dp_sgd_step_noise_std_on_the_model(model_batch):
    """Same generator seed with and without noise: t and eps are drawn first, so the runs differ by noise only."""
    model, batch = model_batch
    sigma, c, lr = 2.0, 1e-3, 0.5
    after = {}
    for z in (0.0, sigma):
        m = copy.deepcopy(model)
        params = _params(m)
        opt = torch.optim.SGD(list(params.values()), lr=lr)
        out = dp_sgd_step(
            m,
            batch,
            params,
            opt,
            noise_multiplier=z,
            max_grad_norm=c,
            expected_batch_size=3,
            generator=torch.Generator().manual_seed(9),
            lambda_tdc=0.5,
            tdc_space="x0",
        )
        assert out["clip_fraction"] == 1.0 and out["batch_clips"] == 3 and math.isfinite(out["loss"])
        after[z] = torch.cat([p.detach().ravel() for p in params.values()])
    noise = (after[sigma] - after[0.0]) / lr
    assert noise.numel() > 5000
    assert float(noise.std()) == pytest.approx(sigma * c / 3, rel=0.05)


def test_dp_sgd_step_without_noise_and_with_huge_c_is_plain_sgd(model_batch):
    model, batch = model_batch
    ref = copy.deepcopy(model)
    rparams = _params(ref)
    set_trainable(ref.unet, ADAPTERS)
    loss = diffusion_losses(
        ref, batch, lambda_tdc=0.5, tdc_space="x0", generator=torch.Generator().manual_seed(4)
    )["loss"]
    opt = torch.optim.SGD(list(rparams.values()), lr=0.1)
    opt.zero_grad()
    loss.backward()
    opt.step()

    params = _params(model)
    before = {k: p.detach().clone() for k, p in params.items()}
    out = dp_sgd_step(
        model,
        batch,
        params,
        [  # one optimiser per adapter, as the client keeps them
            torch.optim.SGD(list(adapter_parameters(model.unet, a).values()), lr=0.1) for a in ADAPTERS
        ],
        noise_multiplier=0.0,
        max_grad_norm=1e9,
        expected_batch_size=3,
        generator=torch.Generator().manual_seed(4),
        lambda_tdc=0.5,
        tdc_space="x0",
    )
    assert out["clip_fraction"] == 0.0
    assert out["loss"] == pytest.approx(float(loss.detach()), rel=1e-6)
    moved = max(float((params[k] - before[k]).abs().max()) for k in params)
    assert moved > 1e-4
    for k, p in params.items():
        torch.testing.assert_close(p.detach(), rparams[k].detach(), rtol=1e-5, atol=1e-7)


def test_empty_poisson_batch_applies_noise_only_and_prox_is_added(model_batch):
    model, _ = model_batch
    params = _params(model)
    before = {k: p.detach().clone() for k, p in params.items()}
    out = dp_sgd_step(
        model,
        None,
        params,
        torch.optim.SGD(list(params.values()), lr=1.0),
        noise_multiplier=0.0,
        max_grad_norm=1.0,
        expected_batch_size=2,
        generator=None,
        lambda_tdc=0.0,
        tdc_space="x0",
        mu=0.5,
        global_params={k: torch.zeros_like(v) for k, v in before.items()},
    )
    assert out["batch_clips"] == 0 and math.isnan(out["loss"]) and math.isnan(out["clip_fraction"])
    for k, p in params.items():  # w - lr * mu * (w - 0) = 0.5 w
        torch.testing.assert_close(p.detach(), 0.5 * before[k])


def test_rejects_non_lora_parameters_and_bad_arguments(model_batch):
    model, batch = model_batch
    base_param = dict(model.unet.named_parameters())["conv_in.weight"]
    with pytest.raises(ValueError, match="LoRA"):
        per_clip_gradients(
            model, batch, {"conv_in.weight": base_param}, lambda_tdc=0.0, tdc_space="x0", generator=None
        )
    with pytest.raises(ValueError, match="max_grad_norm"):
        privatize_gradients(
            {"w": torch.zeros(1, 2)},
            noise_multiplier=1.0,
            max_grad_norm=0.0,
            expected_batch_size=1,
            generator=None,
        )
    with pytest.raises(ValueError, match="expected_batch_size"):
        privatize_gradients(
            {"w": torch.zeros(1, 2)},
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            expected_batch_size=0,
            generator=None,
        )


def test_poisson_sampling_rate_and_the_sample_level_event():
    rng = np.random.default_rng(0)
    sizes = [poisson_clip_indices(50, sample_rate=0.1, rng=rng).size for _ in range(2000)]
    assert np.mean(sizes) == pytest.approx(5.0, rel=0.03)
    assert min(sizes) >= 0 and max(sizes) <= 50
    ev = dp_sgd_event(noise_multiplier=1.1, batch_clips=2, num_train_clips=40, local_steps=30)
    assert (ev.kind, ev.sample_rate, ev.steps) == ("sample-level", 0.05, 30)
    ledger = PrivacyLedger()
    ledger.record(ev)
    ledger.record(ev)  # the client trained in two rounds: 60 steps in all
    assert ledger.epsilon(1e-5) == pytest.approx(
        compute_epsilon(noise_multiplier=1.1, sample_rate=0.05, rounds=60, delta=1e-5), rel=1e-9
    )
    with pytest.raises(ValueError, match="batch_clips"):
        dp_sgd_event(noise_multiplier=1.0, batch_clips=5, num_train_clips=4, local_steps=1)

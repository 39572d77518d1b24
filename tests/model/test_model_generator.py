import numpy as np
import pytest
import torch

from pftray.data import make_client
from pftray.fed.client import ClientTrainer
from pftray.fed.host import ClientProvider
from pftray.model.adapters import (
    adapter_parameters,
    export_identity_adapter,
    flatten_state,
    get_adapter_state,
    load_adapter_state,
    set_trainable,
    unflatten_state,
)
from pftray.model.factory import build_model
from pftray.model.losses import diffusion_losses, proximal_term, tdc_loss
from tests.tinycfg import tiny_config


@pytest.fixture(scope="module")
def cfg():
    return tiny_config()


@pytest.fixture(scope="module")
def client(cfg):
    return make_client(0, **ClientProvider(cfg).synthetic_kwargs())


def _base_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}


def test_tdc_zero_for_static_and_positive_for_flicker():
    static = torch.ones(2, 5, 3, 4, 4) * 0.3
    assert tdc_loss(static, static).item() == 0.0
    assert tdc_loss(static * 2, static).item() == 0.0  # a static prediction of a static clip: no temporal error
    flicker = static.clone()
    flicker[:, 1::2] += 0.5
    assert tdc_loss(flicker, static).item() == pytest.approx(0.5)
    assert tdc_loss(static + 0.1 * (flicker - static), static).item() == pytest.approx(0.05)
    with pytest.raises(ValueError):
        tdc_loss(static[:, :1], static[:, :1])


def test_proximal_term_value_and_pull():
    g = {"a": torch.zeros(3)}
    p = {"a": torch.tensor([1.0, 2.0, 2.0], requires_grad=True)}
    val = proximal_term(p, g, mu=0.5)
    assert val.item() == pytest.approx(0.5 / 2 * 9)
    val.backward()
    with torch.no_grad():
        new = p["a"] - 0.1 * p["a"].grad
    assert torch.linalg.norm(new) < torch.linalg.norm(p["a"].detach())  # a gradient step moves toward w_global


def test_identity_only_training_leaves_shared_and_base_bit_identical(cfg, client):
    model = build_model(cfg)
    base, shared = _base_state(model), get_adapter_state(model.unet, "shared")
    ident0 = get_adapter_state(model.unet, "identity")
    params = set_trainable(model.unet, ["identity"])
    assert {id(p) for p in params} == {id(p) for p in adapter_parameters(model.unet, "identity").values()}
    opt = torch.optim.Adam(params, lr=1e-2)
    rng = np.random.default_rng(0)
    from pftray.data import clips_to_batch

    for _ in range(3):
        batch = clips_to_batch(client.train, frames=2, rng=rng, reference=client.reference)
        loss = diffusion_losses(model, batch, lambda_tdc=0.1)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    for k, v in _base_state(model).items():
        assert torch.equal(v, base[k]), k
    for k, v in get_adapter_state(model.unet, "shared").items():
        assert torch.equal(v, shared[k]), k
    changed = get_adapter_state(model.unet, "identity")
    assert any(not torch.equal(changed[k], ident0[k]) for k in changed)


def test_adapter_states_round_trip_exactly_and_keys_are_checked(cfg):
    model = build_model(cfg)
    shared = get_adapter_state(model.unet, "shared")
    rnd = {k: torch.randn_like(v) for k, v in shared.items()}
    load_adapter_state(model.unet, "shared", rnd)
    back = get_adapter_state(model.unet, "shared")
    assert all(torch.equal(back[k], rnd[k]) for k in rnd)
    flat = flatten_state(back)
    again = unflatten_state(flat, back)
    assert all(torch.equal(again[k], back[k]) for k in back)
    bad = dict(rnd)
    bad.pop(next(iter(bad)))
    with pytest.raises(KeyError, match="missing"):
        load_adapter_state(model.unet, "shared", bad)
    with pytest.raises(KeyError, match="unexpected"):
        load_adapter_state(model.unet, "identity", rnd)  # shared keys are not identity keys
    with pytest.raises(ValueError, match="flat vector"):
        unflatten_state(flat[:-1], back)


def test_exported_identity_adapter_loads_into_a_diffusers_unet(cfg, tmp_path):
    torch.manual_seed(123)
    model = build_model(cfg)
    ident = {k: torch.randn_like(v) * 0.1 for k, v in get_adapter_state(model.unet, "identity").items()}
    load_adapter_state(model.unet, "identity", ident)
    path = export_identity_adapter(model.unet, tmp_path / "identity.safetensors")
    torch.manual_seed(123)  # same base weights as `model`
    fresh = build_model(cfg).unet
    fresh.delete_adapters(["shared", "identity"])
    fresh.load_lora_adapter(str(path), prefix="unet", adapter_name="loaded")
    fresh.set_adapters(["loaded"])
    model.unet.set_adapters(["identity"])  # compare identity-only outputs
    torch.manual_seed(0)
    c = cfg.model.cross_attention_dim
    x = torch.randn(2, model.unet.config.in_channels, model.latent_size, model.latent_size)
    tokens = torch.randn(2, 5, c)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        a = model.unet(x, t, encoder_hidden_states=tokens).sample
        b = fresh(x, t, encoder_hidden_states=tokens).sample
        model.unet.disable_adapters()
        base = model.unet(x, t, encoder_hidden_states=tokens).sample
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert (a - base).abs().max() > 1e-4  # the adapter really changes the output


def test_fedprox_mu_changes_and_shrinks_client_updates(cfg, client):
    trainer = ClientTrainer(cfg.replace(**{"train.local_steps": 6, "train.lr_shared": 5e-2}))
    g = flatten_state(get_adapter_state(trainer.model.unet, "shared"))
    u0, _ = trainer.fit(client, None, g, server_round=1, mu=0.0)
    u_again, _ = trainer.fit(client, None, g, server_round=1, mu=0.0)
    u1, _ = trainer.fit(client, None, g, server_round=1, mu=100.0)
    np.testing.assert_array_equal(u0.delta, u_again.delta)  # deterministic given (seed, round, client)
    assert not np.allclose(u0.delta, u1.delta)
    assert u1.update_norm < u0.update_norm
    assert 0 <= u0.id_sim <= 1 and 0 < u0.temp_stab <= 1 and np.isfinite(u0.val_loss)


def test_client_state_persists_identity_and_optimizer(cfg, client):
    trainer = ClientTrainer(cfg)
    g = flatten_state(get_adapter_state(trainer.model.unet, "shared"))
    _, s1 = trainer.fit(client, None, g, server_round=1)
    _, s2 = trainer.fit(client, s1, g, server_round=2)
    assert s2.rounds_trained == 2 and s2.optimizer["state"]
    s1b = type(s1).from_bytes(s1.to_bytes())
    assert all(torch.equal(s1b.identity[k], s1.identity[k]) for k in s1.identity)


def test_widened_conv_in_computes_what_it_did_until_trained():
    from pftray.model.generator import _widen_conv_in

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 8, 3, padding=1)
    wide = _widen_conv_in(conv, 5)
    x, extra = torch.randn(2, 3, 8, 8), torch.randn(2, 5, 8, 8)
    assert wide.in_channels == 8
    torch.testing.assert_close(wide(torch.cat([x, extra], 1)), conv(x), rtol=0, atol=1e-6)


def test_reference_conditioned_vae_reads_the_reference_and_trains_it():
    from pftray.model.generator import TalkingHeadModel, vae_loss

    cfg = tiny_config(**{"model.vae_reference": True})
    torch.manual_seed(0)
    model = TalkingHeadModel(cfg.model, cfg.data)
    res = cfg.data.resolution
    frames, ref = torch.rand(3, 3, res, res) * 2 - 1, torch.rand(3, 3, res, res) * 2 - 1
    assert model.vae.encoder.conv_in.in_channels == 6
    assert model.vae.decoder.conv_in.in_channels == cfg.model.latent_channels + 3 * model.down ** 2
    z = model.encode(frames, ref)
    assert z.shape == (3, cfg.model.latent_channels, model.latent_size, model.latent_size)
    assert model.decode(z, ref).shape == frames.shape
    loss, _ = vae_loss(model, frames, ref, 1e-6)
    loss.backward()  # the zero-initialised reference weights receive gradient: training can use them
    assert model.vae.decoder.conv_in.weight.grad[:, cfg.model.latent_channels:].abs().sum() > 0
    assert model.vae.encoder.conv_in.weight.grad[:, 3:].abs().sum() > 0


def test_vae_loss_l1_weight_is_the_l1_term_exactly():
    from pftray.model.generator import TalkingHeadModel, vae_loss

    cfg = tiny_config()
    torch.manual_seed(0)
    model = TalkingHeadModel(cfg.model, cfg.data)
    res = cfg.data.resolution
    frames, ref = torch.rand(2, 3, res, res) * 2 - 1, torch.rand(2, 3, res, res) * 2 - 1
    with torch.no_grad():
        mse_only, recon = vae_loss(model, frames, ref, 0.0, l1_weight=0.0)
        both, _ = vae_loss(model, frames, ref, 0.0, l1_weight=2.0)
        target = model._residual(frames, model.base(ref, 2))
    torch.testing.assert_close(mse_only, ((recon - target) ** 2).mean())
    torch.testing.assert_close(both - mse_only, 2.0 * (recon - target).abs().mean())


def test_audio_guidance_interpolates_between_null_and_real_audio():
    from pftray.config import ConfigError
    from pftray.model.generator import TalkingHeadModel

    with pytest.raises(ConfigError, match="model.audio_guidance: 2.0 with audio_dropout 0"):
        tiny_config(**{"model.audio_guidance": 2.0})
    cfg = tiny_config(**{"model.audio_dropout": 0.2})
    torch.manual_seed(0)
    model = TalkingHeadModel(cfg.model, cfg.data).eval()
    with torch.no_grad():
        model.cond.null_audio.normal_()  # make the null tokens clearly different from any audio
    res, n = cfg.data.resolution, 3
    ref = torch.rand(3, res, res) * 2 - 1
    audio = torch.randn(n, cfg.data.audio_window, cfg.data.n_mels)
    pose = torch.randn(n, 4) * 0.1

    def run(g, **kw):
        return model.sample(ref, audio, pose, steps=3, generator=torch.Generator().manual_seed(1), guidance=g, **kw)

    plain = run(1.0)
    assert torch.equal(plain, model.sample(ref, audio, pose, steps=3, generator=torch.Generator().manual_seed(1)))
    uncond = run(0.0)  # guidance 0 = the null-audio branch alone
    orig = model.cond.forward
    model.cond.forward = lambda a, p, r, drop=None: orig(a, p, r, torch.ones(a.shape[0], dtype=torch.bool))
    try:
        null_only = run(1.0)
    finally:
        model.cond.forward = orig
    torch.testing.assert_close(uncond, null_only, rtol=1e-4, atol=1e-4)
    assert (plain - uncond).abs().max() > 1e-3  # the audio matters, so the two ends differ
    assert (run(3.0) - plain).abs().max() > 1e-3
    no_null = TalkingHeadModel(tiny_config().model, cfg.data)
    with pytest.raises(ValueError, match="audio_dropout > 0"):
        no_null.sample(ref, audio, pose, steps=2, guidance=2.0)


def test_sample_temperature_scales_the_initial_noise():
    from pftray.model.generator import TalkingHeadModel

    cfg = tiny_config()
    torch.manual_seed(0)
    model = TalkingHeadModel(cfg.model, cfg.data).eval()
    res, n = cfg.data.resolution, 3
    ref = torch.rand(3, res, res) * 2 - 1
    audio, pose = torch.randn(n, cfg.data.audio_window, cfg.data.n_mels), torch.randn(n, 4) * 0.1

    def run(seed, **kw):
        return model.sample(ref, audio, pose, steps=3, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(run(1), run(1, temperature=1.0))  # the default is the model's sample, bit for bit
    assert (run(1) - run(2)).abs().max() > 1e-3  # ... which depends on the noise
    torch.testing.assert_close(run(1, temperature=0.0), run(2, temperature=0.0), rtol=0, atol=0)  # deterministic
    half = run(1, temperature=0.5)
    assert (half - run(1)).abs().max() > 1e-4 and (half - run(1, temperature=0.0)).abs().max() > 1e-4
    # the config default reaches sample()
    cold = TalkingHeadModel(tiny_config(**{"model.sample_temperature": 0.0}).model, cfg.data).eval()
    cold.load_state_dict(model.state_dict())
    torch.testing.assert_close(cold.sample(ref, audio, pose, steps=3, generator=torch.Generator().manual_seed(7)),
                               run(1, temperature=0.0), rtol=0, atol=0)


def test_audio_dropout_one_makes_the_loss_blind_to_the_audio(cfg, client):
    from pftray.data import clips_to_batch
    from pftray.model.generator import TalkingHeadModel

    c = tiny_config(**{"model.audio_dropout": 0.5})
    torch.manual_seed(0)
    model = TalkingHeadModel(c.model, c.data)
    batch = clips_to_batch(client.train, frames=2, rng=np.random.default_rng(0), reference=client.reference)
    other = {**batch, "audio_feats": torch.randn_like(batch["audio_feats"])}

    def loss(b, p):
        with torch.no_grad():
            return diffusion_losses(model, b, generator=torch.Generator().manual_seed(3), audio_dropout=p)["loss"]

    assert torch.equal(loss(batch, 1.0), loss(other, 1.0))  # every clip sees the null tokens
    assert not torch.equal(loss(batch, 0.0), loss(other, 0.0))


def test_x0_and_eps_space_tdc_differ_only_by_the_timestep_weight(cfg, client):
    """Under v-prediction, x0 = a x_t - s v and eps = a v + s x_t (a = sqrt(alpha_bar_t), s = sqrt(1 - alpha_bar_t)):
    at one timestep per clip, TDC_x0 = s |dv_hat - dv| and TDC_eps = a |dv_hat - dv|."""
    from pftray.data import clips_to_batch

    torch.manual_seed(0)
    model = build_model(cfg)
    batch = clips_to_batch(client.train, frames=3, rng=np.random.default_rng(0), reference=client.reference)
    t = torch.tensor([50, 700])[: batch["audio_feats"].shape[0]]
    kw = {"timesteps": t, "noise": None, "reduce": False, "lambda_tdc": 1.0}
    with torch.no_grad():
        noise = torch.randn(encode_diffusion_shape(model, batch), generator=torch.Generator().manual_seed(1))
        x0 = diffusion_losses(model, batch, tdc_space="x0", **{**kw, "noise": noise})["tdc"]
        eps = diffusion_losses(model, batch, tdc_space="eps", **{**kw, "noise": noise})["tdc"]
    ac = model.scheduler.alphas_cumprod[t].double()
    torch.testing.assert_close(x0.double() / eps.double(), ((1 - ac) / ac).sqrt(), rtol=1e-4, atol=0)


def encode_diffusion_shape(model, batch):
    b, f = batch["audio_feats"].shape[:2]
    return (b * f, model.latent_channels, model.latent_size, model.latent_size)

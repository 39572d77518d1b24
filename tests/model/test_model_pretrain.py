import pytest
import torch

from pftray.model.generator import TalkingHeadModel
from pftray.model.pretrain import pretrain
from tests.tinycfg import tiny_config


class Stop(Exception):
    pass


def test_pretrain_resumes_to_the_same_weights_as_an_uninterrupted_run(tmp_path):
    cfg = tiny_config(**{"pretrain.vae_steps": 3, "pretrain.unet_steps": 4, "pretrain.checkpoint_every": 2,
                         "pretrain.batch_frames": 4, "pretrain.batch_clips": 2})
    full = pretrain(cfg, tmp_path / "full.pt")
    assert len(full["losses"]) == 0 and set(full["times"]) == {"warp", "vae", "unet"}

    def crash(phase, step, total, loss):
        if phase == "unet" and step == 3:
            raise Stop  # killed after the step-2 checkpoint
    with pytest.raises(Stop):
        pretrain(cfg, tmp_path / "resumed.pt", progress=crash)
    assert (tmp_path / "resumed.pt.partial").exists() and not (tmp_path / "resumed.pt").exists()
    seen = []
    pretrain(cfg, tmp_path / "resumed.pt", progress=lambda ph, st, tot, loss: seen.append((ph, st)))
    assert seen == [("unet", 3), ("unet", 4)]  # it resumed, it did not start over
    assert not (tmp_path / "resumed.pt.partial").exists()
    a = torch.load(tmp_path / "full.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "resumed.pt", weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        # bit-exact up to oneDNN kernel-selection noise (~1e-8 relative) between a fresh and a warm process
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)
    model = TalkingHeadModel(cfg.model, cfg.data)
    model.load_backbone(tmp_path / "full.pt")
    assert float(model.latent_scale) != 1.0  # latent statistics were fitted after the VAE stage


def test_backbone_with_other_sizes_is_rejected_by_name(tmp_path):
    cfg = tiny_config(**{"pretrain.vae_steps": 1, "pretrain.unet_steps": 1})
    pretrain(cfg, tmp_path / "bb.pt")
    other = tiny_config(**{"model.unet_channels": [16, 32]})
    model = TalkingHeadModel(other.model, other.data)
    with pytest.raises(ValueError, match=r"bb.pt: backbone (does not match|tensor)"):
        model.load_backbone(tmp_path / "bb.pt")


def test_space_to_depth_latent_is_lossless_and_pretrains_without_a_vae_stage(tmp_path):
    cfg = tiny_config(**{"model.autoencoder": "space_to_depth", "pretrain.vae_steps": 5, "pretrain.unet_steps": 2,
                         "pretrain.batch_clips": 2})
    torch.manual_seed(0)
    model = TalkingHeadModel(cfg.model, cfg.data)
    assert model.vae is None and model.latent_channels == 3 * model.down ** 2
    res = cfg.data.resolution
    frames, ref = torch.rand(2, 3, res, res) * 2 - 1, torch.rand(3, res, res) * 2 - 1
    model.fit_latent_stats(frames, ref[None].expand(2, -1, -1, -1))
    z = model.encode(frames, ref)
    assert z.shape == (2, model.latent_channels, res // model.down, res // model.down)
    torch.testing.assert_close(model.decode(z, ref), frames, rtol=0, atol=1e-5)  # the ceiling is exact
    seen = []
    pretrain(cfg, tmp_path / "s2d.pt", progress=lambda ph, st, tot, loss: seen.append(ph))
    assert seen == ["unet", "unet"]  # no VAE steps were run
    loaded = TalkingHeadModel(cfg.model, cfg.data)
    loaded.load_backbone(tmp_path / "s2d.pt")
    assert float(loaded.latent_scale) != 1.0


def test_pose_warp_starts_as_identity_and_pretraining_fits_head_motion(tmp_path):
    import numpy as np

    from pftray.model.generator import PoseWarp
    from pftray.model.pretrain import _to_t, public_data

    torch.manual_seed(0)
    ref = torch.rand(3, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(PoseWarp(4)(ref, torch.randn(3, 4)), ref, rtol=0, atol=1e-5)

    cfg = tiny_config(**{"model.pose_warp": True, "pretrain.warp_steps": 60, "pretrain.vae_steps": 2,
                         "pretrain.unet_steps": 2, "pretrain.batch_clips": 2, "data.public_identities": 6,
                         "data.public_clips_per_identity": 2})
    seen = []
    pretrain(cfg, tmp_path / "warp.pt", progress=lambda ph, st, tot, loss: seen.append(ph))
    assert seen == ["warp"] * 60 + ["vae"] * 2 + ["unet"] * 2
    model = TalkingHeadModel(cfg.model, cfg.data)
    model.load_backbone(tmp_path / "warp.pt")
    clips, ident, refs = public_data(cfg)
    frames = _to_t(np.concatenate([c.frames for c in clips]))
    pose = torch.from_numpy(np.concatenate([c.pose for c in clips]))
    base_refs = _to_t(refs)[np.repeat(ident, [c.num_frames for c in clips])]
    with torch.no_grad():
        warped = model.base(base_refs, len(frames), pose)
    err_copy = (base_refs - frames).pow(2).mean()
    err_warp = (warped - frames).pow(2).mean()
    assert err_warp < 0.8 * err_copy  # the warp renders part of the head motion the copy misses
    with pytest.raises(ValueError, match="pass pose"):
        model.encode(frames[:2], base_refs[:2])
    z = model.encode(frames[:2], base_refs[:2], pose[:2])
    assert model.decode(z, base_refs[:2], pose[:2]).shape == frames[:2].shape


def test_tdc_bench_variants_share_the_warp_and_vae_stage_and_differ_in_the_unet(tmp_path):
    from bench.tdc import shared_stages, variants
    from pftray.config import config_from_dict, dump_config, load_config
    from tests.tinycfg import TINY

    path = tmp_path / "tiny.yaml"
    dump_config(config_from_dict(TINY), path)
    sets = ["pretrain.vae_steps=3", "pretrain.unet_steps=3", "pretrain.batch_clips=2", "train.window=2"]
    start = shared_stages(load_config(path, sets), tmp_path)
    blob = torch.load(start, weights_only=False)
    assert (blob["state"]["phase"], blob["state"]["step"]) == ("unet", 0)
    assert shared_stages(load_config(path, sets), tmp_path) == start  # made once
    outs = {}
    for name in ("none", "x0"):
        out = tmp_path / f"{name}.pt"
        (tmp_path / f"{name}.pt.partial").write_bytes(start.read_bytes())
        seen: list[str] = []
        pretrain(load_config(path, [*sets, *variants(0.5)[name]]), out,
                 progress=lambda ph, st, tot, loss, seen=seen: seen.append(ph))
        assert seen == ["unet"] * 3  # resumed at the UNet stage
        outs[name] = torch.load(out, weights_only=True)["state_dict"]
    vae = [k for k in outs["none"] if k.startswith("vae.")]
    unet = [k for k in outs["none"] if k.startswith("unet.")]
    assert vae and unet
    assert all(torch.equal(outs["none"][k], outs["x0"][k]) for k in vae)
    assert any(not torch.equal(outs["none"][k], outs["x0"][k]) for k in unet)  # TDC changed the UNet's gradients

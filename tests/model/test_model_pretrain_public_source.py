"""``data.public_source``: pre-training the backbone on the speakers of a folder made by ``pftray data prepare``.

The prepared folders here are written directly (shards of synthetic clients, renamed speakers, the manifest
fields that :func:`pftray.data.ingest.load_prepared_dataset` and the checks read) so that the test needs no
video decoding and no dlib. Their frames are colour-inverted: a backbone that silently trained on the embedded
synthetic public identities instead would not reconstruct them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pftray.config import ConfigError, config_from_dict, load_config
from pftray.data import make_client, save_client_shard
from pftray.data.ingest import MANIFEST_FORMAT, load_prepared_dataset
from pftray.model.generator import TalkingHeadModel
from pftray.model.pretrain import _to_t, check_public_source, pretrain, public_data
from tests.tinycfg import tiny_dict

REPO = Path(__file__).resolve().parents[2]
SPEAKERS = ("spk_anna", "spk_bo", "spk_cyd")
STEPS = {"pretrain.vae_steps": 30, "pretrain.unet_steps": 4, "pretrain.checkpoint_every": 10,
         "pretrain.batch_frames": 8, "pretrain.batch_clips": 2, "pretrain.lr_vae": 3e-3}


class Stop(Exception):
    pass


def write_prepared(folder: Path, speakers, *, resolution=32, frames=8, first_client=0, n_mels=16, window=8) -> Path:
    """A folder laid out like ``pftray data prepare``'s output: ``client-<i>.parquet`` + ``manifest.json``."""
    entries = []
    for i, name in enumerate(speakers):
        c = make_client(first_client + i, num_clients=first_client + len(speakers), clips_per_client=2,
                        heldout_clips=1, frames_per_clip=frames, resolution=resolution, n_mels=n_mels,
                        audio_window=window, seed=5)
        c.client_id, c.identity, c.reference = i, name, 255 - c.reference
        for k, clip in enumerate([*c.train, *c.heldout]):
            clip.identity, clip.clip_id, clip.frames = name, f"{name}/clip0/{k}", 255 - clip.frames
        save_client_shard(c, folder / f"client-{i}.parquet")
        entries.append({"client_id": i, "speaker": name, "shard": f"client-{i}.parquet", "train_clips": len(c.train),
                        "heldout_clips": len(c.heldout), "train_frames": c.num_examples, "files": 1})
    manifest = {"format": MANIFEST_FORMAT, "version": 3, "pose_frame": "reference", "source": "test",
                "resolution": resolution,
                "frames_per_clip": frames, "heldout_clips": 1, "n_mels": n_mels, "audio_window": window,
                "crop": "center", "clients": entries, "skipped": [], "files": []}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    return folder


def cfg_for(public: Path | str, **overrides):
    return config_from_dict(tiny_dict(**{"data.public_source": str(public), **STEPS, **overrides}))


@pytest.fixture(scope="module")
def public(tmp_path_factory) -> Path:
    return write_prepared(tmp_path_factory.mktemp("public"), SPEAKERS)


@pytest.fixture(scope="module")
def full_run(public, tmp_path_factory):
    """One uninterrupted pre-training on the public folder: (out file, summary, VAE losses per step, the frame
    batches the frame stages converted to tensors)."""
    import pftray.model.pretrain as mod

    out = tmp_path_factory.mktemp("full") / "bb.pt"
    losses, batches = [], []
    to_t = mod._to_t

    def spy(frames):
        batches.append(frames.copy())
        return to_t(frames)
    mod._to_t = spy
    try:
        res = pretrain(cfg_for(public), out, progress=lambda ph, st, tot, loss: ph == "vae" and losses.append(loss))
    finally:
        mod._to_t = to_t
    return out, res, losses, batches


def test_public_data_is_every_clip_of_the_folders_speakers_with_their_references(public):
    clips, ident, refs = public_data(cfg_for(public))
    shards = load_prepared_dataset(public)
    assert [s.identity for s in shards] == list(SPEAKERS)
    assert len(clips) == sum(len(s.train) + len(s.heldout) for s in shards) == 9  # held-out clips train too
    assert ident.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert [c.identity for c in clips] == [SPEAKERS[i] for i in ident]
    for i, s in enumerate(shards):
        np.testing.assert_array_equal(refs[i], s.reference)
        mine = [c for c, k in zip(clips, ident) if k == i]
        for a, b in zip(mine, [*s.train, *s.heldout]):
            assert a == b


def test_pretraining_uses_exactly_the_folders_speakers_and_learns_their_frames(public, full_run):
    out, res, losses, batches = full_run
    assert res["public_speakers"] == list(SPEAKERS)
    assert res["public_clips"] == 9 and res["public_frames"] == 9 * 8
    meta = torch.load(out, weights_only=False)["pretrain"]
    assert meta["public_speakers"] == list(SPEAKERS) and meta["public_identities"] == 3
    assert meta["public_source"] == str(public)

    # every VAE batch is made of the folder's frames, and the loss on them goes down
    clips, ident, refs = public_data(cfg_for(public))
    frames = np.concatenate([c.frames for c in clips])
    known = {f.tobytes() for f in frames}
    vae_batches = [b for b in batches if len(b) == STEPS["pretrain.batch_frames"]]
    assert len(vae_batches) == 30
    assert all(f.tobytes() in known for b in vae_batches for f in b)
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])

    # and its VAE reconstructs them better than an untrained one
    x = _to_t(frames)
    ref = _to_t(refs)[np.repeat(ident, [c.num_frames for c in clips])]
    pose = torch.from_numpy(np.concatenate([c.pose for c in clips]))
    cfg = cfg_for(public)
    errs = {}
    for name in ("pretrained", "untrained"):
        torch.manual_seed(0)
        model = TalkingHeadModel(cfg.model, cfg.data)
        if name == "pretrained":
            model.load_backbone(out)
        model.eval()
        with torch.no_grad():
            errs[name] = float((model.decode(model.encode(x, ref, pose), ref, pose) - x).pow(2).mean())
    assert errs["pretrained"] < 0.5 * errs["untrained"], errs


def test_interrupted_pretraining_resumes_where_it_stopped_and_ends_like_the_full_run(public, full_run, tmp_path):
    cfg = cfg_for(public)
    out = tmp_path / "bb.pt"

    def crash(phase, step, total, loss):
        if phase == "vae" and step == 13:
            raise Stop  # killed 3 steps after the step-10 checkpoint
    with pytest.raises(Stop):
        pretrain(cfg, out, progress=crash)
    assert out.with_name("bb.pt.partial").exists() and not out.exists()
    seen = []
    res = pretrain(cfg, out, progress=lambda ph, st, tot, loss: seen.append((ph, st)))
    assert seen == [("vae", s) for s in range(11, 31)] + [("unet", s) for s in range(1, 5)]
    assert res["public_speakers"] == list(SPEAKERS) and not out.with_name("bb.pt.partial").exists()
    a = torch.load(full_run[0], weights_only=True)["state_dict"]
    b = torch.load(out, weights_only=True)["state_dict"]
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_a_partial_checkpoint_of_other_public_data_is_not_resumed(public, tmp_path):
    out = tmp_path / "bb.pt"

    def crash(phase, step, total, loss):
        if step == 11:
            raise Stop  # after the step-10 checkpoint
    with pytest.raises(Stop):
        pretrain(cfg_for(""), out, progress=crash)
    with pytest.raises(ConfigError, match=r"data\.public_source: .*bb\.pt\.partial was pre-trained on the synthetic"):
        pretrain(cfg_for(public), out)


def test_a_public_speaker_that_is_also_a_client_is_refused_naming_both_keys(public, tmp_path):
    clients = write_prepared(tmp_path / "clients", ["spk_dee", SPEAKERS[1]], first_client=3)
    cfg = cfg_for(public, **{"data.source": str(clients), "data.num_clients": 2})
    with pytest.raises(ConfigError, match=r"^data\.public_source: speaker 'spk_bo' is also a client of "
                                          r"data\.source .*disjoint") as err:
        pretrain(cfg, tmp_path / "bb.pt")
    assert "\n" not in str(err.value) and not (tmp_path / "bb.pt.partial").exists()
    disjoint = write_prepared(tmp_path / "others", ["spk_dee", "spk_eli"], first_client=3)
    check_public_source(cfg_for(public, **{"data.source": str(disjoint), "data.num_clients": 2}))  # accepted


def test_folders_with_different_head_pose_frames_are_refused(public, tmp_path):
    clients = write_prepared(tmp_path / "clients", ["spk_dee", "spk_eli"], first_client=3)
    manifest = json.loads((clients / "manifest.json").read_text())
    del manifest["pose_frame"]  # prepared before head pose was made relative to the reference (version 2)
    (clients / "manifest.json").write_text(json.dumps(manifest))
    cfg = cfg_for(public, **{"data.source": str(clients), "data.num_clients": 2})
    with pytest.raises(ConfigError, match=r"^data\.public_source: .* against the reference frame but data\.source "
                                          r".* against the absolute one"):
        check_public_source(cfg)


def test_the_same_folder_as_public_source_and_source_is_refused(public, tmp_path):
    with pytest.raises(ConfigError, match=r"^data\.public_source: .* is also data\.source"):
        cfg_for(public, **{"data.source": str(public), "data.num_clients": 3})  # when the config is built
    other_spelling = str(public / ".." / public.name)  # the same folder under another name
    cfg = cfg_for(public, **{"data.source": other_spelling, "data.num_clients": 3})
    with pytest.raises(ConfigError, match=r"^data\.public_source: .* is also data\.source"):
        check_public_source(cfg)


def test_a_folder_prepared_at_another_resolution_is_refused(tmp_path):
    folder = write_prepared(tmp_path / "p48", SPEAKERS[:2], resolution=48)
    with pytest.raises(ConfigError, match=r"^data\.public_source: .* prepared at 48 px but data\.resolution is 32"):
        pretrain(cfg_for(folder), tmp_path / "bb.pt")
    with pytest.raises(ConfigError, match=r"^data\.public_source: .*no such folder"):
        pretrain(cfg_for(tmp_path / "absent"), tmp_path / "bb.pt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"^data\.public_source: .*no manifest\.json"):
        pretrain(cfg_for(tmp_path / "empty"), tmp_path / "bb.pt")
    mels = write_prepared(tmp_path / "mels", SPEAKERS[:2], n_mels=8)
    with pytest.raises(ConfigError, match=r"n_mels 8 but data\.n_mels is 16"):
        pretrain(cfg_for(mels), tmp_path / "bb.pt")


def test_the_synthetic_default_is_unchanged(public, tmp_path):
    from pftray.data.partition import make_public_clips, public_reference

    cfg = config_from_dict(tiny_dict())
    assert cfg.data.public_source == ""
    clips, ident, refs = public_data(cfg)
    d = cfg.data
    old = make_public_clips(num_identities=d.public_identities, clips_per_identity=d.public_clips_per_identity,
                            frames_per_clip=d.frames_per_clip, resolution=d.resolution, n_mels=d.n_mels,
                            audio_window=d.audio_window, seed=cfg.experiment.seed)
    assert clips == old
    assert ident.tolist() == np.repeat(np.arange(4), 1).tolist()
    np.testing.assert_array_equal(refs, np.stack([public_reference(i, resolution=32, seed=0) for i in range(4)]))
    clips2, _, _ = public_data(cfg_for(public))
    assert {c.identity for c in clips2} == set(SPEAKERS)
    again, _, _ = public_data(cfg)  # loading the folder leaves the default as it was
    assert again == old
    res = pretrain(cfg.replace(**{"pretrain.vae_steps": 1, "pretrain.unet_steps": 1}), tmp_path / "bb.pt")
    assert res["public_speakers"] == ["pub-0", "pub-1", "pub-2", "pub-3"]
    assert set(torch.load(tmp_path / "bb.pt", weights_only=False)["pretrain"]) == {  # the blob is as it was
        "warp_steps", "vae_steps", "unet_steps", "times", "public_identities", "seed"}


@pytest.mark.parametrize("name", ["real_faces.yaml", "real_faces_128.yaml"])
def test_the_real_faces_presets_load_once_their_folders_exist_and_name_the_missing_one(name, tmp_path, monkeypatch):
    import yaml

    import pftray.config as config_mod

    monkeypatch.setattr(config_mod, "REPO_ROOT", tmp_path / "no-repo")  # only the copy's folder is looked in
    preset = tmp_path / "configs" / name
    preset.parent.mkdir()
    shutil.copy(REPO / "configs" / name, preset)
    data = yaml.safe_load(preset.read_text())
    with pytest.raises(ConfigError, match=rf"data\.public_source: '{data['data']['public_source']}': no such folder"):
        load_config(preset)
    for key in ("public_source", "source"):
        (preset.parent / data["data"][key]).mkdir(parents=True)
    (preset.parent / data["model"]["backbone"]).parent.mkdir(parents=True, exist_ok=True)
    (preset.parent / data["model"]["backbone"]).write_bytes(b"")
    cfg = load_config(preset)
    assert Path(cfg.data.public_source).is_dir() and Path(cfg.data.source).is_dir()
    assert cfg.data.public_source != cfg.data.source
    assert cfg.data.resolution == (128 if "128" in name else 64)
    assert cfg.fed.clients_per_round <= cfg.data.num_clients
    text = (REPO / "configs" / name).read_text()
    for command in ("pftray data prepare", "pftray pretrain", "pftray run", "pftray eval", "pftray generate"):
        assert command in text, command


def test_pftray_config_on_a_preset_without_its_data_is_one_line_naming_the_folder_exit_2(tmp_path):
    preset = tmp_path / "configs" / "real_faces.yaml"
    preset.parent.mkdir()
    shutil.copy(REPO / "configs" / "real_faces.yaml", preset)
    missing = str(tmp_path / "nowhere")
    proc = subprocess.run([sys.executable, "-m", "pftray", "config", str(preset), "--set",
                           f"data.public_source={missing}"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "data.public_source" in lines[0] and "nowhere" in lines[0] and "no such folder" in lines[0]


def test_a_run_on_a_client_the_backbone_was_pretrained_on_is_refused_before_anything_is_written(public, full_run,
                                                                                                 tmp_path):
    from pftray.model.pretrain import check_backbone_speakers
    from pftray.runtime.driver import run_federated

    backbone = full_run[0]  # pre-trained on SPEAKERS, recorded in the file
    clients = write_prepared(tmp_path / "clients", ["spk_dee", SPEAKERS[2]], first_client=3)
    cfg = config_from_dict(tiny_dict(**{"data.source": str(clients), "data.num_clients": 2,
                                        "model.backbone": str(backbone)}))
    with pytest.raises(ConfigError, match=r"^model\.backbone: .* was pre-trained on speaker 'spk_cyd', which is "
                                          r"also a client of data\.source") as err:
        run_federated(cfg, out=str(tmp_path / "run"), use_ray=False)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()
    disjoint = write_prepared(tmp_path / "others", ["spk_dee", "spk_eli"], first_client=3)
    check_backbone_speakers(cfg.replace(**{"data.source": str(disjoint)}))  # accepted
    synthetic = config_from_dict(tiny_dict(**{"model.backbone": str(backbone)}))
    check_backbone_speakers(synthetic)  # synthetic clients: nothing to compare

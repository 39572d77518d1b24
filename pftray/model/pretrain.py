"""Public pre-training of the backbone on the disjoint public identities: VAE first, then UNet + condition
encoder on cached latents. Resumable: a partial checkpoint is written every ``pretrain.checkpoint_every`` steps
and picked up by the next call with the same output path.

The public identities are the embedded synthetic ones (``data.public_source: ""``, the default) or the speakers
of a folder made by ``pftray data prepare`` (``data.public_source: DIR``): every shard of it is one public
identity, the shard's reference frame its reference, and all its clips, train and held-out alike, are
pre-training clips (:func:`public_data`). Such a folder must be prepared at ``data.resolution`` with the
model's audio features (``data.n_mels``, ``data.audio_window``) and share no speaker with ``data.source``, the
federated clients (:func:`check_public_source`).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pftray.config import Config
from pftray.model.generator import TalkingHeadModel, vae_loss
from pftray.model.losses import diffusion_losses
from pftray.results import atomic_write_bytes


def public_data(cfg: Config) -> tuple[list, np.ndarray, np.ndarray]:
    """Public clips, the identity index of each clip, and the reference frame of each identity (uint8).

    ``data.public_source`` empty: the embedded synthetic public identities (``data.public_identities`` of
    ``data.public_clips_per_identity`` clips each). Set: the speakers of that prepared folder, in its manifest's
    order, each with all of its clips (train, then held-out) and its shard's reference frame."""
    d = cfg.data
    if d.public_source:
        speakers = public_speakers(cfg)
        clips = [c for s in speakers for c in (*s.train, *s.heldout)]
        ident = np.repeat(np.arange(len(speakers)), [len(s.train) + len(s.heldout) for s in speakers])
        refs = np.stack([s.reference for s in speakers])
        return clips, ident, refs
    from pftray.data.partition import make_public_clips, public_reference

    clips = make_public_clips(num_identities=d.public_identities, clips_per_identity=d.public_clips_per_identity,
                              frames_per_clip=d.frames_per_clip, resolution=d.resolution, n_mels=d.n_mels,
                              audio_window=d.audio_window, seed=cfg.experiment.seed)
    ident = np.repeat(np.arange(d.public_identities), d.public_clips_per_identity)
    refs = np.stack([public_reference(i, resolution=d.resolution, seed=cfg.experiment.seed)
                     for i in range(d.public_identities)])
    return clips, ident, refs


def _manifest(folder: Path, key: str) -> dict[str, Any]:
    """The manifest of a folder made by ``pftray data prepare``; a one-line :class:`ConfigError` naming ``key``."""
    from pftray.config import ConfigError
    from pftray.data.ingest import MANIFEST_FORMAT

    if not folder.is_dir():
        raise ConfigError(f"{key}: {str(folder)!r}: no such folder (make it with `pftray data prepare`)")
    path = folder / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{key}: {str(folder)!r} has no manifest.json; it is not a folder made by "
                          "`pftray data prepare`") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{key}: {path}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT or not isinstance(
            manifest.get("clients"), list):
        raise ConfigError(f"{key}: {path} is not a `pftray data prepare` manifest")
    return manifest


def check_public_source(cfg: Config) -> dict[str, Any]:
    """Check ``data.public_source`` against the config and ``data.source``; return its manifest.

    Refused, each with a one-line :class:`ConfigError`: a folder that is missing or not prepared, one with no
    speaker, one prepared at another resolution (or with other audio features) than the model's, and one that is
    ``data.source`` itself or shares a speaker with it (the public identities of pre-training must be disjoint
    from the clients of the federated run). ``data.source`` is compared when it is a prepared folder already."""
    from pftray.config import ConfigError

    d = cfg.data
    folder = Path(d.public_source)
    manifest = _manifest(folder, "data.public_source")
    if not manifest["clients"]:
        raise ConfigError(f"data.public_source: {d.public_source!r} holds no speaker (every one was skipped when "
                          "it was prepared; see its manifest.json)")
    res = manifest.get("resolution")
    if res != d.resolution:
        raise ConfigError(f"data.public_source: {d.public_source!r} was prepared at {res} px but data.resolution "
                          f"is {d.resolution}; prepare it again with `pftray data prepare --resolution "
                          f"{d.resolution}` or set data.resolution: {res}")
    for key in ("n_mels", "audio_window"):
        if key in manifest and manifest[key] != getattr(d, key):
            raise ConfigError(f"data.public_source: {d.public_source!r} has audio features with {key} "
                              f"{manifest[key]} but data.{key} is {getattr(d, key)}; they must be equal")
    frames = manifest.get("frames_per_clip")
    window = max(cfg.train.window, 2)
    if isinstance(frames, int) and frames < window:
        raise ConfigError(f"data.public_source: {d.public_source!r} has clips of {frames} frames, shorter than "
                          f"the {window}-frame windows of pre-training (train.window)")
    if d.source != "synthetic":
        src = Path(d.source)
        if src.exists() and folder.resolve() == src.resolve():
            raise ConfigError(f"data.public_source: {d.public_source!r} is also data.source; the public speakers "
                              "of pre-training must be disjoint from the federated clients")
        if (src / "manifest.json").is_file():
            src_manifest = _manifest(src, "data.source")
            frames = {k: m.get("pose_frame", "absolute") for k, m in (("public", manifest), ("source", src_manifest))}
            if frames["public"] != frames["source"]:
                raise ConfigError(f"data.public_source: {d.public_source!r} measures head pose against the "
                                  f"{frames['public']} frame but data.source {d.source!r} against the "
                                  f"{frames['source']} one (prepared by different pftray versions); prepare both "
                                  "again with `pftray data prepare`")
            clients = {str(c.get("speaker")) for c in src_manifest["clients"]}
            shared = sorted(clients & {str(c.get("speaker")) for c in manifest["clients"]})
            if shared:
                raise ConfigError(f"data.public_source: speaker {shared[0]!r} is also a client of data.source "
                                  f"{d.source!r} ({len(shared)} shared); the public speakers of pre-training must "
                                  "be disjoint from the federated clients")
    return manifest


def check_backbone_speakers(cfg: Config) -> None:
    """Refuse a federated run whose clients include a speaker the backbone was pre-trained on.

    ``pftray pretrain`` records the speakers of ``data.public_source`` in the backbone file
    (``blob["pretrain"]["public_speakers"]``); when ``data.source`` is a prepared folder, a speaker in both is a
    one-line :class:`ConfigError` naming ``model.backbone``: its held-out clips would not be unseen. Backbones of
    the synthetic public identities, or without the record, are not checked (nothing to compare)."""
    from pftray.config import ConfigError

    d = cfg.data
    if not cfg.model.backbone or d.source == "synthetic" or not (Path(d.source) / "manifest.json").is_file():
        return
    try:
        blob = torch.load(cfg.model.backbone, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"model.backbone: {cfg.model.backbone!r}: no such file (make it with `pftray pretrain`)") \
            from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a corrupt file
        raise ConfigError(f"model.backbone: {cfg.model.backbone!r}: unreadable ({type(exc).__name__})") from None
    names = (blob.get("pretrain") or {}).get("public_speakers") if isinstance(blob, dict) else None
    if not names:
        return
    clients = {str(c.get("speaker")) for c in _manifest(Path(d.source), "data.source")["clients"]}
    shared = sorted(clients & {str(n) for n in names})
    if shared:
        raise ConfigError(f"model.backbone: {cfg.model.backbone!r} was pre-trained on speaker {shared[0]!r}, which "
                          f"is also a client of data.source {d.source!r} ({len(shared)} shared); pre-train on "
                          "speakers disjoint from the federated clients")


def public_speakers(cfg: Config) -> list:
    """The speakers of ``data.public_source`` (checked by :func:`check_public_source`), one
    :class:`pftray.data.types.ClientData` each, in the manifest's order."""
    from pftray.config import ConfigError
    from pftray.data.ingest import load_prepared_dataset

    check_public_source(cfg)
    speakers = load_prepared_dataset(Path(cfg.data.public_source))
    res = cfg.data.resolution
    for s in speakers:
        shapes = {c.frames.shape[1:] for c in (*s.train, *s.heldout)} | {s.reference.shape}
        if shapes != {(res, res, 3)}:
            raise ConfigError(f"data.public_source: speaker {s.identity!r} has frames of shape "
                              f"{sorted(shapes)[0]}, not ({res}, {res}, 3) (data.resolution)")
    lengths = {c.num_frames for s in speakers for c in (*s.train, *s.heldout)}
    if len(lengths) != 1:
        raise ConfigError(f"data.public_source: clips of {sorted(lengths)} frames; pre-training needs clips of "
                          "one length (one `pftray data prepare --frames-per-clip`)")
    return speakers


def _to_t(frames_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(frames_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1)


def _save_partial(path: Path, blob: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write_bytes(path, buf.getvalue())


def pretrain(cfg: Config, out: str | Path, *, progress: Callable[[str, int, int, float], None] | None = None,
             device: str = "cpu") -> dict[str, Any]:
    """Pre-train the backbone; write ``out`` (the file that ``model.backbone`` points at). Returns a summary."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    p = cfg.pretrain
    if cfg.data.public_source:
        check_public_source(cfg)  # before anything is built: a bad folder is a one-line error at once
    torch.manual_seed(cfg.experiment.seed)
    model = TalkingHeadModel(cfg.model, cfg.data).to(device)
    clips, ident, refs = public_data(cfg)
    names = [clips[int(np.flatnonzero(ident == i)[0])].identity for i in range(len(refs))]  # one per identity
    frames = np.concatenate([c.frames for c in clips])  # [N, H, W, 3] uint8
    frame_ident = np.repeat(ident, [c.num_frames for c in clips])  # identity of every frame
    frame_pose = torch.from_numpy(np.concatenate([c.pose for c in clips])).to(device)  # [N, 4]
    refs_t = _to_t(refs).to(device)  # [identities, 3, H, W]
    rng = np.random.default_rng((cfg.experiment.seed, 23))
    state: dict[str, Any] = {"phase": "warp" if model.warp is not None else "vae", "step": 0,
                             "times": {"warp": 0.0, "vae": 0.0, "unet": 0.0}, "losses": []}
    if cfg.data.public_source:  # so that a partial checkpoint resumes only on the same speakers
        state["public_speakers"] = names

    def optimizer(phase: str) -> torch.optim.Optimizer:
        if phase == "warp":
            return torch.optim.Adam(model.warp.parameters(), lr=p.lr_warp)
        if phase == "vae" and model.vae is not None:
            return torch.optim.Adam(model.vae.parameters(), lr=p.lr_vae)
        return _unet_optimizer(model, p.lr_unet)

    opt = optimizer(state["phase"])
    gen = torch.Generator().manual_seed(cfg.experiment.seed)  # noise and timesteps of the UNet stage
    if partial.exists():
        blob = torch.load(partial, map_location="cpu", weights_only=False)
        if blob["state"].get("public_speakers") != state.get("public_speakers"):
            from pftray.config import ConfigError

            was = ", ".join(blob["state"].get("public_speakers") or ["the synthetic public identities"])
            now = ", ".join(state.get("public_speakers") or ["the synthetic public identities"])
            raise ConfigError(f"data.public_source: {partial} was pre-trained on {was}, this config has {now}; "
                              "delete the partial checkpoint or pretrain to another --out")
        model.load_state_dict(blob["model"])
        state = blob["state"]
        rng.bit_generator.state = blob["rng"]
        torch.set_rng_state(blob["torch_rng"])
        gen.set_state(blob["gen_rng"])
        state["times"].setdefault("warp", 0.0)
        opt = optimizer(state["phase"])
        opt.load_state_dict(blob["optimizer"])

    def checkpoint() -> None:
        _save_partial(partial, {"model": model.state_dict(), "state": state, "rng": rng.bit_generator.state,
                                "torch_rng": torch.get_rng_state(), "gen_rng": gen.get_state(),
                                "optimizer": opt.state_dict()})

    def frame_stage(phase: str, steps: int, lr: float, batch: int,
                    loss_of: Callable[[torch.Tensor, np.ndarray], torch.Tensor]) -> None:
        """The optimiser loop of a stage over random public frames (warp, VAE): resumable, timed, reported."""
        t0 = time.perf_counter() - state["times"][phase]
        while state["step"] < steps:
            idx = rng.integers(0, len(frames), size=batch)
            x = _to_t(frames[idx]).to(device)
            _cosine_lr(opt, lr, state["step"], steps)
            loss = loss_of(x, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] += 1
            state["times"][phase] = time.perf_counter() - t0
            if progress:
                progress(phase, state["step"], steps, float(loss.detach()))
            if state["step"] % p.checkpoint_every == 0:
                checkpoint()

    def warp_loss(x: torch.Tensor, idx: np.ndarray) -> torch.Tensor:
        pred = model.warp(refs_t[frame_ident[idx]], frame_pose[idx])
        return (pred - x).abs().mean() + (pred - x).pow(2).mean()

    # ---- stage 0 (model.pose_warp): the pose warp of the reference, alone, on all public frames
    if state["phase"] == "warp":
        frame_stage("warp", p.warp_steps, p.lr_warp, 2 * p.batch_frames, warp_loss)
        state.update(phase="vae", step=0)
        opt = optimizer("vae")
        checkpoint()
    if model.warp is not None:  # trained above or restored from the partial checkpoint: frozen from here on
        model.warp.requires_grad_(False)

    # ---- stage 1: VAE on all public frames
    if state["phase"] == "vae" and model.vae is None:  # space_to_depth: nothing to learn before the UNet
        with torch.no_grad():
            idx = rng.integers(0, len(frames), size=min(512, len(frames)))
            model.fit_latent_stats(_to_t(frames[idx]).to(device), refs_t[frame_ident[idx]], frame_pose[idx])
        state.update(phase="unet", step=0)
    if state["phase"] == "vae":
        model.vae.train()
        frame_stage("vae", p.vae_steps, p.lr_vae, p.batch_frames,
                    lambda x, idx: vae_loss(model, x, refs_t[frame_ident[idx]], p.kl_weight, frame_pose[idx],
                                                   p.vae_l1)[0])
        model.vae.eval()
        with torch.no_grad():
            idx = rng.integers(0, len(frames), size=min(512, len(frames)))
            model.fit_latent_stats(_to_t(frames[idx]).to(device), refs_t[frame_ident[idx]], frame_pose[idx])
        state.update(phase="unet", step=0)
        opt = _unet_optimizer(model, p.lr_unet)
        checkpoint()

    # ---- stage 2: UNet + condition encoder on cached latents (the VAE is frozen)
    if model.vae is not None:
        model.vae.requires_grad_(False)
    with torch.no_grad():
        lat = torch.cat([model.encode(_to_t(frames[i: i + 256]).to(device), refs_t[frame_ident[i: i + 256]],
                                      frame_pose[i: i + 256]) for i in range(0, len(frames), 256)])
        lat = lat.reshape(len(clips), -1, *lat.shape[1:])  # [clips, T, C, h, w]
    audio = torch.from_numpy(np.stack([c.audio_feats for c in clips])).to(device)
    pose = torch.from_numpy(np.stack([c.pose for c in clips])).to(device)
    window = max(cfg.train.window, 2)
    model.unet.train()
    t0 = time.perf_counter() - state["times"]["unet"]
    while state["step"] < p.unet_steps:
        ci = rng.integers(0, len(clips), size=p.batch_clips)
        starts = rng.integers(0, lat.shape[1] - window + 1, size=p.batch_clips)
        win = torch.as_tensor(starts)[:, None] + torch.arange(window)[None]
        ci_t = torch.as_tensor(ci)[:, None]
        batch = {"audio_feats": audio[ci_t, win], "pose": pose[ci_t, win]}
        x0 = lat[ci_t, win].flatten(0, 1)
        _cosine_lr(opt, p.lr_unet, state["step"], p.unet_steps)
        ref = model.reference_features(refs_t[torch.as_tensor(ident[ci])])  # ref_proj trains with the UNet
        out_ = diffusion_losses(model, batch, lambda_tdc=cfg.train.lambda_tdc, tdc_space=cfg.train.tdc_space,
                                generator=gen, latents=(x0, ref), audio_dropout=cfg.model.audio_dropout)
        opt.zero_grad(set_to_none=True)
        out_["loss"].backward()
        torch.nn.utils.clip_grad_norm_([q for g in opt.param_groups for q in g["params"]], 1.0)
        opt.step()
        state["step"] += 1
        state["times"]["unet"] = time.perf_counter() - t0
        if state["step"] % 50 == 0:
            state["losses"].append((state["step"], float(out_["diffusion"].detach())))
        if progress:
            progress("unet", state["step"], p.unet_steps, float(out_["loss"].detach()))
        if state["step"] % p.checkpoint_every == 0:
            checkpoint()
    model.eval()
    blob = model.backbone_state()
    blob["pretrain"] = {"warp_steps": p.warp_steps if model.warp is not None else 0, "vae_steps": p.vae_steps,
                        "unet_steps": p.unet_steps, "times": state["times"],
                        "public_identities": cfg.data.public_identities, "seed": cfg.experiment.seed}
    if cfg.data.public_source:  # the speakers it learned from (the synthetic default keeps the blob as it was)
        blob["pretrain"].update(public_identities=len(refs), public_source=cfg.data.public_source,
                                public_speakers=names)
    buf = io.BytesIO()
    torch.save(blob, buf)
    atomic_write_bytes(out, buf.getvalue())
    partial.unlink(missing_ok=True)
    return {"out": str(out), "times": state["times"], "losses": state["losses"], "public_speakers": names,
            "public_clips": len(clips), "public_frames": len(frames)}


def _cosine_lr(opt: torch.optim.Optimizer, base: float, step: int, total: int) -> None:
    """Closed-form cosine decay (a function of the step alone, so a resumed run uses the same rates)."""
    lr = base * 0.5 * (1 + math.cos(math.pi * step / max(total, 1)))
    for g in opt.param_groups:
        g["lr"] = lr


def _unet_optimizer(model: TalkingHeadModel, lr: float) -> torch.optim.Optimizer:
    params = [p for n, p in model.named_parameters()
              if not n.startswith(("vae.", "warp.")) and "lora_" not in n]
    for q in params:
        q.requires_grad_(True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

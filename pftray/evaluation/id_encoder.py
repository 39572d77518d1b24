"""The synthetic-benchmark identity encoder behind ``id_sim_synth``, trained on the public identities.

The encoder (:class:`pftray.metrics.identity.SynthIdentityEncoder`) is trained on the *public* synthetic
identities (``pub-<i>``, :func:`pftray.data.make_public_clips`), which are disjoint from every federated
client, so computing ``id_sim_synth`` on clients never uses client data for training. It is a synthetic-data
metric under its own name, not a face-recognition ``id_sim``.

Check on unseen clips: for each public identity one extra clip (not used for training) is embedded; the
report gives the mean cosine of each clip's frames to its own identity's prototype (``same``) and to the other
identities' prototypes (``other``), and the nearest-prototype accuracy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def _by_identity(clips) -> dict[str, list[np.ndarray]]:
    out: dict[str, list[np.ndarray]] = {}
    for c in clips:
        out.setdefault(c.identity, []).append(c.frames)
    return out


def identity_separation(
    encoder, clips_by_identity: dict[str, list[np.ndarray]], probes_by_identity: dict[str, list[np.ndarray]]
) -> dict[str, float]:
    """``same``/``other`` mean cosine and nearest-prototype ``accuracy`` of probe frames (see module doc)."""
    names = sorted(clips_by_identity)
    if len(names) < 2 or set(probes_by_identity) - set(names):
        raise ValueError("need >= 2 identities and probes only of known identities")

    def emb(frames: list[np.ndarray]) -> torch.Tensor:
        x = torch.from_numpy(np.concatenate(frames)).permute(0, 3, 1, 2).float() / 255.0
        return F.normalize(encoder.embed(x).double(), dim=1)

    protos = torch.stack([F.normalize(emb(clips_by_identity[n]).mean(0), dim=0) for n in names])
    same, other, hits, total = [], [], 0, 0
    for n, frames in probes_by_identity.items():
        cos = emb(frames) @ protos.T  # [frames, identities]
        k = names.index(n)
        same.append(cos[:, k])
        other.append(torch.cat([cos[:, :k], cos[:, k + 1 :]], dim=1).flatten())
        hits += int((cos.argmax(dim=1) == k).sum())
        total += cos.shape[0]
    return {
        "same": float(torch.cat(same).mean()),
        "other": float(torch.cat(other).mean()),
        "accuracy": hits / total,
    }


def train_public_id_encoder(cfg, *, steps: int = 300, seed: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Train a SynthIdentityEncoder on ``data.public_identities`` x ``data.public_clips_per_identity`` public
    clips of ``cfg`` (resolution, frames per clip, seed) and check it on one unseen clip per identity."""
    from pftray.data import make_public_clips
    from pftray.metrics.identity import train_synth_identity_encoder

    d = cfg.data
    if d.public_identities < 2:
        raise ValueError(
            f"data.public_identities must be >= 2 to learn identities, got {d.public_identities}"
        )
    seed = cfg.experiment.seed if seed is None else seed
    # clip j of identity i is seeded by (seed, i, j): asking for one more clip per identity gives the training
    # clips unchanged plus one unseen probe clip each
    clips = make_public_clips(
        num_identities=d.public_identities,
        clips_per_identity=d.public_clips_per_identity + 1,
        frames_per_clip=d.frames_per_clip,
        resolution=d.resolution,
        n_mels=d.n_mels,
        audio_window=d.audio_window,
        seed=cfg.experiment.seed,
    )
    by_id = _by_identity(clips)
    train = {k: v[:-1] for k, v in by_id.items()}
    probe = {k: v[-1:] for k, v in by_id.items()}
    encoder = train_synth_identity_encoder(train, steps=steps, seed=seed, input_size=min(64, d.resolution))
    check = identity_separation(encoder, train, probe)
    return encoder, {
        "identities": len(train),
        "train_clips": sum(map(len, train.values())),
        "steps": steps,
        "seed": seed,
        "resolution": d.resolution,
        "heldout": check,
    }

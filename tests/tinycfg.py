"""The one tiny experiment config of the tests (trains in seconds on CPU), and its smaller sweep-trial variant."""

from __future__ import annotations

TINY = {
    "experiment": {"name": "tiny", "seed": 0},
    "data": {"resolution": 32, "num_clients": 4, "clips_per_client": 2, "heldout_clips": 1, "frames_per_clip": 8,
             "n_mels": 16, "audio_window": 8, "public_identities": 4, "public_clips_per_identity": 1},
    "model": {"vae_channels": [16, 32], "unet_channels": [32, 32], "attention_head_dim": 8,
              "cross_attention_dim": 32},
    "lora": {"shared_rank": 2, "identity_rank": 2},
    "train": {"local_steps": 2, "batch_clips": 1, "window": 2},
    "fed": {"strategy": "isfa", "rounds": 2, "clients_per_round": 2, "eval_every": 0, "eval_clients": 1},
    "eval": {"clips": 1, "frames": 4},
    "runtime": {"resident_clients": 2},
}


def tiny_dict(**overrides) -> dict:
    """A deep copy of :data:`TINY` as a plain mapping, with dotted-key overrides set, e.g. ``{"fed.rounds": 3}``."""
    import copy

    out = copy.deepcopy(TINY)
    for key, value in overrides.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = copy.deepcopy(value)
    return out


#: :data:`TINY` cut down for the sweep tests, whose trials run under Ray Tune (about 5 s per round on one core):
#: 2 clients with one clip of 4 frames, one round of one step, Poisson sampling at rate 1 (what client-level DP is
#: accounted for; no empty rounds), clipping on (so a sampled noise multiplier means client-level DP)
TINY_TRIAL = tiny_dict(**{
    "data.num_clients": 2, "data.clips_per_client": 1, "data.frames_per_clip": 4, "data.public_identities": 2,
    "data.unreliable_fraction": 0.0, "train.local_steps": 1, "fed.rounds": 1, "fed.clients_per_round": 1,
    "fed.sample_rate": 1.0, "fed.mu": 0.01, "privacy.clipping_norm": 1.0, "runtime.num_cpus": 2,
    "runtime.round_timeout_s": 240.0, "eval.frames": 2, "eval.sample_steps": 1,
})


def tiny_config(**overrides):
    """The tiny config with dotted-key overrides, e.g. ``tiny_config(**{"fed.rounds": 3})``."""
    from pftray.config import config_from_dict

    cfg = config_from_dict(TINY)
    return cfg.replace(**overrides) if overrides else cfg

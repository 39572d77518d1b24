"""The tiny experiment config the tests train in seconds on CPU."""

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


def tiny_config(**overrides):
    """The tiny config with dotted-key overrides, e.g. ``tiny_config(**{"fed.rounds": 3})``."""
    from pftray.config import config_from_dict

    cfg = config_from_dict(TINY)
    return cfg.replace(**overrides) if overrides else cfg

"""ISFA's on-device identity scalar: the backbone encoder on synthetic faces, dlib's face descriptor on real ones."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pftray.errors import RuntimeFailure
from pftray.fed.client import ClientTrainer, identity_signal
from pftray.fed.host import ClientProvider
from pftray.metrics.base import Missing
from tests.tinycfg import tiny_config


def test_the_signal_is_chosen_by_the_data_and_the_installed_embedder(tmp_path, monkeypatch):
    from pftray import faces

    assert identity_signal(tiny_config()) == "backbone"  # cartoon faces: never dlib
    real = tiny_config(**{"data.source": str(tmp_path)})
    monkeypatch.setattr(faces, "available", lambda: None)
    assert identity_signal(real) == "dlib"
    monkeypatch.setattr(faces, "available", lambda: "dlib is not installed")
    assert identity_signal(real) == "backbone"


def test_reliability_uses_dlib_on_the_predicted_frames_against_the_reference(monkeypatch):
    import pftray.metrics.face as face

    cfg = tiny_config()
    trainer = ClientTrainer(cfg)
    client = ClientProvider(cfg).get(1)
    rng = lambda: np.random.default_rng(3)  # noqa: E731
    id_backbone, stab_backbone = trainer.reliability(client, rng())
    seen = {}

    def fake(pred01, ref01, *, max_frames=16):
        seen.update(pred=pred01, ref=ref01, max_frames=max_frames)
        return 0.123

    monkeypatch.setattr(face, "isfa_identity_consistency", fake)
    trainer.identity_signal = "dlib"
    id_dlib, stab_dlib = trainer.reliability(client, rng())
    assert id_dlib == 0.123 and id_backbone != 0.123
    assert stab_dlib == pytest.approx(stab_backbone)  # the temporal scalar does not change
    b = min(cfg.train.batch_clips, len(client.train)) * min(cfg.train.window, client.train[0].num_frames)
    assert seen["pred"].shape == (b, 3, cfg.data.resolution, cfg.data.resolution)
    assert 0 <= float(seen["pred"].min()) and float(seen["pred"].max()) <= 1
    ref = torch.from_numpy(client.reference).permute(2, 0, 1)[None].float() / 255
    torch.testing.assert_close(seen["ref"], ref, atol=1 / 255, rtol=0)
    monkeypatch.setattr(face, "isfa_identity_consistency", lambda *a, **k: Missing("dlib weights absent"))
    with pytest.raises(RuntimeFailure, match="ISFA identity scalar.*dlib weights absent"):
        trainer.reliability(client, rng())

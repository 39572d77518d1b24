import math

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision

from pftray.metrics import (
    ALEXNET_WEIGHTS_NAME,
    MetricSuite,
    Missing,
    flatten_for_table,
    psnr,
    region_psnr,
    status_of,
    temporal_jitter,
)


class _ColourEmbedder:
    """A toy IdentityEmbedder: the mean colour of each frame."""

    def embed(self, frames: torch.Tensor) -> torch.Tensor:
        return frames.mean(dim=(2, 3))


@pytest.fixture()
def offline_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def _clip(seed=0, t=4, size=24):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(t, 3, size, size, generator=g) * 0.8 + 0.1
    pred = (target + 0.05 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    return pred, target


def test_clip_metrics_all_keys_offline(offline_home):
    pred, target = _clip()
    suite = MetricSuite(face_embedder=_ColourEmbedder(), synth_id_encoder=Missing("encoder not trained"))
    out = suite.clip_metrics(
        pred,
        target,
        reference=target,
        mouth_box=torch.tensor([10, 22, 6, 18]),
        pred_openness=np.array([0.1, 0.5, 0.3, 0.8]),
        gt_openness=np.array([0.2, 0.6, 0.3, 0.9]),
    )
    assert set(out) == {
        "psnr", "ssim", "mouth_psnr", "mouth_ssim", "lpips", "jitter", "temp_stab", "flicker_ratio",
        "warp_error", "lip_sync", "id_sim_synth", "id_sim",
    }  # fmt: skip
    assert out["psnr"] == pytest.approx(psnr(pred, target))
    assert out["mouth_psnr"] == pytest.approx(region_psnr(pred, target, torch.tensor([10, 22, 6, 18])))
    assert out["jitter"] == pytest.approx(temporal_jitter(pred, target))
    assert out["temp_stab"] == pytest.approx(1 / (1 + out["jitter"]))
    assert isinstance(out["lpips"], Missing) and "alexnet" in out["lpips"].reason.lower()
    assert out["id_sim_synth"] == Missing("encoder not trained")
    assert 0.9 < out["id_sim"] <= 1.0 + 1e-9
    assert out["lip_sync"] > 0.9


def test_clip_metrics_minimal_and_with_lpips(offline_home):
    ckpt = offline_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), ckpt / ALEXNET_WEIGHTS_NAME)
    pred, target = _clip(t=1, size=32)
    out = MetricSuite().clip_metrics(pred, target, reference=target)
    assert set(out) == {"psnr", "ssim", "lpips"}  # one frame: no temporal metrics; no encoders: no id_sim
    assert isinstance(out["lpips"], float) and out["lpips"] > 0
    with pytest.raises(ValueError, match="together"):
        MetricSuite().clip_metrics(pred, target, pred_openness=np.ones(1))


def test_set_metrics_fid_missing_offline(offline_home):
    pred, target = _clip()
    result = MetricSuite().set_metrics(pred, target)
    assert set(result) == {"fid"} and isinstance(result["fid"], Missing)


def test_status_of_and_flatten_for_table_to_parquet(tmp_path):
    assert status_of(1) == (1.0, None)
    assert status_of(np.float32(0.5)) == (0.5, None)
    number, reason = status_of(Missing("no weights"))
    assert math.isnan(number) and reason == "no weights"
    with pytest.raises(ValueError, match="number or Missing"):
        status_of("0.3")
    rows = [
        flatten_for_table({"psnr": 30.0, "lpips": Missing("alexnet weights not found at /x")}),
        flatten_for_table({"psnr": 31.0, "lpips": 0.12}),
    ]
    assert rows[0] == {
        "psnr": 30.0,
        "lpips": rows[0]["lpips"],
        "lpips_missing": "alexnet weights not found at /x",
    }
    assert math.isnan(rows[0]["lpips"]) and "lpips_missing" not in rows[1]
    path = tmp_path / "metrics.parquet"
    pd.DataFrame(rows).to_parquet(path)
    back = pd.read_parquet(path)
    assert back["psnr"].tolist() == [30.0, 31.0]
    assert math.isnan(back["lpips"][0]) and back["lpips"][1] == pytest.approx(0.12)
    assert back["lpips_missing"][0] == "alexnet weights not found at /x" and pd.isna(back["lpips_missing"][1])
    with pytest.raises(ValueError, match="clashes"):
        flatten_for_table({"lpips_missing": 1.0})

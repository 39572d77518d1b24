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


# ------------------------------------------------------------------------------ face metrics (real data)


def _astronaut_clip(t=4):
    """A real face clip (scikit-image's astronaut, cropped 1.8 x her HOG box) and the same face 2 px right."""
    from skimage import data

    from pftray import faces

    img = data.astronaut()
    r = sorted(faces.hog_detector()(img, 1), key=lambda b: b.top())[0]
    side = int(round(1.8 * (r.right() - r.left())))
    cx, cy = (r.left() + r.right()) // 2, (r.top() + r.bottom()) // 2

    def crop(dx, dy):
        y0, x0 = cy - side // 2 + dy, cx - side // 2 + dx
        return img[y0 : y0 + side, x0 : x0 + side]

    def stack(frames):
        return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255.0

    target = stack([crop(0, i % 2) for i in range(t)])
    pred = stack([crop(-2, i % 2) for i in range(t)])
    return pred, target


@pytest.mark.skipif(
    __import__("pftray.faces").faces.available() is not None, reason="dlib face models not installed"
)
def test_suite_emits_face_metrics_only_when_enabled(offline_home):
    from pftray.metrics import FACE_METRIC_NAMES

    pred, target = _astronaut_clip()
    off = MetricSuite().clip_metrics(pred, target)
    on_suite = MetricSuite(face_metrics=True)
    on = on_suite.clip_metrics(pred, target)
    assert set(on) - set(off) == set(FACE_METRIC_NAMES) == set(on_suite.face_metric_names)
    assert not set(off) & set(FACE_METRIC_NAMES) and MetricSuite().face_metric_names == ()
    assert on["csim"] > 0.95  # the same person, 2 px apart
    assert 0.01 < on["lmd_face"] < 0.08 and 0.01 < on["lmd_mouth"] < 0.08  # ~2 px / 60 px eye distance
    assert on["psnr"] == pytest.approx(off["psnr"])
    row = flatten_for_table(on)
    assert all(isinstance(row[m], float) and f"{m}_missing" not in row for m in ("csim", "lmd_face"))


def test_suite_face_metrics_missing_without_dlib(offline_home, monkeypatch):
    from pftray import faces

    monkeypatch.setattr(faces, "available", lambda: "dlib is not installed (pip install dlib-bin): simulated")
    pred, target = _clip(t=3, size=32)
    out = MetricSuite(face_metrics=True).clip_metrics(pred, target)
    row = flatten_for_table(out)
    for m in ("csim", "lmd_face", "lmd_mouth", "lip_sync_lmk"):
        assert isinstance(out[m], Missing) and math.isnan(row[m])
        assert "dlib is not installed" in row[f"{m}_missing"]


def test_score_samples_writes_face_columns_when_the_suite_has_them(offline_home, monkeypatch):
    from types import SimpleNamespace

    from pftray import faces
    from pftray.evaluation import run_eval

    monkeypatch.setattr(faces, "available", lambda: "dlib is not installed (pip install dlib-bin): simulated")
    pred, target = _clip(t=3, size=32)
    clip = SimpleNamespace(
        clip_id="c0", mouth_box=np.tile([18, 28, 8, 24], (3, 1)), mouth=np.array([0.1, 0.5, 0.2]), extras={}
    )
    sample = SimpleNamespace(client_id=0, clip=clip, gt01=target, outputs={"personalised": pred, "copy": target})
    on = run_eval.score_samples([sample], MetricSuite(face_metrics=True), server_round=1)
    off = run_eval.score_samples([sample], MetricSuite(), server_round=1)
    assert len(on) == len(off) == 2
    for a, b in zip(on, off):
        assert set(a) - set(b) == {f"{m}{s}" for m in ("csim", "lmd_face", "lmd_mouth", "lip_sync_lmk")
                                   for s in ("", "_missing")}  # fmt: skip
        assert "simulated" in a["lmd_mouth_missing"]


def test_face_metric_switch_and_directions():
    import importlib

    from pftray.evaluation.report import SPREAD_METRICS, direction_note, metric_title
    from pftray.metrics import FACE_METRIC_NAMES, METRIC_BETTER, FaceMetrics, face_metrics_for_source

    compare = importlib.import_module("pftray.evaluation.compare")  # the package exports a function of that name
    assert face_metrics_for_source("synthetic") is False
    assert face_metrics_for_source("data/prepared-hdtf") is True
    fm = FaceMetrics(max_embed_frames=1)
    assert MetricSuite(face_metrics=fm).face is fm and MetricSuite(face_metrics=False).face is None
    with pytest.raises(ValueError, match="face_metrics"):
        MetricSuite(face_metrics="auto")
    with pytest.raises(ValueError, match=">= 1"):
        FaceMetrics(max_embed_frames=0)
    # every column the suite can emit has a direction; the landmark distances are lower-is-better
    pred, target = _clip()
    names = set(
        MetricSuite(face_embedder=_ColourEmbedder(), synth_id_encoder=_ColourEmbedder()).clip_metrics(
            pred, target, reference=target, mouth_box=torch.tensor([10, 22, 6, 18]),
            pred_openness=np.arange(4.0), gt_openness=np.arange(4.0),
        )
    ) | set(FACE_METRIC_NAMES) | {"fid"}  # fmt: skip
    assert names <= set(METRIC_BETTER)
    assert {m: METRIC_BETTER[m] for m in FACE_METRIC_NAMES} == {
        "csim": "higher", "lmd_face": "lower", "lmd_mouth": "lower", "lip_sync_lmk": "higher",
    }  # fmt: skip
    assert set(compare.FACE_METRICS) == set(FACE_METRIC_NAMES) and set(FACE_METRIC_NAMES) <= set(SPREAD_METRICS)
    # compare: which method a mean difference favours depends on the direction
    assert compare.favoured("lmd_mouth", -0.02, "isfa", "fedavg") == "isfa"
    assert compare.favoured("lmd_mouth", 0.02, "isfa", "fedavg") == "fedavg"
    assert compare.favoured("csim", 0.02, "isfa", "fedavg") == "isfa"
    assert compare.favoured("flicker_ratio", 0.5, "isfa", "fedavg") == ""
    assert compare.favoured("psnr", float("nan"), "isfa", "fedavg") == ""
    units = pd.DataFrame(
        {
            "method": ["isfa"] * 3 + ["fedavg"] * 3,
            "seed": [0] * 6,
            "client_id": [0, 1, 2] * 2,
            "csim": [0.95, 0.96, 0.97, 0.90, 0.91, 0.93],
            "lmd_mouth": [0.03, 0.04, 0.02, 0.05, 0.06, 0.05],
        }
    )
    table = compare.method_table(units, ["csim", "lmd_mouth"])
    tests = compare.paired_table(units, ["csim", "lmd_mouth"])
    assert table.set_index("metric")["better"].to_dict() == {"csim": "higher", "lmd_mouth": "lower"}
    assert tests.set_index("metric")["favours"].to_dict() == {"csim": "isfa", "lmd_mouth": "isfa"}
    md = compare.markdown_tables(table, tests)
    assert "higher is better: csim; lower is better: lmd_mouth." in md
    assert "| lmd_mouth | isfa | fedavg | 3 | -0.02333 | isfa |" in md
    # report and run summary
    assert metric_title("lmd_face") == "lmd_face (lower is better)" and metric_title("csim") == "csim"
    assert direction_note(["csim", "lmd_face", "lmd_mouth", "flicker_ratio"]) == (
        "metric directions: higher is better, except lower is better for lmd_face, lmd_mouth; flicker_ratio is best at 1"
    )
    from pftray.summary import SUMMARY_METRICS, direction_line

    assert set(FACE_METRIC_NAMES) <= set(SUMMARY_METRICS)
    assert direction_line(["psnr", "jitter", "lmd_mouth"]) == "higher is better, except lower is better for jitter, lmd_mouth"

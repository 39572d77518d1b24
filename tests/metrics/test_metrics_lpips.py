from pathlib import Path

import lpips
import pytest
import torch
import torchvision

from pftray.metrics import ALEXNET_WEIGHTS_NAME, LPIPSMetric, Missing


@pytest.fixture()
def no_downloads(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)


@pytest.fixture()
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


def _write_random_alexnet(torch_home: Path, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = torchvision.models.alexnet(weights=None).state_dict()
    ckpt = torch_home / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(state, ckpt / ALEXNET_WEIGHTS_NAME)
    return state


def _reference_lpips(state: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """LPIPS v0.1 written out from the paper with torchvision's AlexNet and the package's linear weights."""
    alex = torchvision.models.alexnet(weights=None)
    alex.load_state_dict(state)
    alex.eval()
    lin = torch.load(
        Path(lpips.__file__).parent / "weights/v0.1/alex.pth", map_location="cpu", weights_only=True
    )
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def feats(z):
        h = ((2 * z - 1) - shift) / scale
        out = []
        for i, layer in enumerate(alex.features[:12]):  # the final max pool is not used
            h = layer(h)
            if i in (1, 4, 7, 9, 11):  # relu1..relu5
                out.append(h / (h.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    with torch.no_grad():
        total = 0
        for k, (a, b) in enumerate(zip(feats(x), feats(y))):
            w = lin[f"lin{k}.model.1.weight"]  # [1, C, 1, 1]
            total = total + ((a - b) ** 2 * w).sum(dim=1).mean(dim=(1, 2))
    return total


def test_missing_without_weights(torch_home, no_downloads):
    metric = LPIPSMetric()
    value = metric(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))
    assert isinstance(value, Missing)
    assert "alexnet weights not found" in value.reason.lower()
    assert str(torch_home / "hub" / "checkpoints" / ALEXNET_WEIGHTS_NAME) in value.reason
    assert isinstance(
        LPIPSMetric(torch_home / "nowhere.pth").per_frame(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 8, 8)),
        Missing,
    )


def test_loads_weights_from_torch_home_and_matches_reference(torch_home, no_downloads):
    state = _write_random_alexnet(torch_home)
    metric = LPIPSMetric()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(3, 3, 48, 48, generator=g)
    y = torch.rand(3, 3, 48, 48, generator=g)
    per_frame = metric.per_frame(x, y)
    assert isinstance(per_frame, torch.Tensor) and per_frame.shape == (3,)
    assert torch.allclose(per_frame, _reference_lpips(state, x, y), rtol=1e-4, atol=1e-7)
    value = metric(x, y)
    assert isinstance(value, float) and value > 0
    assert value == pytest.approx(float(per_frame.mean()))
    assert metric(x, x) == 0.0
    with pytest.raises(ValueError, match="at least 31x31"):
        metric(x[..., :30, :30], y[..., :30, :30])
    # the trunk really is the file's: a metric on another AlexNet file gives another number
    other = torch_home / "other.pth"
    torch.manual_seed(99)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), other)
    assert LPIPSMetric(other)(x, y) != pytest.approx(value, rel=1e-3)


def test_rejects_wrong_file(tmp_path, no_downloads):
    bad = tmp_path / "bad.pth"
    torch.save({"not": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="features.0.weight"):
        LPIPSMetric(bad)(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))

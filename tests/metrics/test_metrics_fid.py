import numpy as np
import pytest
import scipy.linalg
import torch
import torchvision
from hypothesis import given, settings
from hypothesis import strategies as st

from pftray.metrics import (
    FID_WEIGHTS_NAME,
    FIDInceptionV3,
    FIDMetric,
    Missing,
    frechet_distance,
    frechet_distance_features,
)


def _scipy_frechet(mu1, s1, mu2, s2):
    """Independent reference: the textbook formula with scipy's general (non-symmetric) sqrtm."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def _random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)  # 1 + 6.25 + 4 + 1 + 0
    assert expected == pytest.approx(12.25)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), d=st.integers(1, 8))
def test_matches_scipy_reference_on_full_covariances(seed, d):
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    ours = frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(_scipy_frechet(mu1, s1, mu2, s2), rel=1e-8, abs=1e-9)
    assert ours == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9, abs=1e-12)  # symmetric
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_singular_covariances_are_stable():
    # rank-1 covariances: scipy's sqrtm of the singular product is ill-conditioned, the symmetric form is exact
    u = np.array([[1.0], [2.0], [0.0]])
    s = u @ u.T  # eigenvalue 5 along u
    assert frechet_distance(np.zeros(3), s, np.zeros(3), 4 * s) == pytest.approx(
        (np.sqrt(5) - np.sqrt(20)) ** 2
    )
    assert frechet_distance(np.zeros(3), s, np.zeros(3), s) == pytest.approx(0.0, abs=1e-12)


def test_features_estimate_known_gaussians():
    rng = np.random.default_rng(0)
    n = 200_000
    a, b = np.array([1.0, 4.0]), np.array([4.0, 1.0])
    mu1, mu2 = np.array([0.0, 0.0]), np.array([1.0, 0.0])
    f1 = mu1 + rng.normal(size=(n, 2)) * np.sqrt(a)
    f2 = mu2 + rng.normal(size=(n, 2)) * np.sqrt(b)
    expected = 1.0 + 2 * (2 - 1) ** 2  # ||mu1-mu2||^2 + sum (sqrt a - sqrt b)^2 = 3
    assert frechet_distance_features(f1, f2) == pytest.approx(expected, abs=0.05)


@pytest.mark.parametrize("n1,n2", [(3, 4), (5, 40), (40, 60)])
def test_low_rank_path_equals_covariance_path(n1, n2):
    rng = np.random.default_rng(n1 * 100 + n2)
    f1 = rng.normal(size=(n1, 12)) @ rng.normal(size=(12, 12))
    f2 = 0.5 + rng.normal(size=(n2, 12))
    mu1, s1 = np.mean(f1, axis=0), np.cov(f1, rowvar=False)
    mu2, s2 = np.mean(f2, axis=0), np.cov(f2, rowvar=False)
    # rank-deficient covariances: the eigen path picks up sqrt(round-off) ~ 1e-7 per null direction
    assert frechet_distance_features(f1, f2) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-7)


def test_input_validation():
    with pytest.raises(ValueError, match="sigma1 and sigma2"):
        frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance_features(np.zeros((1, 4)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan]), np.eye(1), np.zeros(1), np.eye(1))


def test_fid_metric_missing_without_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    value = FIDMetric()(torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16))
    assert isinstance(value, Missing)
    assert str(tmp_path / "hub" / "checkpoints" / FID_WEIGHTS_NAME) in value.reason


def test_fid_metric_loads_weights_from_torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    torch.manual_seed(0)
    # torchvision's own random init (truncated normal, std 0.1) keeps activations away from denormal floats,
    # which would make CPU inference ~50x slower; the keys are those of pytorch-fid's file
    state = torchvision.models.inception_v3(
        weights=None, aux_logits=False, num_classes=1008, init_weights=True
    ).state_dict()
    assert state.keys() == FIDInceptionV3().inception.state_dict().keys()
    assert "fc.weight" in state and state["fc.weight"].shape == (1008, 2048)  # pytorch-fid key layout
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(state, ckpt / FID_WEIGHTS_NAME)

    metric = FIDMetric(batch_size=2)
    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 16, 16, generator=g)
    b = torch.rand(2, 3, 16, 16, generator=g) * 0.2
    fa, fb = metric.features(a), metric.features(b)
    assert fa.shape == (2, 2048) and np.isfinite(fa).all() and not np.allclose(fa, fb)
    loaded = metric._model.inception.state_dict()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # FID(x, x) = 0 up to float64 cancellation: a random-init Inception gives features of ~1e10, so Tr(S) ~ 1e24
    # and the exact 0 comes out as +-1e6 on some CPUs (2**21 seen on an AMD EPYC); a wrong formula is off by ~Tr(S)
    x = np.concatenate([fa, fa]).astype(np.float64)
    trace = 2 * ((x - x.mean(axis=0)) ** 2).sum() / (len(x) - 1)
    assert frechet_distance_features(x, x) <= 1e-12 * trace
    value = metric(a, b)
    assert isinstance(value, float) and value > 0
    assert value == pytest.approx(frechet_distance_features(fa, fb), rel=1e-6)
    with pytest.raises(ValueError, match="N >= 2"):
        metric(a[:1], b)


def test_fid_metric_rejects_wrong_file(tmp_path):
    bad = tmp_path / "w.pth"
    torch.save({"fc.weight": torch.zeros(3)}, bad)
    with pytest.raises(ValueError, match="not a pytorch-fid"):
        FIDMetric(bad).features(torch.rand(2, 3, 16, 16))

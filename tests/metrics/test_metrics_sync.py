import numpy as np
import pytest
import torch

from pftray.metrics import (
    Missing,
    OffsetCorrelation,
    SyncNetModel,
    SyncNetScorer,
    SyncScores,
    best_offset_correlation,
    lse_from_embeddings,
    mfcc,
    mouth_sync_correlation,
    offset_correlations,
)


def _openness(n: int = 80, seed: int = 0) -> np.ndarray:
    """A speech-like mouth-openness series: smoothed random syllables in [0, 1]."""
    rng = np.random.default_rng(seed)
    raw = rng.uniform(0, 1, n)
    return np.convolve(raw, np.ones(3) / 3, mode="same")


def test_correlation_high_for_truth_and_noisy_copy_low_for_shift():
    gt = _openness()
    rng = np.random.default_rng(1)
    assert mouth_sync_correlation(gt, gt) == pytest.approx(1.0)
    assert mouth_sync_correlation(gt + rng.normal(0, 0.05, gt.size), gt) > 0.9
    assert abs(mouth_sync_correlation(np.roll(gt, 6), gt)) < 0.3
    assert mouth_sync_correlation(2 * gt + 1, gt) == pytest.approx(1.0)  # scale/offset invariant
    assert mouth_sync_correlation(1 - gt, gt) == pytest.approx(-1.0)


def test_correlation_hand_value_and_nan_safety():
    # r([1,2,3,4], [1,3,2,4]) = 0.8 by hand: deviations (-1.5,-.5,.5,1.5), (-1.5,.5,-.5,1.5): 4 / 5
    assert mouth_sync_correlation(np.array([1.0, 2, 3, 4]), np.array([1.0, 3, 2, 4])) == pytest.approx(0.8)
    # NaN frames are dropped pairwise
    a = np.array([1.0, 2, np.nan, 3, 4])
    b = np.array([1.0, 3, 5.0, 2, 4])
    assert mouth_sync_correlation(a, b) == pytest.approx(0.8)
    assert mouth_sync_correlation(torch.tensor(a), torch.tensor(b)) == pytest.approx(0.8)
    const = mouth_sync_correlation(np.ones(10), _openness(10))
    assert isinstance(const, Missing) and "constant" in const.reason
    short = mouth_sync_correlation(np.array([1.0, np.nan, 2.0]), np.array([1.0, 2.0, np.nan]))
    assert isinstance(short, Missing)
    with pytest.raises(ValueError, match="lengths differ"):
        mouth_sync_correlation(np.ones(3), np.ones(4))


@pytest.mark.parametrize("shift", [-5, -1, 0, 3, 7])
def test_best_offset_recovers_known_shift(shift):
    gt = _openness(100, seed=3)
    pred = np.roll(gt, shift)  # pred[t + shift] = gt[t]: the generated mouth lags by `shift` frames
    result = best_offset_correlation(pred, gt, max_offset=10)
    assert isinstance(result, OffsetCorrelation)
    assert result.offset == shift
    assert result.correlation == pytest.approx(1.0)
    assert result.confidence > 0.5


def test_offset_correlations_hand_values_and_overlap_only():
    # pred lags gt by one frame: r[+1] compares pred[1:] with gt[:-1], identical series, so exactly 1
    gt = np.array([0.0, 1, 0, 2, 0, 3, 1])
    pred = np.concatenate([[5.0], gt[:-1]])
    r = offset_correlations(pred, gt, max_offset=2)
    assert set(r) == {-2, -1, 0, 1, 2}
    assert r[1] == pytest.approx(1.0)
    # r[0] by hand on the full overlap equals the plain lag-0 correlation
    assert r[0] == pytest.approx(mouth_sync_correlation(pred, gt))
    # r[-1] = corr(pred[:-1], gt[1:]), computed independently
    assert r[-1] == pytest.approx(np.corrcoef(pred[:-1], gt[1:])[0, 1])
    # offsets whose overlap is shorter than 3 frames, or constant, are left out
    assert set(offset_correlations(np.arange(4.0), np.arange(4.0) ** 2, max_offset=3)) == {-1, 0, 1}
    assert offset_correlations(np.ones(6), gt[:6], max_offset=1) == {}


def test_best_offset_missing_and_validation():
    assert isinstance(best_offset_correlation(np.ones(20), _openness(20), max_offset=3), Missing)
    with pytest.raises(ValueError, match="max_offset"):
        best_offset_correlation(np.ones(5), np.ones(5), max_offset=-1)


def test_mfcc_matches_python_speech_features_pinned_values():
    # reference values computed once with python_speech_features 0.6: mfcc(sig, 16000)
    n = np.arange(3200)
    sig = np.round(
        8000 * np.sin(2 * np.pi * (200 + 0.25 * n) * n / 16000) + 2000 * np.sin(2 * np.pi * 1500 * n / 16000)
    )
    feat = mfcc(sig.astype(np.int16))
    assert feat.shape == (19, 13)
    expected = np.array(
        [
            [19.2251446929, 15.2339059468, -6.8799330937, 2.8778958611, 16.4308380128, -12.7671239979, -57.4058302466,
             -53.197836201, -6.5527603096, 10.1273806088, -17.1325069711, -31.4335017221, -5.4743446272],
            [20.5523343272, 15.5114536243, -31.9157560075, -49.3938705034, -12.9660037142, 20.95999329, 13.5175936836,
             -0.8369612357, 5.3016313487, -0.3649285794, -25.2724038015, -25.8329130935, 8.5359470447],
            [21.5578579397, -3.4933808097, -37.6961245934, -3.8843192315, 33.9711027779, 5.0567612443, -32.0277006188,
             -8.0384581018, 26.4048981286, 6.7188638279, -22.2864007964, -8.6860422031, 13.5668656888],
        ]
    )  # fmt: skip
    np.testing.assert_allclose(feat[[0, 7, 18]], expected, rtol=1e-9, atol=1e-8)


def _brute_force_lse(v, a, vshift):
    m = v.shape[0]
    mean_d = []
    for s in range(-vshift, vshift + 1):
        d = []
        for i in range(m):
            j = i + s
            other = a[j] if 0 <= j < m else np.zeros_like(a[0])
            d.append(np.linalg.norm(v[i] - other + 1e-6))  # F.pairwise_distance adds eps=1e-6
        mean_d.append(np.mean(d))
    mean_d = np.array(mean_d)
    k = int(np.argmin(mean_d))
    lower_median = np.sort(mean_d)[(len(mean_d) - 1) // 2]
    return mean_d[k], lower_median - mean_d[k], vshift - k


@pytest.mark.parametrize("shift", [-2, 0, 3])
def test_lse_from_embeddings_against_brute_force(shift):
    rng = np.random.default_rng(shift + 10)
    v = rng.normal(size=(12, 16))
    a = np.roll(v, shift, axis=0)  # a[i + shift] = v[i]
    scores = lse_from_embeddings(torch.tensor(v), torch.tensor(a), vshift=4)
    d, c, off = _brute_force_lse(v, a, 4)
    assert scores.lse_d == pytest.approx(d, rel=1e-6)
    assert scores.lse_c == pytest.approx(c, rel=1e-6)
    assert scores.offset == off == -shift
    assert scores.lse_c > 0


def test_syncnet_state_dict_layout_matches_syncnet_python():
    shapes = {k: tuple(v.shape) for k, v in SyncNetModel().state_dict().items()}
    # keys and shapes of syncnet_python's SyncNetModel.S (syncnet_v2.model)
    assert shapes["netcnnaud.0.weight"] == (64, 1, 3, 3)
    assert shapes["netcnnaud.18.weight"] == (512, 256, 5, 4)
    assert shapes["netcnnaud.19.running_var"] == (512,)
    assert shapes["netfcaud.3.weight"] == (1024, 512)
    assert shapes["netcnnlip.0.weight"] == (96, 3, 5, 7, 7)
    assert shapes["netcnnlip.4.weight"] == (256, 96, 1, 5, 5)
    assert shapes["netcnnlip.18.weight"] == (512, 256, 1, 6, 6)
    assert shapes["netfclip.1.weight"] == (512,)
    assert sum(1 for k in shapes if k.endswith(".weight")) == 30


def test_syncnet_scorer_loads_state_dict_and_scores(tmp_path):
    torch.manual_seed(0)
    model = SyncNetModel()
    path = tmp_path / "syncnet_v2.model"
    torch.save(model.state_dict(), path)
    scorer = SyncNetScorer(path, vshift=3)
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(9, 3, 32, 32, generator=g)
    audio = 0.5 * np.sin(2 * np.pi * 220 * np.arange(9 * 640) / 16000)
    result = scorer.score(frames, audio)
    assert isinstance(result, SyncScores)
    assert np.isfinite(result.lse_d) and result.lse_d > 0 and np.isfinite(result.lse_c) and result.lse_c >= 0
    assert -3 <= result.offset <= 3
    loaded = scorer._get_model().state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())
    # int16 PCM and the equivalent float audio give the same scores
    as_int = scorer.score(frames, np.round(audio * 32768).astype(np.int16))
    assert as_int.lse_d == pytest.approx(result.lse_d, rel=1e-3)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        scorer.score(frames, audio * 3)


def test_syncnet_missing_and_wrong_file(tmp_path):
    frames = torch.rand(8, 3, 16, 16)
    audio = np.zeros(8 * 640)
    for scorer in (SyncNetScorer(None), SyncNetScorer(tmp_path / "absent.model")):
        assert isinstance(scorer.score(frames, audio), Missing)
    bad = tmp_path / "bad.model"
    torch.save({"netcnnaud.0.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="not a SyncNet"):
        SyncNetScorer(bad).score(frames, audio)

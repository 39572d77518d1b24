"""Log-mel front end: STFT against torch.stft, mel scale known values, alignment to video frames."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pftray.data.audio import (
    frame_energy,
    hz_to_mel,
    log_mel_features,
    mel_filterbank,
    mel_to_hz,
    power_spectrogram,
)


def test_power_spectrogram_matches_torch_stft():
    x = np.random.default_rng(0).normal(size=3200)
    ours = power_spectrogram(x, n_fft=400, hop_length=160)
    ref = (
        torch.stft(
            torch.from_numpy(x),
            n_fft=400,
            hop_length=160,
            window=torch.hann_window(400, dtype=torch.float64),
            center=True,
            pad_mode="reflect",
            return_complex=True,
        ).abs()
        ** 2
    )
    assert ours.shape == (3200 // 160 + 1, 201)
    np.testing.assert_allclose(ours, ref.T.numpy(), rtol=1e-9, atol=1e-9)


def test_mel_scale_known_values():
    # HTK: 1000 Hz is ~1000 mel by construction; 700 Hz is 2595 log10(2).
    assert hz_to_mel(1000.0) == pytest.approx(999.99, abs=0.05)
    assert hz_to_mel(700.0) == pytest.approx(2595 * np.log10(2.0))
    f = np.array([0.0, 100.0, 3999.0, 8000.0])
    np.testing.assert_allclose(mel_to_hz(hz_to_mel(f)), f, atol=1e-9)


def test_filterbank_shape_peaks_and_sine_band():
    bank = mel_filterbank(n_mels=32)
    assert bank.shape == (32, 201)
    assert bank.min() >= 0 and bank.max() <= 1
    peak_freqs = np.argmax(bank, axis=1) * 8000 / 200
    assert np.all(np.diff(peak_freqs) >= 0)
    sr = 16000
    t = np.arange(sr) / sr
    for freq in (300.0, 1000.0, 3000.0):
        spec = power_spectrogram(np.sin(2 * np.pi * freq * t)).mean(axis=0) @ bank.T
        assert abs(peak_freqs[np.argmax(spec)] - freq) < 0.15 * freq + 60


def test_features_shape_dtype_and_normalisation():
    audio = np.random.default_rng(1).normal(size=16 * 640).astype(np.float32)
    feats = log_mel_features(audio, n_mels=32, window=16, num_frames=16)
    assert feats.shape == (16, 16, 32) and feats.dtype == np.float32
    # Per-clip standardisation of the full log-mel image (windows overlap, so check the centre frames).
    centre = feats[:, 6:10, :].reshape(-1, 32)
    assert abs(centre.mean()) < 0.1 and abs(centre.std() - 1) < 0.1


def test_burst_in_frame_10_peaks_at_frame_10():
    audio = 1e-3 * np.random.default_rng(2).normal(size=24 * 640)
    audio[10 * 640 : 11 * 640] += np.sin(2 * np.pi * 500 * np.arange(640) / 16000)
    energy = frame_energy(log_mel_features(audio, num_frames=24))
    assert int(np.argmax(energy)) == 10
    assert energy[10] > energy[6] + 1.0 and energy[10] > energy[14] + 1.0


def test_short_audio_is_padded_and_bad_args_raise():
    feats = log_mel_features(np.ones(100, np.float32), num_frames=3, window=4, n_mels=8)
    assert feats.shape == (3, 4, 8) and np.isfinite(feats).all()
    with pytest.raises(ValueError, match="num_frames"):
        log_mel_features(np.ones(640), num_frames=0)
    with pytest.raises(ValueError, match="window"):
        log_mel_features(np.ones(640), num_frames=1, window=0)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 12), st.integers(1, 20), st.integers(4, 40))
def test_feature_shapes_property(num_frames, window, n_mels):
    audio = np.random.default_rng(num_frames).normal(size=num_frames * 640)
    feats = log_mel_features(audio, num_frames=num_frames, window=window, n_mels=n_mels)
    assert feats.shape == (num_frames, window, n_mels)
    assert np.isfinite(feats).all()


def test_frame_energy_reductions():
    feats = np.zeros((2, 16, 4), np.float32)
    feats[1, 6:10, 0] = 4.0  # one loud band in frame 1
    np.testing.assert_allclose(frame_energy(feats), [0.0, 1.0])
    np.testing.assert_allclose(frame_energy(feats, reduce="max"), [0.0, 4.0])
    with pytest.raises(ValueError, match="reduce"):
        frame_energy(feats, reduce="sum")

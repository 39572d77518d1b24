"""bench.mouth_timing's summary of openness series: known lags, motion ratio, and its table."""

import math

import numpy as np
import pytest

from bench.mouth_timing import markdown, timing_row


def _speech(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.convolve(rng.uniform(0, 1, n), np.ones(3) / 3, mode="same")


def test_timing_row_finds_a_lagging_mouth_and_its_motion():
    truth = [_speech(40, s) for s in range(3)]
    # a model that opens the mouth 2 frames late, at half the amplitude: pred[t + 2] = 0.5 * truth[t]
    late = [np.concatenate([np.full(2, 0.25), 0.5 * g[:-2]]) for g in truth]
    row = timing_row(late, truth, max_lag=3)
    assert row["peak lag"] == 2
    assert row["r[+2]"] == pytest.approx(1.0)
    assert row["r[+0]"] < 0.6
    assert row["motion"] == pytest.approx(np.mean([np.std(p) for p in late]) / np.mean([np.std(g) for g in truth]))
    assert 0.4 < row["motion"] < 0.6
    # measured in other units (the estimator's): motion is taken against the truth measured the same way
    assert timing_row(late, truth, max_lag=3, scale=[0.5 * g for g in truth])["motion"] == pytest.approx(
        2 * row["motion"])
    exact = timing_row(truth, truth, max_lag=3)
    assert exact["peak lag"] == 0 and exact["r[+0]"] == pytest.approx(1.0) and exact["motion"] == pytest.approx(1.0)


def test_timing_row_a_still_mouth_has_no_timing():
    truth = [_speech(20, 7)]
    row = timing_row([np.full(20, 0.3)], truth, max_lag=2)
    assert math.isnan(row["peak lag"]) and math.isnan(row["r[+0]"]) and row["motion"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="same number"):
        timing_row([], [], max_lag=1)


def test_markdown_lists_every_model_with_its_peak():
    truth = [_speech(30, 1)]
    rows = {"personalised": timing_row([np.roll(truth[0], 1)], truth, max_lag=1),
            "truth frames": timing_row(truth, truth, max_lag=1)}
    text = markdown({"fedavg-s0": rows}, command="python -m bench mouth-timing x", max_lag=1)
    assert "## fedavg-s0" in text
    assert "| personalised | " in text and text.count("| truth frames | 0.") == 1
    line = next(s for s in text.splitlines() if s.startswith("| personalised"))
    assert line.split("|")[-3].strip() == "+1"

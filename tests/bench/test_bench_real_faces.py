"""``python -m bench real-faces``: the table and target logic on a made-up eval table (the real pipeline needs the
dev videos of ``../shared/data/real-faces``, which a fresh clone does not have), and the audio energy envelope."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest


def _eval_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for cid in (0, 1):
        for clip in range(3):
            copy = {"psnr": 25.0 + cid + clip, "ssim": 0.80, "mouth_psnr": 30.0, "csim": 0.98, "lmd_face": 0.02,
                    "lmd_mouth": 0.03, "lip_sync_lmk": math.nan}  # a still frame has no mouth motion: r undefined
            ours = {**copy, "psnr": copy["psnr"] + 1.5 + 0.1 * rng.standard_normal(), "ssim": 0.82,
                    "csim": 0.95, "lip_sync_lmk": 0.6}
            for model, vals in (("copy", copy), ("personalised", ours), ("backbone", {**ours, "psnr": 20.0})):
                rows.append({"client_id": cid, "clip": f"s{cid}/c/{clip}", "model": model, **vals})
    return pd.DataFrame(rows)


def test_paired_difference_and_targets_are_recomputed_from_the_clips():
    from bench.real_faces import model_table, paired_vs_copy, targets

    df = _eval_table()
    pv = paired_vs_copy(df).set_index("metric")
    a = df[df["model"] == "personalised"].set_index(["client_id", "clip"])["psnr"]
    b = df[df["model"] == "copy"].set_index(["client_id", "clip"])["psnr"]
    d = (a - b).to_numpy()
    from scipy import stats

    half = stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    assert pv.loc["psnr", "mean_diff"] == pytest.approx(d.mean())
    assert pv.loc["psnr", "ci_high"] - pv.loc["psnr", "mean_diff"] == pytest.approx(half)
    assert pv.loc["psnr", "n_pairs"] == 6 and pv.loc["lip_sync_lmk", "n_pairs"] == 0  # copy's r is undefined
    got = {t["metric"]: t for t in targets(model_table(df))}
    assert got["psnr"]["met"] is True  # +1.5 dB on average >= copy + 1
    assert got["ssim"]["met"] is True and got["lip_sync_lmk"]["met"] is True
    assert got["csim"]["met"] is True  # 0.95 within 0.05 of 0.98
    worse = df.copy()
    worse.loc[worse["model"] == "personalised", "csim"] = 0.90
    worse.loc[worse["model"] == "personalised", "psnr"] -= 1.0  # now only +0.5 dB
    got = {t["metric"]: t for t in targets(model_table(worse))}
    assert got["csim"]["met"] is False and got["psnr"]["met"] is False


def test_energy_envelope_is_the_rms_of_each_40ms_frame():
    from bench.real_faces import energy_envelope

    wave = np.concatenate([np.full(640, 0.5), np.zeros(640), np.full(640, -0.25)]).astype(np.float32)
    np.testing.assert_allclose(energy_envelope(wave, 3), [0.5, 0.0, 0.25])
    np.testing.assert_allclose(energy_envelope(np.full(1000, 0.5), 3), [0.5, math.sqrt(360 * 0.25 / 640), 0.0])  # padded

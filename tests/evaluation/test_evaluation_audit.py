"""Membership-inference audit: statistics on planted signals, clip errors vs an independent computation, and
an end-to-end audit of a tiny in-process run with canary clients."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from pftray.data import clips_to_batch, load_client_shard
from pftray.evaluation.audit import (
    CANARY_MANIFEST,
    audit_run,
    audit_scores,
    canary_config,
    clip_errors,
    one_run_guesses,
)
from pftray.fed.client import ClientTrainer
from pftray.fed.host import ClientProvider
from pftray.privacy.audit_stats import one_run_epsilon_lower_bound
from pftray.runtime.driver import run_federated
from tests.tinycfg import tiny_config


def _tiny():
    return tiny_config().replace(
        **{
            "data.clips_per_client": 1,
            "train.local_steps": 30,
            "fed.rounds": 2,
            "fed.eval_every": 0,
            "eval.sample_steps": 1,
            "eval.frames": 2,
        }
    )


def test_planted_strong_signal_gives_auc_near_one_and_positive_epsilon():
    rng = np.random.default_rng(0)
    err_members = rng.normal(0.2, 0.05, 300)  # members are denoised much better
    err_nonmembers = rng.normal(1.0, 0.05, 300)
    out = audit_scores(-err_members, -err_nonmembers, delta=1e-5)
    assert out["auc"] > 0.999 and out["tpr_at_1pct_fpr"] > 0.99
    assert out["eps_lb"] > 1.0
    # perfect separation: every guess is right, so the bound is exactly the one for (r, r) at the corrected level
    r = out["one_run"]["num_guesses"]
    assert out["one_run"]["num_correct"] == r
    assert out["eps_lb"] == pytest.approx(
        one_run_epsilon_lower_bound(
            num_guesses=r, num_correct=r, num_canaries=600, delta=1e-5, confidence=1 - 0.05 / 4
        )
    )


def test_no_signal_gives_auc_near_half_and_no_epsilon():
    rng = np.random.default_rng(1)
    out = audit_scores(rng.normal(size=400), rng.normal(size=400), delta=1e-5)
    assert abs(out["auc"] - 0.5) < 0.06
    assert out["eps_lb"] == 0.0


def test_one_run_guesses_guess_the_extremes_and_abstain_in_the_middle():
    member = np.array([True, False, True, False, True, False, True, False])
    scores = np.array([9.0, 8.0, 1.0, 0.0, 5.0, 5.0, 7.0, -1.0])
    out = one_run_guesses(member, scores, delta=1e-5, fractions=(0.5,))
    # top 2 = scores 9 (member), 8 (non-member); bottom 2 = -1 (non-member), 0 (non-member): 3 of 4 right
    assert (out["num_guesses"], out["num_correct"], out["num_canaries"]) == (4, 3, 8)
    with pytest.raises(ValueError, match="equal 1-d"):
        one_run_guesses(member, scores[:3], delta=1e-5)


@pytest.fixture(scope="module")
def canary_run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("audit")
    cfg = canary_config(_tiny(), 4, data_dir=root / "data", seed=2)
    run, _ = run_federated(cfg, out=str(root / "run"), use_ray=False)
    return cfg, run.path


def test_canary_config_registers_each_included_canary(canary_run):
    cfg, _ = canary_run
    manifest = json.loads(open(f"{cfg.data.source}/{CANARY_MANIFEST}").read())
    included = [r for r in manifest["canaries"] if r["included"]]
    assert [r["included"] for r in manifest["canaries"]] == [False, True, False, True]  # seed 2's coins
    provider = ClientProvider(cfg)
    assert provider.num_clients == cfg.data.num_clients == 4 + len(included)
    synthetic = ClientProvider(_tiny())
    for k in range(4):  # regular clients are exactly the synthetic ones
        assert provider.get(k) == synthetic.get(k)
    for r in included:
        c = provider.get(r["client_id"])
        assert c.identity == r["name"] and all(clip.identity == r["name"] for clip in c.train + c.heldout)
    excluded = load_client_shard(f"{cfg.data.source}/{manifest['canaries'][0]['shard']}")
    assert excluded.identity == "canary-0" and excluded.train
    with pytest.raises(FileExistsError):
        canary_config(_tiny(), 2, data_dir=cfg.data.source)
    with pytest.raises(ValueError, match="num_canaries"):
        canary_config(_tiny(), 0, data_dir="/nonexistent")


def test_audit_of_a_tiny_run_is_finite_and_written(canary_run):
    cfg, run_dir = canary_run
    report = audit_run(run_dir, timesteps=(100, 500), repeats=2)
    assert json.loads((run_dir / "audit.json").read_text()) == report
    assert report["clients_audited"] and all(0 <= c < 4 for c in report["clients_audited"])
    for key in ("clip_level_personalised", "clip_level_shared"):
        part = report[key]
        assert part["num_members"] == part["num_nonmembers"] == len(report["clients_audited"])
        assert 0 <= part["auc"] <= 1 and 0 <= part["tpr_at_1pct_fpr"] <= 1
        assert 0 <= part["eps_lb"] < math.inf
        assert math.isfinite(part["mean_score_members"]) and math.isfinite(part["mean_score_nonmembers"])
    can = report["client_level_canaries"]
    assert (can["num_canaries"], can["num_included"]) == (4, 2)
    assert 0 <= can["auc"] <= 1 and 0 <= can["eps_lb"] < math.inf
    assert report["accountant"] is None  # no DP in this run: no privacy.json
    assert report["server_round"] == 2 and report["settings"]["calibrate"] is True
    # max_clients audits a prefix of the same clients, with the same per-client scores (a subset of the samples)
    sub = audit_run(run_dir, timesteps=(100, 500), repeats=2, max_clients=1, canaries=False)
    assert sub["clients_audited"] == report["clients_audited"][:1] and sub["settings"]["max_clients"] == 1
    assert sub["clip_level_shared"]["num_members"] == 1 < report["clip_level_shared"]["num_members"]
    with pytest.raises(ValueError, match="max_clients"):
        audit_run(run_dir, max_clients=0)


def test_clip_errors_match_an_independent_computation(canary_run):
    cfg, _ = canary_run
    trainer = ClientTrainer(cfg)
    model = trainer.model
    client = ClientProvider(cfg).get(0)
    clip = client.train[0]
    got = clip_errors(trainer, client, [clip, clip], timesteps=(50, 700), repeats=2, seed=3)
    assert got[0] == got[1]  # fixed noise: deterministic
    batch = clips_to_batch(
        [clip], frames=clip.num_frames, rng=np.random.default_rng(0), reference=client.reference
    )
    errs = []
    with torch.no_grad():
        x0 = model.encode(batch["frames"][0], batch["reference"])
        ref = model.reference_features(batch["reference"]).expand(x0.shape[0], -1, -1, -1)
        for r in range(2):
            seed = int(np.random.SeedSequence([3, r, clip.num_frames]).generate_state(1)[0])
            eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
            for t in (50, 700):
                tt = torch.full((x0.shape[0],), t)
                a = model.scheduler.alphas_cumprod[t]
                noisy = a.sqrt() * x0 + (1 - a).sqrt() * eps
                v = a.sqrt() * eps - (1 - a).sqrt() * x0  # v-prediction target (Salimans & Ho 2022)
                out = model.predict(noisy, tt, ref, batch["audio_feats"][0], batch["pose"][0])
                errs.append(float(((out - v) ** 2).mean()))
    assert cfg.model.prediction_type == "v_prediction"
    assert got[0] == pytest.approx(np.mean(errs), rel=1e-5)
    with pytest.raises(ValueError, match="timesteps"):
        clip_errors(trainer, client, [clip], timesteps=(5000,), repeats=1, seed=0)

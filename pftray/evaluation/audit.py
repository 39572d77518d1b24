"""Membership-inference audit of a finished run (``pftray audit RUN_DIR``).

**Statistic.** The denoising error of a clip: the MSE between the model's prediction and its training target
(v, eps or x0), with *fixed* noise and *fixed* timesteps, averaged over ``repeats`` noise draws x ``timesteps``
(the loss-threshold attack of Yeom et al. 2018, in the form used against diffusion models by Carlini et al. 2023,
"Extracting Training Data from Diffusion Models", Sec. 6). Lower error => "member"; the score is ``-error``.
The same noise is used for every clip of the same length, so clips are compared on paired draws. With
``calibrate`` (default) the score is ``error_reference - error_model``, the reference being the data-independent
round-0 model (base weights, LoRA B = 0): "difficulty calibration" (Watson et al. 2022, ICLR), which removes how
hard a clip is for any model, and which dominates the raw error ranking of an under-trained model.

**Clip level** (always). Under each client's personalised model (global shared adapter + its identity
adapter), members are the client's TRAINING clips and non-members its HELD-OUT clips (same identity, same
distribution). The identity adapter is never released, so this measures what a deployed personalised model
leaks about single clips; client-level DP of the shared adapter does not bound it (see ``privacy.json``'s
guarantee, and :mod:`pftray.privacy.dpsgd` for the sample-level guarantee that would). The same audit under
the released artifact alone (global shared adapter + a data-independent identity adapter) is reported as
``"shared"``.

**Client level** (runs prepared with :func:`canary_config`). Extra canary clients with their own identities are
each included in the federation with probability 1/2; the audit scores every canary's clips under the global
shared adapter alone. Membership is then an independent fair coin, which is exactly the setting of the one-run
audit (Steinke, Nasr, Jagielski 2023), and the neighbouring relation (one client) is the one of the accountant's
client-level epsilon, so the two numbers are comparable.

**Empirical epsilon.** :func:`one_run_guesses` abstains on the middle of the score ranking and guesses
"member" on the ``r/2`` highest and "non-member" on the ``r/2`` lowest scores; the lower bound is
:func:`~pftray.privacy.audit_stats.one_run_epsilon_lower_bound`, maximised over a small fixed grid of ``r`` with a
Bonferroni-corrected confidence (so the maximum is still a 95 % lower bound). For the clip-level audit the
train/held-out split is a fixed-size partition of exchangeable clips rather than independent coin flips, and the
sets are balanced per client before guessing; that bound is indicative, the canary one is the rigorous one.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pftray.config import Config
from pftray.data import ClientData, Clip, clips_to_batch
from pftray.privacy.audit_stats import one_run_epsilon_lower_bound, roc_auc, tpr_at_fpr
from pftray.privacy.dpsgd import clip_losses

__all__ = [
    "CANARY_MANIFEST",
    "audit_run",
    "audit_scores",
    "canary_config",
    "clip_errors",
    "one_run_guesses",
]

#: file written next to the canary run's client shards: which canaries exist and which were included
CANARY_MANIFEST = "canaries.json"
#: guess fractions r/m tried for the one-run bound (fixed in advance; Bonferroni over its length)
GUESS_FRACTIONS = (0.1, 0.25, 0.5, 1.0)


# ----------------------------------------------------------------------------------------------- scoring


@torch.no_grad()
def clip_errors(
    trainer: Any,
    client: ClientData,
    clips: list[Clip],
    *,
    timesteps: tuple[int, ...],
    repeats: int,
    seed: int,
) -> np.ndarray:
    """Denoising error of each clip under the model currently loaded in ``trainer`` (float64 ``[len(clips)]``).

    Every frame of the clip is used; for repeat ``r`` the noise of a ``T``-frame clip is drawn from a generator
    seeded by ``(seed, r, T)`` and reused for every timestep and every clip of that length.
    """
    model = trainer.model
    if not timesteps or repeats < 1:
        raise ValueError(f"need at least one timestep and repeats >= 1, got {timesteps!r} and {repeats!r}")
    top = model.scheduler.config.num_train_timesteps
    bad = [t for t in timesteps if not 0 <= int(t) < top]
    if bad:
        raise ValueError(f"timesteps must be in [0, {top}), got {bad}")
    out = np.empty(len(clips))
    for i, clip in enumerate(clips):
        n = clip.num_frames
        batch = clips_to_batch([clip], frames=n, rng=np.random.default_rng(0), reference=client.reference)
        batch = {k: v.to(trainer.device) for k, v in batch.items()}
        f = batch["frames"].shape[1]
        lat = model.encode(batch["frames"].flatten(0, 1), batch["reference"].repeat_interleave(f, dim=0),
                           batch["pose"].flatten(0, 1))
        ref = model.reference_features(batch["reference"])
        k = repeats * len(timesteps)
        # one forward over all (repeat, timestep) pairs: the clip is replicated k times as k "clips"
        rep = {key: v.expand(k, *v.shape[1:]) for key, v in batch.items()}
        noise = torch.cat(
            [
                torch.randn(
                    lat.shape,
                    generator=torch.Generator().manual_seed(
                        int(np.random.SeedSequence([seed, r, n]).generate_state(1)[0])
                    ),
                )
                for r in range(repeats)
                for _ in timesteps
            ]
        ).to(lat.device, lat.dtype)
        t = torch.tensor([int(t) for _ in range(repeats) for t in timesteps], device=lat.device)
        losses = clip_losses(
            model,
            rep,
            timesteps=t,
            noise=noise,
            lambda_tdc=0.0,
            tdc_space="x0",
            latents=(lat.repeat(k, 1, 1, 1), ref.expand(k, *ref.shape[1:])),
        )
        out[i] = float(losses.double().mean())
    return out


def one_run_guesses(
    member: np.ndarray,
    scores: np.ndarray,
    *,
    delta: float,
    confidence: float = 0.95,
    fractions: tuple[float, ...] = GUESS_FRACTIONS,
) -> dict[str, Any]:
    """Steinke et al. (2023) one-run bound from ``scores`` of ``m`` canaries with true labels ``member``.

    For each ``r = 2 * round(f * m / 2)`` (``f`` in ``fractions``): guess "member" for the ``r/2`` highest scores,
    "non-member" for the ``r/2`` lowest, abstain on the rest; the bound at confidence
    ``1 - (1 - confidence) / len(fractions)`` (Bonferroni), and the best ``r``.
    """
    member = np.asarray(member, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    if member.shape != scores.shape or member.ndim != 1:
        raise ValueError(f"member and scores must be equal 1-d shapes, got {member.shape} and {scores.shape}")
    m = member.size
    level = 1 - (1 - confidence) / len(fractions)
    order = np.argsort(-scores, kind="stable")
    best = {"eps_lb": 0.0, "num_guesses": 0, "num_correct": 0}
    for f in fractions:
        half = int(round(f * m / 2))
        if half < 1:
            continue
        correct = int(member[order[:half]].sum() + (~member[order[m - half :]]).sum())
        eps = one_run_epsilon_lower_bound(
            num_guesses=2 * half, num_correct=correct, num_canaries=m, delta=delta, confidence=level
        )
        if eps > best["eps_lb"] or best["num_guesses"] == 0:
            best = {"eps_lb": float(eps), "num_guesses": 2 * half, "num_correct": correct}
    return {**best, "num_canaries": int(m), "confidence": confidence, "bonferroni_level": level}


def audit_scores(
    scores_members: np.ndarray,
    scores_nonmembers: np.ndarray,
    *,
    delta: float,
    balanced: np.ndarray | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """AUC, TPR at 1 % FPR and the one-run epsilon lower bound of member vs non-member scores.

    The one-run bound uses ``balanced`` (a boolean mask over ``concat(members, nonmembers)`` selecting a subset
    with a 1/2 prior of membership); by default a seeded subsample of the larger side to the size of the smaller.
    """
    pos, neg = np.asarray(scores_members, np.float64), np.asarray(scores_nonmembers, np.float64)
    labels = np.r_[np.ones(pos.size, bool), np.zeros(neg.size, bool)]
    scores = np.r_[pos, neg]
    if balanced is None:
        k = min(pos.size, neg.size)
        rng = np.random.default_rng(seed)
        balanced = np.zeros(labels.size, bool)
        balanced[rng.choice(pos.size, k, replace=False)] = True
        balanced[pos.size + rng.choice(neg.size, k, replace=False)] = True
    guesses = one_run_guesses(labels[balanced], scores[balanced], delta=delta)
    return {
        "num_members": int(pos.size),
        "num_nonmembers": int(neg.size),
        "auc": roc_auc(pos, neg),
        "tpr_at_1pct_fpr": tpr_at_fpr(pos, neg, 0.01),
        "eps_lb": guesses.pop("eps_lb"),
        "one_run": guesses,
        "mean_score_members": float(pos.mean()),
        "mean_score_nonmembers": float(neg.mean()),
    }


# ------------------------------------------------------------------------------------------------- canaries


def _rename(client: ClientData, name: str, client_id: int) -> ClientData:
    def renamed(clips: list[Clip]) -> list[Clip]:
        return [
            dataclasses.replace(c, identity=name, clip_id=c.clip_id.replace(client.identity, name))
            for c in clips
        ]

    return dataclasses.replace(
        client,
        client_id=client_id,
        identity=name,
        train=renamed(client.train),
        heldout=renamed(client.heldout),
    )


def canary_config(cfg: Config, num_canaries: int, *, data_dir: str | Path, seed: int = 0) -> Config:
    """A config whose federation is ``cfg``'s clients plus each of ``num_canaries`` canaries with probability 1/2.

    Canary ``i`` (identity ``"canary-i"``) is a synthetic client with its own random identity (the synthetic
    identity stream at index ``num_clients + i``, so it differs from every regular client). All clients are
    written as shards into ``data_dir`` (regular ones ``0..n-1`` exactly as the provider makes them, then the
    included canaries); excluded canaries go to ``data_dir/excluded/`` for the audit only. ``data_dir`` gets
    :data:`CANARY_MANIFEST`. The returned config reads ``data.source = data_dir`` (no change to the data
    provider is needed) and registers ``n + included`` clients.
    """
    from pftray.data import make_client, save_client_shard
    from pftray.fed.host import ClientProvider

    if not isinstance(num_canaries, int) or num_canaries < 1:
        raise ValueError(f"num_canaries must be a positive int, got {num_canaries!r}")
    data_dir = Path(data_dir)
    if (data_dir / CANARY_MANIFEST).exists() or any(data_dir.glob("client-*.parquet")):
        raise FileExistsError(f"data_dir {data_dir} already holds client shards; use an empty folder")
    provider = ClientProvider(cfg)
    n = provider.num_clients
    for k in range(n):
        save_client_shard(provider.get(k), data_dir / f"client-{k}.parquet")
    d = cfg.data
    kw = dict(
        num_clients=n + num_canaries,
        clips_per_client=d.clips_per_client,
        heldout_clips=d.heldout_clips,
        frames_per_clip=d.frames_per_clip,
        resolution=d.resolution,
        n_mels=d.n_mels,
        audio_window=d.audio_window,
        seed=cfg.experiment.seed,
    )
    include = np.random.default_rng([seed, 0xCA7A]).random(num_canaries) < 0.5
    records, next_id = [], n
    for i in range(num_canaries):
        if include[i]:
            cid, path = next_id, data_dir / f"client-{next_id}.parquet"
            next_id += 1
        else:
            cid, path = -1, data_dir / "excluded" / f"canary-{i}.parquet"
        save_client_shard(_rename(make_client(n + i, **kw), f"canary-{i}", cid), path)
        records.append(
            {
                "name": f"canary-{i}",
                "included": bool(include[i]),
                "client_id": cid,
                "shard": str(path.relative_to(data_dir)),
            }
        )
    manifest = {
        "num_regular": n,
        "num_canaries": num_canaries,
        "inclusion_probability": 0.5,
        "seed": seed,
        "canaries": records,
    }
    (data_dir / CANARY_MANIFEST).write_text(json.dumps(manifest, indent=2))
    return cfg.replace(**{"data.source": str(data_dir.resolve()), "data.num_clients": next_id})


# ------------------------------------------------------------------------------------------------ the audit


def _accountant(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "privacy.json"
    if not path.exists():
        return None
    p = json.loads(path.read_text())
    return {
        "epsilon": p.get("epsilon"),
        "delta": p.get("delta"),
        "guarantee": p.get("guarantee"),
        "noise_multiplier": p.get("noise_multiplier"),
        "rounds": p.get("rounds"),
    }


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


def audit_run(
    run_dir: str | Path,
    *,
    timesteps: tuple[int, ...] = (100, 300, 500),
    repeats: int = 4,
    canaries: bool | None = None,
    seed: int = 0,
    server_round: int | None = None,
    calibrate: bool = True,
    max_clients: int | None = None,
) -> dict[str, Any]:
    """Audit a run directory (its latest checkpoint, or ``server_round``); writes and returns ``audit.json``.

    ``max_clients`` audits only the first that many trained clients (by id; all by default): the attack's cost
    grows with the clients audited, and a subset still gives a valid lower bound, with a wider interval.

    Keys: ``clip_level_personalised`` and ``clip_level_shared`` (each ``auc``, ``tpr_at_1pct_fpr``, ``eps_lb``,
    ``one_run`` details, member / non-member counts and mean scores), ``client_level_canaries`` (canary runs
    only), ``accountant`` (epsilon, delta and guarantee from the run's ``privacy.json``, or ``None`` without DP),
    ``settings``, ``clients_audited``, ``server_round``. Non-finite floats are written as ``"inf"`` / ``null``.
    ``canaries=None`` runs the client-level canary audit when the run's data folder holds a
    :data:`CANARY_MANIFEST`, ``True`` requires one, ``False`` skips it. Clients that never trained are skipped.
    """
    from pftray.fed.client import ClientState
    from pftray.fed.host import ClientProvider
    from pftray.model.factory import initial_identity_state
    from pftray.results import atomic_write_text
    from pftray.runtime.driver import initial_shared, load_run_model

    run_dir = Path(run_dir)
    if max_clients is not None and max_clients < 1:
        raise ValueError(f"max_clients must be >= 1 (or None for all), got {max_clients}")
    cfg, trainer, global_shared, states = load_run_model(run_dir, server_round=server_round)
    provider = ClientProvider(cfg)
    delta = cfg.privacy.target_delta if cfg.privacy.target_delta > 0 else 1e-5
    manifest_path = Path(cfg.data.source) / CANARY_MANIFEST if cfg.data.source != "synthetic" else None
    manifest = json.loads(manifest_path.read_text()) if manifest_path and manifest_path.exists() else None
    if canaries and manifest is None:
        raise FileNotFoundError(
            f"{run_dir}: canaries=True but the run's data has no {CANARY_MANIFEST} "
            "(prepare the run with canary_config)"
        )
    canary_ids = {r["client_id"] for r in manifest["canaries"]} if manifest else set()
    kw = {"timesteps": tuple(int(t) for t in timesteps), "repeats": repeats, "seed": seed}
    with torch.random.fork_rng():  # initial_shared seeds torch's global generator
        reference_shared = initial_shared(cfg)

    def fresh(cid: int) -> ClientState:  # a data-independent identity adapter (B = 0: no effect)
        return ClientState(initial_identity_state(trainer.model, max(cid, 0), cfg.experiment.seed))

    reference_errors: dict[tuple[str, ...], np.ndarray] = {}  # the same for every audited model: compute once

    def scores(shared: np.ndarray, state: ClientState, client: ClientData, clips: list[Clip]) -> np.ndarray:
        trainer.load(shared, state)
        err = clip_errors(trainer, client, clips, **kw)
        if calibrate:
            key = (client.identity, *(c.clip_id for c in clips))
            if key not in reference_errors:
                trainer.load(reference_shared, fresh(client.client_id))
                reference_errors[key] = clip_errors(trainer, client, clips, **kw)
            err = err - reference_errors[key]
        return -err

    per_model: dict[str, dict[str, list]] = {
        m: {"in": [], "out": [], "bal": []} for m in ("personalised", "shared")
    }
    audited = []
    rng = np.random.default_rng(seed)
    for cid in range(provider.num_clients):
        if max_clients is not None and len(audited) >= max_clients:
            break
        state = states(cid)
        if state is None or cid in canary_ids:
            continue  # never trained: nothing to infer; canaries are audited at the client level below
        client = provider.get(cid)
        if not client.train or not client.heldout:
            continue
        k = min(len(client.train), len(client.heldout))
        bal_in = np.zeros(len(client.train), bool)
        bal_in[rng.choice(len(client.train), k, replace=False)] = True
        bal_out = np.zeros(len(client.heldout), bool)
        bal_out[rng.choice(len(client.heldout), k, replace=False)] = True
        for name, st in (("personalised", state), ("shared", fresh(cid))):
            per_model[name]["in"].append(scores(global_shared, st, client, client.train))
            per_model[name]["out"].append(scores(global_shared, st, client, client.heldout))
            per_model[name]["bal"].append((bal_in, bal_out))
        audited.append(cid)
    if not audited:
        raise ValueError(f"{run_dir}: no trained client with both training and held-out clips to audit")
    statistic = "-(denoising MSE vs the training target, fixed noise and timesteps, mean over repeats)"
    if calibrate:
        statistic += " + the same MSE under the data-independent round-0 model (difficulty calibration)"
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "server_round": None,
        "settings": {**kw, "delta": delta, "calibrate": calibrate, "max_clients": max_clients},
        "statistic": statistic,
        "clients_audited": audited,
        "accountant": _accountant(run_dir),
    }
    for name, parts in per_model.items():
        bal = np.r_[
            np.concatenate([b[0] for b in parts["bal"]]), np.concatenate([b[1] for b in parts["bal"]])
        ]
        report[f"clip_level_{name}"] = audit_scores(
            np.concatenate(parts["in"]), np.concatenate(parts["out"]), delta=delta, balanced=bal
        )
    report["clip_level_personalised"]["note"] = (
        "members = training clips, non-members = held-out clips of the same client, under global shared + the "
        "client's identity adapter; client-level DP does not bound this (identity adapter trained without noise)"
    )
    report["clip_level_shared"]["note"] = (
        "same clips under the global shared adapter alone (the released weights)"
    )
    if manifest is not None and canaries is not False:
        report["client_level_canaries"] = _canary_audit(
            manifest,
            Path(cfg.data.source),
            lambda c: float(scores(global_shared, fresh(-1), c, c.train + c.heldout).mean()),
            delta,
        )
    if server_round is None:
        server_round = int(
            (run_dir / "checkpoints" / "LATEST").read_text().strip()[len("round-") : -len(".pt")]
        )
    report["server_round"] = server_round
    report = _finite(report)
    atomic_write_text(run_dir / "audit.json", json.dumps(report, indent=2))
    return report


def _canary_audit(
    manifest: dict, root: Path, score: Callable[[ClientData], float], delta: float
) -> dict[str, Any]:
    """Each canary's mean clip score; members = included canaries."""
    from pftray.data import load_client_shard

    s, m = [], []
    for rec in manifest["canaries"]:
        s.append(score(load_client_shard(root / rec["shard"])))
        m.append(bool(rec["included"]))
    s, m = np.asarray(s), np.asarray(m)
    out: dict[str, Any] = {
        "num_canaries": int(m.size),
        "num_included": int(m.sum()),
        "note": "client-level: canaries included with probability 1/2, scored under the global shared adapter "
        "alone; comparable to the accountant's client-level epsilon",
    }
    if m.all() or not m.any():
        out.update(auc=None, tpr_at_1pct_fpr=None, reason="all canaries fell on one side of the coin")
    else:
        out.update(auc=roc_auc(s[m], s[~m]), tpr_at_1pct_fpr=tpr_at_fpr(s[m], s[~m], 0.01))
    out.update(one_run_guesses(m, s, delta=delta))
    return out

"""The federated round loop (no Ray): sampling, weights, DP, secure aggregation, server update, tables,
evaluation, checkpoints and resume.

It drives a *pool* of client hosts through four calls, so the same loop runs in-process (tests) and over
Ray (``pftray.runtime``):

* ``pool.fit(ids, global_shared, server_round, round_cfg) -> [report]`` — local training; deltas stay on the
  hosts; reports carry scalars only;
* ``pool.contribute(scales, clipping_norm=, noise_std=, seed=) -> (sum, info)`` — plain aggregation of
  ``clip(scale_k * delta_k)`` (+ distributed noise shares), summed on each host then across hosts;
* ``pool.secagg_stage(stage, messages, ...) -> {id: reply}`` — the client side of SecAgg+ (a missing reply is
  a dropout);
* ``pool.evaluate(ids, global_shared, server_round) -> [row]``.

Round maths. Let ``w_k`` be the strategy's normalised weights over the ``n`` successful clients and ``m`` the
denominator (``n`` without DP; the expected number of sampled clients with DP, fixed as in DP-FedAvg).
Each client sends ``c_k = clip(m w_k Δ_k, C)`` and the server applies ``Δ = (Σ_k c_k + noise) / m`` with its
optimiser. Without clipping and noise this is exactly ``Σ_k w_k Δ_k``; with DP each client's influence on the
sum is at most ``C`` whatever its weight, so the sampled-Gaussian accounting holds for ISFA weights too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from pftray.config import Config
from pftray.fed.strategy import ServerOptimizer, make_strategy
from pftray.results import RunDir, atomic_write_bytes, atomic_write_text

METRIC_KEYS = ("psnr", "ssim", "mouth_psnr", "mouth_ssim", "lip_sync", "jitter", "temp_stab_eval")


class Pool(Protocol):
    def fit(self, ids: list[int], global_shared: np.ndarray, server_round: int,
            round_cfg: dict[str, Any]) -> list[dict[str, Any]]: ...

    def contribute(self, scales: dict[int, float], *, clipping_norm: float, noise_std: float,
                   seed: int) -> tuple[np.ndarray, dict[int, dict[str, Any]]]: ...

    def secagg_stage(self, stage: str, messages: dict[int, Any], **kw: Any) -> dict[int, Any]: ...

    def evaluate(self, ids: list[int], global_shared: np.ndarray, server_round: int,
                 **kw: Any) -> list[dict[str, Any]]: ...


class RunError(RuntimeError):
    """A run cannot go on (e.g. its privacy budget would be exceeded at start); the message says why."""


@dataclass
class ServerState:
    server_round: int
    global_shared: np.ndarray
    best_round: int = 0
    best_val_loss: float = math.inf
    clipping_norm: float = 0.0


class FederatedServer:
    def __init__(self, cfg: Config, run: RunDir, pool: Pool, initial_shared: np.ndarray, *,
                 num_registered: int, progress: Callable[[dict[str, Any]], None] | None = None):
        self.cfg, self.run, self.pool = cfg, run, pool
        self.strategy = make_strategy(cfg.fed)
        self.server_opt = ServerOptimizer.from_config(cfg.fed)
        self.num_registered = num_registered
        self.progress = progress
        p = cfg.privacy
        self.dp_on = p.noise_multiplier > 0 or p.clipping_norm > 0
        self.state = ServerState(0, initial_shared.astype(np.float32), clipping_norm=p.clipping_norm)
        self.expected = (cfg.fed.sample_rate * num_registered if cfg.fed.sample_rate > 0
                         else float(cfg.fed.clients_per_round))
        self.sample_rate = cfg.fed.sample_rate or cfg.fed.clients_per_round / num_registered
        self.adaptive = None
        if p.adaptive_clipping:
            from pftray.privacy.dp import AdaptiveClipping

            sb = p.clipped_count_stddev or self.expected / 20
            if p.noise_multiplier > 0 and 2 * sb <= p.noise_multiplier:
                raise RunError(f"privacy.clipped_count_stddev: {sb:g} (0 means m/20 with m = {self.expected:g} "
                               f"clients per round) must exceed noise_multiplier / 2 = {p.noise_multiplier / 2:g} "
                               "for the noise split of Andrew et al. 2021; set it explicitly")
            self.adaptive = AdaptiveClipping(p.clipping_norm, target_quantile=p.target_quantile, clip_lr=p.clip_lr,
                                             clipped_count_stddev=sb if p.noise_multiplier > 0 else 0.0,
                                             rng=np.random.default_rng((cfg.experiment.seed, 17)))
        self.ledger = None
        if p.noise_multiplier > 0:
            from pftray.privacy.accounting import PrivacyLedger

            self.ledger = PrivacyLedger()
        self.eval_ids = list(range(min(cfg.fed.eval_clients, num_registered)))
        self.sample_epsilon_max = 0.0  # sample-level DP-SGD: the largest per-client epsilon seen so far

    # ------------------------------------------------------------------------------------------ privacy
    @property
    def update_noise_multiplier(self) -> float:
        z = self.cfg.privacy.noise_multiplier
        if z > 0 and self.adaptive is not None:
            from pftray.privacy.dp import split_noise_multiplier

            return split_noise_multiplier(noise_multiplier=z, clipped_count_stddev=self.adaptive.clipped_count_stddev)
        return z

    def epsilon(self, extra_rounds: int = 0) -> float:
        if self.ledger is None:
            return math.nan
        from pftray.privacy.accounting import PrivacyEvent, PrivacyLedger

        ledger = self.ledger
        if extra_rounds:
            ledger = PrivacyLedger()
            ledger.load_state_dict(self.ledger.state_dict())
            ledger.record(PrivacyEvent(noise_multiplier=self.cfg.privacy.noise_multiplier,
                                       sample_rate=self.sample_rate, steps=extra_rounds))
        if not ledger.events:
            return 0.0
        return ledger.epsilon(self.cfg.privacy.target_delta, accountant=self.cfg.privacy.accountant)

    # ------------------------------------------------------------------------------------------ sampling
    def sample(self, server_round: int) -> list[int]:
        rng = np.random.default_rng((self.cfg.experiment.seed, server_round, 7))
        if self.cfg.fed.sample_rate > 0:
            return [int(i) for i in np.flatnonzero(rng.random(self.num_registered) < self.cfg.fed.sample_rate)]
        k = self.cfg.fed.clients_per_round
        return sorted(int(i) for i in rng.choice(self.num_registered, size=k, replace=False))

    # ------------------------------------------------------------------------------------------- rounds
    def run_rounds(self) -> dict[str, Any]:
        cfg = self.cfg
        t_start = time.perf_counter()
        status = "done"
        while self.state.server_round < cfg.fed.rounds:
            r = self.state.server_round + 1
            if self.ledger is not None and cfg.privacy.target_epsilon > 0:
                eps_next = self.epsilon(extra_rounds=1)
                if eps_next > cfg.privacy.target_epsilon:
                    if r == 1:
                        raise RunError(f"privacy.target_epsilon {cfg.privacy.target_epsilon} would be exceeded by "
                                       f"the first round (epsilon {eps_next:.3f}); raise the noise multiplier")
                    status = "budget_exhausted"
                    break
            row = self.round(r)
            if self.progress:
                elapsed = time.perf_counter() - t_start
                self.progress({**row, "rounds": cfg.fed.rounds, "elapsed_s": elapsed})
        self.run.update_meta(status=status, rounds_completed=self.state.server_round,
                             best_round=self.state.best_round, best_val_loss=self.state.best_val_loss)
        return {"status": status, "rounds": self.state.server_round, "best_round": self.state.best_round,
                "epsilon": self.epsilon()}

    def round(self, r: int) -> dict[str, Any]:
        cfg, st = self.cfg, self.state
        t0 = time.perf_counter()
        ids = self.sample(r)
        round_cfg = {**self.strategy.client_config(r), "noise_scalars": cfg.privacy.noise_scalars}
        d = st.global_shared.size
        reports = self.pool.fit(ids, st.global_shared, r, round_cfg) if ids else []
        by_id = {rep["client_id"]: rep for rep in reports}
        for cid in ids:  # a client whose worker died has no report
            by_id.setdefault(cid, {"client_id": cid, "status": "failed", "message": "no report (worker lost)"})
        for rep in by_id.values():
            if rep.get("status") == "ok":
                norm = rep.get("update_norm", math.nan)
                if not math.isfinite(norm) or not all(math.isfinite(float(rep[k])) for k in
                                                      ("loss", "id_sim", "temp_stab")):
                    rep["status"], rep["message"] = "nonfinite", "non-finite update or scalar"
                elif norm > cfg.fed.max_update_norm:
                    rep["status"] = "rejected_norm"
                    rep["message"] = f"update norm {norm:.3g} > fed.max_update_norm {cfg.fed.max_update_norm}"
        ok = [by_id[c] for c in ids if by_id[c].get("status") == "ok"]
        for rep in ok:
            if math.isfinite(float(rep.get("sample_epsilon", math.nan))):
                self.sample_epsilon_max = max(self.sample_epsilon_max, float(rep["sample_epsilon"]))
        row: dict[str, Any] = {"server_round": r, "n_sampled": len(ids), "n_ok": len(ok),
                               "n_failed": len(ids) - len(ok), "bytes_down": len(ids) * d * 4}
        weights = np.zeros(0)
        if len(ok) < cfg.fed.min_clients:
            row["status"] = "failed"
            row["message"] = f"{len(ok)} successful clients < fed.min_clients {cfg.fed.min_clients}"
            row["bytes_up"] = 0
        else:
            weights = self.strategy.weights(ok)
            try:
                agg, n_unclipped, bytes_up = self._aggregate(r, ok, weights)
                st.global_shared = self.server_opt.step(st.global_shared, agg)
                row["status"], row["bytes_up"] = "ok", bytes_up
                if self.adaptive is not None:
                    st.clipping_norm = self.adaptive.update(
                        unclipped_count=min(max(n_unclipped, 0.0), self.expected), num_updates=self.expected)
                if self.ledger is not None:
                    from pftray.privacy.accounting import PrivacyEvent

                    self.ledger.record(PrivacyEvent(noise_multiplier=self._recorded_z(len(ok), len(ids)),
                                                    sample_rate=self.sample_rate, steps=1))
            except Exception as exc:  # e.g. SecAggAbort: the round fails, the run goes on
                if isinstance(exc, KeyboardInterrupt):
                    raise
                row["status"], row["message"], row["bytes_up"] = "failed", f"{type(exc).__name__}: {exc}", 0
        scores = self.strategy.scores(ok) if ok else np.zeros(0)
        row["train_loss"] = float(np.mean([x["loss"] for x in ok])) if ok else math.nan
        row["val_loss"] = float(np.mean([x["val_loss"] for x in ok])) if ok else math.nan
        row["epsilon"] = self.epsilon() if self.ledger is not None else math.nan
        row["clipping_norm"] = st.clipping_norm
        st.server_round = r
        if math.isfinite(row["val_loss"]) and row["val_loss"] < st.best_val_loss and row["status"] == "ok":
            st.best_val_loss, st.best_round = row["val_loss"], r
            atomic_write_bytes(self.run.checkpoints / "best.npy", _npy(st.global_shared))
        if cfg.fed.eval_every and r % cfg.fed.eval_every == 0 or r == cfg.fed.rounds:
            row.update(self.evaluate(r))
        row["wall_s"] = time.perf_counter() - t0
        self.run.append("rounds", [row], replace_round=r)
        self.run.append("clients", self._client_rows(r, ids, by_id, ok, weights, scores), replace_round=r)
        if r % cfg.fed.checkpoint_every == 0 or r == cfg.fed.rounds:
            self.checkpoint()
        return row

    def _recorded_z(self, n_ok: int, n_sampled: int) -> float:
        z = self.cfg.privacy.noise_multiplier
        if self.cfg.privacy.noise_placement == "distributed" and n_sampled:
            from pftray.privacy.dp import effective_noise_multiplier

            return effective_noise_multiplier(noise_multiplier=z, num_clients=n_sampled, num_survivors=n_ok)
        return z

    def _aggregate(self, r: int, ok: list[dict[str, Any]], weights: np.ndarray) -> tuple[np.ndarray, float, int]:
        cfg, st, p = self.cfg, self.state, self.cfg.privacy
        d = st.global_shared.size
        m = self.expected if self.dp_on else float(len(ok))
        scales = {rep["client_id"]: float(m * w) for rep, w in zip(ok, weights)}
        C = st.clipping_norm if self.dp_on else 0.0
        z = self.update_noise_multiplier
        dist_std = z * C / math.sqrt(len(ok)) if (p.noise_placement == "distributed" and z > 0) else 0.0
        seed = int(np.random.default_rng((cfg.experiment.seed, r, 11)).integers(2**62))
        if p.secagg:
            total, n_unclipped, bytes_up = self._secagg(r, scales, C, dist_std, seed)
        else:
            total, info = self.pool.contribute(scales, clipping_norm=C, noise_std=dist_std, seed=seed)
            n_unclipped = float(sum(not v["clipped"] for v in info.values()))
            for rep in ok:
                rep["clipped"] = info.get(rep["client_id"], {}).get("clipped")
            bytes_up = len(ok) * d * 4
        agg = total / m
        if p.noise_placement == "central" and z > 0:
            from pftray.privacy.dp import central_noise

            agg = agg + central_noise(d, noise_multiplier=z, clipping_norm=C, denominator=m,
                                      rng=np.random.default_rng((cfg.experiment.seed, r, 13)))
        return agg.astype(np.float32), n_unclipped, bytes_up

    def _secagg(self, r: int, scales: dict[int, float], C: float, noise_std: float,
                seed: int) -> tuple[np.ndarray, float, int]:
        """Run SecAgg+ over the pool; returns the unmasked sum (without the indicator) and the unclipped count."""
        import pickle

        from pftray.privacy.secagg import SecAggParams, SecAggServer

        p, d = self.cfg.privacy, self.state.global_shared.size
        ids = sorted(scales)
        n = len(ids)
        degree = p.secagg_degree if p.secagg_degree and p.secagg_degree < n - 1 else None
        group = n if degree is None else degree + 1
        threshold = max(2, min(group, math.ceil(p.secagg_threshold * group)))
        # the quantisation range must cover every coordinate: |c_k| <= C when clipping, else the largest scaled
        # update norm is not known to the server, so it uses max_update_norm * max scale (documented bound)
        clip_range = C if C > 0 else self.cfg.fed.max_update_norm * max(scales.values())
        params = SecAggParams(sample=tuple(ids), vector_length=d + 1, clip_range=max(clip_range, 1.0),
                              threshold=threshold, degree=degree, modulus_bits=p.secagg_modulus_bits,
                              graph_seed=seed % 2**31)
        server = SecAggServer(params)
        kw = {"scales": scales, "clipping_norm": C, "noise_std": noise_std, "seed": seed}
        msgs = server.setup()
        replies = self.pool.secagg_stage("setup", msgs, **kw)
        up = sum(len(pickle.dumps(x)) for x in replies.values())
        msgs = server.advertise_keys(replies.values())
        replies = self.pool.secagg_stage("share_keys", msgs, **kw)
        up += sum(len(pickle.dumps(x)) for x in replies.values())
        msgs = server.share_keys(replies.values())
        replies = self.pool.secagg_stage("masked_input", msgs, **kw)
        up += sum((d + 1) * p.secagg_modulus_bits // 8 for _ in replies)
        msgs = server.masked_input(replies.values())
        replies = self.pool.secagg_stage("unmask", msgs, **kw)
        up += sum(len(pickle.dumps(x)) for x in replies.values())
        outcome = server.unmask(replies.values())
        total = np.asarray(outcome.sum, dtype=np.float64)
        return total[:d], float(total[d]), up

    def _client_rows(self, r, ids, by_id, ok, weights, scores) -> list[dict[str, Any]]:
        wmap = {rep["client_id"]: (w, s) for rep, w, s in zip(ok, weights, scores)} if len(weights) else {}
        rows = []
        for cid in ids:
            rep = by_id[cid]
            w, s = wmap.get(cid, (0.0, math.nan))
            rows.append({
                "server_round": r, "client_id": int(cid), "num_examples": int(rep.get("num_examples", 0)),
                "loss": float(rep.get("loss", math.nan)), "val_loss": float(rep.get("val_loss", math.nan)),
                "id_sim": float(rep.get("id_sim", math.nan)), "temp_stab": float(rep.get("temp_stab", math.nan)),
                "score": float(s), "weight": float(w), "update_norm": float(rep.get("update_norm", math.nan)),
                "status": str(rep.get("status", "failed")), "message": str(rep.get("message", "")),
                "worker": str(rep.get("worker", "")), "node_id": str(rep.get("node_id", "")),
                "gpu_ids": str(rep.get("gpu_ids", "")), "fit_s": float(rep.get("fit_s", math.nan)),
                "sample_epsilon": float(rep.get("sample_epsilon", math.nan)),
            })
        return rows

    # ----------------------------------------------------------------------------------------- evaluate
    def evaluate(self, r: int) -> dict[str, Any]:
        try:
            rows = self.pool.evaluate(self.eval_ids, self.state.global_shared, r,
                                      save_dir=str(self.run.samples) if r == self.cfg.fed.rounds else None)
        except Exception as exc:  # evaluation must not kill training
            if isinstance(exc, KeyboardInterrupt):
                raise
            return {"eval_error": f"{type(exc).__name__}: {exc}"}
        for row in rows:
            row["server_round"] = r
        self.run.append("eval", rows, replace_round=r) if rows else None
        out = {}
        pers = [x for x in rows if x.get("model") == "personalised"]
        for k in METRIC_KEYS:
            vals = [x[k] for x in pers if isinstance(x.get(k), float) and math.isfinite(x[k])]
            if vals:
                out[k] = float(np.mean(vals))
        return out

    # ---------------------------------------------------------------------------------------- checkpoint
    def checkpoint(self) -> None:
        st = self.state
        blob = {
            "server_round": st.server_round, "global_shared": st.global_shared, "best_round": st.best_round,
            "best_val_loss": st.best_val_loss, "clipping_norm": st.clipping_norm,
            "server_opt": self.server_opt.state_dict(),
            "adaptive": self.adaptive.state_dict() if self.adaptive else None,
            "sample_epsilon_max": self.sample_epsilon_max,
            "ledger": self.ledger.state_dict() if self.ledger else None,
            "strategy": self.strategy.name,
        }
        import io

        buf = io.BytesIO()
        torch.save(blob, buf)
        name = f"round-{st.server_round:05d}.pt"
        atomic_write_bytes(self.run.checkpoints / name, buf.getvalue())
        atomic_write_text(self.run.checkpoints / "LATEST", name)
        if self.ledger is not None or self.cfg.train.dp_sgd:
            import json

            atomic_write_text(self.run.path / "privacy.json", json.dumps(self.privacy_summary(), indent=2))
        for old in sorted(self.run.checkpoints.glob("round-*.pt"))[:-2]:
            old.unlink(missing_ok=True)

    def privacy_summary(self) -> dict[str, Any]:
        p = self.cfg.privacy
        return {
            "guarantee": "client-level (user-level) DP of the shared adapter: each sampled client's whole update "
                         "is clipped to C and Gaussian noise is added to the sum (DP-FedAvg, McMahan et al. 2018)",
            "accountant": p.accountant, "delta": p.target_delta,
            "epsilon": self.epsilon() if self.ledger is not None else None,
            "noise_multiplier": p.noise_multiplier, "update_noise_multiplier": self.update_noise_multiplier,
            "sample_rate": self.sample_rate, "sampling": "poisson" if self.cfg.fed.sample_rate > 0 else
            "fixed-size (accounted as Poisson with q = clients_per_round / num_clients)",
            "rounds": self.state.server_round, "noise_placement": p.noise_placement,
            "adaptive_clipping": p.adaptive_clipping, "clipping_norm": self.state.clipping_norm,
            "secure_aggregation": p.secagg, "ledger": self.ledger.state_dict() if self.ledger else None,
            "target_epsilon": p.target_epsilon or None,
            "sample_level": {
                "epsilon_max_over_clients": self.sample_epsilon_max, "delta": p.target_delta,
                "guarantee": "per client, add/remove one training clip (opacus DP-SGD on the LoRA parameters); a "
                             "different neighbouring relation from the client-level epsilon: never add the two",
            } if self.cfg.train.dp_sgd else None,
        }

    def restore(self) -> int:
        """Load the latest checkpoint; tables are truncated to it. Returns its round (0 = nothing to resume)."""
        latest = self.run.checkpoints / "LATEST"
        if not latest.exists():
            return 0
        blob = torch.load(self.run.checkpoints / latest.read_text().strip(), map_location="cpu", weights_only=False)
        if blob["strategy"] != self.strategy.name:
            raise RunError(f"checkpoint was made with strategy {blob['strategy']!r}, config says "
                           f"{self.strategy.name!r}")
        st = self.state
        st.server_round, st.global_shared = int(blob["server_round"]), blob["global_shared"]
        st.best_round, st.best_val_loss = blob["best_round"], blob["best_val_loss"]
        st.clipping_norm = blob["clipping_norm"]
        self.sample_epsilon_max = float(blob.get("sample_epsilon_max", 0.0))
        self.server_opt.load_state_dict(blob["server_opt"])
        if self.adaptive is not None and blob["adaptive"]:
            self.adaptive.load_state_dict(blob["adaptive"])
        if self.ledger is not None and blob["ledger"]:
            self.ledger.load_state_dict(blob["ledger"])
        self.run.truncate(st.server_round)
        return st.server_round


def _npy(x: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()

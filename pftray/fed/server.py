"""The federated round loop (no Ray): sampling, weights, DP, secure aggregation, server update, tables,
evaluation, checkpoints and resume.

It drives a *pool* of client hosts through four calls, so the same loop runs in-process (tests) and over
Ray (``pftray.runtime``):

* ``pool.fit(ids, global_shared, server_round, round_cfg) -> [report]`` — local training; deltas stay on the
  hosts; reports carry scalars only;
* ``pool.contribute(scales, clipping_norm=) -> (sum, info)`` — plain aggregation of ``clip(scale_k * delta_k, C)``
  (``scale_k = None``: the client's own bounded weight), summed on each host then across hosts;
* ``pool.secagg_stage(stage, messages, ...) -> {id: reply}`` — the client side of SecAgg+ (a missing reply is
  a dropout);
* ``pool.evaluate(ids, global_shared, server_round) -> [row]``.

Round maths. Without client-level DP, ``w_k`` are the strategy's weights normalised over the ``n`` successful clients
and the server applies ``Delta = sum_k w_k Delta_k`` (each client sends ``clip(n w_k Delta_k, C)`` when a clip is
set, summed and divided by ``n``). Under secure aggregation the driver may not see any client's scalars, so each
client computes its own weight ``omega_k`` in [0, 1] on its host (:func:`pftray.fed.strategy.device_weight`) and the
normalisation ``sum_k omega_k`` rides along in the secure sum.

With client-level DP the round is run by :class:`pftray.privacy.layer.DPLayer`: Poisson sampling, the on-device
bounded weight, ``c_k = clip(omega_k Delta_k, C)``, ``Delta = (sum_k c_k + noise) / m`` with the fixed expected cohort
``m = q N``. A client's contribution is bounded by ``C`` whatever any client reports, so the sampled-Gaussian (or
Skellam) accounting holds for every strategy.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pftray.config import Config
from pftray.errors import RuntimeFailure
from pftray.fed.pool import Pool
from pftray.fed.strategy import ServerOptimizer, make_strategy
from pftray.privacy.dp import AdaptiveClipping
from pftray.privacy.layer import DPLayer
from pftray.results import RunDir, atomic_write_bytes, atomic_write_text

METRIC_KEYS = ("psnr", "ssim", "mouth_psnr", "mouth_ssim", "shift_psnr", "lip_sync", "jitter", "temp_stab_eval")


class RunError(RuntimeFailure):
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
        if self.strategy.central and len(getattr(pool, "hosts", ())) != 1:
            raise RunError("fed.strategy 'pooled' trains centrally, in one process: run it in-process with one host "
                           "(pftray run --local)")
        self.server_opt = ServerOptimizer.from_config(cfg.fed)
        self.num_registered = num_registered
        self.progress = progress
        p = cfg.privacy
        self.dp: DPLayer | None = None
        if p.noise_multiplier > 0:
            try:
                self.dp = DPLayer(noise_multiplier=p.noise_multiplier, clipping_norm=p.clipping_norm,
                                  sample_rate=cfg.fed.sample_rate, num_registered=num_registered,
                                  placement=p.noise_placement, adaptive=p.adaptive_clipping,
                                  target_quantile=p.target_quantile, clip_lr=p.clip_lr,
                                  clipped_count_stddev=p.clipped_count_stddev, delta=p.target_delta,
                                  accountant=p.accountant, target_epsilon=p.target_epsilon,
                                  modulus_bits=p.secagg_modulus_bits)
            except ValueError as exc:
                raise RunError(str(exc)) from None
        self.state = ServerState(0, initial_shared.astype(np.float32), clipping_norm=p.clipping_norm)
        self.sample_rate = cfg.fed.sample_rate or cfg.fed.clients_per_round / num_registered
        self.adaptive = None  # adaptive clipping without DP noise (with DP the layer owns it)
        if p.adaptive_clipping and self.dp is None and p.clipping_norm > 0:
            self.adaptive = AdaptiveClipping(p.clipping_norm, target_quantile=p.target_quantile, clip_lr=p.clip_lr)
        self.eval_ids = list(range(min(cfg.fed.eval_clients, num_registered)))
        self.sample_epsilon_max = 0.0  # sample-level DP-SGD: the largest per-client epsilon seen so far

    # ------------------------------------------------------------------------------------------ privacy
    @property
    def ledger(self):
        return self.dp.ledger if self.dp is not None else None

    def epsilon(self) -> float:
        return self.dp.epsilon() if self.dp is not None else math.nan

    def _release_allowed(self, r: int, event) -> bool:
        """False (and the run stops) when releasing ``event`` would exceed ``privacy.target_epsilon``."""
        exceed, eps = self.dp.would_exceed(event)
        if exceed and not self.dp.ledger.events:
            raise RunError(f"privacy.target_epsilon {self.cfg.privacy.target_epsilon} would be exceeded by the first "
                           f"round (epsilon {eps:.3f}); raise the noise multiplier")
        return not exceed

    # ------------------------------------------------------------------------------------------ sampling
    def sample(self, server_round: int) -> list[int]:
        """Under DP: Poisson sampling from secret randomness (the layer). Otherwise seeded, so runs reproduce."""
        if self.dp is not None:
            return self.dp.sample()
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
            row = self.round(r)
            if row is None:  # releasing this round would exceed privacy.target_epsilon: nothing was released
                status = "budget_exhausted"
                break
            if self.progress:
                elapsed = time.perf_counter() - t_start
                self.progress({**row, "rounds": cfg.fed.rounds, "elapsed_s": elapsed})
        self.run.update_meta(status=status, rounds_completed=self.state.server_round,
                             best_round=self.state.best_round, best_val_loss=self.state.best_val_loss)
        return {"status": status, "rounds": self.state.server_round, "best_round": self.state.best_round,
                "epsilon": self.epsilon()}

    def round(self, r: int) -> dict[str, Any] | None:
        """Run round ``r``; ``None`` when releasing it would exceed ``privacy.target_epsilon`` (nothing released)."""
        cfg, st, p = self.cfg, self.state, self.cfg.privacy
        t0 = time.perf_counter()
        if self.dp is not None and self.dp.placement == "central" and not self._release_allowed(r, self.dp.central_event()):
            return None
        ids = list(range(self.num_registered)) if self.strategy.central else self.sample(r)
        private = p.secagg  # under secure aggregation no per-client value reaches the driver
        round_cfg = {**self.strategy.client_config(r), "noise_scalars": p.noise_scalars, "private_reports": private,
                     "dp_weight": (self.strategy.device_weight_spec(p.example_cap)
                                   if self.dp is not None or private else None)}
        if cfg.eval.local_baseline and self.strategy.aggregates and not self.strategy.central:
            round_cfg["local_baseline_ids"] = list(self.eval_ids)  # their local-only shadows train beside them
        if self.strategy.central:  # the federated methods' expected compute per round
            per_round = cfg.fed.sample_rate * self.num_registered if cfg.fed.sample_rate > 0 else cfg.fed.clients_per_round
            round_cfg["pooled_steps"] = max(1, round(per_round * cfg.train.local_steps))
        d = st.global_shared.size
        reports = self.pool.fit(ids, st.global_shared, r, round_cfg) if ids else []
        by_id = {rep["client_id"]: rep for rep in reports}
        for cid in ids:  # a client whose worker died has no report
            by_id.setdefault(cid, {"client_id": cid, "status": "failed", "message": "no report (worker lost)"})
        ok = [by_id[c] for c in ids if by_id[c].get("status") == "ok"]
        for rep in ok:
            if math.isfinite(float(rep.get("sample_epsilon", math.nan))):
                self.sample_epsilon_max = max(self.sample_epsilon_max, float(rep["sample_epsilon"]))
        communicates = self.strategy.aggregates and not self.strategy.central  # baselines send nothing
        row: dict[str, Any] = {"server_round": r, "n_sampled": len(ids), "n_ok": len(ok),
                               "n_failed": len(ids) - len(ok), "bytes_down": len(ids) * d * 4 if communicates else 0}
        weights = np.zeros(0)
        # central DP releases every round, noise included, however few clients succeeded: skipping a round because
        # too few took part would itself reveal a data-dependent count that no noise covers
        always_release = self.dp is not None and self.dp.placement == "central"
        if len(ok) < cfg.fed.min_clients and not always_release:
            row["status"] = "failed"
            row["message"] = f"{len(ok)} successful clients < fed.min_clients {cfg.fed.min_clients}"
            row["bytes_up"] = 0
        elif not self.strategy.aggregates:  # local only: every client keeps its own adapters, nothing is summed
            weights = np.full(len(ok), np.nan)
            row["status"], row["bytes_up"] = "ok", 0
        else:
            weights = self.strategy.weights(ok) if round_cfg["dp_weight"] is None else np.full(len(ok), np.nan)
            try:
                out = self._aggregate(r, ok, weights)
                if out is None:
                    return None
                agg, centred_count, bytes_up = out
                st.global_shared = self.server_opt.step(st.global_shared, agg)
                row["status"], row["bytes_up"] = "ok", bytes_up if communicates else 0
                if self.dp is not None:
                    st.clipping_norm = self.dp.update_clipping(centred_count, noised=self._count_noised)
                elif self.adaptive is not None:
                    st.clipping_norm = self.adaptive.step(noised_centred_count=centred_count, num_updates=len(ok))
            except Exception as exc:  # e.g. SecAggAbort: the round fails (nothing released), the run goes on
                if isinstance(exc, KeyboardInterrupt):
                    raise
                row["status"], row["message"], row["bytes_up"] = "failed", f"{type(exc).__name__}: {exc}", 0
        scores = self.strategy.scores(ok) if ok and not private else np.full(len(ok), np.nan)
        row["train_loss"] = float(np.mean([x["loss"] for x in ok])) if ok and not private else math.nan
        row["val_loss"] = float(np.mean([x["val_loss"] for x in ok])) if ok and not private else math.nan
        row["epsilon"] = self.epsilon()
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

    @property
    def _count_noised(self) -> bool:
        """Whether the centred count already carries its noise (distributed DP: the clients' Skellam shares)."""
        return self.dp is not None and self.dp.placement == "distributed"

    @property
    def view(self) -> str:
        """Which per-client values the driver held, for the ``view`` column of ``clients.parquet``."""
        if self.cfg.privacy.secagg:
            return "secagg: per-client values withheld from the driver (status and placement only)"
        if self.dp is not None:
            return "trusted driver (central DP): per-client values in the clear, NOT covered by DP; keep private"
        return "no client-level DP: per-client values in the clear"

    def _aggregate(self, r: int, ok: list[dict[str, Any]],
                   weights: np.ndarray) -> tuple[np.ndarray, float, int] | None:
        """The round's aggregated delta, the centred unclipped count and the upload bytes (None: budget refused)."""
        p, d, dp = self.cfg.privacy, self.state.global_shared.size, self.dp
        C = dp.clipping_norm if dp is not None else self.state.clipping_norm
        if p.secagg:
            return self._secagg(r, ok, C)
        if dp is not None:  # central DP, trusted driver: on-device bounded weights, fixed denominator m
            total, info = (self.pool.contribute({rep["client_id"]: None for rep in ok}, clipping_norm=C) if ok
                           else (np.zeros(d), {}))
            self._note_clipping(ok, info)
            centred = float(sum((not v["clipped"]) - 0.5 for v in info.values()))
            noised = total + dp.central_noise(d)
            self.dp.record(dp.central_event())
            return (noised / dp.denominator).astype(np.float32), centred, len(ok) * d * 4
        n = float(len(ok))
        scales = {rep["client_id"]: float(n * w) for rep, w in zip(ok, weights)}
        total, info = self.pool.contribute(scales, clipping_norm=C)
        self._note_clipping(ok, info, weights=False)
        centred = float(sum((not v["clipped"]) - 0.5 for v in info.values()))
        return (total / n).astype(np.float32), centred, len(ok) * d * 4

    @staticmethod
    def _note_clipping(ok: list[dict[str, Any]], info: dict[int, dict[str, Any]], *, weights: bool = True) -> None:
        for rep in ok:
            rep["clipped"] = info.get(rep["client_id"], {}).get("clipped")
            if weights:  # the on-device DP weight, which the trusted driver of central DP sees
                rep["device_weight"] = info.get(rep["client_id"], {}).get("weight")

    def _secagg(self, r: int, ok: list[dict[str, Any]], C: float) -> tuple[np.ndarray, float, int] | None:
        """SecAgg+ over the pool. Each client sends ``[clip(omega delta, C), kappa (b - 1/2), omega]`` (the last
        coordinate 0 under DP, whose denominator is fixed); under distributed DP it adds Skellam shares in the integer
        domain. Returns the aggregated delta, the centred count (noised under distributed DP) and upload bytes."""
        import pickle

        from pftray.privacy.secagg import SecAggParams, SecAggServer

        p, d, dp = self.cfg.privacy, self.state.global_shared.size, self.dp
        ids = sorted(rep["client_id"] for rep in ok)
        n = len(ids)
        degree = p.secagg_degree if p.secagg_degree and p.secagg_degree < n - 1 else None
        group = n if degree is None else degree + 1
        threshold = max(2, min(group, math.ceil(p.secagg_threshold * group)))
        graph_seed = int.from_bytes(os.urandom(4), "little") % 2**31
        kw: dict[str, Any] = {"scales": None, "clipping_norm": C, "count_scale": 1.0, "skellam_mu": 0.0}
        plan = None
        if dp is not None and dp.placement == "distributed":
            # the fewest survivors SecAgg accepts: with a neighbour graph a sum needs every group's threshold
            plan = dp.distributed_plan(dim=d + 1, num_clients=n, threshold=threshold)
            if not self._release_allowed(r, dp.distributed_event(plan, plan.threshold)):
                return None
            kw.update(count_scale=plan.count_scale, skellam_mu=plan.mu_share, send_weight=False)
            params = SecAggParams(sample=tuple(ids), vector_length=d + 2, clip_range=max(C, 1.0), threshold=threshold,
                                  degree=degree, modulus_bits=p.secagg_modulus_bits, graph_seed=graph_seed,
                                  signed_bound=plan.signed_bound, signed_scale=plan.scale)
        else:
            kw["send_weight"] = dp is None
            clip_range = C if C > 0 else self.cfg.fed.max_update_norm  # omega <= 1: |omega delta| <= max norm
            params = SecAggParams(sample=tuple(ids), vector_length=d + 2, clip_range=max(clip_range, 1.0),
                                  threshold=threshold, degree=degree, modulus_bits=p.secagg_modulus_bits,
                                  graph_seed=graph_seed)
        server = SecAggServer(params)
        msgs = server.setup()
        replies = self.pool.secagg_stage("advertise_keys", msgs, **kw)
        up = sum(len(pickle.dumps(x)) for x in replies.values())
        msgs = server.advertise_keys(replies.values())
        replies = self.pool.secagg_stage("share_keys", msgs, **kw)
        up += sum(len(pickle.dumps(x)) for x in replies.values())
        msgs = server.share_keys(replies.values())
        replies = self.pool.secagg_stage("masked_input", msgs, **kw)
        up += sum((d + 2) * p.secagg_modulus_bits // 8 for _ in replies)
        msgs = server.masked_input(replies.values())
        replies = self.pool.secagg_stage("unmask", msgs, **kw)
        up += sum(len(pickle.dumps(x)) for x in replies.values())
        outcome = server.unmask(replies.values())
        total = np.asarray(outcome.sum, dtype=np.float64)
        if dp is None:
            wsum = float(total[d + 1])
            if not wsum > 0:
                raise RuntimeError("the clients' weights sum to 0: nothing to aggregate")
            return (total[:d] / wsum).astype(np.float32), float(total[d]), up
        if plan is not None:
            dp.record(dp.distributed_event(plan, len(outcome.survivors)))
            return (total[:d] / dp.denominator).astype(np.float32), float(total[d]) / plan.count_scale \
                if plan.count_scale > 0 else 0.0, up
        # central DP under SecAgg: the trusted driver adds the noise to the unmasked sum
        dp.record(dp.central_event())
        noised = total[:d] + dp.central_noise(d)
        return (noised / dp.denominator).astype(np.float32), float(total[d]), up

    def _client_rows(self, r, ids, by_id, ok, weights, scores) -> list[dict[str, Any]]:
        wmap = {rep["client_id"]: (w, s) for rep, w, s in zip(ok, weights, scores)} if len(weights) else {}
        view = self.view
        rows = []
        for cid in ids:
            rep = by_id[cid]
            w, s = wmap.get(cid, (0.0, math.nan))
            if rep.get("device_weight") is not None:
                w = rep["device_weight"]
            rows.append({
                "server_round": r, "client_id": int(cid), "num_examples": int(rep.get("num_examples", -1)),
                "loss": float(rep.get("loss", math.nan)), "val_loss": float(rep.get("val_loss", math.nan)),
                "id_sim": float(rep.get("id_sim", math.nan)), "temp_stab": float(rep.get("temp_stab", math.nan)),
                "score": float(s), "weight": float(w), "update_norm": float(rep.get("update_norm", math.nan)),
                "status": str(rep.get("status", "failed")), "message": str(rep.get("message", "")),
                "worker": str(rep.get("worker", "")), "node_id": str(rep.get("node_id", "")),
                "gpu_ids": str(rep.get("gpu_ids", "")), "fit_s": float(rep.get("fit_s", math.nan)),
                "sample_epsilon": float(rep.get("sample_epsilon", math.nan)), "view": view,
            })
        return rows

    # ----------------------------------------------------------------------------------------- evaluate
    def evaluate(self, r: int) -> dict[str, Any]:
        try:
            rows = self.pool.evaluate(self.eval_ids, self.state.global_shared, r, baseline=self.cfg.eval.baseline,
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
            "dp": self.dp.state_dict() if self.dp is not None else None,
            "strategy": self.strategy.name,
        }
        import io

        buf = io.BytesIO()
        torch.save(blob, buf)
        name = f"round-{st.server_round:05d}.pt"
        atomic_write_bytes(self.run.checkpoints / name, buf.getvalue())
        atomic_write_text(self.run.checkpoints / "LATEST", name)
        if self.ledger is not None or self.cfg.privacy.dp_sgd:
            import json

            atomic_write_text(self.run.path / "privacy.json", json.dumps(self.privacy_summary(), indent=2))
        for old in sorted(self.run.checkpoints.glob("round-*.pt"))[:-2]:
            old.unlink(missing_ok=True)

    def privacy_summary(self) -> dict[str, Any]:
        p, dp = self.cfg.privacy, self.dp
        return {
            "guarantee": "client-level (user-level) DP of the shared adapter under add/remove-one-client adjacency: each "
                         "Poisson-sampled client's bounded-weight update is clipped to C and noise is added to the sum "
                         "over a fixed denominator (DP-FedAvg, McMahan et al. 2018); see the README's threat model",
            "deployment": None if dp is None else (
                "distributed DP + secure aggregation (honest-but-curious driver)" if dp.placement == "distributed"
                else "central DP (trusted driver)"),
            "accountant": p.accountant, "delta": p.target_delta,
            "epsilon": self.epsilon() if dp is not None else None,
            "noise_multiplier": p.noise_multiplier,
            "update_noise_multiplier": dp.update_noise_multiplier if dp is not None else None,
            "clipped_count_stddev": dp.sigma_b if dp is not None else None,
            "sample_rate": dp.sample_rate if dp is not None else self.sample_rate,
            "sampling": "poisson" if self.cfg.fed.sample_rate > 0 else "fixed-size (no DP claimed)",
            "denominator": dp.denominator if dp is not None else None,
            "randomness": "noise, sampling and count noise from the OS CSPRNG, never from experiment.seed: this run's "
                          "noise is deliberately not reproducible" if dp is not None else "seeded (no DP)",
            "rounds": self.state.server_round, "noise_placement": p.noise_placement,
            "adaptive_clipping": p.adaptive_clipping, "clipping_norm": self.state.clipping_norm,
            "secure_aggregation": p.secagg, "ledger": self.ledger.state_dict() if self.ledger else None,
            "target_epsilon": p.target_epsilon or None,
            "sample_level": {
                "epsilon_max_over_clients": self.sample_epsilon_max, "delta": p.target_delta,
                "guarantee": "per client, add/remove one training clip (opacus DP-SGD on the LoRA parameters); a "
                             "different neighbouring relation from the client-level epsilon: never add the two",
            } if self.cfg.privacy.dp_sgd else None,
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
        if self.adaptive is not None and blob.get("adaptive"):
            self.adaptive.load_state_dict(blob["adaptive"])
        if self.dp is not None and blob.get("dp"):
            self.dp.load_state_dict(blob["dp"])
        self.run.truncate(st.server_round)
        return st.server_round


def _npy(x: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, x)
    return buf.getvalue()

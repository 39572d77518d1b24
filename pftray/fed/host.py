"""A client host: the plain object that one worker (a Ray actor, or the test process) uses to run many clients.

It owns one model instance on one device, materialises client data on demand, keeps at most
``runtime.resident_clients`` private client states in memory (the rest live on disk under the run directory,
versioned by round so that a resumed run reads exactly the state of its checkpoint), and holds each trained
client's update until the server has decided the aggregation weights. Only scalars, weighted/clipped/noised
(partial) sums or secure-aggregation messages leave it.
"""

from __future__ import annotations

import functools
import os
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pftray.config import Config
from pftray.data import ClientData
from pftray.fed.client import ClientState, ClientTrainer, ClientUpdate
from pftray.fed.strategy import device_weight
from pftray.privacy.dp import clip_update
from pftray.privacy.layer import bounded_weight, secure_generator, skellam_noise

#: what a client's report to the driver keeps when per-client values must not reach it (secure aggregation)
#: (placement only: no scalar, not even the training time, which would leak the example count)
PUBLIC_REPORT_KEYS = ("client_id", "status", "message", "worker", "node_id", "gpu_ids")


class ClientProvider:
    """Client data by id: synthetic clients are generated deterministically on demand; prepared real data is
    read from its shards. A small LRU cache avoids regenerating clients sampled in consecutive rounds."""

    def __init__(self, cfg: Config, cache_size: int = 16):
        self.cfg = cfg
        self.cache: OrderedDict[int, ClientData] = OrderedDict()
        self.cache_size = cache_size
        self._shards: list[Path] | None = None
        if cfg.data.source != "synthetic":
            root = Path(cfg.data.source)
            if not root.is_dir():
                raise FileNotFoundError(f"data.source: {root} is not a folder made by `pftray data prepare`")
            self._shards = sorted(root.glob("client-*.parquet"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
            if not self._shards:
                raise FileNotFoundError(f"data.source: {root} holds no client-*.parquet shards")

    @property
    def num_clients(self) -> int:
        return len(self._shards) if self._shards is not None else self.cfg.data.num_clients

    def synthetic_kwargs(self) -> dict[str, Any]:
        d = self.cfg.data
        return dict(num_clients=d.num_clients, clips_per_client=d.clips_per_client, heldout_clips=d.heldout_clips,
                    frames_per_clip=d.frames_per_clip, resolution=d.resolution, quantity_skew=d.quantity_skew,
                    unreliable_fraction=d.unreliable_fraction, unreliable_kinds=tuple(d.unreliable_kinds),
                    n_mels=d.n_mels, audio_window=d.audio_window, seed=self.cfg.experiment.seed,
                    shift_severity=d.shift_severity)

    def get(self, client_id: int) -> ClientData:
        if client_id in self.cache:
            self.cache.move_to_end(client_id)
            return self.cache[client_id]
        if not 0 <= client_id < self.num_clients:
            raise KeyError(f"client {client_id} is not registered (0..{self.num_clients - 1})")
        if self._shards is not None:
            from pftray.data import load_client_shard

            client = load_client_shard(self._shards[client_id])
            client.client_id = client_id
        else:
            from pftray.data import make_client

            client = make_client(client_id, **self.synthetic_kwargs())
        self.cache[client_id] = client
        while len(self.cache) > self.cache_size:
            self.cache.popitem(last=False)
        return client


class ClientStateStore:
    """Private client states on disk (``clients/<id>/r<round>.pt``) with an in-memory LRU of resident states."""

    def __init__(self, root: str | Path, resident: int = 8, keep: int = 2):
        self.root = Path(root)
        self.resident: OrderedDict[int, tuple[int, ClientState]] = OrderedDict()
        self.max_resident, self.keep = resident, keep

    def _dir(self, client_id: int) -> Path:
        return self.root / str(client_id)

    def load(self, client_id: int, *, before_round: int) -> ClientState | None:
        """The newest state written at a round < ``before_round`` (None for a client never trained).

        The resident copy is used only while it is the newest on disk: with dynamic dispatch another worker may
        have trained (and saved) this client since."""
        d = self._dir(client_id)
        rounds = sorted(int(p.stem[1:]) for p in d.glob("r*.pt") if p.stem[1:].isdigit()) if d.exists() else []
        rounds = [r for r in rounds if r < before_round]
        hit = self.resident.get(client_id)
        if hit is not None and hit[0] < before_round and (not rounds or hit[0] >= rounds[-1]):
            self.resident.move_to_end(client_id)
            return hit[1]
        return ClientState.load(d / f"r{rounds[-1]}.pt") if rounds else None

    def save(self, client_id: int, server_round: int, state: ClientState) -> None:
        d = self._dir(client_id)
        d.mkdir(parents=True, exist_ok=True)
        state.save(d / f"r{server_round}.pt")
        old = sorted((int(p.stem[1:]) for p in d.glob("r*.pt") if p.stem[1:].isdigit()), reverse=True)
        for r in old[self.keep:]:
            (d / f"r{r}.pt").unlink(missing_ok=True)
        if self.max_resident > 0:
            self.resident[client_id] = (server_round, state)
            self.resident.move_to_end(client_id)
            while len(self.resident) > self.max_resident:
                self.resident.popitem(last=False)


class ClientHost:
    """Hosts many clients on one device; the unit that a Ray worker actor wraps."""

    def __init__(self, cfg: Config, run_dir: str | Path, *, device: str = "cpu", worker: str = "local",
                 overrides: dict[str, Any] | None = None):
        if overrides:
            cfg = cfg.replace(**overrides)
        self.cfg = cfg
        self.device = device
        self.worker = worker
        torch.manual_seed(cfg.experiment.seed)
        self.trainer = ClientTrainer(cfg, device=device)
        self.data = ClientProvider(cfg)
        self.states = ClientStateStore(Path(run_dir) / "clients", resident=cfg.runtime.resident_clients)
        #: local-only shadows of the evaluated clients (``eval.local_baseline``): never sent, evaluated as "local"
        self.shadows = ClientStateStore(Path(run_dir) / "clients-local", resident=0)
        self.pending: dict[int, ClientUpdate] = {}
        self.omega: dict[int, float] = {}  # on-device DP weights of the pending updates
        self.secagg: dict[int, Any] = {}
        self.round = -1  # the round whose updates ``pending`` holds

    # ------------------------------------------------------------------------------------------------ fit
    def fit(self, client_ids: list[int], global_shared: np.ndarray, server_round: int,
            round_cfg: dict[str, Any]) -> list[dict[str, Any]]:
        """Train each client locally; keep its delta here; return its scalar report.

        A round may reach this host in several calls (dynamic dispatch sends chunks of clients to whichever worker
        is free), so the deltas kept from earlier rounds are dropped at the first call of a new round only."""
        if server_round != self.round:
            self.pending.clear()
            self.omega.clear()
            self.secagg.clear()
            self.round = server_round
        if round_cfg.get("pooled"):
            return self._fit_pooled(client_ids, global_shared, server_round, round_cfg)
        local = bool(round_cfg.get("local_shared"))
        reports = []
        for cid in client_ids:
            t0 = time.perf_counter()
            try:
                update = self._train(cid, global_shared, server_round, round_cfg)
                sigma = float(round_cfg.get("noise_scalars", 0.0))
                if sigma > 0:  # a privacy measure: secret noise, never regenerable from the config
                    rng = secure_generator()
                    update.id_sim += float(rng.normal(0, sigma))
                    update.temp_stab += float(rng.normal(0, sigma))
                self._screen(update)
                rep = update.scalars()
                if update.status == "ok" and not local:  # local-only: nothing is kept for the server
                    self.pending[cid] = update
                    if round_cfg.get("dp_weight"):
                        self.omega[cid] = bounded_weight(device_weight(rep, round_cfg["dp_weight"]))
            except Exception as exc:  # a failing client must not take its worker's other clients down
                if isinstance(exc, KeyboardInterrupt):
                    raise
                rep = {"client_id": cid, "status": "error", "message": f"{type(exc).__name__}: {exc}"}
            rep.update(worker=self.worker, node_id=_node_id(), gpu_ids=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                       fit_s=time.perf_counter() - t0)
            if round_cfg.get("private_reports"):  # secure aggregation: no per-client value reaches the driver
                rep = {k: rep[k] for k in PUBLIC_REPORT_KEYS if k in rep}
                if rep.get("status") != "ok":
                    rep["message"] = "withheld under secure aggregation"
            reports.append(rep)
        return reports

    def _train(self, cid: int, global_shared: np.ndarray, server_round: int,
               round_cfg: dict[str, Any]) -> ClientUpdate:
        """Local training of one client (its new private state is saved here); the rest of :meth:`fit` is the same
        for every kind of client, which lets tests substitute a stand-in trainer."""
        client = self.data.get(cid)
        state = self.states.load(cid, before_round=server_round)
        update, new_state = self.trainer.fit(client, state, global_shared, server_round=server_round,
                                             mu=float(round_cfg.get("mu", 0.0)),
                                             local_shared=bool(round_cfg.get("local_shared")))
        if round_cfg.get("fault_nan_clients") and cid in round_cfg["fault_nan_clients"]:
            update.delta[:] = np.nan  # fault injection for tests of the server's rejection path
            update.status, update.message = "nonfinite", "update contains NaN/Inf"
        self.states.save(cid, server_round, new_state)
        if cid in round_cfg.get("local_baseline_ids", ()):
            self._train_shadow(client, server_round)
        return update

    @functools.cached_property
    def initial_shared(self) -> np.ndarray:
        """The round-0 shared adapter (:func:`pftray.model.factory.initial_shared`): the trainer's model was built
        from the same seed, so it is that model's shared-adapter template, with no second model built."""
        from pftray.model.adapters import flatten_state

        return flatten_state(self.trainer.template)

    def _shadow_for_eval(self, cid: int, server_round: int) -> ClientState:
        """The local-only shadow as of ``server_round``; a client never sampled yet has its untrained start (so the
        'local' rows cover the same clients as the personalised ones)."""
        from pftray.model.factory import initial_identity_state

        shadow = self.shadows.load(cid, before_round=server_round + 1)
        if shadow is None:
            shadow = ClientState(initial_identity_state(self.trainer.model, cid, self.cfg.experiment.seed),
                                 shared=self.initial_shared)
        return shadow

    def _train_shadow(self, client: ClientData, server_round: int) -> None:
        """The client's local-only shadow: both adapters on its own clips for the same local steps, the shared one
        starting from the data-independent initialisation (never from the federated global); nothing is sent."""
        shadow = self.shadows.load(client.client_id, before_round=server_round)
        _, new_shadow = self.trainer.fit(client, shadow, self.initial_shared, server_round=server_round,
                                         local_shared=True)
        self.shadows.save(client.client_id, server_round, new_shadow)

    def _fit_pooled(self, client_ids: list[int], global_shared: np.ndarray, server_round: int,
                    round_cfg: dict[str, Any]) -> list[dict[str, Any]]:
        """The pooled baseline: one central training over all ``client_ids``' clips on this host
        (:meth:`ClientTrainer.fit_pooled`); every client reports, and keeps for the sum, the same pooled delta."""
        t0 = time.perf_counter()
        clients = [self.data.get(cid) for cid in client_ids]
        states = [self.states.load(cid, before_round=server_round) for cid in client_ids]
        updates, new_states = self.trainer.fit_pooled(clients, states, global_shared, server_round=server_round,
                                                      steps=int(round_cfg["pooled_steps"]))
        reports = []
        for cid, update, new_state in zip(client_ids, updates, new_states):
            self.states.save(cid, server_round, new_state)
            self._screen(update)
            if update.status == "ok":
                self.pending[cid] = update
            rep = update.scalars()
            rep.update(worker=self.worker, node_id=_node_id(), gpu_ids=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                       fit_s=(time.perf_counter() - t0) / max(1, len(client_ids)))
            reports.append(rep)
        return reports

    def _screen(self, update: ClientUpdate) -> None:
        """Reject, on the client's own host, an update the server must never sum: non-finite values or an absurd
        norm (``fed.max_update_norm``). The driver learns only the status."""
        if update.status != "ok":
            return
        scalars = (update.update_norm, update.loss, update.id_sim, update.temp_stab)
        if not all(np.isfinite(float(x)) for x in scalars) or not np.all(np.isfinite(update.delta)):
            update.status, update.message = "nonfinite", "non-finite update or scalar"
        elif update.update_norm > self.cfg.fed.max_update_norm:
            update.status = "rejected_norm"
            update.message = f"update norm {update.update_norm:.3g} > fed.max_update_norm {self.cfg.fed.max_update_norm}"

    def _prepared(self, cid: int, scale: float | None, clipping_norm: float) -> tuple[np.ndarray, float, bool, float]:
        """``clip(w delta, C)`` with ``w`` the server's scale, or (``scale=None``, under DP) the client's own bounded
        weight. Returns ``(vector, norm before clipping, was_clipped, w)``."""
        upd = self.pending[cid]
        w = bounded_weight(self.omega.get(cid, 0.0)) if scale is None else float(scale)
        v = upd.delta * np.float32(w)
        norm, clipped = float(np.linalg.norm(v)), False
        if clipping_norm > 0:
            v, norm, clipped = clip_update(v, clipping_norm)
        return v.astype(np.float32), norm, clipped, w

    def contribute(self, scales: dict[int, float | None], *, clipping_norm: float = 0.0,
                   **_: Any) -> tuple[np.ndarray, dict[int, dict[str, Any]]]:
        """Sum over this host's clients of ``clip(w_k delta_k, C)``, and per client its norm, clip flag and weight
        (for the trusted driver of central DP or a run without DP; under secure aggregation see :meth:`secagg_stage`)."""
        total, info = None, {}
        for cid, scale in scales.items():
            v, norm, clipped, w = self._prepared(cid, scale, clipping_norm)
            total = v.astype(np.float64) if total is None else total + v
            info[cid] = {"update_norm_scaled": norm, "clipped": clipped, "weight": w}
        self.pending.clear()
        self.omega.clear()
        return total, info

    # ------------------------------------------------------------------------------------------- secagg
    def secagg_stage(self, stage: str, messages: dict[int, Any], *, scales: dict[int, float | None] | None = None,
                     clipping_norm: float = 0.0, count_scale: float = 1.0, skellam_mu: float = 0.0,
                     send_weight: bool = False, **_: Any) -> dict[int, Any]:
        """Run one SecAgg+ client stage for the hosted clients addressed in ``messages``.

        At ``masked_input`` each client encodes ``[clip(w delta, C), count_scale (b - 1/2), w or 0]``, with ``b`` its
        unclipped indicator and ``w`` its weight (summed for the normalisation of a run without DP) (adaptive clipping learns only the centred count over the survivors, never who was clipped), and,
        under distributed DP, adds ``Skellam(skellam_mu)`` integer noise to every coordinate of its fixed-point vector
        from secret randomness before masking."""
        from pftray.privacy.secagg import SecAggClient

        replies = {}
        for cid, msg in messages.items():
            if stage == "advertise_keys":  # the client answers the setup message with its public keys
                self.secagg[cid] = SecAggClient(cid)
                replies[cid] = self.secagg[cid].setup(msg)
            elif stage == "share_keys":
                replies[cid] = self.secagg[cid].share_keys(msg)
            elif stage == "masked_input":
                scale = scales.get(cid) if scales is not None else None
                v, norm, clipped, _w = self._prepared(cid, scale, clipping_norm)
                extra = [count_scale * ((0.0 if clipped else 1.0) - 0.5), _w if send_weight else 0.0]
                vec = np.concatenate([v, np.array(extra, np.float32)])
                if skellam_mu > 0:
                    noise = skellam_noise(vec.shape, skellam_mu, secure_generator())
                    replies[cid] = self.secagg[cid].masked_input(msg, vec, integer_noise=noise)
                else:
                    replies[cid] = self.secagg[cid].masked_input(msg, vec)
            elif stage == "unmask":
                replies[cid] = self.secagg[cid].unmask(msg)
            else:
                raise ValueError(f"unknown secagg stage {stage!r}")
        if stage == "unmask":
            self.secagg.clear()
            self.pending.clear()
            self.omega.clear()
        return replies

    # ----------------------------------------------------------------------------------------- evaluate
    def evaluate(self, client_ids: list[int], global_shared: np.ndarray, server_round: int, *,
                 baseline: bool = True, save_dir: str | None = None) -> list[dict[str, Any]]:
        from pftray.fed.heldout import evaluate_client

        rows = []
        for cid in client_ids:
            client = self.data.get(cid)
            state = self.states.load(cid, before_round=server_round + 1)
            shadow = self._shadow_for_eval(cid, server_round) if self.cfg.eval.local_baseline else None
            rows += evaluate_client(self.trainer, client, state, global_shared, server_round=server_round,
                                    cfg=self.cfg, baseline=baseline, save_dir=save_dir, local_state=shadow)
        return rows

    def ping(self) -> dict[str, Any]:
        import resource

        return {"worker": self.worker, "node_id": _node_id(), "gpu_ids": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
                "pid": os.getpid(), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "resident_states": len(self.states.resident), "cached_clients": len(self.data.cache)}


def _node_id() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray there is no node id
        pass
    return "local"

"""A stand-in client host for attacking the privacy mechanism: the real ClientHost pipeline (screening, on-device
bounded weights, report stripping, clipping, SecAgg client, Skellam shares) around a trainer replaced by prescribed
deltas and scalars, so a round costs milliseconds and the adversary controls every report."""

from __future__ import annotations

from typing import Any

import numpy as np

from pftray.config import dump_config
from pftray.fed.client import ClientUpdate
from pftray.fed.host import ClientHost
from pftray.fed.pool import LocalPool
from pftray.fed.server import FederatedServer
from pftray.results import RunDir
from tests.tinycfg import tiny_config


class StandInHost(ClientHost):
    def __init__(self, cfg, deltas: dict[int, np.ndarray], scalars: dict[int, dict[str, Any]] | None = None,
                 *, absent: set[int] = frozenset(), drop_at: dict[str, set[int]] | None = None, worker: str = "s0"):
        self.cfg, self.device, self.worker = cfg, "cpu", worker
        self.pending, self.omega, self.secagg, self.round = {}, {}, {}, -1
        self.deltas, self.scalars, self.absent = deltas, scalars or {}, set(absent)
        self.drop_at = drop_at or {}
        self.seen_kw: list[dict[str, Any]] = []

    def _train(self, cid, global_shared, server_round, round_cfg) -> ClientUpdate:
        if cid in self.absent:
            raise RuntimeError("this client is not in the data set")
        d = np.asarray(self.deltas[cid], np.float32)
        sc = {"num_examples": 10, "loss": 0.1, "id_sim": 0.9, "temp_stab": 0.9, **self.scalars.get(cid, {})}
        return ClientUpdate(client_id=cid, num_examples=sc["num_examples"], loss=sc["loss"], diffusion_loss=sc["loss"],
                            tdc_loss=0.0, id_sim=sc["id_sim"], temp_stab=sc["temp_stab"],
                            update_norm=float(np.linalg.norm(d)), val_loss=sc["loss"], delta=d.copy())

    def secagg_stage(self, stage, messages, **kw):
        self.seen_kw.append({"stage": stage, **{k: v for k, v in kw.items() if k != "scales"}})
        gone = self.drop_at.get(stage, set())
        return super().secagg_stage(stage, {c: m for c, m in messages.items() if c not in gone}, **kw)

    def evaluate(self, client_ids, global_shared, server_round, **kw):
        return []


class SpyPool(LocalPool):
    """Records everything the hosts hand to the driver."""

    def __init__(self, hosts):
        super().__init__(hosts)
        self.fit_reports: list[dict[str, Any]] = []
        self.contribute_info: list[dict[int, Any]] = []

    def fit(self, *a, **kw):
        out = super().fit(*a, **kw)
        self.fit_reports += out
        return out

    def contribute(self, *a, **kw):
        total, info = super().contribute(*a, **kw)
        self.contribute_info.append(info)
        return total, info


def dp_config(num_clients: int, **overrides: Any):
    base = {"data.num_clients": num_clients, "fed.clients_per_round": 1, "fed.sample_rate": 1.0,
            "fed.strategy": "fedavg", "fed.rounds": 1, "fed.eval_every": 0, "fed.min_clients": 1,
            "privacy.noise_multiplier": 1.0, "privacy.clipping_norm": 1.0}
    return tiny_config(**{**base, **overrides})


def make_server(cfg, path, deltas, scalars=None, *, absent=(), drop_at=None, hosts: int = 1):
    run = RunDir(path)
    run.path.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run.path / "config.yaml")
    d = len(next(iter(deltas.values())))
    pool = SpyPool([StandInHost(cfg, deltas, scalars, absent=set(absent), drop_at=drop_at, worker=f"s{i}")
                    for i in range(hosts)])
    server = FederatedServer(cfg, run, pool, np.zeros(d, np.float32), num_registered=cfg.data.num_clients)
    return server, pool

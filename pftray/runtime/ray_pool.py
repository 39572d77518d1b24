"""The Ray layer: client-worker actors on (fractional) GPUs of a heterogeneous cluster, and the pool the
driver uses to reach them. Actors are thin shells around :class:`pftray.fed.host.ClientHost`.

* Each tier of ``runtime.tiers`` becomes ``num_workers`` actors with that tier's ``num_cpus``, ``num_gpus`` and
  custom ``resources``; a tier whose resources no node has is an error at start (not a hang).
* Client ``k`` maps to a tier by the tiers' ``client_share`` (deterministic in ``k``). Within its tier,
  ``runtime.dispatch: dynamic`` (default) hands the round's clients out in chunks to whichever worker is free
  (guided self-scheduling: chunk = remaining / (2 * workers), at least 1, one chunk in flight per worker), so
  uneven clients or workers do not leave a worker idle at the end of the round; private states live under the
  run directory, which all of a tier's workers must see: at start the pool writes a marker with a random token
  under the run directory and every worker of a tier with several workers must read that token back, else the
  pool refuses to start (:func:`check_marker_replies`; a RuntimeError naming ``runtime.dispatch``) rather than
  let workers read stale client states. ``static`` pins client ``k`` to worker ``k % num_workers``. Either way
  the worker that trained a client this round is the one asked for its contribution and secure-aggregation
  messages.
* The round's global weights are ``ray.put`` once and every worker receives the same object reference.
* A worker that dies (killed process, OOM) makes its clients ``failed`` for that round; it is recreated before
  the next call.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray

from pftray.config import Config, TierConfig
from pftray.errors import InputError, RuntimeFailure

log = logging.getLogger(__name__)


class TierError(InputError):
    """A tier of ``runtime.tiers`` asks for resources that no node of the cluster has (exit 2)."""


@ray.remote
class ClientWorker:
    """A Ray actor hosting many clients on its share of a GPU (or on CPU)."""

    def __init__(self, cfg_dict: dict[str, Any], run_dir: str, worker: str, overrides: dict[str, Any]):
        import torch

        from pftray.config import config_from_dict
        from pftray.fed.host import ClientHost

        cfg = config_from_dict(cfg_dict)
        gpus = ray.get_gpu_ids()
        device = "cuda" if gpus and torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))))
        self.host = ClientHost(cfg, run_dir, device=device, worker=worker, overrides=overrides)

    def fit(self, *args, **kw):
        return self.host.fit(*args, **kw)

    def contribute(self, *args, **kw):
        return self.host.contribute(*args, **kw)

    def secagg_stage(self, *args, **kw):
        return self.host.secagg_stage(*args, **kw)

    def evaluate(self, *args, **kw):
        return self.host.evaluate(*args, **kw)

    def ping(self):
        return self.host.ping()

    def read_marker(self, path: str) -> str | None:
        """The token in the file ``path`` as this worker sees it (None: it cannot read it)."""
        try:
            return Path(path).read_text().strip()
        except OSError:
            return None


class SharedRunDirError(RuntimeFailure):
    """Dynamic dispatch, but some worker does not see the driver's run directory."""


#: name of the marker file the pool writes under the run directory at start (removed once read)
MARKER_PREFIX = ".pftray-dispatch-check-"


def check_marker_replies(token: str, replies: dict[str, str | None], run_dir: str) -> None:
    """Refuse dynamic dispatch when some worker read another token (or none) from the marker under
    ``run_dir``: client states written by one worker would be stale or missing for the next one."""
    bad = sorted(w for w, got in replies.items() if got != token)
    if bad:
        raise SharedRunDirError(
            f"runtime.dispatch: dynamic needs the run directory {run_dir} on storage every worker sees, but "
            f"worker(s) {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''} could not read the driver's marker "
            f"there; put it on shared storage or set runtime.dispatch: static")


def tier_request(tier: TierConfig) -> dict[str, float]:
    req = {"CPU": tier.num_cpus, "GPU": tier.num_gpus, **tier.resources}
    return {k: float(v) for k, v in req.items() if v > 0}


def check_tiers(tiers: tuple[TierConfig, ...], nodes: list[dict[str, Any]] | None = None) -> None:
    """Fail fast when some tier's per-worker request fits no alive node (Ray would wait forever)."""
    nodes = [n for n in (nodes if nodes is not None else ray.nodes()) if n.get("Alive", True)]
    for tier in tiers:
        req = tier_request(tier)
        fits = [n for n in nodes if all(n.get("Resources", {}).get(k, 0.0) + 1e-9 >= v for k, v in req.items())]
        if not fits:
            have = [{k: v for k, v in n.get("Resources", {}).items() if not k.startswith("node:") and
                     k not in ("memory", "object_store_memory")} for n in nodes]
            raise TierError(f"runtime.tiers[{tier.name}]: no node has {req} for one worker; nodes offer {have}")


def client_tier(client_id: int, tiers: tuple[TierConfig, ...]) -> int:
    """Deterministic tier of a client from the tiers' ``client_share`` (a low-discrepancy split of ids)."""
    shares = np.array([t.client_share for t in tiers], dtype=np.float64)
    if shares.sum() <= 0:
        raise ValueError("runtime.tiers: client_share must not all be 0")
    cum = np.cumsum(shares / shares.sum())
    u = (client_id * 0.6180339887498949) % 1.0  # golden-ratio sequence: shares hold on every prefix of ids
    return int(np.searchsorted(cum, u, side="right").clip(0, len(tiers) - 1))


def chunk_size(remaining: int, workers: int) -> int:
    """Dynamic dispatch's next chunk (guided self-scheduling): ceil(remaining / (2 * workers)), at least 1."""
    return max(1, -(-remaining // (2 * workers)))


def _notify(hook, reports: list[dict], **kw: Any) -> None:
    if hook is not None:  # imported here: importing this module stays torch-free
        from pftray.fed.pool import notify_client_done

        notify_client_done(hook, reports, **kw)


class RayPool:
    """The driver's view of the worker actors; same contract as :class:`pftray.fed.pool.LocalPool`."""

    def __init__(self, cfg: Config, run_dir: str, *, timeout_s: float | None = None):
        self.cfg, self.run_dir = cfg, run_dir
        self.tiers = cfg.runtime.tiers
        self.timeout = timeout_s or cfg.runtime.round_timeout_s
        from pftray.model.factory import check_precision

        for tier in self.tiers:  # here, in the driver, rather than as a failed actor start
            key = f"runtime.tiers[{tier.name}].precision" if tier.precision else "train.precision"
            check_precision(tier.precision or cfg.train.precision, cfg.privacy.dp_sgd, key=key)
        check_tiers(self.tiers)
        self.cfg_dict = cfg.to_dict()
        self.workers: dict[tuple[int, int], Any] = {}
        for ti, tier in enumerate(self.tiers):
            for wi in range(tier.num_workers):
                self.workers[(ti, wi)] = self._spawn(ti, wi)
        self._trained_on: dict[int, tuple[int, int]] = {}  # this round: client -> the worker holding its delta
        self.on_client_done = None  # optional: called with each fit report as it arrives (pftray.fed.pool)
        if cfg.runtime.dispatch == "dynamic":
            try:
                self.check_shared_run_dir()
            except BaseException:
                self.shutdown()
                raise

    def check_shared_run_dir(self) -> None:
        """Dynamic dispatch: every worker of a tier with several workers reads back the token of a marker this
        process writes under the run directory (a tier of one worker always trains its clients on that worker).
        Workers whose actor class has no ``read_marker`` (benchmark stand-ins that keep no state) are skipped."""
        keys = [k for k in self.workers if self.tiers[k[0]].num_workers > 1]
        refs = {}
        token = secrets.token_hex(16)
        marker = Path(self.run_dir) / f"{MARKER_PREFIX}{token[:12]}"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(token)
        try:
            for k in keys:
                try:
                    method = self.workers[k].read_marker
                except AttributeError:
                    continue
                refs[method.remote(str(marker))] = f"{self.tiers[k[0]].name}-{k[1]}"
            if not refs:
                return
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=self.timeout)
            replies: dict[str, str | None] = {w: None for w in refs.values()}  # no answer in time counts as unseen
            for ref in ready:
                replies[refs[ref]] = ray.get(ref)
        finally:
            marker.unlink(missing_ok=True)
        check_marker_replies(token, replies, self.run_dir)

    def _spawn(self, ti: int, wi: int):
        tier = self.tiers[ti]
        overrides = {}
        if tier.batch_clips:
            overrides["train.batch_clips"] = tier.batch_clips
        if tier.precision:
            overrides["train.precision"] = tier.precision
        return ClientWorker.options(num_cpus=tier.num_cpus, num_gpus=tier.num_gpus, resources=dict(tier.resources),
                                    max_restarts=0, name=None).remote(
            self.cfg_dict, self.run_dir, f"{tier.name}-{wi}", overrides)

    def worker_of(self, client_id: int) -> tuple[int, int]:
        ti = client_tier(client_id, self.tiers)
        return ti, client_id % self.tiers[ti].num_workers

    def _groups(self, ids) -> dict[tuple[int, int], list[int]]:
        """Clients by worker: the worker that trained the client this round, else its static worker."""
        groups: dict[tuple[int, int], list[int]] = {}
        for cid in ids:
            key = self._trained_on.get(int(cid)) or self.worker_of(int(cid))
            groups.setdefault(key, []).append(int(cid))
        return groups

    def _gather(self, calls: dict[tuple[int, int], Any]) -> dict[tuple[int, int], Any]:
        """Wait for all calls (up to the round timeout); a dead or late worker yields no result and is respawned."""
        results, refs = {}, {ref: key for key, ref in calls.items()}
        ready, pending = ray.wait(list(refs), num_returns=len(refs), timeout=self.timeout)
        for ref in ready:
            key = refs[ref]
            try:
                results[key] = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as exc:
                log.warning("worker %s died: %s; respawning", key, type(exc).__name__)
                self._respawn(key)
        for ref in pending:
            self._replace_late(refs[ref])
        return results

    def _respawn(self, key: tuple[int, int]) -> None:
        self.workers[key] = self._spawn(*key)

    def _replace_late(self, key: tuple[int, int]) -> None:
        """A worker that outran the round timeout is killed and replaced; its clients count as failed."""
        log.warning("worker %s did not answer within %.0f s; replacing it", key, self.timeout)
        ray.kill(self.workers[key])
        self._respawn(key)

    # ------------------------------------------------------------------------------------------ contract
    def fit(self, ids, global_shared: np.ndarray, server_round: int, round_cfg: dict[str, Any]) -> list[dict]:
        ref = ray.put(global_shared)  # once per round: every worker reads the same object
        self._trained_on = {}
        if self.cfg.runtime.dispatch == "static":
            groups = self._groups(ids)
            res = self._gather({k: self.workers[k].fit.remote(g, ref, server_round, round_cfg)
                                for k, g in groups.items()})
            for key, reps in res.items():
                self._trained_on.update({int(r["client_id"]): key for r in reps})
            reports = [rep for reps in res.values() for rep in reps]
            _notify(self.on_client_done, reports, server_round=server_round, n_done=len(reports),
                    n_clients=len(ids))  # static: one wait for all workers, so all at once
            return reports
        return self._fit_dynamic([int(c) for c in ids], ref, server_round, round_cfg)

    def _fit_dynamic(self, ids: list[int], ref, server_round: int, round_cfg: dict[str, Any]) -> list[dict]:
        queues: dict[int, list[int]] = {}
        for cid in ids:
            queues.setdefault(client_tier(cid, self.tiers), []).append(cid)

        def next_chunk(ti: int) -> list[int]:
            q = queues.get(ti, [])
            n = chunk_size(len(q), self.tiers[ti].num_workers)
            chunk, queues[ti] = q[:n], q[n:]
            return chunk

        inflight: dict[Any, tuple[tuple[int, int], list[int]]] = {}

        def submit(key: tuple[int, int]) -> None:
            chunk = next_chunk(key[0])
            if chunk:
                inflight[self.workers[key].fit.remote(chunk, ref, server_round, round_cfg)] = (key, chunk)

        # One chunk in flight per worker: a second one queued in advance would commit clients to a worker before
        # it is known which worker frees up first (at 10 clients of ~1 s on 2 workers that alone costs ~0.75 s a
        # round); the gap it would hide is one actor round trip (~1 ms) per chunk.
        for key in list(self.workers):
            submit(key)
        reports: list[dict] = []
        deadline = time.monotonic() + self.timeout
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                break
            key, chunk = inflight.pop(ready[0])
            try:
                reps = ray.get(ready[0])
            except (ray.exceptions.RayActorError, ray.exceptions.ActorDiedError) as exc:
                # its clients count as failed this round (one of them may be what killed it); the queue goes on
                log.warning("worker %s died training clients %s: %s; respawning", key, chunk[:5], type(exc).__name__)
                self._respawn(key)
                submit(key)
                continue
            for rep in reps:
                self._trained_on[int(rep["client_id"])] = key
            reports.extend(reps)
            _notify(self.on_client_done, reps, server_round=server_round, n_done=len(reports),
                    n_clients=len(ids))
            submit(key)
        for key in {k for k, _ in inflight.values()}:  # left after the round timeout
            self._replace_late(key)
        return reports

    def contribute(self, scales: dict[int, float | None], **kw: Any) -> tuple[np.ndarray, dict[int, dict[str, Any]]]:
        groups = self._groups(scales)
        calls = {k: self.workers[k].contribute.remote({c: scales[c] for c in g}, **kw) for k, g in groups.items()}
        res = self._gather(calls)
        missing = [c for k, g in groups.items() if k not in res for c in g]
        if missing:
            raise RuntimeError(f"clients {missing[:5]} were lost between training and aggregation")
        total, info = None, {}
        for part, inf in res.values():
            total = part if total is None else total + part
            info.update(inf)
        return total, info

    def secagg_stage(self, stage: str, messages: dict[int, Any], **kw: Any) -> dict[int, Any]:
        groups = self._groups(messages)
        calls = {k: self.workers[k].secagg_stage.remote(stage, {c: messages[c] for c in g}, **kw)
                 for k, g in groups.items()}
        replies: dict[int, Any] = {}
        for part in self._gather(calls).values():  # a lost worker = its clients dropped out of this stage
            replies.update(part)
        return replies

    def evaluate(self, ids, global_shared: np.ndarray, server_round: int, **kw: Any) -> list[dict]:
        ref = ray.put(global_shared)
        res = self._gather({k: self.workers[k].evaluate.remote(g, ref, server_round, **kw)
                            for k, g in self._groups(ids).items()})
        return [row for rows in res.values() for row in rows]

    def placement(self) -> list[dict[str, Any]]:
        """Where each worker runs: ``[{tier, worker, node_id, gpu_ids, pid}]``."""
        keys = list(self.workers)
        infos = ray.get([self.workers[k].ping.remote() for k in keys])
        return [{"tier": self.tiers[k[0]].name, **info} for k, info in zip(keys, infos)]

    def kill_worker(self, key: tuple[int, int]) -> None:
        """Fault injection for tests: kill one worker process (it is respawned on the next call)."""
        ray.kill(self.workers[key], no_restart=True)

    def shutdown(self) -> None:
        for w in self.workers.values():
            ray.kill(w)
        self.workers.clear()

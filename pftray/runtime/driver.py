"""Starting, running and resuming a federated run.

``run_federated`` is what ``pftray run`` calls: it prepares the run directory, then runs the rounds either in a
**driver actor** on Ray (default; the actor creates the client-worker actors of every tier and survives the
CLI process only as long as Ray does) or in-process over a :class:`~pftray.fed.pool.LocalPool`
(``use_ray=False``, for debugging and tests).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from pftray.config import Config, config_from_dict, dump_config, load_config
from pftray.results import RunDir, environment_meta


def initial_shared(cfg: Config):
    """The round-0 global shared adapter (:func:`pftray.model.factory.initial_shared`; imported lazily, so that
    importing this module stays light)."""
    from pftray.model.factory import initial_shared as build

    return build(cfg)


def new_run_dir(cfg: Config, out: str | None) -> RunDir:
    if out:
        return RunDir(out)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return RunDir(Path(cfg.experiment.out_dir) / f"{cfg.experiment.name}-{stamp}")


def prepare_run(cfg: Config, run: RunDir) -> None:
    if (run.path / "config.yaml").exists():
        raise FileExistsError(f"{run.path} already holds a run; use `pftray run --resume {run.path}` or a new --out")
    run.create()
    dump_config(cfg, run.path / "config.yaml")
    run.write_meta({"created": datetime.now().isoformat(timespec="seconds"), "seed": cfg.experiment.seed,
                    "status": "running", **environment_meta()})


def resume_config(run: RunDir) -> Config:
    if not (run.path / "config.yaml").exists():
        raise FileNotFoundError(f"{run.path}: not a pftray run directory (no config.yaml)")
    return load_config(run.path / "config.yaml")


def make_server(cfg: Config, run: RunDir, pool, progress=None):
    from pftray.fed.host import ClientProvider
    from pftray.fed.server import FederatedServer

    n = ClientProvider(cfg).num_clients
    server = FederatedServer(cfg, run, pool, initial_shared(cfg), num_registered=n, progress=progress)
    server.restore()
    return server


def make_pool(cfg: Config, run_dir: str | Path, *, kind: str = "ray", local_hosts: int = 1, device: str = "cpu",
              worker: str = "local", on_client_done: Callable[[dict[str, Any]], None] | None = None):
    """The one place a pool of client hosts is built (``pftray run``, the driver actor, sweep trials).

    ``kind="ray"``: a :class:`~pftray.runtime.ray_pool.RayPool` of worker actors over ``cfg.runtime.tiers`` (needs
    a running Ray); ``kind="local"``: a :class:`~pftray.fed.pool.LocalPool` of ``local_hosts`` in-process hosts on
    ``device``, named ``<worker>-<i>``. ``on_client_done`` receives each client's fit report as it arrives.
    Callers release it with ``pool.shutdown()``.
    """
    if kind == "ray":
        from pftray.runtime.ray_pool import RayPool

        pool = RayPool(cfg, str(run_dir))
    elif kind == "local":
        from pftray.fed.host import ClientHost
        from pftray.fed.pool import LocalPool

        pool = LocalPool([ClientHost(cfg, str(run_dir), device=device, worker=f"{worker}-{i}")
                          for i in range(local_hosts)])
    else:
        raise ValueError(f"make_pool: kind must be 'ray' or 'local', got {kind!r}")
    pool.on_client_done = on_client_done
    return pool


def run_local(cfg: Config, run: RunDir, *, num_hosts: int = 1,
              progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run in this process over ``num_hosts`` client hosts (no Ray)."""
    # per-client lines of the CLI's RoundPrinter
    pool = make_pool(cfg, run.path, kind="local", local_hosts=num_hosts,
                     on_client_done=getattr(progress, "client_done", None))
    try:
        return make_server(cfg, run, pool, progress).run_rounds()
    finally:
        pool.shutdown()


def _driver_class():
    import ray

    @ray.remote(max_concurrency=2)
    class Driver:
        """The driver actor: owns the server loop and the worker actors; ``progress()`` answers while it runs."""

        def __init__(self, cfg_dict: dict[str, Any], run_dir: str):
            self.cfg = config_from_dict(cfg_dict)
            self.run = RunDir(run_dir)
            self.latest: dict[str, Any] = {}
            self.client_events: list[dict[str, Any]] = []  # fit reports not yet fetched by poll()
            self.lock = threading.Lock()

        def _progress(self, row: dict[str, Any]) -> None:
            with self.lock:
                self.latest = dict(row)

        def progress(self) -> dict[str, Any]:
            with self.lock:
                return dict(self.latest)

        def _client_done(self, report: dict[str, Any]) -> None:
            with self.lock:
                self.client_events.append(dict(report))

        def poll(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            """The latest round row and the client reports since the last poll, read together."""
            with self.lock:
                events, self.client_events = self.client_events, []
                return dict(self.latest), events

        def run_rounds(self) -> dict[str, Any]:
            pool = make_pool(self.cfg, self.run.path, on_client_done=self._client_done)
            try:
                summary = make_server(self.cfg, self.run, pool, self._progress).run_rounds()
                summary["placement"] = pool.placement()
                return summary
            finally:
                pool.shutdown()

    return Driver


def init_ray(cfg: Config) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kw: dict[str, Any] = {"ignore_reinit_error": True, "include_dashboard": False, "log_to_driver": True}
    if cfg.runtime.address:
        ray.init(address=cfg.runtime.address, **kw)
    else:
        if cfg.runtime.num_cpus:
            kw["num_cpus"] = cfg.runtime.num_cpus
        if cfg.runtime.num_gpus >= 0:
            kw["num_gpus"] = cfg.runtime.num_gpus
        ray.init(**kw)


def run_ray(cfg: Config, run: RunDir, *, progress: Callable[[dict[str, Any]], None] | None = None,
            poll_s: float = 1.0) -> dict[str, Any]:
    import ray

    init_ray(cfg)
    from pftray.runtime.ray_pool import check_tiers

    check_tiers(cfg.runtime.tiers)  # fail here, in the caller, rather than inside the driver actor
    driver = _driver_class().options(num_cpus=0).remote(cfg.to_dict(), str(run.path))
    ref = driver.run_rounds.remote()
    last = None
    client_done = getattr(progress, "client_done", None)
    while True:
        ready, _ = ray.wait([ref], timeout=poll_s)
        if progress is not None:
            row, events = ray.get(driver.poll.remote())
            new = bool(row) and row.get("server_round") != last
            for ev in events if client_done is not None else []:
                if new and ev["server_round"] > row["server_round"]:  # the round's line before the next round's
                    progress(row)
                    new = False
                client_done(ev)
            if new:
                progress(row)
            last = row.get("server_round", last) if row else last
        if ready:
            return ray.get(ref)


#: meta statuses of a run that has ended for good: resuming it would train nothing
FINISHED_STATUSES = ("done", "budget_exhausted")


def finished_summary(run: RunDir, cfg: Config) -> dict[str, Any] | None:
    """The summary of a run that has nothing left to train (``done`` with every round completed, or its privacy
    budget spent), read from its ``meta.json``; ``None`` for a run that can go on."""
    meta = run.read_meta()
    status, rounds = meta.get("status"), meta.get("rounds_completed")
    if status not in FINISHED_STATUSES or not isinstance(rounds, int):
        return None
    if status == "done" and rounds < cfg.fed.rounds:
        return None
    wall = meta.get("wall_s")
    return {"status": status, "rounds": rounds, "of_rounds": cfg.fed.rounds, "best_round": meta.get("best_round"),
            "wall_s": wall if isinstance(wall, (int, float)) else float("nan"), "already_finished": True}


def run_federated(cfg: Config | None = None, *, out: str | None = None, resume: str | None = None,
                  use_ray: bool = True, progress=None) -> tuple[RunDir, dict[str, Any]]:
    """Run a new run (``cfg``, in ``out`` or a fresh directory) or resume the one in ``resume``. Resuming a run
    that has finished (:func:`finished_summary`) changes nothing and starts nothing: the summary then has
    ``already_finished: True``."""
    if resume:
        run = RunDir(resume)
        cfg = resume_config(run)
        finished = finished_summary(run, cfg)
        if finished is not None:
            return run, finished
        run.update_meta(status="running", resumed=datetime.now().isoformat(timespec="seconds"))
    else:
        assert cfg is not None
        from pftray.model.pretrain import check_backbone_speakers

        check_backbone_speakers(cfg)  # before anything is written
        run = new_run_dir(cfg, out)
        prepare_run(cfg, run)
    t0 = time.perf_counter()
    try:
        summary = run_ray(cfg, run, progress=progress) if use_ray else run_local(cfg, run, progress=progress)
    except BaseException as exc:
        run.update_meta(status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    summary["wall_s"] = time.perf_counter() - t0
    run.update_meta(wall_s=summary["wall_s"])
    return run, summary


def load_run_model(run_dir: str | Path, *, server_round: int | None = None):
    """Rebuild a run's model for analysis: ``(cfg, trainer, global_shared, states)``.

    ``global_shared`` comes from the checkpoint of ``server_round`` (default: the latest); ``states(client_id)``
    returns that client's private state as of that round (None if it never trained). Load a client with
    ``trainer.load(global_shared, states(cid) or fresh)``.
    """
    import torch

    from pftray.fed.client import ClientTrainer
    from pftray.fed.host import ClientStateStore

    run = RunDir(run_dir)
    cfg = resume_config(run)
    if server_round is None:
        latest = run.checkpoints / "LATEST"
        if not latest.exists():
            raise FileNotFoundError(f"{run.path}: no checkpoint yet (checkpoints/LATEST missing)")
        ckpt = run.checkpoints / latest.read_text().strip()
    else:
        ckpt = run.checkpoints / f"round-{server_round:05d}.pt"
        if not ckpt.exists():
            raise FileNotFoundError(f"{ckpt}: no checkpoint for round {server_round} (only the last two are kept)")
    blob = torch.load(ckpt, map_location="cpu", weights_only=False)
    store = ClientStateStore(run.clients, resident=0)
    r = int(blob["server_round"])
    torch.manual_seed(cfg.experiment.seed)  # the same base weights as the run's hosts when there is no backbone
    trainer = ClientTrainer(cfg)
    return cfg, trainer, blob["global_shared"], (lambda cid: store.load(cid, before_round=r + 1))

"""The pool contract between the federated server and its client hosts, and its in-process implementation.

:class:`Pool` is what :class:`~pftray.fed.server.FederatedServer` drives: ``fit`` the round's clients,
``contribute`` their (clipped, weighted, noised or masked) updates to the sum, run a secure-aggregation
``secagg_stage``, ``evaluate``. :class:`LocalPool` implements it over client-host objects in this process (no
Ray): what tests and single-process runs use. Clients map to hosts by ``client_id % len(hosts)``; the Ray pool
(:mod:`pftray.runtime.ray_pool`) keeps the same contract with actors instead of objects.

Both pools call an optional ``on_client_done(report)`` as each client's fit report reaches the driver (the
report the driver gets anyway, plus ``server_round``, ``n_done`` and ``n_clients`` of the round): progress
printing, nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from pftray.fed.host import ClientHost


class Pool(Protocol):
    """What the server needs of a pool of client hosts: :class:`LocalPool` or
    :class:`~pftray.runtime.ray_pool.RayPool`."""

    def fit(self, ids: list[int], global_shared: np.ndarray, server_round: int,
            round_cfg: dict[str, Any]) -> list[dict[str, Any]]: ...

    def contribute(self, scales: dict[int, float | None], **kw: Any) -> tuple[np.ndarray, dict[int, dict[str, Any]]]: ...

    def secagg_stage(self, stage: str, messages: dict[int, Any], **kw: Any) -> dict[int, Any]: ...

    def evaluate(self, ids: list[int], global_shared: np.ndarray, server_round: int,
                 **kw: Any) -> list[dict[str, Any]]: ...


def group_by_host(ids, num_hosts: int) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = {}
    for cid in ids:
        groups.setdefault(int(cid) % num_hosts, []).append(int(cid))
    return groups


def notify_client_done(hook: Callable[[dict[str, Any]], None] | None, reports: list[dict[str, Any]], *,
                       server_round: int, n_done: int, n_clients: int) -> None:
    """Call ``hook`` once per report (a copy with the round and the round's progress); a no-op without a hook."""
    if hook is None:
        return
    for i, rep in enumerate(reports, start=n_done - len(reports) + 1):
        hook({**rep, "server_round": server_round, "n_done": i, "n_clients": n_clients})


class LocalPool:
    """:class:`Pool` over client hosts in this process; client ``c`` goes to host ``c % len(hosts)``."""

    def __init__(self, hosts: list[ClientHost]):
        if not hosts:
            raise ValueError("LocalPool needs at least one host")
        self.hosts = hosts
        self.on_client_done: Callable[[dict[str, Any]], None] | None = None

    def fit(self, ids: list[int], global_shared: np.ndarray, server_round: int,
            round_cfg: dict[str, Any]) -> list[dict[str, Any]]:
        reports: list[dict[str, Any]] = []
        for h, group in group_by_host(ids, len(self.hosts)).items():
            if self.on_client_done is None:
                reports += self.hosts[h].fit(group, global_shared, server_round, round_cfg)
                continue
            for cid in group:  # one client per call, so that each report is seen as soon as it exists
                reps = self.hosts[h].fit([cid], global_shared, server_round, round_cfg)
                reports += reps
                notify_client_done(self.on_client_done, reps, server_round=server_round, n_done=len(reports),
                                   n_clients=len(ids))
        return reports

    def contribute(self, scales: dict[int, float | None], **kw: Any) -> tuple[np.ndarray, dict[int, dict[str, Any]]]:
        total, info = None, {}
        for h, group in group_by_host(scales, len(self.hosts)).items():
            part, inf = self.hosts[h].contribute({c: scales[c] for c in group}, **kw)
            total = part if total is None else total + part
            info.update(inf)
        return total, info

    def secagg_stage(self, stage: str, messages: dict[int, Any], **kw: Any) -> dict[int, Any]:
        replies: dict[int, Any] = {}
        for h, group in group_by_host(messages, len(self.hosts)).items():
            replies.update(self.hosts[h].secagg_stage(stage, {c: messages[c] for c in group}, **kw))
        return replies

    def evaluate(self, ids: list[int], global_shared: np.ndarray, server_round: int, **kw: Any) -> list[dict]:
        rows = []
        for h, group in group_by_host(ids, len(self.hosts)).items():
            rows += self.hosts[h].evaluate(group, global_shared, server_round, **kw)
        return rows

    def shutdown(self) -> None:
        """Nothing to release: the hosts are plain objects of this process (the Ray pool kills its actors)."""

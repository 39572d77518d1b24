"""Ground truth of a run's federation, for analysis only: which clients hold corrupted (unreliable) training data.

The server never learns it (the ISFA weights have to find those clients from their reliability scalars); a report
shows it next to the per-client results so that a reader can see whether they did. Synthetic federations draw the
set from the config alone (:func:`pftray.data.unreliable_assignment`, the same call the data provider makes, no
video is rendered); prepared data keeps each shard's label in its metadata (read without the clips).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

#: column name of the label in report tables
UNRELIABLE_COL = "unreliable (ground truth)"


def _as_dict(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


def unreliable_clients(cfg: Any) -> dict[int, str]:
    """``{client_id: corruption kind}`` of the unreliable clients of the run config ``cfg`` (a
    :class:`pftray.config.Config` or its dict, e.g. ``load_run(d)["config"]``); ``{}`` when there are none."""
    from pftray.config import config_from_dict

    c = config_from_dict(_as_dict(cfg))
    d = c.data
    if d.source == "synthetic":
        from pftray.data import unreliable_assignment

        return unreliable_assignment(num_clients=d.num_clients, unreliable_fraction=d.unreliable_fraction,
                                     unreliable_kinds=tuple(d.unreliable_kinds), seed=c.experiment.seed)
    return _shard_labels(Path(d.source))


def _shard_labels(root: Path) -> dict[int, str]:
    """Labels in the metadata of ``root/client-*.parquet`` (numbered as :class:`~pftray.fed.host.ClientProvider`
    numbers them); a folder that is gone gives ``{}``."""
    import pyarrow.parquet as pq

    if not root.is_dir():
        return {}
    shards = sorted(root.glob("client-*.parquet"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
    out: dict[int, str] = {}
    for k, p in enumerate(shards):
        raw = (pq.read_schema(p).metadata or {}).get(b"pftray")
        kind = json.loads(raw).get("unreliable") if raw else None
        if kind:
            out[k] = str(kind)
    return out


def label_clients(df: pd.DataFrame, labels: dict[int, str], *, col: str = "client_id") -> pd.DataFrame:
    """``df`` with :data:`UNRELIABLE_COL`: the corruption kind of each unreliable client, ``""`` for the others."""
    ids = pd.to_numeric(df[col], errors="coerce")
    return df.assign(**{UNRELIABLE_COL: [labels.get(int(i), "") if pd.notna(i) else "" for i in ids]})


def describe(labels: dict[int, str], num_clients: int | None = None) -> str:
    """One line: which clients are unreliable and how (ground truth, never given to the server)."""
    if not labels:
        return "no unreliable clients in the data (ground truth)"
    ids = ", ".join(f"{k} ({v})" for k, v in sorted(labels.items())[:20]) + (" ..." if len(labels) > 20 else "")
    of = f" of {num_clients}" if num_clients else ""
    return (f"unreliable clients (ground truth, for analysis only; never given to the server): {len(labels)}{of}: "
            f"{ids}")

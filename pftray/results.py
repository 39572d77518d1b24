"""The run directory: the contract that sweeps, reports and analysis read.

```
RUN/
  config.yaml        fully resolved config
  meta.json          versions, seeds, git commit, hardware, status
  rounds.parquet     one row per round
  clients.parquet    one row per client per round
  eval.parquet       personalised evaluation rows
  checkpoints/       round-NNNNN.pt (+ LATEST)
  clients/           private client states (identity adapters), versioned by round
  samples/           videos and grids
```

Every file is written atomically (temporary file + ``os.replace``): a crash never leaves a half-written table.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd

ROUND_COLUMNS = ["server_round", "status", "train_loss", "val_loss", "epsilon", "bytes_up", "bytes_down", "wall_s",
                 "n_sampled", "n_ok", "n_failed", "clipping_norm"]
CLIENT_COLUMNS = ["server_round", "client_id", "num_examples", "loss", "val_loss", "id_sim", "temp_stab", "score",
                  "weight", "update_norm", "status", "message", "worker", "node_id", "gpu_ids"]


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_parquet(df: pd.DataFrame, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def environment_meta() -> dict[str, Any]:
    import numpy
    import torch

    versions = {"python": sys.version.split()[0], "torch": torch.__version__, "numpy": numpy.__version__}
    for mod in ("ray", "diffusers", "peft", "opacus", "pandas", "pyarrow"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
    hw = {"platform": platform.platform(), "cpus": os.cpu_count(), "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return {"versions": versions, "hardware": hw, "git_commit": git_commit()}


class RunDir:
    """Reads and writes one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def clients(self) -> Path:
        return self.path / "clients"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    def create(self) -> None:
        for d in (self.path, self.checkpoints, self.clients, self.samples):
            d.mkdir(parents=True, exist_ok=True)

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write_text(self.path / "meta.json", json.dumps(meta, indent=2, default=str))

    def read_meta(self) -> dict[str, Any]:
        p = self.path / "meta.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def update_meta(self, **fields: Any) -> None:
        meta = self.read_meta()
        meta.update(fields)
        self.write_meta(meta)

    def table(self, name: str) -> pd.DataFrame:
        p = self.path / f"{name}.parquet"
        return pd.read_parquet(p) if p.exists() else pd.DataFrame()

    def append(self, name: str, rows: list[dict[str, Any]], *, replace_round: int | None = None) -> None:
        """Append rows to ``name.parquet``; with ``replace_round`` rows of that round are replaced (idempotent
        on resume: a round that is re-run after a crash is not duplicated)."""
        old = self.table(name)
        if replace_round is not None and len(old) and "server_round" in old:
            old = old[old["server_round"] < replace_round]
        new = pd.DataFrame(rows)
        df = new if old.empty else pd.concat([old, new], ignore_index=True)
        write_parquet(df, self.path / f"{name}.parquet")

    def truncate(self, after_round: int) -> None:
        """Drop rows of rounds after ``after_round`` (resuming from a checkpoint older than the tables)."""
        for name in ("rounds", "clients", "eval"):
            df = self.table(name)
            if len(df) and "server_round" in df:
                write_parquet(df[df["server_round"] <= after_round], self.path / f"{name}.parquet")


def load_run(path: str | Path) -> dict[str, Any]:
    """A run as pandas: ``{"config": dict, "meta": dict, "rounds": df, "clients": df, "eval": df}``."""
    import yaml

    run = RunDir(path)
    if not (run.path / "config.yaml").exists():
        raise FileNotFoundError(f"{run.path}: not a pftray run directory (no config.yaml)")
    return {
        "config": yaml.safe_load((run.path / "config.yaml").read_text()),
        "meta": run.read_meta(),
        "rounds": run.table("rounds"),
        "clients": run.table("clients"),
        "eval": run.table("eval"),
    }

"""The run directory: the contract that sweeps, reports and analysis read.

```
RUN/
  config.yaml        fully resolved config
  meta.json          versions, seeds, git commit, hardware, status
  rounds.parquet     one row per round
  clients.parquet    one row per client per round
  eval.parquet       personalised evaluation rows
  tables/            while a run is going: tables/<name>/part-NNNNN.parquet, the rows of round NNNNN
  checkpoints/       round-NNNNN.pt (+ LATEST)
  clients/           private client states (identity adapters), versioned by round
  samples/           videos and grids
```

Tables are append-only: :meth:`RunDir.append` writes the round's rows as one part file
(``tables/rounds/part-00007.parquet``), so a round's write costs the same at round 10 and round 10,000 (rewriting
the whole table every round was O(rounds²) over a run). When the run ends (``meta.json`` gets a status other than
``running``) :meth:`RunDir.compact` merges each table's parts into the single ``<name>.parquet`` and removes
``tables/``: a finished run directory looks as it always did, and ``pd.read_parquet(RUN / "rounds.parquet")``
reads all of it. During a run (or after a crash) read the tables with :meth:`RunDir.table` / :func:`load_run`,
which read ``<name>.parquet`` (older run directories hold only that) followed by the parts.

Every file is written atomically (temporary file + ``os.replace``): a crash never leaves a half-written table;
a compaction interrupted by a crash is finished (or undone) by the next reader and writer.
"""

from __future__ import annotations

import json
import os
import platform
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

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
        # per table: (mtime_ns of its parts folder, the largest round with a part), so that an append does not
        # list a folder that grows with the run (the folder's mtime changes with every file added or removed)
        self._part_cache: dict[str, tuple[int, int]] = {}

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
        """Update ``meta.json``; a status other than ``running`` ends the run: its tables are compacted."""
        meta = self.read_meta()
        meta.update(fields)
        self.write_meta(meta)
        if "status" in fields and fields["status"] != "running":
            self.compact()

    # ------------------------------------------------------------------------------------------- tables
    def table(self, name: str) -> pd.DataFrame:
        """Table ``name``: ``<name>.parquet`` followed by the parts of the rounds written since (see the module)."""
        return self._read(self.path / f"{name}.parquet", self._pending_compaction(name) + self._parts(name))

    @staticmethod
    def _read(base: Path, parts: list[tuple[int, Path]]) -> pd.DataFrame:
        if not parts:
            return pd.read_parquet(base) if base.exists() else pd.DataFrame()
        tables = ([pq.read_table(base)] if base.exists() else []) + [pq.read_table(p) for _, p in parts]
        # columns unified as one file of these rows has them (a column that is null in early rounds takes its later
        # type, ints meeting floats become floats): what the table was when each round rewrote it
        merged = pa.concat_tables([t for t in tables if t.num_rows] or tables[:1], promote_options="permissive")
        return merged.to_pandas()

    def append(self, name: str, rows: list[dict[str, Any]], *, replace_round: int | None = None) -> None:
        """Append rows to table ``name``: one part file per round, written atomically, its cost independent of
        how many rounds the table holds. With ``replace_round`` rows of that round and later ones are dropped
        first (idempotent on resume: a round that is re-run after a crash is not duplicated). Every row needs
        an integer ``server_round``; rows are kept in round order."""
        self._recover(name)
        new = pd.DataFrame(rows)
        if len(new) and ("server_round" not in new or new["server_round"].isna().any()):
            raise ValueError(f"RunDir.append({name!r}): every row needs a server_round")
        if replace_round is not None:
            self._drop_from(name, int(replace_round))
        for r, group in (new.groupby("server_round", sort=True) if len(new) else []):
            path = self._part_path(name, int(r))
            group = group.reset_index(drop=True)
            if replace_round is None and path.exists():  # a plain append to a round that has rows already
                group = pd.concat([pd.read_parquet(path), group], ignore_index=True)
            write_parquet(group, path)
            self._note_part(name, int(r))

    def truncate(self, after_round: int) -> None:
        """Drop rows of rounds after ``after_round`` (resuming from a checkpoint older than the tables)."""
        for name in TABLES:
            self._recover(name)
            self._drop_from(name, int(after_round) + 1)

    def compact(self) -> None:
        """Merge each table's parts into ``<name>.parquet`` and remove them (the end of a run); crash-safe: the
        parts are first moved aside under a fresh id that the merged file records, so a reader after a crash
        knows whether the merged file already holds them."""
        for name in TABLES:
            self._recover(name)
            if not self._parts(name):
                continue
            token = secrets.token_hex(8)
            pending = self._tables_dir / f".{name}.compacting-{token}"
            os.replace(self._tables_dir / name, pending)
            self._finish_compaction(name, pending, token)
        self._part_cache.clear()
        for d in [*(self._tables_dir / n for n in TABLES), self._tables_dir]:
            try:
                d.rmdir()  # only when empty: a finished run has the single-file layout
            except OSError:
                pass

    # the part files: tables/<name>/part-NNNNN.parquet holds the rows of round NNNNN
    _PART = re.compile(r"^part-(\d+)\.parquet$")
    _PENDING = re.compile(r"^\.(\w+)\.compacting-([0-9a-f]+)$")

    @property
    def _tables_dir(self) -> Path:
        return self.path / "tables"

    def _part_path(self, name: str, r: int) -> Path:
        return self._tables_dir / name / f"part-{r:05d}.parquet"

    def _parts(self, name: str, directory: Path | None = None) -> list[tuple[int, Path]]:
        d = directory if directory is not None else self._tables_dir / name
        if not d.is_dir():
            return []
        found = [(int(m.group(1)), d / e.name) for e in os.scandir(d) if (m := self._PART.match(e.name))]
        return sorted(found)

    def _max_part(self, name: str) -> int:
        d = self._tables_dir / name
        try:
            mtime = d.stat().st_mtime_ns
        except FileNotFoundError:
            return 0
        cached = self._part_cache.get(name)
        if cached is None or cached[0] != mtime:
            parts = self._parts(name)
            cached = (mtime, parts[-1][0] if parts else 0)
            self._part_cache[name] = cached
        return cached[1]

    def _note_part(self, name: str, r: int) -> None:
        d = self._tables_dir / name
        known = self._part_cache.get(name)
        self._part_cache[name] = (d.stat().st_mtime_ns, max(r, known[1] if known else 0))

    def _drop_from(self, name: str, first: int) -> None:
        """Drop the rows of rounds >= ``first``: their parts, and (rarely: resuming a compacted run) the merged
        file's rows, which is then rewritten."""
        if self._max_part(name) >= first:
            for r, p in self._parts(name):
                if r >= first:
                    p.unlink()
            self._part_cache.pop(name, None)
        base = self.path / f"{name}.parquet"
        if base.exists() and _max_round(base) >= first:
            df = pd.read_parquet(base)
            write_parquet(df[df["server_round"] < first], base)

    def _pending_compaction(self, name: str) -> list[tuple[int, Path]]:
        """Parts of an interrupted compaction that the merged file does not hold yet."""
        out = []
        for d, token in self._pending_dirs(name):
            if _compaction_token(self.path / f"{name}.parquet") != token:
                out += self._parts(name, d)
        return out

    def _pending_dirs(self, name: str) -> list[tuple[Path, str]]:
        if not self._tables_dir.is_dir():
            return []
        return [(self._tables_dir / e.name, m.group(2)) for e in os.scandir(self._tables_dir)
                if (m := self._PENDING.match(e.name)) and m.group(1) == name]

    def _recover(self, name: str) -> None:
        for d, token in self._pending_dirs(name):
            self._finish_compaction(name, d, token)

    def _finish_compaction(self, name: str, pending: Path, token: str) -> None:
        base = self.path / f"{name}.parquet"
        if _compaction_token(base) != token:
            df = self._read(base, self._parts(name, pending))  # the merged file's rows, then the moved-aside parts
            table = pa.Table.from_pandas(df, preserve_index=False)
            meta = {**(table.schema.metadata or {}), COMPACTION_KEY: token.encode()}
            buf = pa.BufferOutputStream()
            pq.write_table(table.replace_schema_metadata(meta), buf)
            atomic_write_bytes(base, buf.getvalue().to_pybytes())
        shutil.rmtree(pending)


TABLES = ("rounds", "clients", "eval")
#: key in a merged table's parquet metadata: the id of the compaction that wrote it
COMPACTION_KEY = b"pftray.compaction"


def _compaction_token(path: Path) -> str | None:
    if not path.exists():
        return None
    meta = pq.read_schema(path).metadata or {}
    token = meta.get(COMPACTION_KEY)
    return token.decode() if token else None


def _max_round(path: Path) -> float:
    """The largest ``server_round`` of a parquet file, from its row-group statistics when present."""
    f = pq.ParquetFile(path)
    names = f.schema_arrow.names
    if "server_round" not in names or f.metadata.num_rows == 0:
        return -1
    col, best = names.index("server_round"), -1.0
    for i in range(f.metadata.num_row_groups):
        stats = f.metadata.row_group(i).column(col).statistics
        if stats is None or not stats.has_min_max:
            s = pd.read_parquet(path, columns=["server_round"])["server_round"]
            return float(s.max()) if s.notna().any() else -1
        best = max(best, float(stats.max))
    return best


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

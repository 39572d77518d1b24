"""What the trainer consumes: random frame windows as torch batches, and client shards on disk.

Shard format (one Parquet file per client, :func:`save_client_shard`): one row per clip with columns
``clip_id, identity, split ("train" | "heldout"), crc32`` and, for each array field of :class:`Clip`, a binary
column holding the C-order bytes plus a ``<field>_shape`` list column. The dtypes are fixed by the Clip
contract. The optional per-frame ``Clip.extras`` go in one ``extras`` binary column (an uncompressed ``.npz``
of the named arrays; empty bytes when there are none), and their bytes join the row's CRC32. The client's metadata and base64 reference frame are in the schema metadata under ``b"pftray"``.
Files are written to a temporary name and moved into place with ``os.replace`` (never half-written);
Parquet page checksums and a per-row CRC32 over all array bytes detect corruption on load.
"""

from __future__ import annotations

import base64
import io
import json
import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pftray.data.types import ClientData, Clip, DataError

SHARD_FORMAT = "pftray.client-shard"
SHARD_VERSION = 1
_ARRAY_FIELDS: dict[str, np.dtype] = {
    "frames": np.dtype(np.uint8),
    "audio": np.dtype(np.float32),
    "audio_feats": np.dtype(np.float32),
    "pose": np.dtype(np.float32),
    "mouth": np.dtype(np.float32),
    "mouth_box": np.dtype(np.int32),
}


def _to_unit_range(frames: np.ndarray) -> np.ndarray:
    """uint8 ``[..., H, W, 3]`` -> float32 ``[..., 3, H, W]`` in [-1, 1]."""
    x = frames.astype(np.float32) / 127.5 - 1.0
    return np.moveaxis(x, -1, -3)


def clips_to_batch(
    clips: Sequence[Clip],
    *,
    frames: int,
    rng: np.random.Generator,
    reference: np.ndarray | Sequence[np.ndarray],
) -> dict[str, torch.Tensor]:
    """Stack a random window of ``frames`` consecutive frames from each clip into a training batch.

    One window start per clip, ``rng.integers(0, T - frames + 1)``, in clip order. ``reference`` is one
    uint8 ``[H, W, 3]`` frame shared by all clips or a list with one per clip. Returns
    ``frames`` float32 ``[B, F, 3, H, W]`` and ``reference`` float32 ``[B, 3, H, W]`` (both in [-1, 1]),
    ``audio_feats`` ``[B, F, A, M]``, ``pose`` ``[B, F, 4]``, ``mouth`` ``[B, F]`` (float32) and
    ``mouth_box`` int64 ``[B, F, 4]``.
    """
    if len(clips) == 0:
        raise ValueError("clips must be non-empty")
    if frames < 1:
        raise ValueError(f"frames must be >= 1, got {frames}")
    short = [c.clip_id for c in clips if c.num_frames < frames]
    if short:
        raise ValueError(f"frames={frames} exceeds the length of clips {short[:5]}")
    if isinstance(reference, np.ndarray) and reference.ndim == 3:
        refs = [reference] * len(clips)
    else:
        refs = list(reference)
        if len(refs) != len(clips):
            raise ValueError(f"reference list has {len(refs)} frames for {len(clips)} clips")
    shape = clips[0].frames.shape[1:]
    for c, r in zip(clips, refs):
        if c.frames.shape[1:] != shape or r.shape != shape:
            raise ValueError(
                f"clip {c.clip_id!r} / reference frame shapes {c.frames.shape[1:]}, {r.shape} != {shape}"
            )
    starts = [int(rng.integers(0, c.num_frames - frames + 1)) for c in clips]
    win = [slice(s, s + frames) for s in starts]
    return {
        "frames": torch.from_numpy(np.stack([_to_unit_range(c.frames[w]) for c, w in zip(clips, win)])),
        "audio_feats": torch.from_numpy(
            np.stack([c.audio_feats[w] for c, w in zip(clips, win)]).astype(np.float32)
        ),
        "pose": torch.from_numpy(np.stack([c.pose[w] for c, w in zip(clips, win)]).astype(np.float32)),
        "reference": torch.from_numpy(
            np.stack([_to_unit_range(np.asarray(r, dtype=np.uint8)) for r in refs])
        ),
        "mouth": torch.from_numpy(np.stack([c.mouth[w] for c, w in zip(clips, win)]).astype(np.float32)),
        "mouth_box": torch.from_numpy(
            np.stack([c.mouth_box[w] for c, w in zip(clips, win)]).astype(np.int64)
        ),
    }


def sample_batch(
    client: ClientData, *, batch_size: int, frames: int, rng: np.random.Generator, split: str = "train"
) -> dict[str, torch.Tensor]:
    """A batch of ``batch_size`` windows from clips drawn uniformly with replacement from one split."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    pool = client.train if split == "train" else client.heldout
    if not pool:
        raise ValueError(f"client {client.client_id} has no {split} clips")
    idx = rng.integers(0, len(pool), size=batch_size)
    return clips_to_batch([pool[i] for i in idx], frames=frames, rng=rng, reference=client.reference)


# --------------------------------------------------------------------------------------------- shards


def _crc(arrays: Sequence[np.ndarray]) -> int:
    crc = 0
    for a in arrays:
        crc = zlib.crc32(np.ascontiguousarray(a).data, crc)
    return crc


def _pack_extras(extras: dict[str, np.ndarray]) -> tuple[bytes, list[np.ndarray]]:
    if not extras:
        return b"", []
    names = sorted(extras)
    arrays = [np.ascontiguousarray(extras[k]) for k in names]
    buf = io.BytesIO()
    np.savez(buf, **dict(zip(names, arrays)))
    return buf.getvalue(), arrays


def _unpack_extras(raw: bytes | None) -> dict[str, np.ndarray]:
    if not raw:
        return {}
    with np.load(io.BytesIO(raw), allow_pickle=False) as z:
        return {k: z[k].copy() for k in sorted(z.files)}


def save_client_shard(client: ClientData, path: str | os.PathLike) -> Path:
    """Write ``client`` to a Parquet shard at ``path`` atomically (temp file + ``os.replace``)."""
    path = Path(path)
    rows: dict[str, list] = {"clip_id": [], "identity": [], "split": [], "crc32": [], "extras": []}
    for name in _ARRAY_FIELDS:
        rows[name], rows[f"{name}_shape"] = [], []
    for split, clips in (("train", client.train), ("heldout", client.heldout)):
        for clip in clips:
            clip.validate()
            rows["clip_id"].append(clip.clip_id)
            rows["identity"].append(clip.identity)
            rows["split"].append(split)
            arrays = [np.ascontiguousarray(getattr(clip, name)) for name in _ARRAY_FIELDS]
            packed, extra_arrays = _pack_extras(clip.extras)
            rows["extras"].append(packed)
            rows["crc32"].append(_crc(arrays + extra_arrays))
            for name, arr in zip(_ARRAY_FIELDS, arrays):
                rows[name].append(arr.tobytes())
                rows[f"{name}_shape"].append(list(arr.shape))
    fields = [
        pa.field("clip_id", pa.string()),
        pa.field("identity", pa.string()),
        pa.field("split", pa.string()),
        pa.field("crc32", pa.int64()),
        pa.field("extras", pa.large_binary()),
    ]
    for name in _ARRAY_FIELDS:
        fields += [pa.field(name, pa.large_binary()), pa.field(f"{name}_shape", pa.list_(pa.int64()))]
    ref = np.ascontiguousarray(client.reference, dtype=np.uint8)
    meta = {
        "format": SHARD_FORMAT,
        "version": SHARD_VERSION,
        "client_id": int(client.client_id),
        "identity": client.identity,
        "unreliable": client.unreliable,
        "reference_shape": list(ref.shape),
        "reference_crc32": zlib.crc32(ref.data),
        "reference": base64.b64encode(ref.tobytes()).decode("ascii"),
    }
    schema = pa.schema(fields, metadata={b"pftray": json.dumps(meta).encode("utf-8")})
    table = pa.Table.from_pydict(rows, schema=schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        pq.write_table(table, tmp, compression="zstd", write_page_checksum=True)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def load_client_shard(path: str | os.PathLike) -> ClientData:
    """Read a shard written by :func:`save_client_shard`; any corruption raises :class:`DataError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"client shard {path} does not exist")
    try:
        table = pq.read_table(path, page_checksum_verification=True)
        raw = (table.schema.metadata or {}).get(b"pftray")
        if raw is None:
            raise DataError("no pftray metadata in the schema")
        meta = json.loads(raw)
        if meta.get("format") != SHARD_FORMAT or meta.get("version") != SHARD_VERSION:
            raise DataError(f"unsupported format {meta.get('format')!r} version {meta.get('version')!r}")
        ref = np.frombuffer(base64.b64decode(meta["reference"]), dtype=np.uint8).reshape(
            meta["reference_shape"]
        )
        if zlib.crc32(ref.data) != meta["reference_crc32"]:
            raise DataError("reference frame checksum mismatch")
        cols = table.to_pydict()
        train: list[Clip] = []
        heldout: list[Clip] = []
        for i in range(table.num_rows):
            arrays = {
                name: np.frombuffer(cols[name][i], dtype=dtype).reshape(cols[f"{name}_shape"][i]).copy()
                for name, dtype in _ARRAY_FIELDS.items()
            }
            extras = _unpack_extras(cols["extras"][i] if "extras" in cols else None)
            if _crc(list(arrays.values()) + list(extras.values())) != cols["crc32"][i]:
                raise DataError(f"checksum mismatch in clip {cols['clip_id'][i]!r}")
            clip = Clip(**arrays, identity=cols["identity"][i], clip_id=cols["clip_id"][i], extras=extras)
            clip.validate()
            split = cols["split"][i]
            if split not in ("train", "heldout"):
                raise DataError(f"clip {clip.clip_id!r} has unknown split {split!r}")
            (train if split == "train" else heldout).append(clip)
        return ClientData(
            client_id=int(meta["client_id"]),
            identity=str(meta["identity"]),
            reference=ref.copy(),
            train=train,
            heldout=heldout,
            unreliable=meta["unreliable"],
        )
    except DataError as err:
        raise DataError(f"corrupt client shard {path}: {err}") from err
    except (OSError, pa.ArrowException, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
        raise DataError(f"corrupt client shard {path}: {type(err).__name__}: {err}") from err

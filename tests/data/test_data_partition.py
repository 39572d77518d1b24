"""Federated partitions, batches for the trainer, and Parquet client shards."""

import numpy as np
import pytest
import torch

from pftray.data.audio import frame_energy
from pftray.data.dataset import clips_to_batch, load_client_shard, sample_batch, save_client_shard
from pftray.data.partition import (
    make_client,
    make_public_clips,
    make_synthetic_federation,
    num_train_clips,
    unreliable_assignment,
)
from pftray.data.synthetic import sample_identity
from pftray.data.types import ClientData, Clip, DataError

FED = dict(num_clients=6, clips_per_client=2, heldout_clips=1, frames_per_clip=8, resolution=32)
FIELDS = ("frames", "audio", "audio_feats", "pose", "mouth", "mouth_box")


def assert_clip_equal(a: Clip, b: Clip) -> None:
    assert (a.identity, a.clip_id) == (b.identity, b.clip_id)
    for f in FIELDS:
        x, y = getattr(a, f), getattr(b, f)
        assert x.dtype == y.dtype and x.shape == y.shape, f
        np.testing.assert_array_equal(x, y, err_msg=f)


def assert_client_equal(a: ClientData, b: ClientData) -> None:
    assert (a.client_id, a.identity, a.unreliable) == (b.client_id, b.identity, b.unreliable)
    np.testing.assert_array_equal(a.reference, b.reference)
    assert len(a.train) == len(b.train) and len(a.heldout) == len(b.heldout)
    for x, y in zip(a.train + a.heldout, b.train + b.heldout):
        assert_clip_equal(x, y)


@pytest.fixture(scope="module")
def federation():
    return make_synthetic_federation(**FED, unreliable_fraction=0.5, quantity_skew=0.8, seed=7)


def test_make_client_equals_federation_member(federation):
    for k in (0, 3, 5):
        assert_client_equal(
            make_client(k, **FED, unreliable_fraction=0.5, quantity_skew=0.8, seed=7), federation[k]
        )
        assert make_client(k, **FED, unreliable_fraction=0.5, quantity_skew=0.8, seed=7) == federation[k]
    other = make_client(3, **FED, unreliable_fraction=0.5, quantity_skew=0.8, seed=8)
    assert not np.array_equal(other.reference, federation[3].reference)
    assert other != federation[3] and federation[2] != federation[3]


def test_one_identity_per_client_with_neutral_reference(federation):
    assert [c.identity for c in federation] == [f"client-{k}" for k in range(6)]
    for c in federation:
        assert c.reference.shape == (32, 32, 3) and c.reference.dtype == np.uint8
        assert {clip.identity for clip in c.train + c.heldout} == {c.identity}
        assert len(c.heldout) == 1
        assert c.num_examples == sum(clip.num_frames for clip in c.train) == 8 * len(c.train)
        for clip in c.train + c.heldout:
            clip.validate()
            assert all(not np.array_equal(c.reference, f) for f in clip.frames)


def test_unreliable_count_kinds_and_clean_heldout(federation):
    bad = [c for c in federation if c.unreliable is not None]
    assert len(bad) == round(0.5 * 6)
    assert sorted(c.unreliable for c in bad) == ["frozen", "noise", "offset"]
    for c in bad:
        clean = make_client(c.client_id, **FED, quantity_skew=0.8, seed=7)  # same client, reliable
        assert clean.unreliable is None and len(clean.train) == len(c.train)
        for x, y in zip(clean.heldout, c.heldout):
            assert_clip_equal(x, y)  # held-out clips are never corrupted
        corrupted = [
            not (np.array_equal(x.frames, y.frames) and np.array_equal(x.audio_feats, y.audio_feats))
            for x, y in zip(clean.train, c.train)
        ]
        assert all(corrupted)
    for n, frac in ((10, 0.25), (7, 0.5), (40, 0.1), (5, 0.0), (3, 1.0)):
        assign = unreliable_assignment(
            num_clients=n, unreliable_fraction=frac, unreliable_kinds=("noise",), seed=0
        )
        assert len(assign) == round(frac * n) and all(0 <= k < n for k in assign)


def test_quantity_skew_distribution():
    def counts(s):
        return np.array(
            [num_train_clips(k, clips_per_client=10, quantity_skew=s, seed=0) for k in range(400)]
        )

    flat, mild, strong = counts(0.0), counts(0.3), counts(1.5)
    assert np.all(flat == 10)
    assert mild.min() >= 1 and strong.min() >= 1
    assert np.std(np.log(mild)) < np.std(np.log(strong))
    assert 0.2 < np.std(np.log(mild)) < 0.4  # lognormal with sigma 0.3 (rounding adds a little)
    assert 8 <= np.median(strong) <= 12  # median stays at clips_per_client
    assert (strong == 1).sum() > 0 and strong.max() > 50
    c = make_client(2, **{**FED, "clips_per_client": 3}, quantity_skew=1.0, seed=1)
    assert len(c.train) == num_train_clips(2, clips_per_client=3, quantity_skew=1.0, seed=1)
    assert len(c.heldout) == 1


def test_public_clips_are_disjoint_from_clients():
    pub = make_public_clips(num_identities=2, clips_per_identity=2, frames_per_clip=8, resolution=32, seed=7)
    assert [c.identity for c in pub] == ["pub-0", "pub-0", "pub-1", "pub-1"]
    assert len({c.clip_id for c in pub}) == 4
    for i in range(2):
        p, c = sample_identity(7, i, stream="public"), sample_identity(7, i, stream="client")
        assert p.skin != c.skin and p.f0 != c.f0 and p.face_axes != c.face_axes
    again = make_public_clips(
        num_identities=2, clips_per_identity=2, frames_per_clip=8, resolution=32, seed=7
    )
    for x, y in zip(pub, again):
        assert_clip_equal(x, y)


def test_argument_errors_name_the_argument():
    with pytest.raises(ValueError, match="client_id"):
        make_client(6, **FED)
    with pytest.raises(ValueError, match="unreliable_kinds"):
        make_client(0, **FED, unreliable_fraction=0.5, unreliable_kinds=("smudge",))
    with pytest.raises(ValueError, match="unreliable_fraction"):
        make_client(0, **FED, unreliable_fraction=1.5)
    with pytest.raises(ValueError, match="quantity_skew"):
        make_client(0, **FED, quantity_skew=-1.0)


def test_clips_to_batch_shapes_values_and_windows(federation):
    clips = federation[0].train + federation[0].heldout
    batch = clips_to_batch(clips, frames=5, rng=np.random.default_rng(3), reference=federation[0].reference)
    b = len(clips)
    expect = {
        "frames": ((b, 5, 3, 32, 32), torch.float32),
        "audio_feats": ((b, 5, 16, 32), torch.float32),
        "pose": ((b, 5, 4), torch.float32),
        "reference": ((b, 3, 32, 32), torch.float32),
        "mouth": ((b, 5), torch.float32),
        "mouth_box": ((b, 5, 4), torch.int64),
    }
    assert {k: (tuple(v.shape), v.dtype) for k, v in batch.items()} == expect
    assert batch["frames"].min() >= -1 and batch["frames"].max() <= 1
    # The documented draw order: one rng.integers(0, T - F + 1) per clip, in clip order.
    rng = np.random.default_rng(3)
    starts = [int(rng.integers(0, 8 - 5 + 1)) for _ in clips]
    for i, (clip, s) in enumerate(zip(clips, starts)):
        np.testing.assert_array_equal(batch["mouth"][i].numpy(), clip.mouth[s : s + 5])
        np.testing.assert_array_equal(batch["audio_feats"][i].numpy(), clip.audio_feats[s : s + 5])
        np.testing.assert_array_equal(batch["mouth_box"][i].numpy(), clip.mouth_box[s : s + 5])
        pixels = (batch["frames"][i].permute(0, 2, 3, 1).numpy() + 1) * 127.5
        np.testing.assert_allclose(pixels, clip.frames[s : s + 5], atol=1e-3)
    ref = (batch["reference"][0].permute(1, 2, 0).numpy() + 1) * 127.5
    np.testing.assert_allclose(ref, federation[0].reference, atol=1e-3)
    refs = [c.reference for c in federation[:b]]
    per = clips_to_batch(clips, frames=8, rng=np.random.default_rng(0), reference=refs)
    assert not torch.equal(per["reference"][0], per["reference"][1])
    with pytest.raises(ValueError, match="frames=9"):
        clips_to_batch(clips, frames=9, rng=np.random.default_rng(0), reference=refs)
    with pytest.raises(ValueError, match="reference"):
        clips_to_batch(clips, frames=4, rng=np.random.default_rng(0), reference=refs[:1])


def test_sample_batch(federation):
    batch = sample_batch(federation[1], batch_size=5, frames=4, rng=np.random.default_rng(0))
    assert batch["frames"].shape == (5, 4, 3, 32, 32)
    held = sample_batch(federation[1], batch_size=2, frames=8, rng=np.random.default_rng(0), split="heldout")
    np.testing.assert_array_equal(held["mouth"][0].numpy(), federation[1].heldout[0].mouth)


def test_batch_audio_mouth_sync_survives_batching():
    fed = make_synthetic_federation(**{**FED, "num_clients": 1, "frames_per_clip": 60}, seed=2)
    batch = clips_to_batch(fed[0].train, frames=60, rng=np.random.default_rng(0), reference=fed[0].reference)
    for i in range(2):
        e = frame_energy(batch["audio_feats"][i].numpy())
        assert np.corrcoef(e, batch["mouth"][i].numpy())[0, 1] > 0.7


def test_shard_round_trip_is_exact(tmp_path, federation):
    for c in federation[:3]:
        path = save_client_shard(c, tmp_path / f"client-{c.client_id}.parquet")
        assert path.exists() and not list(tmp_path.glob(".*tmp*"))
        assert_client_equal(load_client_shard(path), c)
        assert load_client_shard(path) == c


def test_corrupt_shards_raise_data_error_naming_the_file(tmp_path, federation):
    path = save_client_shard(federation[0], tmp_path / "client-0.parquet")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated.parquet"):
        load_client_shard(truncated)
    flipped = bytearray(data)
    for pos in range(len(data) // 4, len(data) // 2, 997):
        flipped[pos] ^= 0xFF
    bad = tmp_path / "flipped.parquet"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(DataError, match="flipped.parquet"):
        load_client_shard(bad)
    with pytest.raises(DataError, match="missing.parquet"):
        load_client_shard(tmp_path / "missing.parquet")
    # A failed write leaves the previous shard intact (atomic replace).
    with pytest.raises(DataError):
        broken = ClientData(0, "x", federation[0].reference, [federation[0].train[0]], [], None)
        broken.train[0] = Clip(
            **{**broken.train[0].__dict__, "mouth": broken.train[0].mouth.astype(np.float64)}
        )
        save_client_shard(broken, path)
    assert_client_equal(load_client_shard(path), federation[0])


def test_shard_round_trip_keeps_extras_under_the_checksum(tmp_path, federation):
    import dataclasses

    c = federation[0]
    t = c.train[0].num_frames
    lm = np.random.default_rng(0).normal(size=(t, 68, 2)).astype(np.float32)
    clip = dataclasses.replace(c.train[0], extras={"landmarks": lm, "gain": np.arange(t, dtype=np.float32)})
    with_extras = ClientData(c.client_id, c.identity, c.reference, [clip] + c.train[1:], c.heldout, c.unreliable)
    path = save_client_shard(with_extras, tmp_path / "x.parquet")
    back = load_client_shard(path)
    assert back == with_extras and back != c
    np.testing.assert_array_equal(back.train[0].extras["landmarks"], lm)
    assert all(other.extras == {} for other in back.train[1:] + back.heldout)
    # an extras array with the wrong frame count is refused at write time, naming the field
    bad = dataclasses.replace(c.train[0], extras={"landmarks": lm[:-1]})
    with pytest.raises(DataError, match="landmarks"):
        save_client_shard(ClientData(0, "x", c.reference, [bad], [], None), tmp_path / "y.parquet")
    # flipping bytes inside the extras column is caught (its bytes are in the row CRC)
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    cols = table.to_pydict()
    row = next(i for i, b in enumerate(cols["extras"]) if b)
    raw = bytearray(cols["extras"][row])
    raw[len(raw) // 2] ^= 0xFF  # inside the stored (uncompressed) array data
    cols["extras"][row] = bytes(raw)
    import pyarrow as pa

    pq.write_table(pa.Table.from_pydict(cols, schema=table.schema), tmp_path / "z.parquet")
    with pytest.raises(DataError, match="z.parquet"):
        load_client_shard(tmp_path / "z.parquet")

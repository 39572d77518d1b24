"""Typed protocol messages of SecAgg / SecAgg+ and the neighbour graph.

Stage numbering follows Bonawitz et al. 2017 (Fig. 4) with the SecAgg+ neighbourhoods of Bell et al. 2020:

=====  =====================  ========================================================================
stage  message                direction and content
=====  =====================  ========================================================================
0      :class:`SetupMessage`   server -> client: session id, sample, own neighbours, threshold, grid
1      :class:`AdvertiseKeys`  client -> server: two X25519 public keys ``c_pk`` (encryption), ``s_pk``
1'     :class:`KeyDirectory`   server -> client: the advertised keys of the client's live neighbours
2      :class:`ShareKeys`      client -> server: AE-encrypted Shamir shares of ``b_u`` and ``s_sk_u``
2'     :class:`ShareDelivery`  server -> client: the ciphertexts addressed to it
3      :class:`MaskedInput`    client -> server: ``y_u`` (masked quantised vector)
3'     :class:`UnmaskRequest`  server -> client: survivors ``U3`` and dropped ``U2 \\ U3``
4      :class:`UnmaskReply`    client -> server: b-shares of survivors, s_sk-shares of dropped clients
=====  =====================  ========================================================================

``nbytes`` of each message is the size of its payload on the wire (ids as 4 bytes, keys and ciphertexts as
their length, vectors as their buffer), used for the communication figures.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from pftray.errors import RuntimeFailure
from pftray.privacy.secagg.quantize import QuantizationSpec, SignedQuantization

__all__ = [
    "STAGES",
    "AdvertiseKeys",
    "KeyDirectory",
    "MaskedInput",
    "RejectedShare",
    "SecAggAbort",
    "SecAggProtocolError",
    "SetupMessage",
    "ShareDelivery",
    "ShareKeys",
    "UnmaskReply",
    "UnmaskRequest",
    "neighbour_graph",
]

#: Names of the client-side stages, in order; also the keys of ``run_secagg(drop_before=...)``.
STAGES: tuple[str, ...] = ("advertise_keys", "share_keys", "masked_input", "unmask")

_ID_BYTES = 4


class SecAggAbort(RuntimeFailure):
    """The round cannot complete securely (too few survivors or too few valid shares)."""


class SecAggProtocolError(RuntimeFailure):
    """A party received a message out of order or inconsistent with the protocol state."""


@dataclass(frozen=True)
class RejectedShare:
    """A share that was discarded: who held it, whose secret it was, and why."""

    holder: int
    owner: int
    reason: str


@dataclass(frozen=True)
class SetupMessage:
    """Stage 0 (server -> client): the round parameters and this client's neighbourhood."""

    client_id: int
    session_id: bytes
    sample: tuple[int, ...]
    neighbours: tuple[int, ...]
    threshold: int
    quantization: QuantizationSpec | SignedQuantization
    vector_length: int

    @property
    def nbytes(self) -> int:
        return len(self.session_id) + _ID_BYTES * (len(self.sample) + len(self.neighbours) + 6)


@dataclass(frozen=True)
class AdvertiseKeys:
    """Stage 1 (client -> server): ``c_pk`` for share encryption, ``s_pk`` for pairwise masks."""

    client_id: int
    c_pk: bytes
    s_pk: bytes

    @property
    def nbytes(self) -> int:
        return _ID_BYTES + len(self.c_pk) + len(self.s_pk)


@dataclass(frozen=True)
class KeyDirectory:
    """Stage 1 reply (server -> client): ``{neighbour: (c_pk, s_pk)}`` of live neighbours only."""

    client_id: int
    public_keys: Mapping[int, tuple[bytes, bytes]]

    @property
    def nbytes(self) -> int:
        return _ID_BYTES + sum(_ID_BYTES + len(c) + len(s) for c, s in self.public_keys.values())


@dataclass(frozen=True)
class ShareKeys:
    """Stage 2 (client -> server): ``{receiver: AE ciphertext of (u, v, b-share, s_sk-share)}``."""

    client_id: int
    ciphertexts: Mapping[int, bytes]
    #: SHA-256 commitment to the self-mask seed ``b`` (:func:`seed_commitment`): the server checks the seed it
    #: reconstructs from the shares against it, so a corrupted share aborts instead of changing the sum
    b_commitment: bytes = b""

    @property
    def nbytes(self) -> int:
        return _ID_BYTES + len(self.b_commitment) + sum(_ID_BYTES + len(c) for c in self.ciphertexts.values())


def seed_commitment(session_id: bytes, client_id: int, seed: bytes) -> bytes:
    """Hiding, binding commitment to a 32-byte random seed: SHA-256 over a domain tag, the session and the owner."""
    import hashlib

    return hashlib.sha256(b"pftray-secagg-b-commit" + session_id + int(client_id).to_bytes(4, "big") + seed).digest()


@dataclass(frozen=True)
class ShareDelivery:
    """Stage 2 reply (server -> client): ``{sender: ciphertext}`` addressed to this client.

    The senders are exactly the client's neighbours that completed stage 2 (``U2 ∩ N(u)``); the client
    masks its input against them and nobody else.
    """

    client_id: int
    ciphertexts: Mapping[int, bytes]

    @property
    def nbytes(self) -> int:
        return _ID_BYTES + sum(_ID_BYTES + len(c) for c in self.ciphertexts.values())


@dataclass(frozen=True)
class MaskedInput:
    """Stage 3 (client -> server): ``y_u = q(x_u) + PRG(b_u) + sum_v ±PRG(s_uv) mod 2**k``."""

    client_id: int
    masked: np.ndarray = field(repr=False)

    @property
    def nbytes(self) -> int:
        return _ID_BYTES + int(self.masked.nbytes)


@dataclass(frozen=True)
class UnmaskRequest:
    """Stage 3 reply (server -> client): who sent a masked input (``survivors``) and who did not."""

    client_id: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return _ID_BYTES * (1 + len(self.survivors) + len(self.dropped))


@dataclass(frozen=True)
class UnmaskReply:
    """Stage 4 (client -> server): shares of ``b_v`` for surviving and of ``s_sk_v`` for dropped ``v``.

    ``rejected`` maps a sender whose ciphertext failed authentication (or named the wrong parties) to the
    reason; those shares are left out.
    """

    client_id: int
    self_mask_shares: Mapping[int, bytes]
    secret_key_shares: Mapping[int, bytes]
    rejected: Mapping[int, str] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        shares = list(self.self_mask_shares.values()) + list(self.secret_key_shares.values())
        return _ID_BYTES + sum(_ID_BYTES + len(s) for s in shares)


def neighbour_graph(client_ids: Sequence[int], *, degree: int | None, seed: int) -> dict[int, frozenset[int]]:
    """Deterministic ``degree``-regular random graph over ``client_ids`` (SecAgg+, Bell et al. 2020).

    The clients are shuffled with ``numpy.random.default_rng(seed)`` and placed on a ring; each is joined
    to its ``degree // 2`` nearest ring neighbours on either side, plus the diametrically opposite client
    when ``degree`` is odd (a Harary graph ``H_{degree,n}``, which is ``degree``-regular and
    ``degree``-connected). ``degree=None`` or ``degree >= n - 1`` gives the complete graph (classic SecAgg).
    Odd ``degree`` with odd ``n`` is impossible for a regular graph and raises ``ValueError``.
    """
    ids = list(client_ids)
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError(f"client_ids must be distinct, got {ids}")
    if n < 2:
        raise ValueError(f"need at least 2 clients, got {n}")
    if degree is None or degree >= n - 1:
        return {u: frozenset(v for v in ids if v != u) for u in ids}
    if not isinstance(degree, int) or degree < 1:
        raise ValueError(f"degree must be a positive int or None, got {degree!r}")
    if degree % 2 == 1 and n % 2 == 1:
        raise ValueError(f"no {degree}-regular graph on an odd number of clients ({n}); use an even degree")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(n)]
    graph: dict[int, set[int]] = {u: set() for u in ids}
    offsets = list(range(1, degree // 2 + 1)) + ([n // 2] if degree % 2 else [])
    for pos, u in enumerate(order):
        for off in offsets:
            v = order[(pos + off) % n]
            graph[u].add(v)
            graph[v].add(u)
    return {u: frozenset(vs) for u, vs in graph.items()}

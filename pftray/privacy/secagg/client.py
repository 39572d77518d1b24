"""Client side of SecAgg / SecAgg+ (Bonawitz et al. 2017, Fig. 4; Bell et al. 2020 neighbourhoods).

A :class:`SecAggClient` is a plain state machine with one method per stage; each takes the server's
message and returns the reply. It is safe to host in a Ray actor: all arguments and replies are frozen
dataclasses of ints, bytes and numpy arrays. Calling a stage out of order raises
:class:`SecAggProtocolError`; the client answers the unmasking request at most once, and never reveals both
the self-mask share and the mask-key share of the same party (the property that keeps a dropped client's
input hidden, Bonawitz et al. 2017, Sec. 4).
"""

from __future__ import annotations

import numpy as np

from pftray.privacy.secagg import primitives as P
from pftray.privacy.secagg.messages import (
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    SecAggAbort,
    SecAggProtocolError,
    SetupMessage,
    ShareDelivery,
    ShareKeys,
    UnmaskReply,
    UnmaskRequest,
    seed_commitment,
)
from pftray.privacy.secagg.quantize import SignedQuantization, quantize

__all__ = ["ENC_INFO", "MASK_INFO", "SecAggClient", "mask_sign", "share_aad", "share_x"]

#: HKDF ``info`` labels separating the two uses of key agreement.
ENC_INFO = b"pftray-secagg/v1/share-encryption"
MASK_INFO = b"pftray-secagg/v1/pairwise-mask"
_ID = 4


def share_x(client_id: int) -> int:
    """Shamir x-coordinate of a client (ids start at 0, x-coordinates at 1)."""
    return client_id + 1


def mask_sign(u: int, v: int) -> int:
    """Sign of ``PRG(s_uv)`` in ``y_u``: ``+1`` if ``u < v`` else ``-1``, so the pair cancels in the sum."""
    return 1 if u < v else -1


def share_aad(session_id: bytes, sender: int, receiver: int) -> bytes:
    """Associated data binding a share ciphertext to its session, sender and receiver."""
    return session_id + sender.to_bytes(_ID, "big") + receiver.to_bytes(_ID, "big")


class SecAggClient:
    """One client of a secure-aggregation round.

    Args:
        client_id: this client's id (must match the server's sample).
        rng: generator for stochastic rounding in quantisation only (OS entropy when ``None``). Cryptographic
            material (X25519 key pairs, self-mask seed ``b``, Shamir coefficients, AEAD nonces) always comes from
            the OS CSPRNG (``cryptography``'s key generation, ``os.urandom``, ``secrets``) and is never drawn from
            ``rng``, so a generator seeded from a public experiment seed cannot regenerate keys or masks. There is
            no deterministic-key mode.
    """

    def __init__(self, client_id: int, *, rng: np.random.Generator | None = None) -> None:
        self.client_id = int(client_id)
        self._rng = rng if rng is not None else np.random.default_rng()
        self._stage = "advertise_keys"  # the stages are named as messages.STAGES: by what the client sends in them
        self._setup: SetupMessage | None = None
        self._c_sk = self._s_sk = b""
        self._peer_keys: dict[int, tuple[bytes, bytes]] = {}
        self._b_seed = b""
        self._own_b_share = b""
        self._inbox: dict[int, bytes] = {}

    def _expect(self, stage: str) -> SetupMessage:
        if self._stage != stage:
            raise SecAggProtocolError(
                f"client {self.client_id}: got a '{stage}' message while in stage '{self._stage}'"
            )
        if stage != "advertise_keys" and self._setup is None:  # pragma: no cover - guarded by the stage order
            raise SecAggProtocolError(f"client {self.client_id}: not set up")
        return self._setup  # type: ignore[return-value]

    def _check_addressee(self, client_id: int) -> None:
        if client_id != self.client_id:
            raise SecAggProtocolError(f"client {self.client_id}: message addressed to client {client_id}")

    # Stage 0 -> 1 -------------------------------------------------------------------------------------
    def setup(self, msg: SetupMessage) -> AdvertiseKeys:
        """Store the round parameters; generate and advertise the key pairs ``(c_pk, s_pk)``."""
        self._expect("advertise_keys")
        self._check_addressee(msg.client_id)
        if self.client_id not in msg.sample or self.client_id in msg.neighbours:
            raise SecAggProtocolError(f"client {self.client_id}: inconsistent sample/neighbours in setup")
        self._setup = msg
        self._c_sk, c_pk = P.generate_key_pair()
        self._s_sk, s_pk = P.generate_key_pair()
        self._stage = "share_keys"
        return AdvertiseKeys(self.client_id, c_pk, s_pk)

    # Stage 1 -> 2 -------------------------------------------------------------------------------------
    def share_keys(self, msg: KeyDirectory) -> ShareKeys:
        """Shamir-share ``b_u`` and ``s_sk_u`` over the live neighbourhood and encrypt each share pair."""
        setup = self._expect("share_keys")
        self._check_addressee(msg.client_id)
        peers = dict(msg.public_keys)
        if not set(peers) <= set(setup.neighbours):
            raise SecAggProtocolError(
                f"client {self.client_id}: key directory names non-neighbours {sorted(set(peers) - set(setup.neighbours))}"
            )
        all_keys = [k for pair in peers.values() for k in pair]
        if len(set(all_keys)) != len(all_keys):
            raise SecAggProtocolError(f"client {self.client_id}: duplicate public keys in the directory")
        holders = sorted([*peers, self.client_id])
        if len(holders) < setup.threshold:
            raise SecAggAbort(
                f"client {self.client_id}: {len(holders)} live share holders < threshold {setup.threshold}"
            )
        self._peer_keys = peers
        b_seed = P.random_seed()
        xs = [share_x(h) for h in holders]
        b_shares = P.shamir_split(b_seed, threshold=setup.threshold, xs=xs)
        sk_shares = P.shamir_split(self._s_sk, threshold=setup.threshold, xs=xs)
        self._b_seed = b_seed
        self._own_b_share = b_shares[share_x(self.client_id)]
        ciphertexts = {}
        for v, (c_pk_v, _) in peers.items():
            key = P.agree(self._c_sk, c_pk_v, info=ENC_INFO)
            plaintext = (
                self.client_id.to_bytes(_ID, "big")
                + v.to_bytes(_ID, "big")
                + b_shares[share_x(v)]
                + sk_shares[share_x(v)]
            )
            aad = share_aad(setup.session_id, self.client_id, v)
            ciphertexts[v] = P.encrypt(key, plaintext, associated_data=aad)
        self._stage = "masked_input"
        return ShareKeys(self.client_id, ciphertexts,
                         b_commitment=seed_commitment(setup.session_id, self.client_id, b_seed))

    # Stage 2 -> 3 -------------------------------------------------------------------------------------
    def masked_input(self, msg: ShareDelivery, vector: np.ndarray, *,
                     integer_noise: np.ndarray | None = None) -> MaskedInput:
        """Quantise ``vector`` and mask it: ``y_u = q(x_u) + PRG(b_u) + sum_{v in U2 ∩ N(u)} ±PRG(s_uv)``.

        ``integer_noise`` (signed fixed point only): int noise in grid units, added before masking."""
        setup = self._expect("masked_input")
        self._check_addressee(msg.client_id)
        senders = set(msg.ciphertexts)
        if not senders <= set(self._peer_keys):
            raise SecAggProtocolError(
                f"client {self.client_id}: shares delivered from unknown senders {sorted(senders - set(self._peer_keys))}"
            )
        if len(senders) + 1 < setup.threshold:
            raise SecAggAbort(
                f"client {self.client_id}: {len(senders) + 1} live share holders < threshold {setup.threshold}"
            )
        vector = np.asarray(vector)
        if vector.shape != (setup.vector_length,):
            raise ValueError(
                f"client {self.client_id}: vector has shape {vector.shape}, expected ({setup.vector_length},)"
            )
        spec = setup.quantization
        k = spec.modulus_bits
        if isinstance(spec, SignedQuantization):
            y = spec.encode(vector, self._rng, integer_noise=integer_noise)
        elif integer_noise is not None:
            raise ValueError("integer_noise needs the signed fixed-point mode (SecAggParams.signed_bound)")
        else:
            y = quantize(vector, spec, rng=self._rng)
        y += P.prg_expand(self._b_seed, setup.vector_length, modulus_bits=k)
        for v in sorted(senders):
            seed = P.agree(self._s_sk, self._peer_keys[v][1], info=MASK_INFO)
            mask = P.prg_expand(seed, setup.vector_length, modulus_bits=k)
            if mask_sign(self.client_id, v) > 0:
                y += mask
            else:
                y -= mask
        if k not in (32, 64):  # uint32/uint64 wrap natively; any other k must be reduced or y leaks carries
            y &= y.dtype.type((1 << k) - 1)
        self._inbox = dict(msg.ciphertexts)
        self._b_seed = b""
        self._stage = "unmask"
        return MaskedInput(self.client_id, y)

    # Stage 3 -> 4 -------------------------------------------------------------------------------------
    def unmask(self, msg: UnmaskRequest) -> UnmaskReply:
        """Reveal b-shares of surviving and s_sk-shares of dropped neighbours (each party one kind only)."""
        setup = self._expect("unmask")
        self._check_addressee(msg.client_id)
        survivors, dropped = set(msg.survivors), set(msg.dropped)
        if survivors & dropped:
            raise SecAggProtocolError(
                f"client {self.client_id}: parties both surviving and dropped: {sorted(survivors & dropped)}"
            )
        if self.client_id not in survivors:
            raise SecAggProtocolError(f"client {self.client_id}: unmask request does not list it as survivor")
        if len(survivors) < setup.threshold:
            raise SecAggAbort(
                f"client {self.client_id}: {len(survivors)} survivors < threshold {setup.threshold}"
            )
        self._stage = "done"  # answer once, whatever happens below
        b_out: dict[int, bytes] = {self.client_id: self._own_b_share}
        sk_out: dict[int, bytes] = {}
        rejected: dict[int, str] = {}
        n_el = len(self._own_b_share)
        for v, ciphertext in sorted(self._inbox.items()):
            if v not in survivors and v not in dropped:
                continue
            key = P.agree(self._c_sk, self._peer_keys[v][0], info=ENC_INFO)
            try:
                plain = P.decrypt(
                    key, ciphertext, associated_data=share_aad(setup.session_id, v, self.client_id)
                )
            except P.ShareDecryptionError as exc:
                rejected[v] = f"decryption failed: {exc}"
                continue
            sender, receiver = int.from_bytes(plain[:_ID], "big"), int.from_bytes(plain[_ID : 2 * _ID], "big")
            if (sender, receiver) != (v, self.client_id) or len(plain) != 2 * _ID + 2 * n_el:
                rejected[v] = f"malformed share plaintext (sender={sender}, receiver={receiver})"
                continue
            body = plain[2 * _ID :]
            if v in survivors:
                b_out[v] = body[:n_el]
            else:
                sk_out[v] = body[n_el:]
        self._inbox = {}
        self._own_b_share = b""
        return UnmaskReply(self.client_id, b_out, sk_out, rejected)

"""Cryptographic primitives of secure aggregation (Bonawitz et al. 2017, Sec. 3).

* Key agreement: X25519 Diffie-Hellman followed by HKDF-SHA256, so both ends of a pair derive the same
  32-byte secret (the ``KA.agree`` of the paper).
* Authenticated encryption: ChaCha20-Poly1305 with a fresh random 96-bit nonce prepended to the ciphertext
  (the ``AE.enc``/``AE.dec`` of the paper). A failed tag check raises :class:`ShareDecryptionError`.
* PRG: AES-256-CTR keystream under a 32-byte seed, read as a vector of unsigned integers modulo ``2**k``.
  Every 32-bit (or 64-bit) word of an AES keystream is uniform, so the reduced words are uniform mod ``2**k``
  for any ``k`` that divides the word size range (``k <= 32`` uses uint32 words, ``32 < k <= 64`` uint64).
* Shamir secret sharing over the Mersenne prime field ``p = 2**127 - 1``. A secret of arbitrary byte length
  is split into 15-byte chunks (each < 2**120 < p); every chunk is shared with an independent random
  polynomial of degree ``threshold - 1`` evaluated at the same x-coordinates. A share is serialised as the
  concatenation of the 16-byte big-endian field elements of its chunks.

All keys and shares are plain ``bytes`` so that protocol messages pickle cheaply across Ray.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from functools import lru_cache

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from pftray.errors import RuntimeFailure

__all__ = [
    "FIELD_PRIME",
    "KEY_BYTES",
    "SEED_BYTES",
    "ShareDecryptionError",
    "agree",
    "decrypt",
    "encrypt",
    "generate_key_pair",
    "prg_expand",
    "public_key_from_private",
    "random_seed",
    "shamir_evaluate",
    "shamir_reconstruct",
    "shamir_split",
    "share_nbytes",
    "uint_dtype",
]

#: Mersenne prime 2**127 - 1; field of the Shamir shares.
FIELD_PRIME: int = (1 << 127) - 1
#: Bytes of a secret chunk (15 bytes = 120 bits, strictly below the field size).
_CHUNK_BYTES = 15
#: Bytes of one serialised field element.
_ELEMENT_BYTES = 16
#: Bytes of an X25519 key (private or public).
KEY_BYTES = 32
#: Bytes of a PRG seed / self-mask seed.
SEED_BYTES = 32
_NONCE_BYTES = 12


class ShareDecryptionError(RuntimeFailure, ValueError):
    """Authenticated decryption failed: the ciphertext, its nonce or its associated data was altered."""


# --------------------------------------------------------------------------------------------------------
# Key agreement and authenticated encryption
# --------------------------------------------------------------------------------------------------------


def generate_key_pair() -> tuple[bytes, bytes]:
    """Return a fresh X25519 ``(private_key, public_key)`` pair as raw 32-byte strings."""
    private = X25519PrivateKey.generate()
    private_bytes = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return private_bytes, public_key_from_private(private_bytes)


def public_key_from_private(private_key: bytes) -> bytes:
    """Return the raw X25519 public key belonging to ``private_key`` (used to verify reconstructions)."""
    _check_key("private_key", private_key)
    public = X25519PrivateKey.from_private_bytes(private_key).public_key()
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agree(private_key: bytes, peer_public_key: bytes, *, info: bytes) -> bytes:
    """Derive a 32-byte shared secret: ``HKDF-SHA256(X25519(private_key, peer_public_key), info)``.

    ``agree(a_sk, b_pk, info=i) == agree(b_sk, a_pk, info=i)``. ``info`` separates the uses of the secret
    (share encryption vs. pairwise mask), as in the ``KA.agree`` + PRG split of Bonawitz et al. 2017.
    """
    _check_key("private_key", private_key)
    _check_key("peer_public_key", peer_public_key)
    shared = X25519PrivateKey.from_private_bytes(private_key).exchange(
        X25519PublicKey.from_public_bytes(peer_public_key)
    )
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(shared)


def encrypt(key: bytes, plaintext: bytes, *, associated_data: bytes) -> bytes:
    """ChaCha20-Poly1305 encryption; returns ``nonce || ciphertext || tag``."""
    if len(key) != 32:
        raise ValueError(f"key must be 32 bytes, got {len(key)}")
    nonce = os.urandom(_NONCE_BYTES)
    return nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, associated_data)


def decrypt(key: bytes, ciphertext: bytes, *, associated_data: bytes) -> bytes:
    """Inverse of :func:`encrypt`; raises :class:`ShareDecryptionError` on any tampering."""
    if len(key) != 32:
        raise ValueError(f"key must be 32 bytes, got {len(key)}")
    if len(ciphertext) < _NONCE_BYTES + 16:
        raise ShareDecryptionError(f"ciphertext too short ({len(ciphertext)} bytes)")
    try:
        return ChaCha20Poly1305(key).decrypt(
            ciphertext[:_NONCE_BYTES], ciphertext[_NONCE_BYTES:], associated_data
        )
    except InvalidTag as exc:
        raise ShareDecryptionError("authentication tag mismatch") from exc


def _check_key(name: str, key: bytes) -> None:
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_BYTES:
        raise ValueError(f"{name} must be {KEY_BYTES} raw bytes, got {type(key).__name__} of len {len(key)}")


def random_seed() -> bytes:
    """Return a fresh 32-byte seed from the OS CSPRNG."""
    return os.urandom(SEED_BYTES)


# --------------------------------------------------------------------------------------------------------
# PRG
# --------------------------------------------------------------------------------------------------------


def uint_dtype(modulus_bits: int) -> np.dtype:
    """The numpy word type used for arithmetic mod ``2**modulus_bits`` (uint32 up to 32 bits, else uint64)."""
    if not isinstance(modulus_bits, int) or not 1 <= modulus_bits <= 64:
        raise ValueError(f"modulus_bits must be an int in [1, 64], got {modulus_bits!r}")
    return np.dtype(np.uint32) if modulus_bits <= 32 else np.dtype(np.uint64)


def prg_expand(seed: bytes, length: int, *, modulus_bits: int) -> np.ndarray:
    """Expand ``seed`` into ``length`` integers uniform modulo ``2**modulus_bits``.

    The keystream of AES-256-CTR (key = seed, zero IV) is read as little-endian words of
    :func:`uint_dtype` and reduced modulo ``2**modulus_bits`` by masking. Deterministic in ``seed``.
    """
    if len(seed) != SEED_BYTES:
        raise ValueError(f"seed must be {SEED_BYTES} bytes, got {len(seed)}")
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    dtype = uint_dtype(modulus_bits)
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(length * dtype.itemsize)) + encryptor.finalize()
    words = np.frombuffer(stream, dtype=dtype.newbyteorder("<")).astype(dtype, copy=False)
    if modulus_bits not in (32, 64):
        words = words & dtype.type((1 << modulus_bits) - 1)
    elif not words.flags.writeable:
        words = words.copy()
    return words


# --------------------------------------------------------------------------------------------------------
# Shamir secret sharing
# --------------------------------------------------------------------------------------------------------


def _chunks(secret: bytes) -> list[int]:
    return [int.from_bytes(secret[i : i + _CHUNK_BYTES], "big") for i in range(0, len(secret), _CHUNK_BYTES)]


def share_nbytes(secret_bytes: int) -> int:
    """Serialised size of one share of a ``secret_bytes``-long secret."""
    return -(-secret_bytes // _CHUNK_BYTES) * _ELEMENT_BYTES


def shamir_split(secret: bytes, *, threshold: int, xs: Sequence[int]) -> dict[int, bytes]:
    """Split ``secret`` into one share per x-coordinate in ``xs``; any ``threshold`` of them recover it.

    Shamir (1979): for each 15-byte chunk ``s`` draw ``a_1..a_{t-1}`` uniform in GF(p) and give the holder
    at ``x`` the value ``f(x) = s + a_1 x + ... + a_{t-1} x^{t-1} mod p``. Fewer than ``threshold`` shares
    are jointly uniform, hence independent of the secret. x-coordinates must be distinct and in [1, p).
    """
    xs = list(xs)
    if not isinstance(threshold, int) or threshold < 1:
        raise ValueError(f"threshold must be a positive int, got {threshold!r}")
    if threshold > len(xs):
        raise ValueError(f"threshold={threshold} exceeds the number of shares {len(xs)}")
    if len(set(xs)) != len(xs) or any(not 0 < x < FIELD_PRIME for x in xs):
        raise ValueError(f"xs must be distinct integers in [1, p), got {xs}")
    if not secret:
        raise ValueError("secret must be non-empty")
    shares: dict[int, list[bytes]] = {x: [] for x in xs}
    for chunk in _chunks(secret):
        coeffs = [chunk] + [secrets.randbelow(FIELD_PRIME) for _ in range(threshold - 1)]
        for x in xs:
            acc = 0
            for c in reversed(coeffs):  # Horner
                acc = (acc * x + c) % FIELD_PRIME
            shares[x].append(acc.to_bytes(_ELEMENT_BYTES, "big"))
    return {x: b"".join(parts) for x, parts in shares.items()}


@lru_cache(maxsize=4096)
def _lagrange_at(xs: tuple[int, ...], at: int = 0) -> tuple[int, ...]:
    """Lagrange basis values ``l_j(at) = prod_{m != j} (at - x_m) / (x_j - x_m) mod p`` (cached per x-set)."""
    out = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * (at - xm) % FIELD_PRIME
                den = den * (xj - xm) % FIELD_PRIME
        out.append(num * pow(den, -1, FIELD_PRIME) % FIELD_PRIME)
    return tuple(out)


def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    return _lagrange_at(xs, 0)


def shamir_evaluate(shares: Mapping[int, bytes], *, at: int) -> bytes:
    """The share at x-coordinate ``at`` of the polynomials through exactly ``shares`` (``{x: share}``).

    With ``len(shares) == threshold`` consistent shares this is the share the dealer gave to ``at``, so a
    submitted share that differs from it is inconsistent with the secret these shares reconstruct (used to
    name the holder of a corrupted share once a subset has reproduced the committed secret).
    """
    xs = tuple(sorted(shares))
    if not xs:
        raise ValueError("need at least one share")
    if not 0 < at < FIELD_PRIME:
        raise ValueError(f"x-coordinate must be in [1, p), got {at}")
    size = len(shares[xs[0]])
    if size % _ELEMENT_BYTES or any(len(shares[x]) != size for x in xs):
        raise ValueError("shares must all have the same length, a multiple of 16 bytes")
    basis = _lagrange_at(xs, at)
    out = bytearray()
    for lo in range(0, size, _ELEMENT_BYTES):
        value = sum(int.from_bytes(shares[x][lo : lo + _ELEMENT_BYTES], "big") * lj for x, lj in zip(xs, basis))
        out += (value % FIELD_PRIME).to_bytes(_ELEMENT_BYTES, "big")
    return bytes(out)


def shamir_reconstruct(shares: Mapping[int, bytes], *, threshold: int, secret_bytes: int) -> bytes:
    """Recover a ``secret_bytes``-long secret from at least ``threshold`` shares ``{x: share}``.

    Uses the ``threshold`` smallest x-coordinates (any ``threshold`` honest shares agree). Raises
    ``ValueError`` with fewer shares, malformed shares, or an interpolated chunk that is not a valid
    15-byte value (a sign of inconsistent shares).
    """
    if len(shares) < threshold:
        raise ValueError(f"need at least threshold={threshold} shares, got {len(shares)}")
    n_chunks = -(-secret_bytes // _CHUNK_BYTES)
    xs = tuple(sorted(shares)[:threshold])
    for x in xs:
        if len(shares[x]) != n_chunks * _ELEMENT_BYTES:
            raise ValueError(
                f"share at x={x} has {len(shares[x])} bytes, expected {n_chunks * _ELEMENT_BYTES}"
            )
    basis = _lagrange_at_zero(xs)
    out = bytearray()
    for c in range(n_chunks):
        lo, hi = c * _ELEMENT_BYTES, (c + 1) * _ELEMENT_BYTES
        value = 0
        for x, lj in zip(xs, basis):
            value += int.from_bytes(shares[x][lo:hi], "big") * lj
        value %= FIELD_PRIME
        width = min(_CHUNK_BYTES, secret_bytes - c * _CHUNK_BYTES)
        if value >= 1 << (8 * width):
            raise ValueError("inconsistent shares: reconstructed chunk out of range")
        out += value.to_bytes(width, "big")
    return bytes(out)

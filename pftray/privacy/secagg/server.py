"""Server side of SecAgg / SecAgg+ (Bonawitz et al. 2017, Fig. 4; Bell et al. 2020).

:class:`SecAggServer` is a plain object with one method per stage; each takes the clients' replies of the
previous stage (clients that did not reply are dropouts) and returns the next messages keyed by client id.
The server sums masked vectors as they arrive and never holds an unmasked individual input. Live sets:

* ``U1``: advertised keys; ``U2``: shared keys; ``U3``: sent a masked input; ``U4``: answered unmasking.

After stages 1 and 2 a client whose live share group ``(N(u) ∪ {u}) ∩ U_i`` is smaller than the threshold
can never be unmasked or recovered, so it is excluded (recorded in :attr:`SecAggServer.dropped`), which
may exclude others in turn (fixed point). Fewer than ``threshold`` live clients at any stage, or fewer than
``threshold`` valid shares of a secret that must be reconstructed, raise :class:`SecAggAbort`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from itertools import combinations
from typing import TypeVar

import numpy as np

from pftray.privacy.secagg import primitives as P
from pftray.privacy.secagg.client import MASK_INFO, mask_sign, share_x
from pftray.privacy.secagg.messages import (
    AdvertiseKeys,
    KeyDirectory,
    MaskedInput,
    RejectedShare,
    SecAggAbort,
    SecAggProtocolError,
    SetupMessage,
    ShareDelivery,
    ShareKeys,
    UnmaskReply,
    UnmaskRequest,
    neighbour_graph,
    seed_commitment,
)
from pftray.privacy.secagg.quantize import QuantizationSpec, Rounding, SignedQuantization, dequantize_sum

__all__ = ["SecAggOutcome", "SecAggParams", "SecAggServer"]

_M = TypeVar("_M")

#: Subsets of ``threshold`` shares tried to recover a secret whose first reconstruction failed its commitment.
_MAX_RECOVERY_ATTEMPTS = 1024


@dataclass(frozen=True)
class SecAggParams:
    """Round parameters chosen by the server (stage 0).

    Attributes:
        sample: ids of the sampled clients (distinct non-negative ints).
        vector_length: ``d``, length of every client's vector.
        clip_range: ``c``; coordinates are clipped to ``[-c, c]`` before quantisation.
        threshold: ``t``; Shamir threshold within each share group ``N(u) ∪ {u}`` (2 <= t <= degree + 1).
        degree: neighbours per client (SecAgg+); ``None`` = complete graph (classic SecAgg).
        modulus_bits: ``k``; arithmetic mod ``2**k`` (32 = native uint32 wraparound).
        rounding: quantisation rounding, ``"stochastic"`` (unbiased) or ``"deterministic"``.
        graph_seed: seed of the neighbour graph (deterministic given the sample).
        signed_bound: when set, signed fixed point with room for integer noise
            (:class:`~pftray.privacy.secagg.quantize.SignedQuantization` for sums up to this bound per coordinate)
            instead of the offset grid over ``[-clip_range, clip_range]``: clients encode with
            ``SignedQuantization.for_bound(signed_bound, modulus_bits)`` (nothing is clipped; ``clip_range`` is
            unused and ``rounding`` must be ``"stochastic"``), may add integer noise
            (``SecAggClient.masked_input(integer_noise=)``), and the server decodes the sum with the centred lift
            (no ``num_summed * c`` offset). The caller guarantees that every coordinate of any sum of survivors,
            rounding and noise included, lies within ``signed_bound``; beyond it the sum wraps.
    """

    sample: tuple[int, ...]
    vector_length: int
    clip_range: float
    threshold: int
    degree: int | None = None
    modulus_bits: int = 32
    rounding: Rounding = "stochastic"
    graph_seed: int = 0
    signed_bound: float | None = None
    signed_scale: float | None = None  # a coarser grid than the bound allows (e.g. to size the integer noise)

    def __post_init__(self) -> None:
        sample = tuple(int(u) for u in self.sample)
        object.__setattr__(self, "sample", sample)
        if len(set(sample)) != len(sample) or any(u < 0 or u >= 2**31 for u in sample):
            raise ValueError(f"sample must be distinct ints in [0, 2**31), got {sample}")
        if len(sample) < 2:
            raise ValueError(f"sample must hold at least 2 clients, got {len(sample)}")
        if not isinstance(self.vector_length, int) or self.vector_length < 1:
            raise ValueError(f"vector_length must be a positive int, got {self.vector_length!r}")
        group = len(sample) if self.degree is None else min(self.degree, len(sample) - 1) + 1
        if not isinstance(self.threshold, int) or not 2 <= self.threshold <= group:
            raise ValueError(
                f"threshold must be an int in [2, {group}] (share group size = degree + 1), got {self.threshold!r}"
            )
        if self.signed_bound is not None and self.rounding != "stochastic":
            raise ValueError("signed fixed point (signed_bound) rounds stochastically; rounding must be 'stochastic'")
        self.quantization  # noqa: B018 - validates clip_range / signed_bound, modulus_bits, rounding

    @property
    def signed_quantization(self) -> SignedQuantization | None:
        """The signed fixed point of this round when ``signed_bound`` is set (else ``None``).

        Its ``scale`` converts float units to the integer units of ``SecAggClient.masked_input(integer_noise=)``:
        a noise standard deviation ``sigma`` (float units) is ``sigma * scale`` integer units.
        """
        if self.signed_bound is None:
            return None
        q = SignedQuantization.for_bound(self.signed_bound, self.modulus_bits)
        if self.signed_scale is None:
            return q
        if not 1 <= self.signed_scale <= q.scale:
            raise ValueError(f"signed_scale {self.signed_scale!r} must lie in [1, {q.scale:g}] (the finest grid that "
                             f"holds sums up to signed_bound {self.signed_bound:g})")
        return SignedQuantization(scale=float(self.signed_scale), modulus_bits=self.modulus_bits)

    @property
    def quantization(self) -> QuantizationSpec | SignedQuantization:
        """The encoding the clients use: :attr:`signed_quantization`, or the offset grid over ``[-c, c]``."""
        if self.signed_bound is not None:
            return self.signed_quantization  # type: ignore[return-value]
        return QuantizationSpec(
            clip_range=self.clip_range,
            num_clients=len(self.sample),
            modulus_bits=self.modulus_bits,
            rounding=self.rounding,
        )


@dataclass(frozen=True)
class SecAggOutcome:
    """Result of a round.

    ``sum`` is the float64 dequantised sum of the inputs of ``survivors`` (the clients that sent a masked
    input, ``U3``); ``quantized_sum`` the same sum on the integer grid. ``dropped`` maps every client that
    stopped answering to the stage (a client that left only at unmasking is in both: its input counts).
    """

    sum: np.ndarray = field(repr=False)
    quantized_sum: np.ndarray = field(repr=False)
    survivors: tuple[int, ...]
    dropped: Mapping[int, str]
    rejected_shares: tuple[RejectedShare, ...]


class SecAggServer:
    """Server workflow of one secure-aggregation round (see module docstring)."""

    def __init__(self, params: SecAggParams) -> None:
        self.params = params
        self.graph = neighbour_graph(params.sample, degree=params.degree, seed=params.graph_seed)
        self.session_id = os.urandom(16)
        self._b_commit: dict[int, bytes] = {}
        self.dropped: dict[int, str] = {}
        self.rejected: list[RejectedShare] = []
        self._stage = "setup"
        self._keys: dict[int, tuple[bytes, bytes]] = {}
        self._live: set[int] = set(params.sample)
        self._total: np.ndarray | None = None
        self._dropped_at_input: set[int] = set()

    # helpers -------------------------------------------------------------------------------------------
    def _enter(self, expected: str, nxt: str) -> None:
        if self._stage != expected:
            raise SecAggProtocolError(f"server: '{expected}' called in stage '{self._stage}'")
        self._stage = nxt

    def _collect(self, replies: Iterable[_M], kind: type, stage: str) -> dict[int, _M]:
        out: dict[int, _M] = {}
        for r in replies:
            if not isinstance(r, kind):
                raise SecAggProtocolError(
                    f"server: expected {kind.__name__} in '{stage}', got {type(r).__name__}"
                )
            cid = r.client_id  # type: ignore[attr-defined]
            if cid not in self._live:
                raise SecAggProtocolError(f"server: reply in '{stage}' from client {cid}, not live")
            if cid in out:
                raise SecAggProtocolError(f"server: duplicate reply in '{stage}' from client {cid}")
            out[cid] = r
        for u in sorted(self._live - set(out)):
            self.dropped[u] = f"no reply in stage '{stage}'"
        self._live = set(out)
        return out

    def _require(self, count: int, what: str) -> None:
        if count < self.params.threshold:
            raise SecAggAbort(
                f"secure aggregation aborted: only {count} {what}, below the threshold "
                f"t={self.params.threshold}; dropped so far: {dict(sorted(self.dropped.items()))}"
            )

    def _prune_small_groups(self, stage: str) -> None:
        """Exclude clients whose live share group is below threshold, to a fixed point."""
        t = self.params.threshold
        changed = True
        while changed:
            changed = False
            for u in sorted(self._live):
                group = len(self.graph[u] & self._live) + 1
                if group < t:
                    self._live.discard(u)
                    self.dropped[u] = f"excluded after '{stage}': live share group {group} < threshold {t}"
                    changed = True
        self._require(len(self._live), f"clients live after '{stage}'")

    # Stage 0 -------------------------------------------------------------------------------------------
    def setup(self) -> dict[int, SetupMessage]:
        """Stage 0: the parameters and neighbourhood of every sampled client."""
        self._enter("setup", "advertise_keys")
        p = self.params
        return {
            u: SetupMessage(
                client_id=u,
                session_id=self.session_id,
                sample=p.sample,
                neighbours=tuple(sorted(self.graph[u])),
                threshold=p.threshold,
                quantization=p.quantization,
                vector_length=p.vector_length,
            )
            for u in p.sample
        }

    # Stage 1 -------------------------------------------------------------------------------------------
    def advertise_keys(self, replies: Iterable[AdvertiseKeys]) -> dict[int, KeyDirectory]:
        """Stage 1: record public keys, then send each live client the keys of its live neighbours."""
        self._enter("advertise_keys", "share_keys")
        got = self._collect(replies, AdvertiseKeys, "advertise_keys")
        for u, r in got.items():
            if len(r.c_pk) != P.KEY_BYTES or len(r.s_pk) != P.KEY_BYTES or r.c_pk == r.s_pk:
                raise SecAggProtocolError(f"server: client {u} advertised malformed public keys")
            self._keys[u] = (r.c_pk, r.s_pk)
        self._prune_small_groups("advertise_keys")
        return {
            u: KeyDirectory(u, {v: self._keys[v] for v in sorted(self.graph[u] & self._live)})
            for u in sorted(self._live)
        }

    # Stage 2 -------------------------------------------------------------------------------------------
    def share_keys(self, replies: Iterable[ShareKeys]) -> dict[int, ShareDelivery]:
        """Stage 2: route the encrypted shares; each live client gets those from its live neighbours."""
        self._enter("share_keys", "masked_input")
        offered = set(self._live)
        got = self._collect(replies, ShareKeys, "share_keys")
        for u, r in got.items():
            if len(r.b_commitment) != 32:
                raise SecAggProtocolError(f"server: client {u} sent no commitment to its self-mask seed")
            self._b_commit[u] = bytes(r.b_commitment)
            expected = self.graph[u] & offered
            if set(r.ciphertexts) != expected:
                raise SecAggProtocolError(
                    f"server: client {u} sent shares for {sorted(r.ciphertexts)}, expected {sorted(expected)}"
                )
        self._prune_small_groups("share_keys")
        return {
            v: ShareDelivery(v, {u: got[u].ciphertexts[v] for u in sorted(self.graph[v] & self._live)})
            for v in sorted(self._live)
        }

    # Stage 3 -------------------------------------------------------------------------------------------
    def masked_input(self, replies: Iterable[MaskedInput]) -> dict[int, UnmaskRequest]:
        """Stage 3: add the masked vectors mod ``2**k``; ask survivors to help unmask."""
        self._enter("masked_input", "unmask")
        u2 = set(self._live)
        p = self.params
        dtype = P.uint_dtype(p.modulus_bits)
        total = np.zeros(p.vector_length, dtype=dtype)
        got = self._collect(replies, MaskedInput, "masked_input")
        for u, r in got.items():
            if r.masked.dtype != dtype or r.masked.shape != (p.vector_length,):
                raise SecAggProtocolError(
                    f"server: masked input of client {u} has {r.masked.dtype}{r.masked.shape}, "
                    f"expected {dtype}({p.vector_length},)"
                )
            if p.modulus_bits not in (32, 64) and (r.masked >> dtype.type(p.modulus_bits)).any():
                raise SecAggProtocolError(
                    f"server: masked input of client {u} has words outside [0, 2**{p.modulus_bits})"
                )
            total += r.masked
        self._require(len(got), "clients sent a masked input")
        self._total = total
        self._u2 = u2
        self._u3 = set(got)
        survivors = tuple(sorted(self._u3))
        dropped = tuple(sorted(u2 - self._u3))
        return {u: UnmaskRequest(u, survivors, dropped) for u in survivors}

    # Stage 4 -------------------------------------------------------------------------------------------
    def unmask(self, replies: Iterable[UnmaskReply]) -> SecAggOutcome:
        """Stage 4: reconstruct ``b_u`` of survivors and ``s_sk_v`` of dropped clients; remove the masks."""
        self._enter("unmask", "done")
        assert self._total is not None
        p = self.params
        k, d = p.modulus_bits, p.vector_length
        u3, dropped_in = self._u3, self._u2 - self._u3
        got = self._collect(replies, UnmaskReply, "unmask")
        self._require(len(got), "clients answered the unmasking request")
        b_shares: dict[int, dict[int, bytes]] = {u: {} for u in u3}
        sk_shares: dict[int, dict[int, bytes]] = {v: {} for v in dropped_in}
        for h, r in got.items():
            for owner, reason in r.rejected.items():
                self.rejected.append(RejectedShare(holder=h, owner=owner, reason=reason))
            for owner, share in r.self_mask_shares.items():
                if owner in u3 and (owner == h or owner in self.graph[h]):
                    b_shares[owner][share_x(h)] = share
            for owner, share in r.secret_key_shares.items():
                if owner in dropped_in and owner in self.graph[h]:
                    sk_shares[owner][share_x(h)] = share

        total = self._total
        for u in sorted(u3):
            commitment = self._b_commit[u]
            seed = self._reconstruct(
                u, b_shares[u], "self-mask seed b",
                lambda s, u=u, c=commitment: seed_commitment(self.session_id, u, s) == c,
            )
            total -= P.prg_expand(seed, d, modulus_bits=k)
        for v in sorted(dropped_in):
            masked_with = self.graph[v] & u3
            if not masked_with:
                continue
            # the advertised s_pk is the commitment to s_sk: the reconstruction must regenerate it
            s_sk = self._reconstruct(
                v, sk_shares[v], "mask key s_sk",
                lambda s, pk=self._keys[v][1]: P.public_key_from_private(s) == pk,
            )
            for u in sorted(masked_with):
                mask = P.prg_expand(P.agree(s_sk, self._keys[u][1], info=MASK_INFO), d, modulus_bits=k)
                # y_u carries mask_sign(u, v) * PRG(s_uv); remove it.
                if mask_sign(u, v) > 0:
                    total -= mask
                else:
                    total += mask
        if k not in (32, 64):
            total &= total.dtype.type((1 << k) - 1)
        self._total = None
        return SecAggOutcome(
            sum=(spec.decode_sum(total) if isinstance(spec := p.quantization, SignedQuantization)
                 else dequantize_sum(total, spec, num_summed=len(u3))),
            quantized_sum=total,
            survivors=tuple(sorted(u3)),
            dropped=dict(sorted(self.dropped.items())),
            rejected_shares=tuple(self.rejected),
        )

    def _reconstruct(self, owner: int, shares: dict[int, bytes], what: str,
                     matches: Callable[[bytes], bool]) -> bytes:
        """Reconstruct ``owner``'s secret and check it against the owner's commitment (``matches``).

        The ``threshold`` shares with the smallest x-coordinates are tried first (the only attempt when nothing
        is corrupted). If the result does not match the commitment and spare shares exist, other subsets of
        ``threshold`` shares are tried (at most :data:`_MAX_RECOVERY_ATTEMPTS`); the first matching one gives
        the secret (the commitment is binding, so it is the owner's). The holders of shares inconsistent with
        it are recorded in :attr:`rejected` when they can be told apart: with at most ``(m - t + 1) / 2`` of the
        ``m`` shares corrupted exactly the corrupting holders are named (nobody is named beyond that radius unless
        the corrupted shares form a qualified majority, which no server can tell from honesty without verifiable
        secret sharing). Without a matching subset the round aborts with :class:`SecAggAbort` naming the owner:
        a corrupted share never changes the sum.
        """
        t = self.params.threshold
        valid = {}
        expected = P.share_nbytes(P.SEED_BYTES)
        for x, s in shares.items():
            if len(s) != expected:
                self.rejected.append(
                    RejectedShare(
                        holder=x - 1, owner=owner, reason=f"share of {len(s)} bytes, expected {expected}"
                    )
                )
                continue
            valid[x] = s
        if len(valid) < t:
            raise SecAggAbort(
                f"secure aggregation aborted: only {len(valid)} valid shares of the {what} of client {owner}, "
                f"below the threshold t={t}; rejected: {[r for r in self.rejected if r.owner == owner]}"
            )
        xs = sorted(valid)

        def attempt(subset: tuple[int, ...]) -> bytes | None:
            try:
                secret = P.shamir_reconstruct({x: valid[x] for x in subset}, threshold=t,
                                              secret_bytes=P.SEED_BYTES)
            except ValueError:  # an interpolated chunk out of range: inconsistent shares
                return None
            return secret if matches(secret) else None

        first = tuple(xs[:t])
        secret = attempt(first)
        if secret is not None:
            return secret

        def subsets():  # exclude ``extra`` of the first ``t + extra`` shares, extra = 1, 2, ...
            seen = {first}
            for extra in range(1, len(xs) - t + 1):
                window = xs[: t + extra]
                for excluded in combinations(window, extra):
                    subset = tuple(x for x in window if x not in excluded)
                    if subset not in seen:
                        seen.add(subset)
                        yield subset

        attempts, recovered = 1, None
        for subset in subsets():
            if attempts >= _MAX_RECOVERY_ATTEMPTS:
                break
            attempts += 1
            found = attempt(subset)
            if found is None:
                continue
            recovered = found  # the commitment binds the value: this is the owner's secret
            # Name the bad holders only for a polynomial agreeing with a qualified majority of the shares:
            # two distinct degree-(t-1) polynomials through the same secret agree on at most t - 2 other points,
            # so at most one can agree with more than (m + t - 2) / 2 of the m shares; when at most
            # (m - t + 1) / 2 shares are corrupted that one is the owner's, and the named holders are exactly
            # those whose shares were corrupted.
            basis = {x: valid[x] for x in subset}
            bad = [x for x in xs if x not in basis and P.shamir_evaluate(basis, at=x) != valid[x]]
            if 2 * (len(xs) - len(bad)) > len(xs) + t - 2:
                for x in bad:
                    self.rejected.append(RejectedShare(
                        holder=x - 1, owner=owner,
                        reason=f"share inconsistent with the {what} committed by client {owner}",
                    ))
                return recovered
        if recovered is None:
            raise SecAggAbort(
                f"secure aggregation aborted: the {what} of client {owner} reconstructed from the shares does not "
                f"match its commitment (a corrupted or forged share); {len(xs)} shares for threshold t={t}, "
                f"{attempts} subsets tried"
            )
        return recovered  # correct secret, but too many bad shares to tell who holds them
        attempts, chosen = 1, None
        for extra in range(1, len(xs) - t + 1):  # exclude ``extra`` of the first t + extra shares
            window = xs[: t + extra]
            for excluded in combinations(window, extra):
                if attempts >= _MAX_RECOVERY_ATTEMPTS:
                    break
                subset = tuple(x for x in window if x not in excluded)
                attempts += 1
                secret = attempt(subset)
                if secret is not None:
                    chosen = subset
                    break
            if chosen is not None or attempts >= _MAX_RECOVERY_ATTEMPTS:
                break
        if chosen is None:
            raise SecAggAbort(
                f"secure aggregation aborted: the {what} of client {owner} reconstructed from the shares does not "
                f"match its commitment (a corrupted or forged share); {len(xs)} shares for threshold t={t}, "
                f"{attempts} subsets tried"
            )
        basis = {x: valid[x] for x in chosen}
        for x in xs:
            if x not in basis and P.shamir_evaluate(basis, at=x) != valid[x]:
                self.rejected.append(RejectedShare(
                    holder=x - 1, owner=owner,
                    reason=f"share inconsistent with the {what} committed by client {owner}",
                ))
        return secret

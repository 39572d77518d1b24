"""Synthetic federations: one identity per client, quantity skew, unreliable clients, public clips.

Every client is generated independently from ``(seed, client_id)``, so ``make_client(k, **kw)`` equals
``make_synthetic_federation(**kw)[k]`` and a run with 10,000 registered clients can materialise only the
clients it samples. The only federation-wide quantity, the set of unreliable clients, is a permutation of
``num_clients`` drawn from its own stream (cheap and cached).

``shift_severity > 0`` makes the client identities differ from the public ones (the "shifted" scenario of
:mod:`pftray.data.synthetic`: shared visible teeth, per-client mouth gain and teeth colour, ground truth in
``Clip.extras``); at 0 (the default) the federation is bit-for-bit the i.i.d. one. Public clips are never
shifted.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from pftray.data.synthetic import corrupt_clip, reference_frame, render_clip, sample_identity, sample_shift
from pftray.data.types import DEFAULT_UNRELIABLE_KINDS, UNRELIABLE_KINDS, ClientData, Clip

# Seed-stream tags keep quantity skew, unreliability, corruption and clip rendering independent.
_QUANTITY, _UNRELIABLE, _CORRUPT, _TRAIN, _HELDOUT, _PUBLIC = 11, 12, 13, 14, 15, 16


def _check_common(*, frames_per_clip: int, resolution: int, n_mels: int, audio_window: int) -> None:
    if frames_per_clip < 1:
        raise ValueError(f"frames_per_clip must be >= 1, got {frames_per_clip}")
    if resolution < 16 or resolution % 16:
        raise ValueError(f"resolution must be a positive multiple of 16, got {resolution}")
    if n_mels < 1:
        raise ValueError(f"n_mels must be >= 1, got {n_mels}")
    if audio_window < 1:
        raise ValueError(f"audio_window must be >= 1, got {audio_window}")


def unreliable_assignment(
    *, num_clients: int, unreliable_fraction: float, unreliable_kinds: Sequence[str], seed: int
) -> dict[int, str]:
    """``{client_id: kind}`` for the ``round(unreliable_fraction * num_clients)`` unreliable clients.

    The subset is the head of a seeded permutation of the client ids; kinds are cycled along it.
    """
    pairs = _unreliable_pairs(num_clients, float(unreliable_fraction), tuple(unreliable_kinds), int(seed))
    return dict(pairs)


@functools.lru_cache(maxsize=64)
def _unreliable_pairs(
    num_clients: int, fraction: float, kinds: tuple[str, ...], seed: int
) -> tuple[tuple[int, str], ...]:
    count = int(round(fraction * num_clients))
    if count == 0:
        return ()
    perm = np.random.default_rng([seed, _UNRELIABLE]).permutation(num_clients)[:count]
    return tuple((int(k), kinds[j % len(kinds)]) for j, k in enumerate(perm))


def num_train_clips(client_id: int, *, clips_per_client: int, quantity_skew: float, seed: int) -> int:
    """Training-clip count of a client: ``max(1, round(c * exp(s * z)))``, ``z ~ N(0, 1)`` from (seed, k).

    A lognormal with median ``clips_per_client`` and log-scale sigma ``quantity_skew``; exactly
    ``clips_per_client`` when ``quantity_skew == 0``.
    """
    if quantity_skew == 0:
        return clips_per_client
    z = np.random.default_rng([int(seed), _QUANTITY, int(client_id)]).standard_normal()
    return max(1, int(round(clips_per_client * np.exp(quantity_skew * z))))


def make_client(
    client_id: int,
    *,
    num_clients: int,
    clips_per_client: int,
    heldout_clips: int,
    frames_per_clip: int,
    resolution: int,
    quantity_skew: float = 0.0,
    unreliable_fraction: float = 0.0,
    unreliable_kinds: Sequence[str] = DEFAULT_UNRELIABLE_KINDS,
    n_mels: int = 32,
    audio_window: int = 16,
    seed: int = 0,
    shift_severity: float = 0.0,
) -> ClientData:
    """Materialise client ``client_id`` of the synthetic federation described by the keyword arguments.

    Identity ``"client-<k>"`` from :func:`sample_identity`; ``reference`` is its neutral frame (rendered
    separately, not a clip frame, mouth closed, so it shows none of the shift); training clips are corrupted
    when the client is unreliable (``unreliable`` holds the kind), held-out clips never are. Train and held-out
    clips carry the shift of :func:`sample_shift` at ``shift_severity`` (none at 0).
    """
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    if not 0 <= client_id < num_clients:
        raise ValueError(f"client_id must be in [0, {num_clients}), got {client_id}")
    if clips_per_client < 1:
        raise ValueError(f"clips_per_client must be >= 1, got {clips_per_client}")
    if heldout_clips < 0:
        raise ValueError(f"heldout_clips must be >= 0, got {heldout_clips}")
    if not quantity_skew >= 0:
        raise ValueError(f"quantity_skew must be >= 0, got {quantity_skew}")
    if not 0.0 <= unreliable_fraction <= 1.0:
        raise ValueError(f"unreliable_fraction must be in [0, 1], got {unreliable_fraction}")
    if not 0.0 <= shift_severity <= 1.0:
        raise ValueError(f"shift_severity must be in [0, 1], got {shift_severity}")
    kinds = tuple(unreliable_kinds)
    bad = [k for k in kinds if k not in UNRELIABLE_KINDS]
    if bad or (unreliable_fraction > 0 and not kinds):
        raise ValueError(f"unreliable_kinds must be a non-empty subset of {UNRELIABLE_KINDS}, got {kinds}")
    _check_common(
        frames_per_clip=frames_per_clip, resolution=resolution, n_mels=n_mels, audio_window=audio_window
    )

    identity = sample_identity(seed, client_id, stream="client")
    shift = sample_shift(seed, client_id, shift_severity)
    n_train = num_train_clips(
        client_id, clips_per_client=clips_per_client, quantity_skew=quantity_skew, seed=seed
    )
    unreliable = unreliable_assignment(
        num_clients=num_clients,
        unreliable_fraction=float(unreliable_fraction),
        unreliable_kinds=kinds,
        seed=seed,
    ).get(client_id)

    def clips(tag: int, count: int, split: str) -> list[Clip]:
        return [
            render_clip(
                identity,
                num_frames=frames_per_clip,
                resolution=resolution,
                seed=[int(seed), tag, client_id, j],
                n_mels=n_mels,
                audio_window=audio_window,
                clip_id=f"{identity.name}/{split}-{j}",
                shift=shift,
            )
            for j in range(count)
        ]

    train = clips(_TRAIN, n_train, "train")
    if unreliable is not None:
        rng = np.random.default_rng([int(seed), _CORRUPT, client_id])
        train = [corrupt_clip(c, unreliable, rng, shift=shift) for c in train]
    return ClientData(
        client_id=client_id,
        identity=identity.name,
        reference=reference_frame(identity, resolution),
        train=train,
        heldout=clips(_HELDOUT, heldout_clips, "heldout"),
        unreliable=unreliable,
    )


def make_synthetic_federation(
    *,
    num_clients: int,
    clips_per_client: int,
    heldout_clips: int,
    frames_per_clip: int,
    resolution: int,
    quantity_skew: float = 0.0,
    unreliable_fraction: float = 0.0,
    unreliable_kinds: tuple[str, ...] = DEFAULT_UNRELIABLE_KINDS,
    n_mels: int = 32,
    audio_window: int = 16,
    seed: int = 0,
    shift_severity: float = 0.0,
) -> list[ClientData]:
    """All ``num_clients`` clients (``[make_client(k, ...) for k in range(num_clients)]``)."""
    kwargs = dict(
        num_clients=num_clients,
        clips_per_client=clips_per_client,
        heldout_clips=heldout_clips,
        frames_per_clip=frames_per_clip,
        resolution=resolution,
        quantity_skew=quantity_skew,
        unreliable_fraction=unreliable_fraction,
        unreliable_kinds=unreliable_kinds,
        n_mels=n_mels,
        audio_window=audio_window,
        seed=seed,
        shift_severity=shift_severity,
    )
    return [make_client(k, **kwargs) for k in range(num_clients)]


def make_public_clips(
    *,
    num_identities: int,
    clips_per_identity: int,
    frames_per_clip: int,
    resolution: int,
    n_mels: int = 32,
    audio_window: int = 16,
    seed: int = 0,
) -> list[Clip]:
    """Clean clips of public identities ``"pub-<i>"`` (for backbone pre-training), disjoint from clients.

    Identities come from the "public" stream of :func:`sample_identity`, clips from their own seed tag. They
    never carry the shifted scenario (no teeth, mouth gain 1, ``extras == {}``): that is what the clients'
    adapters have to learn beyond the backbone.
    """
    if num_identities < 1:
        raise ValueError(f"num_identities must be >= 1, got {num_identities}")
    if clips_per_identity < 1:
        raise ValueError(f"clips_per_identity must be >= 1, got {clips_per_identity}")
    _check_common(
        frames_per_clip=frames_per_clip, resolution=resolution, n_mels=n_mels, audio_window=audio_window
    )
    out = []
    for i in range(num_identities):
        identity = sample_identity(seed, i, stream="public")
        for j in range(clips_per_identity):
            out.append(
                render_clip(
                    identity,
                    num_frames=frames_per_clip,
                    resolution=resolution,
                    seed=[int(seed), _PUBLIC, i, j],
                    n_mels=n_mels,
                    audio_window=audio_window,
                    clip_id=f"{identity.name}/public-{j}",
                )
            )
    return out


def public_reference(index: int, *, resolution: int, seed: int = 0) -> np.ndarray:
    """Neutral reference frame of public identity ``"pub-<index>"`` (pairs with :func:`make_public_clips`)."""
    return reference_frame(sample_identity(seed, index, stream="public"), resolution)

"""Secure aggregation: SecAgg (Bonawitz et al. 2017) with SecAgg+ neighbourhoods (Bell et al. 2020).

Layers: :mod:`.primitives` (X25519 + HKDF key agreement, ChaCha20-Poly1305, AES-CTR PRG, Shamir over
GF(2**127 - 1)), :mod:`.quantize` (fixed-point grid mod ``2**k`` that cannot wrap), :mod:`.messages` (typed
stage messages, neighbour graph), :mod:`.client` and :mod:`.server` (the two state machines),
:mod:`.driver` (in-process round) and :mod:`.bench`.

Threat model: honest-but-curious server and clients, as in the semi-honest protocol of Bonawitz et al.
(no signatures on advertised keys and no consistency-check round, which the active-adversary variant adds).
The server learns only the masked vectors and the sum over survivors.

Flow over Ray (the driver holds the server, each worker actor holds ``SecAggClient`` objects)::

    server = SecAggServer(SecAggParams(sample=ids, vector_length=d, clip_range=c, threshold=t, degree=k))
    setup = server.setup()                                   # {id: SetupMessage}
    r1 = [client[u].setup(setup[u]) for u in setup]         # AdvertiseKeys (remote calls; drop = no reply)
    keys = server.advertise_keys(r1)                         # {id: KeyDirectory}
    r2 = [client[u].share_keys(keys[u]) for u in keys]       # ShareKeys
    shares = server.share_keys(r2)                           # {id: ShareDelivery}
    r3 = [client[u].masked_input(shares[u], x_u) for u in shares]   # MaskedInput
    requests = server.masked_input(r3)                       # {id: UnmaskRequest}
    r4 = [client[u].unmask(requests[u]) for u in requests]   # UnmaskReply
    outcome = server.unmask(r4)                              # SecAggOutcome(sum, survivors, dropped, ...)

Each server stage takes the replies that arrived (e.g. ``ray.wait`` with a timeout); a missing reply is a
dropout. Only the clients listed in a stage's output must be called at the next stage. ``outcome.sum`` is
the float64 sum of the survivors' clipped inputs (``len(outcome.survivors)`` of them).
"""

from pftray.privacy.secagg.bench import benchmark_secagg
from pftray.privacy.secagg.client import SecAggClient
from pftray.privacy.secagg.inprocess import SecAggResult, run_secagg
from pftray.privacy.secagg.messages import (
    STAGES,
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
)
from pftray.privacy.secagg.quantize import (
    MAX_MODULUS_BITS,
    QuantizationSpec,
    SignedQuantization,
    dequantize_sum,
    quantization_error_bound,
    quantize,
)
from pftray.privacy.secagg.server import SecAggOutcome, SecAggParams, SecAggServer

__all__ = [
    "MAX_MODULUS_BITS",
    "STAGES",
    "AdvertiseKeys",
    "KeyDirectory",
    "MaskedInput",
    "QuantizationSpec",
    "RejectedShare",
    "SecAggAbort",
    "SecAggClient",
    "SecAggOutcome",
    "SecAggParams",
    "SecAggProtocolError",
    "SecAggResult",
    "SecAggServer",
    "SetupMessage",
    "ShareDelivery",
    "ShareKeys",
    "SignedQuantization",
    "UnmaskReply",
    "UnmaskRequest",
    "benchmark_secagg",
    "dequantize_sum",
    "neighbour_graph",
    "quantization_error_bound",
    "quantize",
    "run_secagg",
]

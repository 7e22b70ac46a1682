"""A SecAgg+ node's masked input (docs/secagg.md §4): Flower's quantization, this node's masks added in place.

No flwr app types: Flower's secure-aggregation primitives only. Moved out of :mod:`flower_chain.clients.secagg`
(one concept: what the node's input becomes before it leaves).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
from flwr.common.secure_aggregation.ndarrays_arithmetic import factor_combine, parameters_multiply
from flwr.common.secure_aggregation.quantization import quantize
from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

from flower_chain.ledger.secagg_masks import add_mask


def mask_input(rnd: dict[str, Any], num_examples: int, params: list, sources: list[str]) -> list[np.ndarray]:
    """This node's masked input: its weight first, then its update scaled by it, quantized (Flower's
    primitives), its own mask and a pairwise mask with each of ``sources`` added (docs/secagg.md §4)."""
    p, me, gen = rnd["header"]["params"], int(rnd["node_id"]), rnd["header"]["generator"]
    q_ratio = round(num_examples / p["max_weight"] * p["quantization_range"])
    params = parameters_multiply(params, q_ratio / p["quantization_range"])
    vec = [  # private C-contiguous int64 copies the masks are added into
        np.array(a, dtype=np.int64, order="C")
        for a in factor_combine(q_ratio, quantize(params, p["clipping_range"], p["quantization_range"]))
    ]
    add_mask(vec, rnd["seed"], p["mod_range"], gen)
    sk1 = bytes_to_private_key(rnd["sk1"])
    for src in sources:
        shared = generate_shared_key(sk1, bytes_to_public_key(rnd["pks"][src][0]))
        add_mask(vec, shared, p["mod_range"], gen, 1 if me > int(src) else -1)
    for a in vec:  # one reduction at the end: mod 2**k arithmetic, the same bits as reducing after each mask
        np.bitwise_and(a, p["mod_range"] - 1, out=a)
    return vec

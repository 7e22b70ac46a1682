"""Attribute outlier updates to client keys (for signed poisoning that signatures cannot stop).

Needs the accepted client updates in the blob store (``store_client_updates``).
For every train block, each accepted update's L2 distance to the round's
aggregated model is computed; the keys that are most often among the
``k`` farthest are the suspects to revoke (``flower-chain keys revoke``).
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np

from flower_chain.ledger.arrays import decode_arrays
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.entries import UpdateEntry, decode_entry
from flower_chain.ledger.errors import LedgerError


def _flat(blob: bytes) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).reshape(-1) for _, a in decode_arrays(blob)])


def update_distances(ledger: Ledger) -> dict[int, dict[str, float]]:
    """round -> key id -> L2 distance of its accepted update to the aggregated model of the round."""
    out: dict[int, dict[str, float]] = defaultdict(dict)
    for block in ledger.blocks(1):
        h = block.header
        if not h.model_after or not ledger.has_blob(h.model_after):
            continue
        entries = [decode_entry(d) for d in ledger.entries(h.first_index, h.log_size)]
        updates = [e for e in entries if isinstance(e, UpdateEntry) and e.kind == "train" and e.verdict == "accepted"]
        if not updates:
            continue
        agg = _flat(ledger.get_blob(h.model_after))
        for e in updates:
            try:
                out[h.round][e.key_id] = float(np.linalg.norm(_flat(ledger.get_blob(e.arrays_digest)) - agg))
            except LedgerError:
                continue  # client updates were not stored
    return dict(out)


def attribute_outliers(ledger: Ledger, k: int) -> list[dict[str, str | int]]:
    """The ``k`` keys most often among the ``k`` farthest updates of a round, with how often."""
    flagged: Counter[str] = Counter()
    distances = update_distances(ledger)
    for per_key in distances.values():
        for kid, _d in sorted(per_key.items(), key=lambda kv: -kv[1])[:k]:
            flagged[kid] += 1
    return [{"key_id": kid, "rounds_flagged": n, "rounds": len(distances)} for kid, n in flagged.most_common(k)]

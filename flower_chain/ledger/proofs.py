"""Proofs served from a ledger backend's stored subtree hashes (never from all leaves)."""

from __future__ import annotations

from collections.abc import Callable

from flower_chain.ledger import merkle
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.errors import LedgerError

NodeReader = Callable[[int, int], bytes]  # (level, index) -> stored perfect-subtree hash


def inclusion_proof(
    ledger: Ledger, index: int, size: int | None = None, *, node: NodeReader | None = None, stored: int | None = None
) -> list[bytes]:
    """Inclusion proof of log entry ``index`` in the log of ``size`` entries (default: the head's).

    ``node``: where the stored subtree hashes are read (default ``ledger.node``; a cache of it: they never
    change). ``stored``: the ledger's log size when the caller has just read its head (saves reading it again).
    """
    stored = ledger.log_size() if stored is None else stored
    size = stored if size is None else size
    if not 0 <= index < size <= stored:
        raise LedgerError(f"entry {index} is not in a log of size {size} (the ledger has {stored})")
    return merkle.inclusion_proof_from(merkle.range_from_nodes(node or ledger.node), index, size)


def consistency_proof(
    ledger: Ledger, size1: int, size2: int | None = None, *, node: NodeReader | None = None
) -> list[bytes]:
    """Consistency proof from the log of ``size1`` entries to the one of ``size2`` (default: the head's)."""
    size2 = ledger.log_size() if size2 is None else size2
    if not 0 <= size1 <= size2 <= ledger.log_size():
        raise LedgerError(f"cannot prove {size1} -> {size2} in a log of size {ledger.log_size()}")
    return merkle.consistency_proof_from(merkle.range_from_nodes(node or ledger.node), size1, size2)


def entry_at(ledger: Ledger, index: int) -> bytes:
    data = next(ledger.entries(index, index + 1), None)
    if data is None:
        raise LedgerError(f"no entry {index} in {ledger.uri}")
    return data


def block_with_size(ledger: Ledger, size: int) -> StoredBlock:
    """The block after which the log had exactly ``size`` entries (its checkpoint is signed)."""
    lo, hi = 0, ledger.block_count() - 1
    while lo <= hi:
        mid = (lo + hi) // 2
        b = ledger.block(mid)
        if b.header.log_size == size:
            return b
        if b.header.log_size < size:
            lo = mid + 1
        else:
            hi = mid - 1
    raise LedgerError(f"no block ends at log size {size}: signed checkpoints exist only at block boundaries")

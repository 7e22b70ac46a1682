"""What each node is sent with its next instruction: the server side of receipts.

* the signed checkpoint of the head and the head block's signed header (the
  client checks that the model it receives is the head's ``model_after``);
* a consistency proof from the checkpoint size the node last confirmed;
* C2SP tlog-proofs of the node's earlier train and evaluate replies it asked for.

Only replies whose signature verified move a node's state (an unverified
reply naming a victim's key id gets nothing of the victim's). Updates are
found through a (key id, round) -> log indices map built once when the
ledger opens and kept current on every commit: no ledger scans per
instruction, and at most :data:`MAX_RECEIPTS` proofs per instruction.
Imports neither torch nor flwr.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from flower_chain.ledger import proofs
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.entries import UpdateEntry
from flower_chain.ledger.errors import LedgerError
from flower_chain.strategies.receipt_tree import ProofTree
from flower_chain.wire import (
    CTX_CHECKPOINT,
    CTX_CONSISTENCY,
    CTX_CONSISTENCY_FROM,
    CTX_HEAD,
    CTX_HEAD_SIGNATURE,
    CTX_RECEIPT,
    CTX_SERVER_KEY,
    RECEIPT_SEPARATOR,
)

#: Most inclusion proofs sent with one instruction (a node asks for its oldest unconfirmed round).
MAX_RECEIPTS = 16
#: Most entries indexed per (key, round): a key's replies beyond this in one round get no receipt.
MAX_PER_ROUND = 8
#: Stored subtree hashes (32 bytes each) kept in memory for receipts.
NODE_CACHE = 1 << 16


class ReceiptServer:
    """Per-node receipt state and the (key id, round) index of train and evaluate updates.

    Parameters
    ----------
    ledger : Ledger
        The ledger the proofs are built from.
    server_public : bytes
        The raw server key sent with every checkpoint.
    """

    def __init__(self, ledger: Ledger, server_public: bytes) -> None:
        self.ledger = ledger
        self.server_public = server_public
        # A stored subtree hash never changes in an append-only log: read each once, whichever node's proof
        # needs it (a round's instructions share the upper levels of every proof and the one consistency proof).
        self._node = lru_cache(maxsize=NODE_CACHE)(ledger.node)
        # a block's updates are proven together: their entries read a chunk at a time, the hashes inside a
        # chunk computed once, the path above it built once per head (receipt_tree)
        self._tree = ProofTree(ledger, self._node)
        self._consistency: dict[int, bytes] = {}  # seen checkpoint size -> consistency proof to the head
        self._consistency_size = -1  # the head size those proofs lead to
        self.update_index: dict[tuple[str, int], list[int]] = {}  # (key id, round) -> log indices, in order
        self.node_seen: dict[str, int] = {}  # node id -> checkpoint size it last confirmed
        self.node_pending: dict[str, tuple[str, int]] = {}  # node id -> (key id, round) it wants a receipt for
        self.last_round = 0

    def index_entry(self, index: int, entry: UpdateEntry, current: bool) -> None:
        """Index a train or evaluate update carrying its key's own statement for the round (``current``: it
        verified and names this federation, round and kind — replays of older statements never crowd the slot)."""
        if entry.kind in ("train", "evaluate") and entry.key_id and current:
            slot = self.update_index.setdefault((entry.key_id, int(entry.round)), [])
            if len(slot) < MAX_PER_ROUND:
                slot.append(index)
        self.last_round = max(self.last_round, int(entry.round))

    def observe(self, node_id: int | str, key_id: str, verified: bool, seen_size: int, pending_round: int) -> None:
        """Take what a reply says about its node (only when its signature verified)."""
        if not verified:
            return
        node = str(node_id)
        if seen_size >= 0:
            self.node_seen[node] = int(seen_size)
        if pending_round >= 0:
            self.node_pending[node] = (key_id, int(pending_round))
        else:
            self.node_pending.pop(node, None)

    def config(self, node_id: int | str, head: StoredBlock, checkpoint: str | None = None) -> dict[str, Any]:
        """The receipt a node gets with its next instruction (``checkpoint``: the head's, cosigned if witnessed)."""
        node = str(node_id)
        out: dict[str, Any] = {
            CTX_CHECKPOINT: checkpoint or head.checkpoint,
            CTX_SERVER_KEY: self.server_public,
            CTX_HEAD: head.header_bytes,
            CTX_HEAD_SIGNATURE: head.signature,
            CTX_CONSISTENCY: b"",
            CTX_CONSISTENCY_FROM: -1,
        }
        seen = self.node_seen.get(node)
        if seen is not None and 0 < seen <= head.header.log_size:
            proof = self._consistency_from(seen, head.header.log_size)
            if proof is not None:  # None: not a checkpoint this ledger signed (the client will report it)
                out[CTX_CONSISTENCY] = proof
                out[CTX_CONSISTENCY_FROM] = seen
        pending = self.node_pending.get(node)
        if pending is not None:
            kid, first = pending
            out[CTX_RECEIPT] = RECEIPT_SEPARATOR.join(self._proofs(kid, first, head))  # legacy configs hold no lists
        return out

    def _consistency_from(self, seen: int, size: int) -> bytes | None:
        """The consistency proof from checkpoint size ``seen`` to ``size``, made once per head for all nodes
        (None: ``seen`` is not the size of a checkpoint this ledger signed, or the ledger could not be read)."""
        if self._consistency_size != size:  # the head moved on: proofs to the old head are no longer sent
            self._consistency, self._consistency_size = {}, size
        if seen in self._consistency:
            return self._consistency[seen]
        try:
            proofs.block_with_size(self.ledger, seen)
            proof = b"".join(proofs.consistency_proof(self.ledger, seen, size, node=self._node))
        except LedgerError:  # not remembered: a storage error of this moment must not cost every node its proof
            return None
        self._consistency[seen] = proof
        return proof

    def _proofs(self, kid: str, first: int, head: StoredBlock) -> list[str]:
        texts: list[str] = []
        for rnd in range(max(first, 0), self.last_round + 1):
            for index in self.update_index.get((kid, rnd), ()):
                if len(texts) >= MAX_RECEIPTS:
                    return texts
                texts.append(self._tree.proof_text(index, head))
        return texts

    def _entry(self, index: int, size: int) -> bytes:
        """Entry ``index`` of a log of ``size`` entries (one storage read serves its whole chunk)."""
        return self._tree.entry(index, size)

    def committed(self, first_index: int, entries: Sequence[tuple[UpdateEntry, bool]]) -> None:
        """Index a freshly appended block's (entry, current) pairs."""
        for i, (entry, verified) in enumerate(entries):
            self.index_entry(first_index + i, entry, verified)

"""Inclusion proofs of many entries at once, for the receipts of a round (:mod:`flower_chain.strategies.receipts`).

A round's receipts prove the updates of one block — 10,000 neighbouring leaves of the same tree. Each
proof is ``PATH(index, D[0:size])`` of RFC 9162: its lower hashes lie inside the aligned group of
``2**CHUNK_LEVELS`` leaves (a *chunk*) that holds the entry, its upper hashes are the chunk's own path,
the same for every leaf of the chunk. So a chunk's entries are read in one storage read, their leaf
and subtree hashes computed once in memory (checked against the stored hash of the chunk's root: a
chunk that does not match is served from storage, as before), the upper path built once per chunk and
head; a proof is then a few list lookups. The proof is the same, byte for byte, as
:func:`flower_chain.ledger.tlog_proof.prove_inclusion`'s (tests compare every index); a chunk the log
does not yet fill, or one whose hashes do not match, is proven by that function over the stored hashes.
Imports neither torch nor flwr.
"""

from __future__ import annotations

import base64
from collections.abc import Callable

from flower_chain.ledger import merkle
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.proofs import inclusion_proof
from flower_chain.ledger.tlog_proof import TLOG_PROOF_HEADER, prove_inclusion

#: Leaves per chunk: ``2**CHUNK_LEVELS`` (one storage read each; 1,024 entries of ~700 bytes).
CHUNK_LEVELS = 10
#: Entries kept in memory (a round of 10,000 nodes needs 10,000).
ENTRY_CACHE = 1 << 14


def _b64(h: bytes) -> str:
    return base64.b64encode(h).decode()


class _Chunk:
    """The entries of the leaves ``[lo, hi)`` and, when the chunk is full and its hashes match the stored root,
    the base64 text of every subtree hash inside it, level by level (``texts[0]``: the leaf hashes)."""

    __slots__ = ("entries", "hi", "lo", "texts")

    def __init__(self, lo: int, entries: list[bytes], levels: int, stored_root: Callable[[], bytes]) -> None:
        self.lo, self.entries = lo, entries
        self.hi = lo + len(entries)
        self.texts: list[list[str]] | None = None
        if len(entries) != 1 << levels:
            return
        level = merkle.leaf_hashes(entries)
        texts = []
        for _ in range(levels):
            texts.append([_b64(h) for h in level])
            pairs = iter(level)
            level = [merkle.node_hash(left, right) for left, right in zip(pairs, pairs)]
        if level[0] == stored_root():  # what storage proves: a chunk computed otherwise is not used
            self.texts = texts


class ProofTree:
    """Inclusion proofs, as C2SP tlog-proof texts, of entries of ``ledger`` against a head.

    ``node``: the stored subtree hash reader (a cache of ``ledger.node``). ``levels``: chunk size as a power of 2.
    """

    def __init__(self, ledger: Ledger, node: Callable[[int, int], bytes], levels: int = CHUNK_LEVELS) -> None:
        self.ledger, self.node, self.levels = ledger, node, levels
        self._chunks: dict[int, _Chunk] = {}
        self._upper: dict[int, list[str]] = {}  # chunk -> base64 of its path above the chunk, for _upper_size
        self._upper_size = -1

    def entry(self, index: int, size: int) -> bytes:
        """Entry ``index`` of a log of ``size`` entries (its chunk read at once)."""
        chunk = self._chunk(index, size)
        return chunk.entries[index - chunk.lo]

    def _chunk(self, index: int, size: int) -> _Chunk:
        c = index >> self.levels
        chunk = self._chunks.get(c)
        if chunk is None or index >= chunk.hi:  # a chunk read before the log filled it is read again
            if len(self._chunks) << self.levels >= ENTRY_CACHE:
                self._chunks.clear()
            lo = c << self.levels
            hi = min(lo + (1 << self.levels), size)
            # a chunk the log was still filling: only the entries appended since are read (entries never change)
            known = chunk.entries if chunk is not None and chunk.hi <= hi else []
            entries = known + list(self.ledger.entries(lo + len(known), hi)) if lo + len(known) < hi else list(known)
            if index >= lo + len(entries):
                raise LedgerError(f"no entry {index} in {self.ledger.uri}")
            chunk = _Chunk(lo, entries, self.levels, lambda: self.node(self.levels, c))
            self._chunks[c] = chunk
        return chunk

    def proof_text(self, index: int, head: StoredBlock) -> str:
        """The tlog-proof of entry ``index`` against ``head``'s checkpoint (``prove_inclusion(...).to_text()``)."""
        size = head.header.log_size
        c = index >> self.levels
        chunk = self._chunks.get(c)
        if chunk is None or index >= chunk.hi:
            chunk = self._chunk(index, size)
        j = index - chunk.lo
        texts = chunk.texts
        if texts is None or chunk.hi > size:  # not full, or not what storage holds: from the stored hashes
            entry = chunk.entries[j]
            return prove_inclusion(self.ledger, index, head=head, node=self.node, entry=entry).to_text()
        if self._upper_size != size:  # the head moved on: the paths above the chunks are new
            self._upper, self._upper_size = {}, size
        upper = self._upper.get(c)
        if upper is None:
            path = inclusion_proof(self.ledger, chunk.lo, size, node=self.node, stored=size)
            upper = self._upper[c] = [_b64(h) for h in path[self.levels :]]
        lines = [TLOG_PROOF_HEADER, f"extra {_b64(chunk.entries[j])}", f"index {index}"]
        lines += [t[(j >> lv) ^ 1] for lv, t in enumerate(texts)]
        lines += upper
        return "\n".join(lines) + "\n\n" + head.checkpoint

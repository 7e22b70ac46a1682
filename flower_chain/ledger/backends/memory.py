"""In-memory backend (``memory:``): for tests and throw-away runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

from flower_chain.ledger.backends.base import Ledger, Node
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.errors import LedgerError


class MemoryLedger(Ledger):
    """Keeps everything in Python lists and dicts; gone when the process ends."""

    def __init__(self, uri: str = "memory:") -> None:
        self.uri = uri
        self._blocks: list[StoredBlock] = []
        self._entries: list[bytes] = []
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._blobs: dict[bytes, bytes] = {}
        self._lock = threading.Lock()

    def _append(self, block: StoredBlock, entries: Sequence[bytes], nodes: Sequence[Node]) -> None:
        with self._lock:  # the head check and the store are one step for every thread sharing this ledger
            self._check_extends(block, len(self._blocks), self._blocks[-1].hash if self._blocks else None)
            self._entries.extend(bytes(e) for e in entries)
            self._nodes.update(((lv, ix), h) for lv, ix, h in nodes)
            self._blocks.append(block)

    def block_count(self) -> int:
        return len(self._blocks)

    def blocks(self, start: int = 0, end: int | None = None) -> Iterator[StoredBlock]:
        yield from self._blocks[start:end]

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        yield from self._entries[start:end]

    def node(self, level: int, index: int) -> bytes:
        try:
            return self._nodes[(level, index)]
        except KeyError:
            raise LedgerError(f"no subtree hash at level {level}, index {index}") from None

    def _put_blob(self, digest: bytes, data: bytes) -> None:
        self._blobs[digest] = bytes(data)

    def get_blob(self, digest: bytes) -> bytes:
        try:
            return self._blobs[digest]
        except KeyError:
            raise LedgerError(f"no blob {digest.hex()} in the ledger's blob store") from None

    def has_blob(self, digest: bytes) -> bool:
        return digest in self._blobs

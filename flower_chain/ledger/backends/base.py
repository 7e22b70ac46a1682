"""The storage interface every ledger backend implements."""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Iterable, Iterator, Sequence

from flower_chain.ledger.block import ZERO_HASH, StoredBlock
from flower_chain.ledger.errors import AppendError, LedgerConflictError, LedgerCorruptError, LedgerError

Node = tuple[int, int, bytes]  # (level, index, hash) of a perfect subtree; level 0 = leaf hash


class Ledger(abc.ABC):
    """Storage of blocks, entries, perfect-subtree hashes and content-addressed blobs.

    A backend stores what it is given and serves it back; it checks nothing
    cryptographic (that is :mod:`flower_chain.ledger.verify`'s job), but
    :meth:`append` is atomic: after a crash either the whole block with its
    entries and nodes is there, or none of it.
    """

    uri: str = ""

    # -- writing ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def _append(self, block: StoredBlock, entries: Sequence[bytes], nodes: Sequence[Node]) -> None:
        """Store one block atomically, after checking inside the same atomic section that it extends the head.

        Every backend calls :meth:`_check_extends` with the head it reads *inside* its transaction
        (or under its lock), never with a value read before: that compare-and-swap is what keeps a
        second writer from forking the ledger.
        """

    def append(self, block: StoredBlock, entries: Sequence[bytes], nodes: Sequence[Node]) -> None:
        """Append one block with its entries and the subtree hashes they complete, atomically.

        Raises
        ------
        LedgerConflictError
            The block does not extend the stored head (another writer appended first); nothing was stored.
        AppendError
            The header's entry count does not match ``entries``.
        """
        if block.header.entry_count != len(entries):
            raise AppendError("entry count in the header does not match the entries given")
        self._append(block, entries, nodes)

    def _check_extends(self, block: StoredBlock, count: int, head_hash: bytes | None) -> None:
        """Raise :class:`LedgerConflictError` unless ``block`` is the next block after the stored head.

        Parameters
        ----------
        block : StoredBlock
            The block about to be stored.
        count : int
            Number of blocks stored, read inside the append's atomic section.
        head_hash : bytes or None
            Hash of the stored head block (ignored when ``count`` is 0).
        """
        h = block.header
        expected_prev = bytes(head_hash) if count and head_hash is not None else ZERO_HASH
        if h.height == count and h.prev_hash == expected_prev:
            return
        stored = f"its head is block {count - 1} with hash {expected_prev.hex()[:16]}" if count else "it is empty"
        raise LedgerConflictError(
            f"{self.uri}: block {h.height} (prev_hash {h.prev_hash.hex()[:16]}) does not extend the stored "
            f"ledger: {stored}. Another writer appended to this ledger; only one server may write it. Stop "
            "this server, run `flower-chain ledger verify`, and resume from the verified ledger"
        )

    # -- reading ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def block_count(self) -> int: ...

    @abc.abstractmethod
    def blocks(self, start: int = 0, end: int | None = None) -> Iterator[StoredBlock]:
        """Blocks with ``start <= height < end``, in height order."""

    @abc.abstractmethod
    def entries(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Entry bytes with log index ``start <= i < end``, in log order."""

    @abc.abstractmethod
    def node(self, level: int, index: int) -> bytes:
        """The stored hash of the perfect subtree ``[index * 2**level, (index + 1) * 2**level)``."""

    def head(self) -> StoredBlock | None:
        n = self.block_count()
        if n == 0:
            return None
        return self._stored(n - 1, n)

    def block(self, height: int) -> StoredBlock:
        n = self.block_count()
        if not 0 <= height < n:
            raise LedgerError(f"no block at height {height} (the ledger has {n} blocks)")
        return self._stored(height, n)

    def _stored(self, height: int, n: int) -> StoredBlock:
        """The block at ``height``, which the stored count ``n`` says exists (storage that lacks it is corrupt)."""
        block = next(self.blocks(height, height + 1), None)
        if block is None:
            raise LedgerCorruptError(f"{self.uri}: the ledger reports {n} blocks but holds no block {height}")
        return block

    def log_size(self) -> int:
        h = self.head()
        return h.header.log_size if h else 0

    # -- blobs -----------------------------------------------------------------------------------
    @abc.abstractmethod
    def _put_blob(self, digest: bytes, data: bytes) -> None: ...

    @abc.abstractmethod
    def get_blob(self, digest: bytes) -> bytes:
        """Return the blob stored under ``digest``; raise :class:`LedgerError` if absent."""

    @abc.abstractmethod
    def has_blob(self, digest: bytes) -> bool: ...

    def put_blob(self, data: bytes, digest: bytes | None = None) -> bytes:
        """Store ``data`` under ``digest`` (default: its SHA-256) unless already there; return the digest."""
        digest = digest or hashlib.sha256(data).digest()
        if not self.has_blob(digest):
            self._put_blob(digest, data)
        return digest

    def put_blobs(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Store many ``(digest, data)`` blobs (a round's client updates); backends batch them in one transaction."""
        for digest, data in items:
            self.put_blob(data, digest)

    def reload(self) -> None:  # noqa: B027 - backends that read through to storage need nothing
        """Pick up changes another process made to the stored ledger."""

    def close(self) -> None:  # noqa: B027 - optional for backends that hold nothing
        """Release files and connections."""

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def backend(self) -> str:
        return type(self).__name__

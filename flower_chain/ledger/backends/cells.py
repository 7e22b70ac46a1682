"""Typed, bounded reads of what a storage backend hands back: a database or a file is hostile input.

A backend stores what it is given, but what it reads back may have been written by anyone with
access to the file or the database: an ``INTEGER`` where a ``BLOB`` belongs (``bytes(2**31)``
would allocate 2 GiB), a negative or huge count, text with terminal escape sequences in a
checkpoint. Every backend passes each cell through one of the functions below before it builds
anything from it; each checks the type first, then the size, and raises
:class:`~flower_chain.ledger.errors.LedgerCorruptError` (exit 1 through the CLI, one line) naming
the cell, never echoing its content. Nothing is allocated from a size before that size is checked.
"""

from __future__ import annotations

from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.checkpoint import MAX_NOTE_CHARS
from flower_chain.ledger.errors import LedgerCorruptError

__all__ = [
    "MAX_COUNT",
    "MAX_ENTRY_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_SIGNATURE_BYTES",
    "HASH_BYTES",
    "blob",
    "count",
    "hash_cell",
    "note_text",
    "stored_block",
]

MAX_HEADER_BYTES = 64 * 1024
"""Largest block header read (a header is a few hundred bytes: digests, counts and the federation id)."""
MAX_SIGNATURE_BYTES = 1024
"""Largest server signature read (an Ed25519 signature is 64 bytes; verify checks the exact length)."""
MAX_ENTRY_BYTES = 64 * 1024 * 1024
"""Largest entry read (a genesis of 10,000 client keys is under 1 MiB; an update entry a few KiB)."""
HASH_BYTES = 32
"""A stored subtree hash is a SHA-256 digest."""
MAX_COUNT = 2**62
"""Largest height, index or count read (every integer column of every backend)."""


def _kind(value: object) -> str:
    return type(value).__name__


def blob(value: object, where: str, limit: int | None) -> bytes:
    """``value`` as ``bytes`` if it is binary data of at most ``limit`` bytes (``None``: any size).

    Raises
    ------
    LedgerCorruptError
        Not binary data (an integer, a float, text, NULL) or longer than ``limit``.
    """
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise LedgerCorruptError(f"{where}: stored value is {_kind(value)}, not binary data")
    size = value.nbytes if isinstance(value, memoryview) else len(value)
    if limit is not None and size > limit:
        raise LedgerCorruptError(f"{where}: stored value is {size} bytes, more than the {limit} allowed")
    return bytes(value)


def hash_cell(value: object, where: str) -> bytes:
    """A stored SHA-256 digest: exactly :data:`HASH_BYTES` bytes of binary data."""
    b = blob(value, where, HASH_BYTES)
    if len(b) != HASH_BYTES:
        raise LedgerCorruptError(f"{where}: stored hash is {len(b)} bytes, not {HASH_BYTES}")
    return b


def count(value: object, where: str, low: int = 0, high: int = MAX_COUNT) -> int:
    """An integer cell (height, index, count) in ``[low, high]``; ``bool`` is not an integer here."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise LedgerCorruptError(f"{where}: stored value is {_kind(value)}, not an integer")
    if not low <= value <= high:
        raise LedgerCorruptError(f"{where}: stored integer is outside {low}..{high}")
    return value


def note_text(value: object, where: str) -> str:
    """A stored signed note (a block's checkpoint): text of at most ``MAX_NOTE_CHARS`` characters, every one
    printable but the newline (no control character, which the signed-note spec forbids, no bidirectional
    override or other format character: a checkpoint is printed as is by ``summary`` and ``checkpoint``)."""
    if not isinstance(value, str):
        raise LedgerCorruptError(f"{where}: stored checkpoint is {_kind(value)}, not text")
    if len(value) > MAX_NOTE_CHARS:
        raise LedgerCorruptError(f"{where}: stored checkpoint is longer than {MAX_NOTE_CHARS} characters")
    if not value.replace("\n", "").isprintable():
        bad = next(c for c in value if c != "\n" and not c.isprintable())
        raise LedgerCorruptError(f"{where}: stored checkpoint contains the unprintable character U+{ord(bad):04X}")
    return value


def stored_block(header: object, signature: object, checkpoint: object, where: str) -> StoredBlock:
    """A :class:`StoredBlock` from three stored cells, each typed and bounded first."""
    return StoredBlock(
        blob(header, f"{where} header", MAX_HEADER_BYTES),
        blob(signature, f"{where} signature", MAX_SIGNATURE_BYTES),
        note_text(checkpoint, f"{where} checkpoint"),
    )

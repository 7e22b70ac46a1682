"""Block headers: one per appended batch of entries, hash-chained and server-signed.

``header bytes = BLOCK_DOMAIN || CE1(map)``; the block hash is SHA-256 of the
header bytes and the server signs the header bytes with Ed25519
(docs/ledger-format.md §4).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from typing import Any

from flower_chain.ledger.encoding import decode_with_domain, encode_with_domain
from flower_chain.ledger.errors import EncodingError

BLOCK_DOMAIN = b"flower-chain:block:v1\x00"
ZERO_HASH = b"\x00" * 32
FORMAT_VERSION = 1
MAX_COUNT = 2**62
"""Largest height, round, entry count and log size a header may carry."""
MAX_TIMESTAMP_MS = 253_402_300_799_999
"""The last millisecond of year 9999 UTC: later times cannot be shown as dates (nor are they honest)."""
DIGEST_BYTES = 32
_HASHES = ("prev_hash", "entries_root", "log_root")  # always a SHA-256 digest
_DIGESTS = ("model_before", "model_after", "state_after")  # a SHA-256 digest, or empty for none

_FIELD_TYPES = {
    "version": int,
    "federation_id": str,
    "height": int,
    "round": int,
    "timestamp_ms": int,
    "prev_hash": bytes,
    "entries_root": bytes,
    "entry_count": int,
    "model_before": bytes,
    "model_after": bytes,
    "state_after": bytes,
    "log_size": int,
    "log_root": bytes,
}


@dataclass(frozen=True)
class BlockHeader:
    """The signed header of a block.

    Attributes
    ----------
    version : int
        Format version (1).
    federation_id : str
        Federation the block belongs to (from the genesis).
    height : int
        0 for the genesis block, then +1 per block.
    round : int
        Flower server round the block records (0 for genesis/administrative blocks).
    timestamp_ms : int
        Server time of the append, milliseconds since the epoch.
    prev_hash : bytes
        Hash of the previous block's header (32 zero bytes for the genesis block).
    entries_root : bytes
        RFC 9162 root over this block's entries.
    entry_count : int
        Number of entries in the block.
    model_before, model_after : bytes
        Array digests of the global model before and after the round (empty when none).
    state_after : bytes
        Array digest of the server strategy's own state after the block (FedAdam's
        moments, FedAvgM's momentum, an adaptive clipping norm; empty when the
        strategy keeps none). Resuming restores it from the blob store.
    log_size, log_root : int, bytes
        Size and RFC 9162 root of the whole log (all entries of all blocks) after this block.
    """

    version: int
    federation_id: str
    height: int
    round: int
    timestamp_ms: int
    prev_hash: bytes
    entries_root: bytes
    entry_count: int
    model_before: bytes
    model_after: bytes
    state_after: bytes
    log_size: int
    log_root: bytes

    def to_bytes(self) -> bytes:
        return encode_with_domain(BLOCK_DOMAIN, asdict(self))

    @classmethod
    def from_bytes(cls, data: bytes) -> BlockHeader:
        d = decode_with_domain(BLOCK_DOMAIN, data)
        if not isinstance(d, dict) or set(d) != set(_FIELD_TYPES):
            raise EncodingError("block header has the wrong fields")
        for name, typ in _FIELD_TYPES.items():
            if not isinstance(d[name], typ) or isinstance(d[name], bool):
                raise EncodingError(f"block header field {name!r} must be {typ.__name__}")
        _check_ranges(d)
        return cls(**d)

    @property
    def first_index(self) -> int:
        """Log index of the block's first entry."""
        return self.log_size - self.entry_count


assert [f.name for f in fields(BlockHeader)] == list(_FIELD_TYPES)


def _check_ranges(d: dict[str, Any]) -> None:
    """Bound every decoded header field, so no reader computes with a negative count, an entry range
    before the log's start, a date past year 9999 or a digest of the wrong length."""
    for name in ("height", "round", "entry_count", "log_size"):
        if not 0 <= d[name] <= MAX_COUNT:
            raise EncodingError(f"block header field {name!r} is outside 0..2**62")
    if d["entry_count"] > d["log_size"]:
        raise EncodingError("block header counts more entries in the block than in the whole log")
    if not 0 <= d["timestamp_ms"] <= MAX_TIMESTAMP_MS:
        raise EncodingError("block header timestamp is before 1970 or after year 9999")
    for name in _HASHES:
        if len(d[name]) != DIGEST_BYTES:
            raise EncodingError(f"block header field {name!r} is not a {DIGEST_BYTES}-byte hash")
    for name in _DIGESTS:
        if len(d[name]) not in (0, DIGEST_BYTES):
            raise EncodingError(f"block header field {name!r} is neither empty nor a {DIGEST_BYTES}-byte digest")


@dataclass(frozen=True)
class StoredBlock:
    """A block as a backend stores it: header bytes, server signature, signed checkpoint."""

    header_bytes: bytes
    signature: bytes
    checkpoint: str

    @cached_property
    def header(self) -> BlockHeader:
        return BlockHeader.from_bytes(self.header_bytes)

    @cached_property
    def hash(self) -> bytes:
        return hashlib.sha256(self.header_bytes).digest()

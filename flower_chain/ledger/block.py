"""Block headers: one per appended batch of entries, hash-chained and server-signed.

``header bytes = BLOCK_DOMAIN || CE1(map)``; the block hash is SHA-256 of the
header bytes and the server signs the header bytes with Ed25519
(docs/ledger-format.md §4).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, fields
from functools import cached_property

from flower_chain.ledger.encoding import decode_with_domain, encode_with_domain
from flower_chain.ledger.errors import EncodingError

BLOCK_DOMAIN = b"flower-chain:block:v1\x00"
ZERO_HASH = b"\x00" * 32
FORMAT_VERSION = 1

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
        return cls(**d)

    @property
    def first_index(self) -> int:
        """Log index of the block's first entry."""
        return self.log_size - self.entry_count


assert [f.name for f in fields(BlockHeader)] == list(_FIELD_TYPES)


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

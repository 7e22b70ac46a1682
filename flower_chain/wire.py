"""What travels between server and clients (imports neither torch nor flwr).

* The server adds a **ledger context** to each train/evaluate config under
  namespaced keys (the user's own keys stay as they are).
* A client's signed **update statement** comes back in a ConfigRecord named
  :data:`SIG_RECORD` (Message API) or under :data:`LEGACY_STATEMENT` /
  :data:`LEGACY_SIGNATURE` in the legacy ``FitRes.metrics`` dict.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.lib import format as npy

from flower_chain.ledger.arrays import array_digest

PREFIX = "flower-chain."
CTX_FEDERATION = PREFIX + "federation"
CTX_ROUND = PREFIX + "round"
CTX_PARENT = PREFIX + "parent"
CTX_BASE = PREFIX + "base"
CTX_RECEIPT = PREFIX + "receipt"  # tlog-proof texts of this node's updates it asked receipts for
RECEIPT_SEPARATOR = "\x1e"  # between the tlog-proofs in CTX_RECEIPT
CTX_CHECKPOINT = PREFIX + "checkpoint"  # signed checkpoint note of the ledger head
CTX_SERVER_KEY = PREFIX + "server-key"  # raw Ed25519 key that signs checkpoints
CTX_CONSISTENCY = PREFIX + "consistency"  # concatenated 32-byte hashes
CTX_CONSISTENCY_FROM = PREFIX + "consistency-from"  # log size the consistency proof starts from (-1: none)
CTX_HEAD = PREFIX + "head"  # header bytes of the head block (its log_size/log_root are the checkpoint's)
CTX_HEAD_SIGNATURE = PREFIX + "head-signature"  # the server's Ed25519 signature on CTX_HEAD

SIG_RECORD = "flower-chain"
STATEMENT = "statement"
SIGNATURE = "signature"
SEEN_SIZE = "checkpoint-size"  # size of the last checkpoint the client verified (-1: none)
LEGACY_SEEN_SIZE = PREFIX + "checkpoint-size"
PENDING_ROUND = "pending-round"  # round of the client's update it still wants a receipt for (-1: none)
LEGACY_PENDING_ROUND = PREFIX + "pending-round"
LEGACY_STATEMENT = PREFIX + "statement"
LEGACY_SIGNATURE = PREFIX + "signature"

NUM_EXAMPLES_KEYS = ("num-examples", "num_examples")


@dataclass(frozen=True)
class LedgerContext:
    """The ledger context a server sends with each instruction."""

    federation_id: str
    round: int
    parent: bytes
    base_digest: bytes

    def to_config(self) -> dict[str, Any]:
        return {CTX_FEDERATION: self.federation_id, CTX_ROUND: self.round, CTX_PARENT: self.parent,
                CTX_BASE: self.base_digest}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LedgerContext | None:
        if CTX_FEDERATION not in config:
            return None
        return cls(str(config[CTX_FEDERATION]), int(config[CTX_ROUND]), bytes(config[CTX_PARENT]),
                   bytes(config.get(CTX_BASE, b"")))


@functools.lru_cache(maxsize=1024)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype] | None:
    """(shape, fortran order, dtype) of an NPY preamble (magic, version, length, header dict)."""
    fp = io.BytesIO(header)
    try:
        version = npy.read_magic(fp)
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran, dtype = read(fp)
    except ValueError:
        return None
    return (tuple(shape), bool(fortran), dtype) if fp.tell() == len(header) and not dtype.hasobject else None


def ndarray_view(array: Any) -> np.ndarray:
    """A read-only ndarray over a Flower ``Array``'s bytes, without copying them.

    ``Array.numpy()`` deserializes with ``np.load`` (a copy, and a Python
    parse of the header: together a third of the cost of hashing); for the
    ``numpy.ndarray`` serialization (NPY format) this parses each distinct
    header once and views the payload in place.
    """
    data = getattr(array, "data", None)
    if getattr(array, "stype", None) != "numpy.ndarray" or not isinstance(data, bytes) or data[:6] != b"\x93NUMPY":
        return array.numpy()
    wide = data[6] >= 2  # NPY 2.0+ has a 4-byte header length
    size = 12 + int.from_bytes(data[8:12], "little") if wide else 10 + int.from_bytes(data[8:10], "little")
    parsed = _npy_header(data[:size])
    if parsed is None:
        return array.numpy()
    shape, fortran, dtype = parsed
    count = int(np.prod(shape, dtype=np.int64))
    flat = np.frombuffer(data, dtype=dtype, count=count, offset=size)
    return flat.reshape(shape, order="F" if fortran else "C")


def arrays_of(record: Any) -> list[tuple[str, np.ndarray]]:
    """(name, ndarray) pairs of a Flower ArrayRecord, in its order (zero-copy views where possible)."""
    return [(str(k), ndarray_view(v)) for k, v in record.items()]


def record_digest(record: Any) -> bytes:
    """The canonical array digest of a Flower ArrayRecord."""
    return array_digest(arrays_of(record))


def plain_metrics(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    """Metrics as plain Python numbers and lists (what the ledger records and the metrics digest covers)."""
    out: dict[str, Any] = {}
    for k, v in items:
        if isinstance(v, (list, tuple)):
            out[str(k)] = [x.item() if hasattr(x, "item") else x for x in v]
        elif isinstance(v, (bool, int, float, str, bytes)):
            out[str(k)] = v
        elif hasattr(v, "item"):
            out[str(k)] = v.item()
        else:
            out[str(k)] = str(v)
    return out


def num_examples_of(metrics: Mapping[str, Any]) -> int | None:
    for k in NUM_EXAMPLES_KEYS:
        if k in metrics:
            try:
                return int(metrics[k])
            except (TypeError, ValueError):
                return None
    return None

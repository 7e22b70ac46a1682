"""Canonical array digest and the model blob format (docs/ledger-format.md §6).

The *array stream* of an ordered list of named arrays is::

    "flower-chain:arrays:v1\\x00" || u32(count)
    per array: u32(len(name)) || name (UTF-8)
               u32(len(dtype)) || dtype (numpy ``dtype.str``, little-endian, e.g. "<f4")
               u32(ndim) || u64(dim) * ndim
               u64(nbytes) || raw little-endian C-order bytes

(all integers big-endian). The **array digest** is SHA-256 of that stream;
it does not depend on how Flower serializes arrays on the wire. Hashing
feeds each array's buffer to SHA-256 through a ``memoryview`` (no copy
unless an array is big-endian or not C-contiguous). A model blob in the
ledger's blob store *is* the array stream, so its content address is its
array digest.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from flower_chain.ledger.errors import EncodingError

ARRAYS_DOMAIN = b"flower-chain:arrays:v1\x00"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

NamedArrays = Sequence[tuple[str, np.ndarray]]


def _canonical(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    if a.dtype.hasobject:
        raise EncodingError("object arrays have no canonical bytes")
    return np.ascontiguousarray(a)


def _chunks(named: Iterable[tuple[str, np.ndarray]]) -> Iterator[bytes | memoryview]:
    named = list(named)
    yield ARRAYS_DOMAIN + _U32.pack(len(named))
    for name, arr in named:
        a = _canonical(arr)
        nb = name.encode("utf-8")
        dt = a.dtype.str.encode()
        head = [_U32.pack(len(nb)), nb, _U32.pack(len(dt)), dt, _U32.pack(a.ndim)]
        head += [_U64.pack(d) for d in a.shape]
        head.append(_U64.pack(a.nbytes))
        yield b"".join(head)
        if a.nbytes:
            yield memoryview(a.reshape(-1)).cast("B")


def array_digest(named: Iterable[tuple[str, np.ndarray]]) -> bytes:
    """SHA-256 of the array stream of ``named`` (name, array) pairs, in order."""
    h = hashlib.sha256()
    for chunk in _chunks(named):
        h.update(chunk)
    return h.digest()


def encode_arrays(named: Iterable[tuple[str, np.ndarray]]) -> bytes:
    """The array stream itself: the blob stored for a model."""
    return b"".join(bytes(c) for c in _chunks(named))


def decode_arrays(data: bytes) -> list[tuple[str, np.ndarray]]:
    """Parse an array stream back into (name, array) pairs; raise :class:`EncodingError` if malformed."""
    mv = memoryview(data)
    pos = len(ARRAYS_DOMAIN)
    if bytes(mv[:pos]) != ARRAYS_DOMAIN:
        raise EncodingError("not a flower-chain array stream")

    def take(n: int) -> memoryview:
        nonlocal pos
        if pos + n > len(mv):
            raise EncodingError("truncated array stream")
        out = mv[pos : pos + n]
        pos += n
        return out

    count = _U32.unpack(take(4))[0]
    out = []
    for _ in range(count):
        name = bytes(take(_U32.unpack(take(4))[0])).decode("utf-8")
        dtype = np.dtype(bytes(take(_U32.unpack(take(4))[0])).decode())
        ndim = _U32.unpack(take(4))[0]
        shape = tuple(_U64.unpack(take(8))[0] for _ in range(ndim))
        nbytes = _U64.unpack(take(8))[0]
        if nbytes != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise EncodingError(f"array {name!r}: byte count does not match shape and dtype")
        out.append((name, np.frombuffer(bytes(take(nbytes)), dtype=dtype).reshape(shape)))
    if pos != len(mv):
        raise EncodingError("trailing bytes after the array stream")
    return out


def cast_like(named: Iterable[tuple[str, np.ndarray]], dtypes: Sequence[np.dtype | str]) -> list[tuple[str, np.ndarray]]:
    """``named`` with each array cast to the dtype at the same position of ``dtypes``.

    The global model keeps the dtypes of the initial arrays: whatever dtype a
    wrapped strategy's aggregate comes back in (Flower's FedAdam returns
    float64 under NumPy 2), it is cast back to these before it is recorded or
    sent (``astype``, round to nearest). The server and the aggregation replay
    (``flower-chain ledger audit``) both call this, so they agree bit for bit.
    """
    named = list(named)
    dtypes = [np.dtype(d) for d in dtypes]
    if len(named) != len(dtypes):
        raise EncodingError(f"{len(named)} arrays but {len(dtypes)} dtypes to cast them to")
    return [(n, a if np.asarray(a).dtype == d else np.asarray(a).astype(d)) for (n, a), d in zip(named, dtypes)]


ArrayMeta = tuple[tuple[str, tuple[int, ...], str], ...]


def array_meta(named: Iterable[tuple[str, np.ndarray]]) -> ArrayMeta:
    """(name, shape, dtype string) of each array: what a reply must match exactly (the verdict policy's template)."""
    return tuple((str(n), tuple(int(d) for d in np.shape(a)), np.asarray(a).dtype.str) for n, a in named)


def finite(a: np.ndarray) -> bool:
    """True when every value is finite.

    Fast path: a NaN or inf makes the dot product a.a non-finite, and BLAS
    computes it in a fraction of isfinite's time; only when the dot product
    is not finite (a bad value, or an overflow of huge finite values) does
    the exact element-wise check decide.
    """
    a = np.asarray(a)
    if a.dtype.kind not in "fc":
        return True
    if a.dtype in (np.float32, np.float64) and a.size:
        flat = a.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.dot(flat, flat)):
                return True
    return bool(np.isfinite(a).all())


def first_nonfinite(named: Iterable[tuple[str, np.ndarray]]) -> str | None:
    """The name of the first array holding a NaN or an infinity, or ``None``."""
    return next((str(n) for n, a in named if not finite(a)), None)

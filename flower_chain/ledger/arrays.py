"""Canonical array digests (v1 and v2) and the model blob format (docs/ledger-format.md §6).

The *array stream* of an ordered list of named arrays is::

    "flower-chain:arrays:v1\\x00" || u32(count)
    per array: u32(len(name)) || name (UTF-8)
               u32(len(dtype)) || dtype (numpy ``dtype.str``, little-endian, e.g. "<f4")
               u32(ndim) || u64(dim) * ndim
               u64(nbytes) || raw little-endian C-order bytes

(all integers big-endian). A model blob in the ledger's blob store *is* the
array stream. Two digests of a stream exist; a ledger's genesis says which
one all its digests use (``GenesisEntry.digest_version``):

* **v1**: SHA-256 of the stream (one sequential hash). Its stream records a
  0-d array as shape ``(1,)`` (a quirk kept so that v1 ledgers verify).
* **v2** (what new ledgers use): the stream records every array with its own
  shape (0-d included); a stream of at most :data:`CHUNK_SIZE` bytes is
  hashed with one SHA-256 (as v1); a longer stream is cut into :data:`CHUNK_SIZE`
  chunks (the last one shorter), each chunk hashed as
  ``SHA-256(LEAF_TAG || chunk)`` and the leaves combined as an RFC 9162
  shaped Merkle tree with ``SHA-256(NODE_TAG || left || right)``. The leaves
  are hashed on a thread pool sized to the machine (hashlib releases the GIL
  for large buffers). The chunk size is fixed by the format, never chosen by
  a sender.

Neither digest depends on how Flower serializes arrays on the wire. Hashing
feeds each array's buffer to SHA-256 through a ``memoryview`` (no copy
unless an array is big-endian or not C-contiguous). A blob's content address
is :func:`stream_digest` of its bytes under the ledger's version, which
equals :func:`array_digest` of the arrays it decodes to.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import re
import struct
import threading
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from flower_chain.ledger.errors import EncodingError

ARRAYS_DOMAIN = b"flower-chain:arrays:v1\x00"
#: Array digest version new ledgers use; ledgers with v1 digests still verify.
ARRAY_DIGEST_VERSION = 2
#: Array digest versions this code computes.
DIGEST_VERSIONS = (1, 2)
#: v2 chunk size, fixed by the format (1 MiB).
CHUNK_SIZE = 1 << 20
#: v2 domain tags of a leaf (one chunk) and of an inner node.
LEAF_TAG = b"flower-chain:arrays:v2:leaf\x00"
NODE_TAG = b"flower-chain:arrays:v2:node\x00"
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

NamedArrays = Sequence[tuple[str, np.ndarray]]


def _canonical(a: np.ndarray, version: int) -> np.ndarray:
    """Little-endian C-order; v1 (a quirk kept so v1 ledgers verify) records a 0-d array as shape (1,)."""
    if type(a) is np.ndarray and a.ndim and a.flags.c_contiguous and a.dtype.byteorder != ">" and not a.dtype.hasobject:
        return a  # already canonical (a reply's NPY view, a model's array): nothing to convert
    a = np.asarray(a)
    if a.dtype.byteorder == ">":
        a = a.astype(a.dtype.newbyteorder("<"))
    if a.dtype.hasobject:
        raise EncodingError("object arrays have no canonical bytes")
    out = np.ascontiguousarray(a)  # always at least 1-d
    return out.reshape(()) if a.ndim == 0 and version >= 2 else out


@functools.lru_cache(maxsize=4096)
def _array_head(name: str, dtype: str, shape: tuple[int, ...], nbytes: int) -> bytes:
    """The stream's header of one array (name, dtype, shape, payload size): the same few per model, cached."""
    nb = name.encode("utf-8")
    dt = dtype.encode()
    head = [_U32.pack(len(nb)), nb, _U32.pack(len(dt)), dt, _U32.pack(len(shape))]
    head += [_U64.pack(d) for d in shape]
    head.append(_U64.pack(nbytes))
    return b"".join(head)


def _chunks(named: Iterable[tuple[str, np.ndarray]], version: int) -> Iterator[bytes | memoryview]:
    named = list(named)
    yield ARRAYS_DOMAIN + _U32.pack(len(named))
    for name, arr in named:
        a = _canonical(arr, version)
        nbytes = a.nbytes
        yield _array_head(
            name if type(name) is str else str(name.encode("utf-8"), "utf-8"), a.dtype.str, a.shape, nbytes
        )
        if nbytes:
            # numpy's stubs declare ndarray.__buffer__ only for Python >= 3.12; it is a buffer on 3.11 too
            yield memoryview(a.reshape(-1)).cast("B")  # type: ignore[arg-type]


def array_digest_v1(named: Iterable[tuple[str, np.ndarray]]) -> bytes:
    """Array digest v1: SHA-256 of the array stream of ``named`` (name, array) pairs, in order."""
    h = hashlib.sha256()
    for chunk in _chunks(named, 1):
        h.update(chunk)
    return h.digest()


def array_digest_v2(named: Iterable[tuple[str, np.ndarray]], *, threads: int | None = None) -> bytes:
    """Array digest v2 (the parallel tree hash) of the array stream of ``named``, in order.

    Parameters
    ----------
    named : iterable of (str, ndarray)
        The arrays.
    threads : int, optional
        Threads that hash the leaves (default :func:`default_threads`); 1 hashes on the caller's thread.
    """
    return _tree_digest(list(_chunks(named, 2)), threads)


def array_digest(
    named: Iterable[tuple[str, np.ndarray]], version: int = ARRAY_DIGEST_VERSION, *, threads: int | None = None
) -> bytes:
    """The array digest of ``named`` under digest ``version`` (a ledger's ``GenesisEntry.digest_version``).

    Every digest user calls this one function with the version of the ledger it works on; the
    default is the version new ledgers use. Raises :class:`EncodingError` for an unknown version.
    """
    if check_version(version) == 1:
        return array_digest_v1(named)
    return array_digest_v2(named, threads=threads)


def stream_digest(
    data: bytes | bytearray | memoryview, version: int = ARRAY_DIGEST_VERSION, *, threads: int | None = None
) -> bytes:
    """The digest of an array stream's bytes (a blob's content address) under digest ``version``.

    Equal to :func:`array_digest` of the arrays the stream decodes to; it hashes the bytes as they
    are, without decoding them (so it is defined for any bytes).
    """
    view = memoryview(data).cast("B")
    if check_version(version) == 1:
        return hashlib.sha256(view).digest()
    return _tree_digest([view], threads)


def check_version(version: object) -> int:
    """``version`` when it is a known array digest version, else raise :class:`EncodingError`."""
    if type(version) is not int or version not in DIGEST_VERSIONS:
        raise EncodingError(f"unknown array digest version {version!r} (known: {', '.join(map(str, DIGEST_VERSIONS))})")
    return version


def default_threads() -> int:
    """Threads the v2 digest hashes on by default: the CPUs this process may run on.

    The CPUs in its affinity mask (Linux; else ``os.cpu_count()``), at most the CPU quota of its
    cgroup (v2 ``cpu.max``), so a container limited to 2 CPUs of a 16-core host uses 2 threads.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, _cgroup_cpus()))


@functools.lru_cache(maxsize=4)
def _cgroup_cpus(path: str = "/sys/fs/cgroup/cpu.max") -> int:
    """CPUs granted by the cgroup v2 quota (``cpu.max``: "QUOTA PERIOD" or "max PERIOD"), a large number if none."""
    try:
        with open(path, encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        return max(1, -(-int(quota) // int(period)))
    except (OSError, ValueError):  # no cgroup v2 file, "max" (no quota), or unreadable
        return 1 << 16


_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    with _pools_lock:
        pool = _pools.get(threads)
        if pool is None:
            pool = _pools[threads] = ThreadPoolExecutor(threads, thread_name_prefix="flower-chain-digest")
        return pool


def _forget_pools() -> None:
    """In a forked child the parent's pool threads do not exist: start new pools on first use."""
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def _leaf_segments(pieces: Sequence[bytes | memoryview], count: int) -> list[list[bytes | memoryview]]:
    """The stream's pieces cut into ``count`` chunks of :data:`CHUNK_SIZE` bytes (views, no copy)."""
    chunks: list[list[bytes | memoryview]] = [[] for _ in range(count)]
    index, room = 0, CHUNK_SIZE
    for piece in pieces:
        pos, size = 0, len(piece)
        while pos < size:
            take = min(room, size - pos)
            chunks[index].append(piece if take == size else memoryview(piece)[pos : pos + take])
            pos += take
            room -= take
            if room == 0:
                index, room = index + 1, CHUNK_SIZE
    return chunks


def _leaves(group: Sequence[list[bytes | memoryview]]) -> list[bytes]:
    out = []
    for segments in group:
        h = hashlib.sha256(LEAF_TAG)
        for s in segments:
            h.update(s)
        out.append(h.digest())
    return out


def _root(leaves: Sequence[bytes], lo: int, hi: int) -> bytes:
    """RFC 9162 shape: the left subtree holds the largest power of two below the leaf count."""
    if hi - lo == 1:
        return leaves[lo]
    k = 1 << ((hi - lo - 1).bit_length() - 1)
    return hashlib.sha256(NODE_TAG + _root(leaves, lo, lo + k) + _root(leaves, lo + k, hi)).digest()


def _tree_digest(pieces: Sequence[bytes | memoryview], threads: int | None) -> bytes:
    """Array digest v2 of the stream made of ``pieces`` (byte strings or byte views), in order."""
    total = sum(len(p) for p in pieces)
    if total <= CHUNK_SIZE:  # one chunk: exactly the v1 digest
        h = hashlib.sha256()
        for p in pieces:
            h.update(p)
        return h.digest()
    count = -(-total // CHUNK_SIZE)
    chunks = _leaf_segments(pieces, count)
    threads = default_threads() if threads is None else int(threads)
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    groups = min(count, threads * 4)
    if threads == 1 or groups == 1:
        return _root(_leaves(chunks), 0, count)
    bounds = [count * g // groups for g in range(groups + 1)]
    parts = _pool(threads).map(_leaves, [chunks[bounds[g] : bounds[g + 1]] for g in range(groups)])
    return _root([leaf for part in parts for leaf in part], 0, count)


def encode_arrays(named: Iterable[tuple[str, np.ndarray]], version: int = ARRAY_DIGEST_VERSION) -> bytes:
    """The array stream itself as digest ``version`` hashes it: the blob stored for a model.

    Its :func:`stream_digest` under the same version is the :func:`array_digest` of ``named``.
    """
    return b"".join(_chunks(named, check_version(version)))  # the views are contiguous: one copy, into the blob


_DTYPE_TEXT = re.compile(r"[<|][?a-zA-Z][0-9]{1,6}(\[[0-9a-z]{1,3}\])?")  # numpy dtype.str as _chunks writes it


def _stream_dtype(text: bytes) -> np.dtype:
    """The dtype an array stream names: a little-endian or byte-order-free ``dtype.str``, never object, never
    zero-sized (:class:`EncodingError` otherwise, whatever the bytes)."""
    try:
        s = text.decode("ascii")
        if not _DTYPE_TEXT.fullmatch(s):
            raise ValueError
        dtype = np.dtype(s)
    except (ValueError, TypeError):
        raise EncodingError(f"dtype {text[:40]!r} is not one an array stream holds") from None
    if dtype.hasobject or dtype.itemsize == 0 or dtype.str != s:
        raise EncodingError(f"dtype {s!r} is not one an array stream holds")
    return dtype


def decode_arrays(data: bytes) -> list[tuple[str, np.ndarray]]:
    """Parse an array stream back into (name, array) pairs; raise :class:`EncodingError` if malformed.

    Total: any bytes end in a list or in :class:`EncodingError` (names that are not UTF-8, dtypes outside
    what :func:`encode_arrays` writes, shapes whose size does not match the byte count, in Python integers).
    """
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
        try:
            name = bytes(take(_U32.unpack(take(4))[0])).decode("utf-8")
        except UnicodeDecodeError:
            raise EncodingError("an array name is not UTF-8") from None
        dtype = _stream_dtype(bytes(take(_U32.unpack(take(4))[0])))
        ndim = _U32.unpack(take(4))[0]
        if ndim > 64:  # numpy's limit
            raise EncodingError(f"array {name[:40]!r}: {ndim} dimensions")
        shape = tuple(_U64.unpack(take(8))[0] for _ in range(ndim))
        if any(d >= 2**62 for d in shape) or math.prod(d for d in shape if d) >= 2**62:  # numpy's intp bounds
            raise EncodingError(f"array {name[:40]!r}: shape {shape[:4]} is beyond any array")
        nbytes = _U64.unpack(take(8))[0]
        if nbytes != math.prod(shape) * dtype.itemsize:  # Python integers: no wrap-around
            raise EncodingError(f"array {name[:40]!r}: byte count does not match shape and dtype")
        out.append((name, np.frombuffer(bytes(take(nbytes)), dtype=dtype).reshape(shape)))
    if pos != len(mv):
        raise EncodingError("trailing bytes after the array stream")
    return out


def cast_like(
    named: Iterable[tuple[str, np.ndarray]], dtypes: Sequence[np.dtype | str]
) -> list[tuple[str, np.ndarray]]:
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
    return tuple(
        (str(n), a.shape, a.dtype.str)  # an ndarray's shape is a tuple of ints already
        if type(a) is np.ndarray
        else (str(n), tuple(int(d) for d in np.shape(a)), np.asarray(a).dtype.str)
        for n, a in named
    )


#: Arrays up to this many values are checked element-wise directly (the dot product's set-up costs more).
_SMALL = 1 << 14


def finite(a: np.ndarray) -> bool:
    """True when every value is finite.

    Fast path for large arrays: a NaN or inf makes the dot product a.a
    non-finite, and BLAS computes it in a fraction of isfinite's time; only
    when the dot product is not finite (a bad value, or an overflow of huge
    finite values) does the exact element-wise check decide.
    """
    a = np.asarray(a)
    if a.dtype.kind not in "fc":
        return True
    if a.size > _SMALL and a.dtype in (np.float32, np.float64):
        flat = a.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(np.dot(flat, flat)):
                return True
    return bool(np.isfinite(a).all())


def first_nonfinite(named: Iterable[tuple[str, np.ndarray]]) -> str | None:
    """The name of the first array holding a NaN or an infinity, or ``None``."""
    return next((str(n) for n, a in named if not finite(a)), None)

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

from flower_chain.ledger.arrays import ARRAY_DIGEST_VERSION, DIGEST_VERSIONS, array_digest

PREFIX = "flower-chain."
CTX_FEDERATION = PREFIX + "federation"
CTX_ROUND = PREFIX + "round"
CTX_PARENT = PREFIX + "parent"
CTX_BASE = PREFIX + "base"
CTX_DIGEST_VERSION = PREFIX + "digest-version"  # the ledger's array digest version (its genesis'): 1 or 2
CTX_SETTINGS = PREFIX + "settings"  # the genesis' config_digest (32 bytes): absent from servers before v2 statements
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
# (checkpoint-size and pending-round travel beside a v1 statement, unsigned; a v2 statement signs both)
LEGACY_PENDING_ROUND = PREFIX + "pending-round"
LEGACY_STATEMENT = PREFIX + "statement"
LEGACY_SIGNATURE = PREFIX + "signature"

NUM_EXAMPLES_KEYS = ("num-examples", "num_examples")


@dataclass(frozen=True)
class LedgerContext:
    """The ledger context a server sends with each instruction.

    ``digest_version`` is the array digest version of the server's ledger (its genesis'
    ``digest_version``, docs/ledger-format.md §6): the client digests the model it receives and the
    arrays it returns under it. A context without the field (a server older than the field) means
    :data:`~flower_chain.ledger.arrays.ARRAY_DIGEST_VERSION`, the version such servers judged with.

    ``settings_digest`` is the genesis' ``config_digest`` (the digest of the strategy's settings): a
    client signs it in a v2 statement. ``None``: a server older than v2 statements announced none (the
    client signs v1, unless it pins a settings digest: then it refuses).
    """

    federation_id: str
    round: int
    parent: bytes
    base_digest: bytes
    digest_version: int = ARRAY_DIGEST_VERSION
    settings_digest: bytes | None = None

    def to_config(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            CTX_FEDERATION: self.federation_id,
            CTX_ROUND: self.round,
            CTX_PARENT: self.parent,
            CTX_BASE: self.base_digest,
            CTX_DIGEST_VERSION: self.digest_version,
        }
        if self.settings_digest is not None:
            out[CTX_SETTINGS] = self.settings_digest
        return out

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LedgerContext | None:
        """The context of ``config`` (``None``: none sent); raises :class:`ValueError` when it is malformed."""
        got = parse_context(config)
        if isinstance(got, ContextProblem):
            raise ValueError(got.reason)
        return got


@dataclass(frozen=True)
class ContextProblem:
    """A ledger context a client cannot use: it does not sign the instruction (``reason`` says why).

    ``federation_id`` is the federation the context names (as text, possibly empty); ``field`` the
    context key at fault and ``value`` a short ``repr`` of what the server sent there.
    """

    federation_id: str
    field: str
    value: str
    reason: str


def parse_context(config: Mapping[str, Any]) -> LedgerContext | ContextProblem | None:
    """The ledger context of an instruction's config; never raises.

    ``None`` when there is none (a plain Flower server: the client does not sign); a
    :class:`ContextProblem` when a field is missing or of the wrong type, or the digest version is
    not one this code computes (an unknown version is never guessed: the client would sign digests
    the server's ledger cannot check), or the settings digest is present but not 32 bytes.
    """
    try:
        if CTX_FEDERATION not in config:
            return None
        fid = config[CTX_FEDERATION]
        fid_text = fid if isinstance(fid, str) else ""

        def problem(key: str, reason: str) -> ContextProblem:
            value = repr(config.get(key, None))
            return ContextProblem(fid_text, key, value[:60] + ("..." if len(value) > 60 else ""), reason)

        if not isinstance(fid, str):
            return problem(CTX_FEDERATION, "the federation id is not text")
        rnd = config.get(CTX_ROUND)
        if type(rnd) is not int:
            return problem(CTX_ROUND, "the round is missing or not an integer")
        parent, base = config.get(CTX_PARENT), config.get(CTX_BASE, b"")
        if not isinstance(parent, bytes) or not isinstance(base, bytes):
            return problem(
                CTX_PARENT if not isinstance(parent, bytes) else CTX_BASE, "the ledger head or base digest is not bytes"
            )
        version = config.get(CTX_DIGEST_VERSION, ARRAY_DIGEST_VERSION)
        if type(version) is not int or version not in DIGEST_VERSIONS:
            known = ", ".join(map(str, DIGEST_VERSIONS))
            return problem(CTX_DIGEST_VERSION, f"not an array digest version this client computes (known: {known})")
        settings = config.get(CTX_SETTINGS)
        if settings is not None and (type(settings) is not bytes or len(settings) != 32):
            return problem(CTX_SETTINGS, "the settings digest is not 32 bytes")
        return LedgerContext(fid, rnd, parent, base, version, settings)
    except Exception as e:  # noqa: BLE001 - a hostile config mapping (its own __contains__/get raising) is a problem
        return ContextProblem("", CTX_FEDERATION, "", f"the config does not read ({type(e).__name__})")


#: Largest NPY header accepted (numpy writes at most a few hundred bytes for any sane array).
MAX_NPY_HEADER = 4096
#: dtype kinds a model array may have: bool, signed/unsigned int, float, complex.
NUMERIC_KINDS = "biufc"


@functools.lru_cache(maxsize=1024)
def _npy_header(header: bytes) -> tuple[tuple[int, ...], bool, np.dtype] | str:
    """(shape, fortran order, dtype) of an NPY preamble (magic, version, length, header dict), or why not."""
    fp = io.BytesIO(header)
    try:
        version = npy.read_magic(fp)
        if version not in ((1, 0), (2, 0)):
            return f"NPY version {version[0]}.{version[1]} (only 1.0 and 2.0)"
        read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran, dtype = read(fp)
    except Exception as e:  # noqa: BLE001 - numpy raises ValueError, SyntaxError, TypeError, ... on bad headers
        return f"NPY header does not parse ({type(e).__name__})"
    if fp.tell() != len(header):
        return "NPY header length does not match its content"
    if (
        not isinstance(dtype, np.dtype)
        or dtype.kind not in NUMERIC_KINDS
        or dtype.fields is not None
        or dtype.subdtype is not None
        or dtype.itemsize == 0
    ):
        return f"dtype {str(dtype)[:40]!r} is not a plain numeric dtype"
    if not isinstance(shape, tuple) or not all(type(d) is int and d >= 0 for d in shape):
        return "shape has a negative or non-integer dimension"
    return tuple(shape), bool(fortran), dtype


MAX_DIMENSION = 2**62
"""Largest NPY dimension accepted (numpy's own limit is below 2**63)."""


def parse_npy(data: object) -> np.ndarray | str:
    """A read-only ndarray viewing NPY bytes exactly as ``np.load`` reads them, or why they are not valid NPY.

    Never raises. The whole buffer is validated: magic, version (1.0 or 2.0),
    header dict (parsed by numpy's own header reader, so ``np.load`` and this
    agree on shape, order and dtype), a plain numeric dtype, non-negative
    dimensions, and a payload of exactly ``prod(shape) * itemsize`` bytes.
    Each distinct header is parsed once (cached); the payload is viewed in
    place, not copied.
    """
    if not isinstance(data, bytes):
        return "array data is not bytes"
    if len(data) < 10 or data[:6] != b"\x93NUMPY":
        return "not NPY data (no NPY magic)"
    wide = data[6] >= 2  # NPY 2.0+ has a 4-byte header length
    if wide and len(data) < 12:
        return "truncated NPY preamble"
    size = 12 + int.from_bytes(data[8:12], "little") if wide else 10 + int.from_bytes(data[8:10], "little")
    if size > MAX_NPY_HEADER or size > len(data):
        return "NPY header longer than the data or than 4 KiB"
    parsed = _npy_header(data[:size])
    if isinstance(parsed, str):
        return parsed
    shape, fortran, dtype = parsed
    count = 1
    for d in shape:  # Python ints: no overflow, whatever the header claims
        if d > MAX_DIMENSION:  # numpy cannot make such an array, even an empty one (a zero elsewhere)
            return f"shape {shape} has a dimension over {MAX_DIMENSION}"
        count *= d
    if count * dtype.itemsize != len(data) - size:
        return f"NPY payload is {len(data) - size} bytes, shape {shape} of {dtype.str} needs {count * dtype.itemsize}"
    try:
        flat = np.frombuffer(data, dtype=dtype, count=count, offset=size)
        return flat.reshape(shape, order="F" if fortran else "C")
    except (ValueError, TypeError, MemoryError) as e:  # never raises: whatever numpy refuses is a reason
        return f"numpy cannot view shape {shape} of {dtype.str}: {e}"


def ndarray_view(array: Any) -> np.ndarray:
    """A read-only ndarray over a Flower ``Array``'s NPY bytes, without copying them.

    Raises :class:`ValueError` when the array is not valid NPY
    (:func:`parse_npy` says why); replies from the network go through
    :func:`parse_npy` directly and never raise.
    """
    if getattr(array, "stype", None) != "numpy.ndarray":
        raise ValueError(f"array serialization {getattr(array, 'stype', None)!r} is not numpy.ndarray")
    got = parse_npy(getattr(array, "data", None))
    if isinstance(got, str):
        raise ValueError(got)
    return got


def arrays_of(record: Any) -> list[tuple[str, np.ndarray]]:
    """(name, ndarray) pairs of a Flower ArrayRecord, in its order (zero-copy views where possible)."""
    return [(str(k), ndarray_view(v)) for k, v in record.items()]


def record_digest(record: Any, version: int = ARRAY_DIGEST_VERSION) -> bytes:
    """The canonical array digest of a Flower ArrayRecord under digest ``version``.

    Pass the version of the ledger the digest is for (a context's ``digest_version``, a genesis'); the
    default is the version new ledgers use.
    """
    return array_digest(arrays_of(record), version)


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


#: A client's C2SP cosignature/v1 line (without its newline) of the checkpoint it verified: clients as witnesses.
COSIGNATURE = "cosignature"
LEGACY_COSIGNATURE = PREFIX + "cosignature"
LEGACY_LOSS = PREFIX + "loss"  # a legacy EvaluateRes.loss, signed with the metrics (not a metric of the app's)
#: The legacy ``FitRes``/``EvaluateRes`` metrics key of each ``flower-chain`` record field.
LEGACY_FIELDS = {
    STATEMENT: LEGACY_STATEMENT,
    SIGNATURE: LEGACY_SIGNATURE,
    SEEN_SIZE: LEGACY_SEEN_SIZE,
    PENDING_ROUND: LEGACY_PENDING_ROUND,
    COSIGNATURE: LEGACY_COSIGNATURE,
}

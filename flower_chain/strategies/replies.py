"""The total reply parser: every byte a client sends, read once, by code that never raises.

A Flower reply (Message API ``Message`` or legacy ``FitRes``/``EvaluateRes``)
becomes a :class:`~flower_chain.strategies.judge.Reply`: either parsed (the
signed statement, the arrays as validated NPY views, the metrics as plain
bounded values, num-examples) or carrying ``malformed`` — the precise reason
it could not be parsed, which becomes its verdict on the ledger. What the
protocol allows, and nothing else:

* train: exactly one ArrayRecord of NPY arrays, exactly one MetricRecord,
  and the ``flower-chain`` ConfigRecord; evaluate: the same without arrays;
* NPY validated in full (:func:`flower_chain.wire.parse_npy`); array names
  at most 256 characters; at most ``max_array_bytes`` of array data and at
  most ``max_arrays`` arrays (by default what that many bytes could hold);
* metrics: at most 256, names of at most 256 characters, values int (signed
  64-bit), float, or lists of those (at most 4,096), legacy also bool, short
  text and bytes; num-examples a positive integer (an integral float is read
  as one);
* the ``flower-chain`` record: ``statement`` bytes (≤ 4 KiB), ``signature``
  bytes (≤ 64), ``checkpoint-size`` and ``pending-round`` small ints, and
  optionally the client's ``cosignature`` of the checkpoint (one line). The two
  ints travel unsigned beside a v1 statement; a v2 statement signs them and
  the server never reads these fields then (:func:`~flower_chain.strategies.judge.node_fields`).

The work is bounded before it is done: the count of arrays, their total size, the count of metrics
and of metric list values, and the total length of their names are checked on the record's sizes
before a single array or value is parsed (a reply of thousands of tiny arrays or of a huge metric map
is ``malformed`` for the price of a ``len``).

The arrays handed on are the very views the checks read (``np.load`` reads
the same bytes the same way; :func:`~flower_chain.wire.parse_npy` uses
numpy's own header reader), so what was judged is what is aggregated.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord

from flower_chain.ledger.encoding import encode
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.policy import MAX_SIGNATURE, MAX_STATEMENT
from flower_chain.ledger.text import safe_text
from flower_chain.strategies.judge import Reply
from flower_chain.wire import (
    COSIGNATURE,
    NUM_EXAMPLES_KEYS,
    PENDING_ROUND,
    SEEN_SIZE,
    SIG_RECORD,
    SIGNATURE,
    STATEMENT,
    parse_npy,
)

MAX_METRICS = 256
MAX_NAME = 256
MAX_LIST = 4096
MAX_TEXT = 1024
MAX_ARRAYS = 100_000
MAX_COSIGNATURE = 512
MAX_RECORDS = 3
"""Records a reply holds: the ArrayRecord (train), the MetricRecord and the ``flower-chain`` ConfigRecord."""
_SIG_FIELDS = frozenset({STATEMENT, SIGNATURE, SEEN_SIZE, PENDING_ROUND, COSIGNATURE})
"""The fields the ``flower-chain`` ConfigRecord may hold."""
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")  # terminal colours in Flower/Ray error texts
MAX_METRICS_BYTES = 16 * 1024
MAX_METRIC_VALUES = MAX_METRICS_BYTES // 9
"""Most metric list values in all: each encodes in 9 bytes, so more could never fit :data:`MAX_METRICS_BYTES`."""
MIN_NPY_BYTES = 32
"""No valid NPY array is shorter (magic, version, length and the smallest header dict numpy reads)."""
INT64 = (-(2**63), 2**63 - 1)
#: Names of the records a judged reply is handed on with (the aggregation replay uses the same).
ARRAYS_RECORD = "arrays"
METRICS_RECORD = "metrics"


class Malformed(Exception):
    """Internal: why a reply does not parse (turned into a ``malformed`` verdict, never propagated)."""


class _MetricName:
    """``metric '<name>'`` in an error message, made printable (escaped, bounded) only when one is raised."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __format__(self, spec: str) -> str:
        return format(f"metric {safe_text(self.name, 40)!r}", spec)


def _int(value: Any, what: str, lo: int = INT64[0], hi: int = INT64[1]) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise Malformed(f"{what} is a {type(value).__name__}, not an integer")
    v = int(value)
    if not lo <= v <= hi:
        raise Malformed(f"{what} {safe_text(v, 30)} is outside [{lo}, {hi}]")
    return v


def _scalar(value: Any, what: str, legacy: bool) -> Any:
    if isinstance(value, (bool, np.bool_)):
        if legacy:
            return bool(value)
        raise Malformed(f"{what} is a bool")
    if isinstance(value, (int, np.integer)):
        return _int(value, what)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if legacy and isinstance(value, str):
        if len(value) > MAX_TEXT or not _utf8(value):
            raise Malformed(f"{what} is not UTF-8 text of at most {MAX_TEXT} characters")
        return value
    if legacy and isinstance(value, bytes):
        if len(value) > MAX_TEXT:
            raise Malformed(f"{what} is {len(value)} bytes (at most {MAX_TEXT})")
        return bytes(value)
    raise Malformed(f"{what} has type {type(value).__name__}")


def _utf8(text: str) -> bool:
    """Whether text encodes as UTF-8 (a lone surrogate does not: the canonical encoding would refuse it)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_metrics(items: Iterable[tuple[Any, Any]], *, legacy: bool = False) -> dict[str, Any]:
    """Metrics as plain bounded Python values (what the client digested), or :class:`Malformed`.

    Bounded in all: at most :data:`MAX_METRICS_BYTES` once encoded, so every entry fits a C2SP
    entry bundle (65,535 bytes) and no reply, signed or not, can bloat the ledger.
    """
    out = _parse_metrics(items, legacy)
    try:
        size = len(encode(out))
    except LedgerError as e:
        raise Malformed(f"metrics do not encode: {safe_text(e, 100)}") from None
    if size > MAX_METRICS_BYTES:
        raise Malformed(f"metrics take {size} bytes encoded (at most {MAX_METRICS_BYTES})")
    return out


def _metric_sizes(items: Iterable[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """The metric pairs, after their counts and sizes alone were checked (before any value is read)."""
    if isinstance(items, (Mapping, type({}.items()))) and len(items) > MAX_METRICS:
        raise Malformed(f"more than {MAX_METRICS} metrics")
    pairs, values, name_chars = [], 0, 0
    for k, v in items:
        if len(pairs) >= MAX_METRICS:
            raise Malformed(f"more than {MAX_METRICS} metrics")
        name_chars += len(k) if isinstance(k, str) else 0
        values += len(v) if isinstance(v, (list, tuple)) else 1
        if values > MAX_METRIC_VALUES or name_chars > MAX_METRICS_BYTES:
            raise Malformed(
                f"metrics hold more than {MAX_METRIC_VALUES} values or {MAX_METRICS_BYTES} characters "
                f"of names: they cannot encode in {MAX_METRICS_BYTES} bytes"
            )
        pairs.append((k, v))
    return pairs


def _parse_metrics(items: Iterable[tuple[Any, Any]], legacy: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in _metric_sizes(items):
        if not isinstance(k, str) or len(k) > MAX_NAME or not _utf8(k):
            raise Malformed(f"metric name {safe_text(k, 40)!r} is not UTF-8 text of at most {MAX_NAME} characters")
        what = _MetricName(k)  # the error text is built only for a malformed reply
        if isinstance(v, (list, tuple)):
            if len(v) > MAX_LIST:
                raise Malformed(f"{what} is a list of {len(v)} values (at most {MAX_LIST})")
            out[k] = [_scalar(x, what, False) for x in v]
        else:
            out[k] = _scalar(v, what, legacy)
    return out


def num_examples_in(metrics: Mapping[str, Any]) -> int:
    """The positive example count a reply's metrics carry (-1 when absent), or :class:`Malformed`.

    Read from the same keys, in the same order, as the client that signed it
    (:func:`flower_chain.wire.num_examples_of`): one definition of the signed count.
    """
    for k in NUM_EXAMPLES_KEYS:
        if k in metrics:
            v = metrics[k]
            if isinstance(v, float):
                if not math.isfinite(v) or not v.is_integer():
                    raise Malformed(f"num-examples {safe_text(v, 30)} is not a whole number")
                v = int(v)
            return _int(v, "num-examples", 1)
    return -1


def check_weight(metrics: Mapping[str, Any], key: str | None) -> None:
    """The metric the wrapped strategy weighs replies by (``weighted_by_key``) must be a positive finite number."""
    if not key:
        return
    v = metrics.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise Malformed(
            f"metric {safe_text(key, 40)!r}, which the strategy weighs replies by, is "
            f"{'missing' if v is None else 'not a positive finite number'}"
        )


def _sig_fields(get, statement_key: str, signature_key: str, seen_key: str, pending_key: str):
    statement, signature = get(statement_key), get(signature_key)
    if statement is not None and (not isinstance(statement, bytes) or len(statement) > MAX_STATEMENT):
        raise Malformed(f"statement is not bytes of at most {MAX_STATEMENT}")
    if signature is not None and (not isinstance(signature, bytes) or len(signature) > MAX_SIGNATURE):
        raise Malformed(f"signature is not bytes of at most {MAX_SIGNATURE}")
    seen, pending = get(seen_key), get(pending_key)
    seen = -1 if seen is None else _int(seen, "checkpoint-size", -1, 2**62)
    pending = -1 if pending is None else _int(pending, "pending-round", -1, 2**31)
    return statement, signature, seen, pending


def _cosignature(value: Any) -> str | None:
    """A client's cosignature line of the checkpoint it was sent (checked when it is recorded), or None."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_COSIGNATURE or "\n" in value or not _utf8(value):
        raise Malformed(f"cosignature is not one line of text of at most {MAX_COSIGNATURE} characters")
    return value


def default_max_arrays(max_bytes: int) -> int:
    """Most arrays ``max_bytes`` of array data can hold (each valid NPY array takes :data:`MIN_NPY_BYTES`)."""
    return max(1, min(MAX_ARRAYS, int(max_bytes) // MIN_NPY_BYTES))


def parse_arrays(
    items: Iterable[tuple[Any, Any]], max_bytes: int, max_arrays: int | None = None
) -> list[tuple[str, np.ndarray]]:
    """(name, validated NPY view) of each array, or :class:`Malformed`.

    The count (at most ``max_arrays``, default :func:`default_max_arrays`) and the total size (at most
    ``max_bytes``) of the arrays are checked first, on their lengths alone; only then is any array parsed.
    """
    limit = default_max_arrays(max_bytes) if max_arrays is None else int(max_arrays)
    if isinstance(items, (Mapping, type({}.items()))) and len(items) > limit:
        raise Malformed(f"more than {limit} arrays (the global model has fewer)")
    pairs, total = [], 0
    for name, arr in items:
        if len(pairs) >= limit:
            raise Malformed(f"more than {limit} arrays (the global model has fewer)")
        data = getattr(arr, "data", None)
        total += len(data) if isinstance(data, bytes) else 0
        if total > max_bytes:
            raise Malformed(f"more than {max_bytes} bytes of arrays (the global model is far smaller)")
        pairs.append((name, arr, data))
    out = []
    for name, arr, data in pairs:
        if not isinstance(name, str) or len(name) > MAX_NAME or not _utf8(name):
            raise Malformed(f"array name {safe_text(name, 40)!r} is not UTF-8 text of at most {MAX_NAME} characters")
        if getattr(arr, "stype", None) != "numpy.ndarray":
            raise Malformed(
                f"array {safe_text(name, 40)!r} is serialized as "
                f"{safe_text(getattr(arr, 'stype', None), 40)!r}, not numpy.ndarray"
            )
        view = parse_npy(data)
        if isinstance(view, str):
            raise Malformed(f"array {safe_text(name, 40)!r}: {view}")
        out.append((name, view))
    return out


def from_message(
    msg: Any, kind: str, *, max_array_bytes: int, weight_key: str | None = None, max_arrays: int | None = None
) -> Reply:
    """Parse a Message-API reply; never raises. ``kind`` is ``train`` or ``evaluate``; ``max_arrays``: the
    global model's array count where known (default: :func:`default_max_arrays` of ``max_array_bytes``)."""
    try:
        node = int(msg.metadata.src_node_id)
    except Exception:  # noqa: BLE001 - metadata from the runtime; a broken one is still a verdict
        node = 0
    try:
        if msg.has_error():
            err = msg.error
            reason = _ANSI.sub("", str(getattr(err, "reason", "")))
            return Reply(node_id=node, error=safe_text(f"{getattr(err, 'code', '?')}: {reason[-600:]}", 400))
        return _parse_message(node, msg.content, kind, max_array_bytes, weight_key, max_arrays)
    except Malformed as e:
        return Reply(node_id=node, malformed=str(e))
    except Exception as e:  # noqa: BLE001 - the boundary: whatever a reply does, it gets a verdict
        return Reply(node_id=node, malformed=f"reply does not parse: {type(e).__name__}: {safe_text(e, 200)}")


def _parse_message(
    node: int, content: Any, kind: str, max_array_bytes: int, weight_key: str | None, max_arrays: int | None
) -> Reply:
    if len(content) > MAX_RECORDS:
        raise Malformed(f"the reply holds {len(content)} records (a reply has at most 3)")
    arrays_recs, metric_recs, sig, other = [], [], None, []
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            arrays_recs.append(record)
        elif isinstance(record, MetricRecord):
            metric_recs.append(record)
        elif isinstance(record, ConfigRecord) and name == SIG_RECORD and sig is None:
            sig = record
        else:
            other.append(safe_text(name, 40))
    want_arrays = 1 if kind == "train" else 0
    if other or len(arrays_recs) != want_arrays or len(metric_recs) != 1:
        raise Malformed(
            f"the reply holds {len(arrays_recs)} ArrayRecord(s), {len(metric_recs)} MetricRecord(s)"
            f"{' and ' + ', '.join(other) if other else ''}; a {kind} reply has exactly "
            f"{want_arrays} ArrayRecord, 1 MetricRecord and the {SIG_RECORD!r} ConfigRecord"
        )
    statement = signature = cosignature = None
    seen = pending = -1
    if sig is not None:
        if len(sig) > len(_SIG_FIELDS):
            raise Malformed(f"the {SIG_RECORD!r} record holds {len(sig)} fields (at most {len(_SIG_FIELDS)})")
        fields = dict(sig.items())  # a plain dict: one copy of at most 5 items, then plain lookups
        if not fields.keys() <= _SIG_FIELDS:
            extra = [safe_text(k, 40) for k in fields if k not in _SIG_FIELDS]
            raise Malformed(f"unexpected fields {extra} in the {SIG_RECORD!r} record")
        statement, signature, seen, pending = _sig_fields(fields.get, STATEMENT, SIGNATURE, SEEN_SIZE, PENDING_ROUND)
        cosignature = _cosignature(fields.get(COSIGNATURE))
    metrics = parse_metrics(metric_recs[0].items())
    n = num_examples_in(metrics)
    check_weight(metrics, weight_key)
    arrays = parse_arrays(arrays_recs[0].items(), max_array_bytes, max_arrays) if arrays_recs else None
    return Reply(
        node_id=node,
        statement=statement,
        signature=signature,
        arrays=arrays,
        metrics=metrics,
        num_examples=n,
        seen_size=seen,
        pending_round=pending,
        cosignature=cosignature,
        records=(arrays_recs[0] if arrays_recs else None, metric_recs[0]),
    )

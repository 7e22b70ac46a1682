"""Mutations of a valid signed reply (records, array bytes and NPY headers, metadata, metric types and values,
statement and signature bytes): the reply fuzzer's moves, shared by ``tests/adversarial`` and ``bench/bench_fuzz.py``."""

from __future__ import annotations

import io
import struct

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord
from hypothesis import strategies as st

from flower_chain.wire import PENDING_ROUND, SEEN_SIZE, SIG_RECORD, SIGNATURE, STATEMENT
from tests.support.fl_helpers import arrays, signed_train_reply


def npy(a: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, a, allow_pickle=False)
    return b.getvalue()


def raw_set(record, key, value) -> None:
    """Put ``value`` into a Flower record without Flower's type checks (what a hostile wire decoder may yield)."""
    record.__dict__["_data"][key] = value


def raw_array(data: bytes, stype: str = "numpy.ndarray") -> Array:
    arr = Array(dtype="float32", shape=(8, 4), stype=stype, data=b"")
    arr.__dict__["data"] = data
    return arr


def header_variant(kind: str) -> bytes:
    """NPY bytes with a hostile header (the findings of the review, and their relatives)."""
    good = npy(np.ones((8, 4), np.float32))
    base = good[:10]
    body = {
        "negative-dim": "{'descr': '<f4', 'fortran_order': False, 'shape': (-8, 4), }",
        "overflow": "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }",
        "zero-width": "{'descr': '|V0', 'fortran_order': False, 'shape': (8, 4), }",
        "object": "{'descr': '|O', 'fortran_order': False, 'shape': (8, 4), }",
        "float128": "{'descr': '<f16', 'fortran_order': False, 'shape': (8, 4), }",
        "big-endian": "{'descr': '>f4', 'fortran_order': False, 'shape': (8, 4), }",
        "fortran": "{'descr': '<f4', 'fortran_order': True, 'shape': (8, 4), }",
        "not-a-dict": "[1, 2, 3]",
        "call": "__import__('os').system('true')",
        "float-dim": "{'descr': '<f4', 'fortran_order': False, 'shape': (8.0, 4), }",
        "structured": "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (8, 4), }",
    }[kind]
    h = body.encode("latin1")
    h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    payload = good[len(good) - 128 :]
    return base[:8] + struct.pack("<H", len(h)) + h + payload


@st.composite
def mutation(draw):
    kind = draw(
        st.sampled_from(
            [
                "npy-truncate",
                "npy-extend",
                "npy-header",
                "npy-random",
                "npy-version",
                "npy-hlen",
                "stype",
                "extra-metric-record",
                "extra-config-record",
                "extra-array-record",
                "drop-arrays",
                "drop-metrics",
                "drop-sig",
                "num-examples",
                "metric-value",
                "metric-name",
                "metric-count",
                "statement",
                "signature",
                "sig-extra",
                "seen-size",
                "array-name",
                "node-id",
                "array-count",
                "nan",
                "wrong-dtype-signed",
                "legit",
            ]
        )
    )
    detail = {
        "npy-truncate": st.integers(0, 255),
        "npy-extend": st.binary(min_size=1, max_size=16),
        "npy-header": st.sampled_from(
            [
                "negative-dim",
                "overflow",
                "zero-width",
                "object",
                "float128",
                "big-endian",
                "fortran",
                "not-a-dict",
                "call",
                "float-dim",
                "structured",
            ]
        ),
        "npy-random": st.binary(max_size=300),
        "npy-version": st.integers(0, 255),
        "npy-hlen": st.integers(0, 65535),
        "stype": st.sampled_from(["", "torch.Tensor", "numpy.ndarray ", "pickle"]),
        "num-examples": st.sampled_from([float("inf"), float("nan"), -5, 0, 2**63, 2**64 - 1, 1.5, "10", None, [1]]),
        "metric-value": st.sampled_from(
            [
                2**63,
                2**64 - 1,
                -(2**63) - 1,
                float("inf"),
                "text",
                b"bytes",
                None,
                [2**70],
                list(range(5000)),
                {"a": 1},
                True,
            ]
        ),
        "metric-name": st.sampled_from(["x" * 300, "", "\n$x^2$\u202e", 7]),
        "statement": st.tuples(st.integers(0, 400), st.binary(max_size=8)),
        "signature": st.binary(max_size=80),
        "sig-extra": st.sampled_from(["extra", "checkpoint-size"]),
        "seen-size": st.sampled_from([-7, 2**63, "1", 1.5, b"x"]),
        "array-name": st.sampled_from(["w2", "x" * 300, ""]),
        "node-id": st.sampled_from([0, 2**64 - 1]),
        "array-count": st.integers(0, 3),
    }.get(kind, st.just(None))
    return kind, draw(detail)


def mutate(msg, key, kind, detail):
    """A reply to ``msg`` signed by ``key``, then mutated in transit (or by its keyless sender)."""
    out = arrays(99)
    if kind == "wrong-dtype-signed":  # a key holder returning float64 / float128 arrays, validly signed
        dt = np.float64 if detail is None else np.longdouble
        out = ArrayRecord({k: Array(v.numpy().astype(dt)) for k, v in out.items()})
    if kind == "nan":
        w = out["w"].numpy().copy()
        w[0, 0] = np.nan
        out["w"] = Array(w)
    reply = signed_train_reply(msg, key, out, 10)
    c = reply.content
    w = c["arrays"]["w"]
    if kind == "npy-truncate":
        raw_set(c["arrays"], "w", raw_array(w.data[: detail % len(w.data)]))
    elif kind == "npy-extend":
        raw_set(c["arrays"], "w", raw_array(w.data + detail))
    elif kind == "npy-header":
        raw_set(c["arrays"], "w", raw_array(header_variant(detail)))
    elif kind == "npy-random":
        raw_set(c["arrays"], "w", raw_array(b"\x93NUMPY" + detail))
    elif kind == "npy-version":
        raw_set(c["arrays"], "w", raw_array(w.data[:6] + bytes([detail]) + w.data[7:]))
    elif kind == "npy-hlen":
        raw_set(c["arrays"], "w", raw_array(w.data[:8] + struct.pack("<H", detail) + w.data[10:]))
    elif kind == "stype":
        raw_set(c["arrays"], "w", raw_array(w.data, detail))
    elif kind == "extra-metric-record":
        c["extra"] = MetricRecord({})
    elif kind == "extra-config-record":
        c["cfg"] = ConfigRecord({"a": 1})
    elif kind == "extra-array-record":
        c["more"] = arrays(3)
    elif kind == "drop-arrays":
        del c["arrays"]
    elif kind == "drop-metrics":
        del c["metrics"]
    elif kind == "drop-sig":
        del c[SIG_RECORD]
    elif kind == "num-examples":
        raw_set(c["metrics"], "num-examples", detail)
    elif kind == "metric-value":
        raw_set(c["metrics"], "extra", detail)
    elif kind == "metric-name":
        raw_set(c["metrics"], detail, 1.0)
    elif kind == "metric-count":
        for i in range(300):
            raw_set(c["metrics"], f"m{i}", float(i))
    elif kind == "statement":
        cut, tail = detail
        raw_set(c[SIG_RECORD], STATEMENT, c[SIG_RECORD][STATEMENT][:cut] + tail)
    elif kind == "signature":
        raw_set(c[SIG_RECORD], SIGNATURE, detail)
    elif kind == "sig-extra":
        raw_set(c[SIG_RECORD], "extra" if detail == "extra" else SEEN_SIZE, "x" if detail == "extra" else 2**70)
    elif kind == "seen-size":
        raw_set(c[SIG_RECORD], PENDING_ROUND, detail)
    elif kind == "array-name":
        arr = c["arrays"]
        raw_set(arr, detail, arr["w"])
        del arr["w"]
    elif kind == "node-id":
        reply.metadata.__dict__["_src_node_id"] = detail
    elif kind == "array-count":
        arr = c["arrays"]
        for name in list(arr.keys())[detail:]:
            del arr[name]
    return reply

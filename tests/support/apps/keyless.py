"""A client mod for nodes that hold no key and send hostile replies (tests/test_keyless_e2e.py).

Nodes with ``partition-id`` below ``HONEST`` pass through to the next mod (the signing mod); the others
never call it: each round they answer with one of the malformed kinds an independent review found to
crash or mislead the server, chosen by partition and round so that every kind is sent.
"""

import io
import struct

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

HONEST = 2
KINDS = ["magic-only", "short-payload", "overflow-shape", "zero-width", "negative-dim", "statement-type",
         "inf-examples", "huge-metric", "extra-metric-record", "float128"]


def _npy(a) -> bytes:
    b = io.BytesIO()
    np.save(b, a)
    return b.getvalue()


def _header(shape: str, descr: str = "<f4") -> bytes:
    h = ("{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape)).encode()
    h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h


def _raw(data: bytes, like) -> Array:
    return Array(dtype=str(like.dtype), shape=tuple(like.shape), stype="numpy.ndarray", data=data)


def hostile_reply(msg: Message, kind: str) -> Message:
    arrays = msg.content["arrays"].to_numpy_ndarrays()
    w, b = arrays[0], arrays[1]
    good_w = _npy(w + 1)
    data = {
        "magic-only": b"\x93NUMPY",
        "short-payload": good_w[:-7],
        "overflow-shape": _header("(4294967296, 4294967296, 16)") + good_w[128:],
        "zero-width": _header(str(tuple(w.shape)), "|V0"),
        "negative-dim": _header("(-%d, %d)" % w.shape) + good_w[128:],
    }.get(kind, good_w)
    record = ArrayRecord({"0": _raw(data, w), "1": Array(b + 1)})
    metrics = {"num-examples": 100}
    if kind == "float128":
        record = ArrayRecord({"0": Array((w + 1).astype(np.longdouble)), "1": Array((b + 1).astype(np.longdouble))})
    if kind == "huge-metric":
        metrics["big"] = 2**63 + 5
    if kind == "inf-examples":
        metrics["num-examples"] = float("inf")
    content = RecordDict({"arrays": record, "metrics": MetricRecord(metrics)})
    if kind == "extra-metric-record":
        content["more"] = MetricRecord({})
    if kind == "statement-type":
        content["flower-chain"] = ConfigRecord({"statement": 5, "signature": "not bytes"})
    return Message(content=content, reply_to=msg)


def keyless_attack(msg: Message, context: Context, call_next) -> Message:
    pid = int(context.node_config["partition-id"])
    if pid < HONEST or msg.metadata.message_type.split(".")[0] != "train":
        return call_next(msg, context)
    rnd = int(msg.content["config"]["flower-chain.round"])
    slots = int(context.node_config["num-partitions"]) - HONEST
    return hostile_reply(msg, KINDS[((pid - HONEST) + slots * (rnd - 1)) % len(KINDS)])

"""Keyless judging cost (issue 19, item 12): a reply's counts and sizes are bounded before it is parsed.

Replies of thousands of tiny arrays or of huge metric maps used to be parsed value by value (and array by
array) before a bound refused them: 59-227x an honest reply's cost per MB, for anyone, no key needed.
Counted, not timed: the number of arrays parsed (``parse_npy`` calls) and of metric values read
(``_scalar`` calls) before the ``malformed`` verdict is zero.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.common import Code, FitRes, Parameters, Status, ndarray_to_bytes

from flower_chain.strategies import legacy_replies, replies
from flower_chain.wire import SIG_RECORD, SIGNATURE, STATEMENT

MODEL_BUDGET = 32 * 4 * 4 + 4096 * 3  # what the judge allows a 2-array model of 4x8 and 4 float32 values


class Counter:
    """Wraps a function of :mod:`flower_chain.strategies.replies` and counts its calls."""

    def __init__(self, monkeypatch, name: str) -> None:
        self.calls = 0
        inner = getattr(replies, name)

        def counted(*args, **kwargs):
            self.calls += 1
            return inner(*args, **kwargs)

        monkeypatch.setattr(replies, name, counted)


def message(arrays: dict | None, metrics: dict, extra_records: int = 0):
    content = RecordDict(
        {"metrics": MetricRecord(metrics), SIG_RECORD: ConfigRecord({STATEMENT: b"s", SIGNATURE: b"x" * 64})}
    )
    if arrays is not None:
        content["arrays"] = ArrayRecord(arrays)
    for i in range(extra_records):
        content[f"extra-{i}"] = ConfigRecord({})
    return SimpleNamespace(metadata=SimpleNamespace(src_node_id=7), has_error=lambda: False, content=content)


def tiny(n: int) -> dict:
    one = Array(np.zeros(1, dtype=np.float32))
    return {f"a{i}": one for i in range(n)}


@pytest.mark.parametrize("count, limit", [(5_000, None), (3, 2), (100_000, None)])
def test_thousands_of_tiny_arrays_are_refused_before_one_is_parsed(monkeypatch, count, limit):
    parsed = Counter(monkeypatch, "parse_npy")
    msg = message(tiny(count), {"num-examples": 10})
    reply = replies.from_message(msg, "train", max_array_bytes=MODEL_BUDGET, max_arrays=limit)
    assert reply.malformed is not None and "arrays" in reply.malformed
    assert parsed.calls == 0


def test_a_legacy_reply_of_thousands_of_tensors_is_refused_before_one_is_parsed(monkeypatch):
    parsed = Counter(monkeypatch, "parse_npy")
    tensor = ndarray_to_bytes(np.zeros(1, dtype=np.float32))
    res = FitRes(Status(Code.OK, ""), Parameters([tensor] * 5_000, "numpy.ndarray"), 10, {})
    reply = legacy_replies.from_legacy(7, res, "train", max_array_bytes=MODEL_BUDGET)
    assert reply.malformed is not None and "arrays" in reply.malformed
    assert parsed.calls == 0


@pytest.mark.parametrize(
    "metrics",
    [
        {f"m{i}": 0.5 for i in range(300)},  # more metrics than allowed
        {f"m{i}": [0.5] * 4096 for i in range(10)},  # lists that could never encode in 16 KiB
        {"x" * 256 + str(i): 1 for i in range(100)},  # names that could never encode in 16 KiB
    ],
)
def test_a_huge_metric_map_is_refused_before_one_value_is_read(monkeypatch, metrics):
    read = Counter(monkeypatch, "_scalar")
    reply = replies.from_message(
        message(None, {**metrics, "num-examples": 10}), "evaluate", max_array_bytes=MODEL_BUDGET
    )
    assert reply.malformed is not None and "metric" in reply.malformed
    assert read.calls == 0


def test_a_reply_of_many_records_is_refused_on_its_count(monkeypatch):
    named = Counter(monkeypatch, "safe_text")
    reply = replies.from_message(
        message(tiny(2), {"num-examples": 10}, extra_records=5_000), "train", max_array_bytes=MODEL_BUDGET
    )
    assert reply.malformed is not None and "records" in reply.malformed
    assert named.calls == 0


def test_an_honest_reply_still_parses_within_the_bounds():
    shapes = {"w": np.ones((8, 4), dtype=np.float32), "b": np.ones(4, dtype=np.float32)}
    reply = replies.from_message(
        message({k: Array(v) for k, v in shapes.items()}, {"num-examples": 10, "loss": [0.5] * 1000}),
        "train",
        max_array_bytes=MODEL_BUDGET,
        max_arrays=2,
    )
    assert reply.malformed is None, reply.malformed
    assert [name for name, _ in reply.arrays] == ["w", "b"] and reply.num_examples == 10

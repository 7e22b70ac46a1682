"""The FedAvg fast path (flower_chain.strategies.fast_fedavg) gives Flower's own bytes, or steps aside."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideFixedClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
)
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords, aggregate_metricrecords

from flower_chain.strategies import fast_fedavg
from flower_chain.strategies.replies import parse_arrays

pytestmark = pytest.mark.usefixtures("task_identity")
DTYPES = [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.int8, np.bool_, np.complex64, ">f4"]


def _array(rng, dtype, shape, fortran):
    a = rng.standard_normal(shape) * 10
    if np.dtype(dtype).kind == "c":
        a = a + 1j * rng.standard_normal(shape)
    a = np.asarray(a).astype(dtype)
    return np.asfortranarray(a) if fortran else a


def _replies(rng, n, weights):
    """``n`` replies of one layout (every dtype, a 0-d and a Fortran-order array) and their contents."""
    layout = [(f"a{i}", dt, tuple(rng.integers(1, 6, size=rng.integers(0, 4)))) for i, dt in enumerate(DTYPES)]
    layout.append(("f", np.float32, (3, 4)))
    msgs = []
    for i in range(n):
        arrays = {name: _array(rng, dt, shape, name == "f") for name, dt, shape in layout}
        metrics = {
            "num-examples": weights[i],
            "loss": float(rng.random()),
            "acc": [float(rng.random()), float(i)],
            "steps": [i, 2 * i],
        }
        content = RecordDict(
            {"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}), "metrics": MetricRecord(metrics)}
        )
        msgs.append(Message(content, dst_node_id=i + 1, message_type="train"))
    return msgs


def _parsed(msgs):
    return [parse_arrays(m.content["arrays"].items(), 1 << 30) for m in msgs]


def _bits(metrics):
    return {k: [float(x).hex() for x in v] if isinstance(v, list) else float(v).hex() for k, v in metrics.items()}


@pytest.mark.parametrize("seed", range(6))
def test_same_bytes_as_flower_on_random_replies(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    weights = [
        int(rng.integers(1, 10_000)) if seed % 2 else float(rng.integers(1, 10_000)) + float(rng.random())
        for _ in range(n)
    ]
    msgs = _replies(rng, n, weights)
    contents = [m.content for m in msgs]
    want = aggregate_arrayrecords(contents, "num-examples")
    want_metrics = aggregate_metricrecords(contents, "num-examples")
    got = fast_fedavg.aggregate(FedAvg(), msgs, _parsed(msgs))
    assert got is not None
    arrays, metrics = got
    assert list(arrays.keys()) == list(want.keys())
    for k in want:
        assert arrays[k].data == want[k].data, k  # the NPY bytes: dtype, shape, order and every bit
        assert (arrays[k].dtype, arrays[k].shape) == (want[k].dtype, want[k].shape)
    assert list(metrics.keys()) == list(want_metrics.keys())
    assert _bits(metrics) == _bits(want_metrics)


def test_applies_to_fedavg_and_fedprox_only_unchanged():
    assert fast_fedavg.applies(FedAvg()) and fast_fedavg.applies(FedProx(proximal_mu=0.1))

    class Custom(FedAvg):
        def aggregate_train(self, server_round, replies):
            return super().aggregate_train(server_round, replies)

    class CustomChecks(FedAvg):
        def _check_and_log_replies(self, replies, is_train, validate=True):
            return super()._check_and_log_replies(replies, is_train, validate)

    others = [FedAdam(), FedAvgM(), FedMedian(), FedTrimmedAvg(), Custom(), CustomChecks()]
    others.append(
        DifferentialPrivacyServerSideFixedClipping(
            FedAvg(), noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=2
        )
    )
    assert not any(fast_fedavg.applies(s) for s in others)


def test_inconsistent_replies_go_to_flower():
    rng = np.random.default_rng(1)
    msgs = _replies(rng, 3, [1, 2, 3])
    parsed = _parsed(msgs)
    odd = msgs[1].content["metrics"]
    odd["extra"] = 1.0  # metric names differ: Flower refuses the replies, the fast path leaves it to Flower
    assert fast_fedavg.aggregate(FedAvg(), msgs, parsed) is None
    del odd["extra"]
    assert fast_fedavg.aggregate(FedAvg(), msgs, parsed[:1] + [parsed[1][1:]] + parsed[2:]) is None  # array names
    assert fast_fedavg.aggregate(FedAvg(), msgs, parsed) is not None
    assert fast_fedavg.aggregate(FedAvg(weighted_by_key="missing"), msgs, parsed) is None


def test_custom_metric_aggregation_is_called_with_the_replies():
    seen = []

    def metrics_fn(contents, key):
        seen.append((len(contents), key))
        return MetricRecord({"n": len(contents)})

    rng = np.random.default_rng(2)
    msgs = _replies(rng, 4, [5, 6, 7, 8])
    got = fast_fedavg.aggregate(FedAvg(train_metrics_aggr_fn=metrics_fn), msgs, _parsed(msgs))
    assert got is not None and dict(got[1].items()) == {"n": 4} and seen == [(4, "num-examples")]


def test_self_check_refuses_a_flower_that_aggregates_otherwise(monkeypatch):
    from flwr.serverapp.strategy import strategy_utils

    def other(records, key):  # e.g. a future Flower that returns float16 arrays in float32
        out = aggregate_arrayrecords(records, key)
        widen = {np.dtype(np.float16): np.float32}
        return ArrayRecord(
            {k: Array(v.numpy().astype(widen.get(v.numpy().dtype, v.numpy().dtype))) for k, v in out.items()}
        )

    assert fast_fedavg.self_check()
    monkeypatch.setattr(strategy_utils, "aggregate_arrayrecords", other)
    assert not fast_fedavg.self_check()


def test_config_record_unused():  # the ledger's own ConfigRecord in a reply is not aggregated
    rng = np.random.default_rng(3)
    msgs = _replies(rng, 2, [1, 1])
    for m in msgs:
        m.content["flower-chain"] = ConfigRecord({"statement": b"x"})
    contents = [m.content for m in msgs]
    want = aggregate_arrayrecords(contents, "num-examples")
    arrays, _ = fast_fedavg.aggregate(FedAvg(), msgs, _parsed(msgs))
    assert all(arrays[k].data == want[k].data for k in want)

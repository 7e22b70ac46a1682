"""Flower's FedAvg aggregate over the arrays the judge already parsed: Flower's bits, without a second parse.

Flower's ``FedAvg.aggregate_train`` reads every reply's arrays back from their NPY bytes (``Array.numpy()``,
an ``np.load`` per array) and walks every record through ``array_records``/``metric_records`` views; for
10,000 small replies that costs more than judging them. The judge parsed those very bytes already
(:func:`flower_chain.wire.parse_npy`: numpy's own header reader, the same dtype, shape and order as
``np.load``), and those views are what was digested, stored and recorded.

:func:`aggregate` computes flwr's ``aggregate_arrayrecords`` and ``aggregate_metricrecords``
(``flwr/serverapp/strategy/strategy_utils.py``) with the same operations, in the same order, on the same
operands: weights read from the same MetricRecords, ``sum`` of them, each ``w / total``, then per reply
and per array ``value * factor`` (the first) or ``agg += value * factor`` (the rest), in the replies'
order; metrics as Python numbers the same way. It is used only where the result is Flower's by
construction (:func:`applies`): the wrapped strategy's class runs FedAvg's own ``aggregate_train`` and
``_check_and_log_replies`` (FedAvg, FedProx, a subclass overriding neither), and a self-check on the
first use — Flower's function against this one on replies of several dtypes — found the same bytes.
Replies Flower's consistency check would refuse, and anything this code does not expect, go to the
wrapped strategy's own ``aggregate_train`` (which refuses them as Flower does). ``flower-chain ledger
audit`` re-derives every round with Flower's own code: a difference would be a mismatch there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from flower_chain.strategies import replies as parse

log = logging.getLogger(__name__)
NamedArrays = Sequence[tuple[str, np.ndarray]]
_SELF_CHECK: list[bool] = []  # [result] once run in this process


def applies(strategy: Any) -> bool:
    """Whether ``strategy.aggregate_train`` is Flower's FedAvg one, unchanged (and the self-check passed)."""
    from flwr.serverapp.strategy import FedAvg, fedavg, strategy_utils

    cls = type(strategy)
    if not (
        isinstance(strategy, FedAvg)
        and cls.aggregate_train is FedAvg.aggregate_train
        and cls._check_and_log_replies is FedAvg._check_and_log_replies
        and getattr(fedavg, "aggregate_arrayrecords", None) is strategy_utils.aggregate_arrayrecords
        and isinstance(getattr(strategy, "weighted_by_key", None), str)
    ):
        return False
    if not _SELF_CHECK:
        _SELF_CHECK.append(self_check())
    return _SELF_CHECK[0]


def weighted_arrays(arrays: Sequence[NamedArrays], factors: Sequence[float]) -> dict[str, np.ndarray]:
    """flwr's ``aggregate_arrayrecords`` loop over parsed arrays: ``value * factor``, then ``+=``, in order."""
    out: dict[str, np.ndarray] = {}
    for named, factor in zip(arrays, factors, strict=True):
        for key, value in named:
            if key not in out:
                out[key] = value * factor
            else:
                out[key] += value * factor
    return out


def weighted_metrics(records: Sequence[Any], factors: Sequence[float], weight_key: str) -> dict[str, Any]:
    """flwr's ``aggregate_metricrecords`` over the replies' MetricRecords (Python numbers, the same order)."""
    out: dict[str, Any] = {}
    for record, factor in zip(records, factors, strict=True):
        for key, value in record.items():
            if key == weight_key:
                continue
            if key not in out:
                out[key] = [v * factor for v in value] if isinstance(value, list) else value * factor
            elif isinstance(value, list):
                out[key] = [c + v * factor for c, v in zip(out[key], value, strict=True)]
            else:
                out[key] = out[key] + value * factor
    return out


def _consistent(records: Sequence[Any], arrays: Sequence[NamedArrays | None], weight_key: str) -> bool:
    """What flwr's ``validate_message_reply_consistency`` requires of the replies (one ArrayRecord and one
    MetricRecord each hold by the parser): the same array names, the same metric names, a scalar weight."""
    if not records or any(a is None for a in arrays):
        return False
    names = {n for n, _ in arrays[0] or ()}
    if any({n for n, _ in a or ()} != names for a in arrays[1:]):
        return False
    keys = set(records[0].keys())
    if weight_key not in keys or any(set(r.keys()) != keys for r in records[1:]):
        return False
    return not any(isinstance(r[weight_key], list) for r in records)


def aggregate(strategy: Any, replies: Sequence[Any], arrays: Sequence[NamedArrays | None]) -> tuple[Any, Any] | None:
    """``strategy.aggregate_train``'s result over judged ``replies`` (their parsed ``arrays``, in the same order),
    or ``None``: not a case this computes (the caller then runs the strategy's own ``aggregate_train``).

    Call only where :func:`applies`; every reply is a judged, accepted train reply holding its MetricRecord
    under ``metrics`` (:func:`flower_chain.strategies.ledger_strategy._as_judged`).
    """
    from flwr.app import Array, ArrayRecord, MetricRecord
    from flwr.common.logger import log as flwr_log
    from flwr.serverapp.strategy import strategy_utils

    key = strategy.weighted_by_key
    try:
        records = [m.content[parse.METRICS_RECORD] for m in replies]
        if len(records) != len(arrays) or not _consistent(records, arrays, key):
            return None
        weights = [r[key] for r in records]
        total = sum(weights)
        factors = [w / total for w in weights]
        summed = weighted_arrays([a for a in arrays if a is not None], factors)
        fn = strategy.train_metrics_aggr_fn
        if fn is strategy_utils.aggregate_metricrecords:
            metrics = MetricRecord(weighted_metrics(records, factors, key))
        else:  # the strategy's own metric aggregation, on the replies as Flower hands them to it
            metrics = fn([m.content for m in replies], key)
        result = ArrayRecord({k: Array(np.asarray(v)) for k, v in summed.items()})
    except Exception as e:  # noqa: BLE001 - the strategy's own aggregate_train decides (and raises as Flower does)
        log.debug("FedAvg fast path not taken: %s: %s", type(e).__name__, e)
        return None
    flwr_log(logging.INFO, "%s: Received %s results and %s failures", "aggregate_train", len(replies), 0)
    return result, metrics


def self_check() -> bool:
    """Flower's ``aggregate_arrayrecords``/``aggregate_metricrecords`` against this module's on a few replies of
    several dtypes, layouts and weights: the same bytes, or the fast path stays off (a warning says so)."""
    from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
    from flwr.serverapp.strategy import strategy_utils

    from flower_chain.wire import arrays_of

    rng = np.random.default_rng(7)
    dtypes = [np.float32, np.float64, np.float16, np.int32, np.int64, np.uint8, np.complex64]
    contents = []
    for i, n in enumerate((3, 10, 7, 1)):
        arrays = {f"a{j}": rng.standard_normal((3, 5)).astype(dt) for j, dt in enumerate(dtypes)}
        arrays["f"] = np.asfortranarray(rng.standard_normal((4, 3)).astype(np.float32))
        arrays["s"] = np.asarray(rng.standard_normal(), dtype=np.float32)
        metrics = MetricRecord({"num-examples": n if i % 2 else float(n) + 0.5, "loss": 0.1 * i, "l": [i, 2 * i]})
        contents.append(
            RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}), "metrics": metrics})
        )
    try:
        want = strategy_utils.aggregate_arrayrecords(contents, "num-examples")
        want_m = strategy_utils.aggregate_metricrecords(contents, "num-examples")
        weights: list[Any] = [c["metrics"]["num-examples"] for c in contents]
        factors = [w / sum(weights) for w in weights]
        got = weighted_arrays([arrays_of(c["arrays"]) for c in contents], factors)
        got_m = weighted_metrics([c["metrics"] for c in contents], factors, "num-examples")
        same = list(want.keys()) == list(got) and all(want[k].data == Array(np.asarray(v)).data for k, v in got.items())
        same = same and dict(want_m.items()) == got_m and list(want_m.keys()) == list(got_m)
    except Exception as e:  # noqa: BLE001 - whatever goes wrong, the fast path stays off
        log.warning("flower-chain: FedAvg fast path off (its self-check raised %s: %s)", type(e).__name__, e)
        return False
    if not same:
        log.warning("flower-chain: FedAvg fast path off: this Flower's aggregate differs from the fast path's")
    return same

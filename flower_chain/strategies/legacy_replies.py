"""Parsing one of Flower's legacy replies (``FitRes``/``EvaluateRes``) into a :class:`~flower_chain.strategies.judge.Reply`.

The bounds and the metric and array parsers are those of :mod:`flower_chain.strategies.replies`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flower_chain.ledger.text import safe_text
from flower_chain.strategies.judge import Reply
from flower_chain.strategies.replies import (
    MAX_METRICS,
    Malformed,
    _cosignature,
    _int,
    _sig_fields,
    default_max_arrays,
    parse_arrays,
    parse_metrics,
)
from flower_chain.wire import (
    LEGACY_COSIGNATURE,
    LEGACY_LOSS,
    LEGACY_PENDING_ROUND,
    LEGACY_SEEN_SIZE,
    LEGACY_SIGNATURE,
    LEGACY_STATEMENT,
    PREFIX,
)


def from_legacy(node_id: Any, res: Any, kind: str, *, max_array_bytes: int, max_arrays: int | None = None) -> Reply:
    """Parse a legacy ``FitRes``/``EvaluateRes``; never raises (``max_arrays`` as for :func:`from_message`)."""
    try:
        node = int(node_id)
    except Exception:  # noqa: BLE001
        node = 0
    try:
        metrics_in = res.metrics or {}
        if not isinstance(metrics_in, Mapping):
            raise Malformed("metrics are not a mapping")
        if len(metrics_in) > MAX_METRICS + 5:  # the app's metrics and the five flower-chain fields
            raise Malformed(f"more than {MAX_METRICS} metrics")
        statement, signature, seen, pending = _sig_fields(
            metrics_in.get, LEGACY_STATEMENT, LEGACY_SIGNATURE, LEGACY_SEEN_SIZE, LEGACY_PENDING_ROUND
        )
        known = (LEGACY_STATEMENT, LEGACY_SIGNATURE, LEGACY_SEEN_SIZE, LEGACY_PENDING_ROUND, LEGACY_COSIGNATURE)
        extra = [safe_text(k, 40) for k in metrics_in if isinstance(k, str) and k.startswith(PREFIX) and k not in known]
        if extra:
            raise Malformed(f"unexpected flower-chain fields {extra}")
        metrics = parse_metrics(
            ((k, v) for k, v in metrics_in.items() if not (isinstance(k, str) and k.startswith(PREFIX))), legacy=True
        )
        n = _int(res.num_examples, "num-examples", 1)  # legacy strategies weigh by it: a positive count
        loss = getattr(res, "loss", None) if kind == "evaluate" else None
        if loss is not None:  # the client signed it with the metrics (flower_chain.wire.LEGACY_LOSS)
            if isinstance(loss, bool) or not isinstance(loss, (int, float)):
                raise Malformed(f"loss is a {type(loss).__name__}, not a number")
            metrics[LEGACY_LOSS] = float(loss)
        arrays = None
        if kind == "train":
            params = res.parameters
            if getattr(params, "tensor_type", None) != "numpy.ndarray" or not isinstance(params.tensors, list):
                raise Malformed("parameters are not a list of numpy.ndarray tensors")
            limit = default_max_arrays(max_array_bytes) if max_arrays is None else int(max_arrays)
            if len(params.tensors) > limit:
                raise Malformed(f"more than {limit} arrays (the global model has fewer)")
            arrays = parse_arrays(((str(i), _Tensor(t)) for i, t in enumerate(params.tensors)), max_array_bytes, limit)
        return Reply(
            node_id=node,
            statement=statement,
            signature=signature,
            arrays=arrays,
            metrics=metrics,
            num_examples=n,
            seen_size=seen,
            pending_round=pending,
            cosignature=_cosignature(metrics_in.get(LEGACY_COSIGNATURE)),
        )
    except Malformed as e:
        return Reply(node_id=node, malformed=str(e))
    except Exception as e:  # noqa: BLE001 - the boundary
        return Reply(node_id=node, malformed=f"reply does not parse: {type(e).__name__}: {safe_text(e, 200)}")


class _Tensor:
    """A legacy tensor's bytes in the shape :func:`parse_arrays` reads."""

    stype = "numpy.ndarray"

    def __init__(self, data: Any) -> None:
        self.data = data

"""Replaying one round of a Message-API strategy (``flwr.serverapp.strategy``) from the ledger.

Each train round is replayed on its own, from the recorded state before it (as
a resume would start): the rebuilt strategy gets ``configure_train(round,
model, ConfigRecord(), grid)`` and then ``aggregate_train(round, replies)``
with the accepted replies exactly as :class:`~flower_chain.strategies.LedgerStrategy`
handed them on (sorted by key id, one ArrayRecord and one MetricRecord each);
the aggregate is cast back to the input model's dtypes and its digest compared
with ``model_after``, the strategy's new state with ``state_after``.

Imports flwr lazily (inside the functions), never torch.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from flower_chain.audit.inputs import Altered, Inputs, Missing, Named, array_rule_break
from flower_chain.ledger.arrays import cast_like, first_nonfinite
from flower_chain.ledger.entries import EvaluationEntry, UpdateEntry
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.policy import strategy_metrics
from flower_chain.ledger.text import is_decimal, safe_text
from flower_chain.strategies.replayable import MAX_REPLAY_NODES, NotReplayable
from flower_chain.strategies.state import load_strategy_state, strategy_state

OK, MISMATCH, NOT_REDERIVABLE = "ok", "mismatch", "not-rederivable"
#: (ledger index, entry) of an accepted update, in the order the server handed them on (key id).
Indexed = Sequence[tuple[int, UpdateEntry]]


class ReplayGrid:
    """Just enough of a Grid for ``configure_train``: the nodes that replied, padded to the strategy's minimum."""

    def __init__(self, node_ids: Iterable[int], minimum: int) -> None:
        ids = list(dict.fromkeys(node_ids))
        taken = set(ids)
        filler = (n for n in range(1, 1 << 62) if n not in taken)
        while len(ids) < minimum:  # the minimum is bounded by strategies.replayable.MAX_REPLAY_NODES
            ids.append(next(filler))
        self.node_ids = ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


@contextlib.contextmanager
def sandbox() -> Iterator[None]:
    """Give Flower the task identity it wants to build messages, and leave the process' RNGs as they were."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id)
    py_state, np_state = random.getstate(), np.random.get_state()
    if saved[0] is None:
        TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = 0, 0, 0
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = saved
        random.setstate(py_state)
        np.random.set_state(np_state)


def _record(named: Sequence[tuple[str, np.ndarray]]):
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({n: Array(np.asarray(a, order="C")) for n, a in named})  # keeps a 0-d array 0-d


def metric_value(v: Any) -> Any:
    """A recorded metric value as a MetricRecord takes it, or ``None`` for one it would refuse."""
    if isinstance(v, bool) or not isinstance(v, (int, float, list)):
        return None
    if isinstance(v, list) and not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return None
    return v


def _message(entry: UpdateEntry, server_round: int, kind: str, named: Named | None):
    """The accepted reply as the wrapped strategy received it: one ArrayRecord (train), one MetricRecord."""
    from flwr.app import Message, Metadata, MetricRecord, RecordDict

    metrics = {k: v for k, v in strategy_metrics(entry.metrics).items() if metric_value(v) is not None}
    node = int(entry.node_id) if is_decimal(entry.node_id) else 0
    meta = Metadata(
        run_id=0,
        message_id="",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id="",
        group_id=str(server_round),
        created_at=0.0,
        ttl=0.0,
        message_type=kind,
    )
    records = (
        {"arrays": _record(named), "metrics": MetricRecord(metrics)}
        if named is not None
        else {"metrics": MetricRecord(metrics)}
    )
    return Message(content=RecordDict(records), metadata=meta)


def load_updates(inputs: Inputs, accepted: Indexed, model: Named | None) -> list[Named]:
    """The accepted updates' arrays, each named by entry and key when it cannot be used.

    Raises :class:`Altered` when a stored update is not the one the client signed, or when a sealed
    update the audit opens breaks the round's array rules (verify could not see it: the server accepted
    what the policy rejects); :class:`Missing` when updates are absent or sealed without the key.
    """
    updates, absent, altered, locked = [], 0, [], []
    for index, e in accepted:
        try:
            arrays, sealed = inputs.update(e, index)
        except Missing as m:
            absent += m.absent
            locked += [str(m)] if m.sealed else []
            continue
        except Altered as a:
            altered.append(str(a))
            continue
        why = array_rule_break(arrays, model) if sealed and model is not None else None
        if why is not None:
            altered.append(f"the accepted update of {e.key_id} (entry {index}) breaks the array rules: {why}")
        updates.append(arrays)
    if altered:
        raise Altered("; ".join(altered[:3]) + (f"; … ({len(altered)} in all)" if len(altered) > 3 else ""))
    what = [f"{absent} of {len(accepted)} accepted client updates are not in the blob store"] if absent else []
    if locked:
        same = all("sealed to the auditor key" in x for x in locked)
        what.append(
            f"{len(locked)} of {len(accepted)} accepted client updates are {locked[0].split(' are ', 1)[-1]}"
            if same
            else "; ".join(locked[:3])
        )
    if what:
        raise Missing("; ".join(what), sealed=bool(locked))
    return updates


def _count(strategy: Any, name: str) -> int:
    value = getattr(strategy, name, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def replay_train(
    inputs: Inputs, factory: Callable[[], Any], header, accepted: Indexed, state_before: bytes
) -> tuple[str, str]:
    """(status, detail) of one train block of a Message-API strategy."""
    server_round = header.round
    try:
        model = inputs.arrays(header.model_before, "global model (model_before)")
        state = inputs.arrays(state_before, "strategy state") if state_before else []
        updates = load_updates(inputs, accepted, model)
    except Missing as m:
        return NOT_REDERIVABLE, str(m)
    except Altered as a:
        return MISMATCH, str(a)
    try:
        strategy = factory()
        load_strategy_state(strategy, state)
    except NotReplayable as e:
        return NOT_REDERIVABLE, str(e)
    except LedgerError as e:  # the stored state (its digest checked) does not fit the recorded strategy
        return MISMATCH, f"the recorded strategy state does not fit {type(strategy).__name__}: {e}"
    minimum = max(_count(strategy, "min_available_nodes"), _count(strategy, "min_train_nodes"), len(accepted), 1)
    if minimum > MAX_REPLAY_NODES:
        return NOT_REDERIVABLE, f"{type(strategy).__name__} waits for {minimum} nodes, more than a replay stands in for"
    with sandbox():
        from flwr.app import ConfigRecord

        grid = ReplayGrid([int(e.node_id) for _, e in accepted if is_decimal(e.node_id)], minimum)
        try:
            list(strategy.configure_train(server_round, _record(model), ConfigRecord({}), grid))
        except Exception as exc:  # noqa: BLE001 - a strategy's own code; the server would have stopped here
            return NOT_REDERIVABLE, (
                f"{type(strategy).__name__}.configure_train raised {type(exc).__name__}: {safe_text(exc, 200)}"
            )
        replies = [_message(e, server_round, "train", u) for (_, e), u in zip(accepted, updates)]
        try:
            aggregated, _ = strategy.aggregate_train(server_round, replies)
            failed = None
        except Exception as exc:  # noqa: BLE001 - the server records the round with the model unchanged
            aggregated, failed = None, f"{type(exc).__name__}: {safe_text(exc, 200)}"
    named = [(k, v.numpy()) for k, v in aggregated.items()] if aggregated is not None else None
    return compare(inputs, header, model, named, failed, state_before, lambda: strategy_state(strategy), len(accepted))


def compare(
    inputs: Inputs,
    header,
    model: Named,
    aggregated: Named | None,
    failed: str | None,
    state_before: bytes,
    state_of: Callable[[], Named],
    n: int,
    state_checked: bool = True,
) -> tuple[str, str]:
    """(status, detail): the replayed aggregate (cast as the server casts) against the recorded header."""
    cast = None
    if aggregated is not None:
        try:
            cast = cast_like(aggregated, [a.dtype for _, a in model])
        except LedgerError as e:
            return MISMATCH, f"the replayed aggregate does not fit the round's model: {e}"
        if first_nonfinite(cast) is not None:  # as the server does: it refuses the model and keeps the old one
            cast, failed = None, "a non-finite aggregate"
    if cast is not None:
        after = inputs.digest(cast)
        state = state_of()
        state_after = inputs.digest(state) if state else b""
    else:
        after, state_after = header.model_before, state_before
    if after != header.model_after:
        why = f" (the replayed strategy raised {failed}, so the model should not have changed)" if failed else ""
        return MISMATCH, (
            f"model_after {header.model_after.hex()[:16]} is not the aggregate of the {n} "
            f"accepted updates, {after.hex()[:16]}{why}"
        )
    if state_checked and state_after != header.state_after:
        return MISMATCH, (
            f"state_after {header.state_after.hex()[:16] or '(none)'} is not the replayed strategy "
            f"state {state_after.hex()[:16] or '(none)'}"
        )
    return OK, ""


def replay_evaluation(
    factory: Callable[[], Any], server_round: int, accepted: Sequence[UpdateEntry], summary: EvaluationEntry
) -> tuple[str, str]:
    """(status, detail) of a federated evaluation summary: the recorded strategy's aggregate of the
    accepted evaluate replies (in key order, as the server hands them on) must be what the entry records."""
    from flower_chain.strategies.recorder import encodable_metrics

    strategy = factory()
    replies = [_message(e, server_round, "evaluate", None) for e in accepted]
    with sandbox():
        try:
            got = strategy.aggregate_evaluate(server_round, replies)
        except Exception:  # noqa: BLE001 - the server then records no summary metrics
            got = None
    want = encodable_metrics(dict(got.items()) if got is not None else {})
    return summary_matches(summary, accepted, want)


def summary_matches(summary: EvaluationEntry, accepted: Sequence[UpdateEntry], want: dict) -> tuple[str, str]:
    """(status, detail) of a recorded federated summary against the replayed one."""
    if summary.num_replies != len(accepted) or want != summary.metrics:
        return MISMATCH, (
            f"the federated evaluation summary ({summary.num_replies} replies, "
            f"{safe_text(summary.metrics, 120)}) is not the recorded strategy's aggregate of the "
            f"{len(accepted)} accepted evaluate replies ({safe_text(want, 120)})"
        )
    return OK, ""

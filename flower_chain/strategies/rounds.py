"""The round sequences both wrappers run on a :class:`~flower_chain.strategies.core.LedgerCore`.

Judged replies in, the wrapped strategy's aggregate out, and the round's block appended in ``finally``:
whatever the wrapped strategy does, every judged reply is on the ledger. Framework-neutral (neither torch
nor flwr): the wrappers pass the wrapped strategy's calls as callables.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from flower_chain.strategies.errors import AggregationError, TooFewAcceptedError
from flower_chain.strategies.judge import Judgement, all_finite

if TYPE_CHECKING:
    from flower_chain.strategies.core import LedgerCore

NamedArrays = Sequence[tuple[str, np.ndarray]]


def train_round(
    core: LedgerCore,
    server_round: int,
    judgements: Sequence[Judgement],
    accepted: int,
    seconds: float,
    strategy: Any,
    aggregate: Callable[[], tuple[NamedArrays | None, Any]],
    state: Callable[[], NamedArrays | None] | None = None,
    before_stop: Callable[[], None] | None = None,
    *,
    defer: bool = False,
) -> tuple[list | None, NamedArrays | None, Any]:
    """A judged train round: too-few check, aggregate, cast back, finite check, and the block in ``finally``.

    ``accepted`` replies below ``options.min_accepted``: the round is recorded, ``before_stop()`` called,
    then :class:`TooFewAcceptedError`; at 0 nothing is aggregated (model and state stay). ``aggregate()``
    runs the wrapped ``strategy``: ``(named arrays or None, what else it returned)``; ``state()`` is the
    strategy's state after it (``state_after``; default: the last kept). ``seconds``: time spent judging.
    ``defer``: a round that aggregated without error has its block written behind the caller
    (:meth:`LedgerCore.commit_train`); a failing round is written before the error is raised.

    Returns
    -------
    tuple
        The aggregate cast to the round's dtypes (``None``: no new model), the arrays ``aggregate``
        returned (to see whether casting changed them), and what else it returned.

    Raises
    ------
    TooFewAcceptedError
        Fewer than ``options.min_accepted`` accepted replies.
    AggregationError
        The wrapped strategy failed, or its aggregate has non-finite values (the model stays).
    """
    if accepted < core.options.min_accepted:  # record the round, then stop loudly: nothing to train on
        core.commit_train(server_round, judgements, None, seconds, None)
        if before_stop is not None:
            before_stop()
        raise TooFewAcceptedError.of(server_round, judgements, core.options.min_accepted, core.ledger.uri)
    named, views, extra, after = None, None, None, None
    ok = False
    try:
        if accepted:  # none accepted (min_accepted=0): nothing to aggregate; model and state stay, as verify checks
            views, extra = aggregate()
            if views is not None:  # the global model keeps the initial dtypes, whatever the strategy returns
                named = core.cast_aggregate(server_round, views)
                if not all_finite(named):  # never a NaN model: the round keeps the model and the run stops
                    named = None
                    raise ValueError("the aggregate has non-finite values")
            after = state() if state is not None else None
        ok = True
    except Exception as e:  # the last line: the checks should have refused whatever the strategy refuses
        raise AggregationError(server_round, strategy, e) from e
    finally:  # the replies are recorded even when the wrapped strategy fails
        core.commit_train(server_round, judgements, named, seconds, after, defer=defer and ok)
    return named, views, extra


def evaluate_round(
    core: LedgerCore,
    server_round: int,
    judgements: Sequence[Judgement],
    accepted: int,
    strategy: Any,
    aggregate: Callable[[], Any],
    summary: Callable[[Any], Mapping[str, Any]],
    record: bool = True,
) -> Any:
    """A judged evaluate round: aggregate, and the block (``summary`` of the result) in ``finally``.

    ``record`` False (no reply came back) appends no block. The wrapped strategy's failure is an
    :class:`AggregationError`; every judged reply is on the ledger whatever it does.
    """
    result = None
    try:
        result = aggregate()
    except Exception as e:  # noqa: BLE001 - recorded below, then the run stops with the reason
        raise AggregationError(server_round, strategy, e) from e
    finally:  # every judged reply is on the ledger, whatever the wrapped strategy does
        if record:
            core.commit_evaluation(server_round, "federated", accepted, summary(result), judgements)
    return result

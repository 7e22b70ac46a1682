"""Why a ledger strategy stops a run (the round is on the ledger all the same).

:class:`AggregationError` is also Flower's own
:class:`flwr.serverapp.exception.AggregationError`, so ``flwr run`` reports
the run as failed with Flower's aggregation exit code.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

from flwr.serverapp.exception import AggregationError as FlowerAggregationError

from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.text import safe_text
from flower_chain.strategies.judge import Judgement


class TooFewAcceptedError(LedgerError):
    """A round accepted fewer replies than ``min_accepted``: the run stops (the round is on the ledger)."""

    @classmethod
    def of(cls, server_round: int, judgements: Sequence[Judgement], min_accepted: int, uri: str) -> TooFewAcceptedError:
        """The error for a round whose ``judgements`` accepted fewer than ``min_accepted`` replies."""
        accepted = sum(1 for j in judgements if j.accepted)
        reasons = Counter(j.reason for j in judgements if not j.accepted)
        return cls(
            f"round {server_round}: {accepted} of {len(judgements)} replies accepted, min_accepted is "
            f"{min_accepted} (rejected: {', '.join(f'{r} {n}' for r, n in reasons.most_common()) or 'none'}"
            f"). Every reply is on the ledger: flower-chain ledger show {uri} {server_round}"
        )


class AggregationError(LedgerError, FlowerAggregationError):
    """The wrapped strategy refused the accepted replies of a round (recorded on the ledger all the same).

    The checks are meant to refuse, before the strategy sees it, whatever it would refuse; reaching
    this is a gap in them: the run stops with the strategy's own reason rather than an anonymous crash.
    Flower reports it as its own aggregation error (``exit_code``).
    """

    exit_code = FlowerAggregationError.exit_code

    def __init__(self, server_round: int, strategy: Any, cause: BaseException) -> None:
        LedgerError.__init__(
            self,
            f"round {server_round}: {type(strategy).__name__} refused the accepted replies "
            f"({type(cause).__name__}: {safe_text(cause, 300)}); every reply is recorded on "
            "the ledger. Please report this: flower-chain's checks should have rejected the "
            "reply first",
        )

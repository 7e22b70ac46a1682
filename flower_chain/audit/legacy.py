"""Replaying a ledger of :class:`~flower_chain.strategies.LegacyLedgerStrategy` (``flwr.server.strategy``).

The legacy strategies keep state the ledger does not record (FedOpt's
``current_weights`` and moments, FedAvgM's momentum and its own copy of the
model), so the replay runs them as the server did: one strategy object, built
from the recorded settings with the round-1 model of the ledger as its
``initial_parameters``, fed every train round in ledger order. Each round gets
``configure_fit(round, model_before, clients)`` and then
``aggregate_fit(round, results, failures)`` with the accepted replies in key
order as ``FitRes`` (the signed arrays, the signed ``num_examples``) and one
failure per recorded ``client-error`` reply, exactly what the wrapper handed on.

A round that cannot be re-derived (an update not stored) breaks the chain of a
stateful strategy: the rounds after it are reported as not re-derivable with
that reason, never as verified. A stateless one (FedAvg, FedMedian, Krum, ...)
goes on.

Imports flwr lazily, never torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from flower_chain.audit.inputs import Altered, Inputs, Missing, Named
from flower_chain.audit.rounds import (
    MISMATCH,
    NOT_REDERIVABLE,
    Indexed,
    compare,
    load_updates,
    metric_value,
    sandbox,
    summary_matches,
)
from flower_chain.ledger.entries import EvaluationEntry, UpdateEntry
from flower_chain.ledger.policy import strategy_metrics
from flower_chain.ledger.text import safe_text
from flower_chain.strategies.replayable import NotReplayable
from flower_chain.strategies.state import strategy_state
from flower_chain.wire import LEGACY_LOSS

#: Legacy strategies whose aggregate depends on earlier rounds (through state the ledger does not record).
STATEFUL = ("FedAdam", "FedYogi", "FedAdagrad", "FedAvgM")


class _ConfigureFailed(Exception):
    """The strategy's own configure step raised: the round cannot be replayed as the server ran it."""


class _Proxy:
    """A stand-in ClientProxy: the legacy strategies read only ``cid``/``node_id`` from it, if anything."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id
        self.cid = str(node_id)


class _Clients:
    """Just enough of a ClientManager for ``configure_fit``/``initialize_parameters``: never waits."""

    def __init__(self, count: int) -> None:
        self.proxies = [_Proxy(i + 1) for i in range(count)]

    def num_available(self) -> int:
        return len(self.proxies)

    def sample(self, num_clients: int, min_num_clients: int | None = None, criterion: Any = None) -> list:
        return self.proxies[:num_clients]

    def all(self) -> dict:
        return {p.cid: p for p in self.proxies}


def _metrics(entry: UpdateEntry) -> dict:
    return {k: v for k, v in strategy_metrics(entry.metrics).items() if metric_value(v) is not None}


class LegacyReplay:
    """One legacy strategy replayed through the ledger's rounds in order.

    Parameters
    ----------
    inputs : Inputs
        The ledger's blobs.
    make : callable
        ``make(initial_parameters)`` returns the strategy as recorded (:func:`~flower_chain.strategies.replayable.legacy_factory`).
    name : str
        The recorded class name (decides whether a missing round breaks the chain).
    """

    def __init__(self, inputs: Inputs, make: Callable[[Any], Any], name: str) -> None:
        self.inputs, self.make = inputs, make
        self.stateful = name in STATEFUL
        self.strategy: Any = None
        self.broken = ""

    def _start(self, model: Named) -> None:
        from flwr.common import ndarrays_to_parameters

        self.strategy = self.make(ndarrays_to_parameters([a for _, a in model]))
        try:
            self.strategy.initialize_parameters(_Clients(1))  # as the server loop does before round 1
        except Exception as exc:  # noqa: BLE001 - a strategy's own code
            raise Missing(
                f"{type(self.strategy).__name__}.initialize_parameters raised {type(exc).__name__}: "
                f"{safe_text(exc, 200)}"
            ) from None

    def train(self, header, accepted: Indexed, failures: int) -> tuple[str, str]:
        """(status, detail) of one train block; carries the strategy's state to the next one."""
        if self.broken:
            return NOT_REDERIVABLE, self.broken
        try:
            model = self.inputs.arrays(header.model_before, "global model (model_before)")
            if self.strategy is None:
                self._start(model)
            updates = load_updates(self.inputs, accepted, model)
        except NotReplayable as e:  # the recorded settings do not rebuild the strategy: no round can be replayed
            self.broken = str(e)
            return NOT_REDERIVABLE, self.broken
        except (Missing, Altered) as m:
            if self.stateful:
                self.broken = (
                    f"the state of the legacy strategy after round {header.round} could not be re-derived ({m})"
                )
            return (NOT_REDERIVABLE if isinstance(m, Missing) else MISMATCH), str(m)
        try:
            named, failed = self._aggregate(header.round, model, accepted, updates, failures)
        except _ConfigureFailed as e:
            return NOT_REDERIVABLE, str(e)
        state_before = header.state_after  # the legacy wrapper records no state: only a recorded one is compared
        return compare(
            self.inputs,
            header,
            model,
            named,
            failed,
            state_before,
            lambda: strategy_state(self.strategy),
            len(accepted),
            state_checked=bool(header.state_after),
        )

    def _aggregate(
        self, server_round: int, model: Named, accepted: Indexed, updates: Sequence[Named], failures: int
    ) -> tuple[Named | None, str | None]:
        from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

        with sandbox():
            try:
                self.strategy.configure_fit(
                    server_round, ndarrays_to_parameters([a for _, a in model]), _Clients(max(len(accepted), 1))
                )
            except Exception as exc:  # noqa: BLE001 - a strategy's own code; the server would have stopped here
                raise _ConfigureFailed(
                    f"{type(self.strategy).__name__}.configure_fit raised {type(exc).__name__}: {safe_text(exc, 200)}"
                ) from None
            results = [
                (
                    _Proxy(i + 1),
                    FitRes(
                        status=Status(Code.OK, "Success"),
                        parameters=ndarrays_to_parameters([a for _, a in u]),
                        num_examples=e.num_examples,
                        metrics=_metrics(e),
                    ),
                )
                for i, ((_, e), u) in enumerate(zip(accepted, updates))
            ]
            try:
                parameters, _ = self.strategy.aggregate_fit(server_round, results, _failures(failures))
            except Exception as exc:  # noqa: BLE001 - the server records the round with the model unchanged
                return None, f"{type(exc).__name__}: {safe_text(exc, 200)}"
        if parameters is None:
            return None, None
        return [(str(i), a) for i, a in enumerate(parameters_to_ndarrays(parameters))], None

    def evaluate(
        self,
        server_round: int,
        accepted: Sequence[UpdateEntry],
        failures: int,
        summary: EvaluationEntry,
        model_digest: bytes,
    ) -> tuple[str, str]:
        """(status, detail) of a federated evaluation summary (the loss is recorded as the ``loss`` metric).

        ``model_digest`` is the global model the block records (the strategy is built from it when no
        train round came before).
        """
        from flwr.common import Code, EvaluateRes, Status

        from flower_chain.strategies.recorder import encodable_metrics

        if self.strategy is None:  # no train round replayed yet (e.g. a SecAgg+ ledger: its rounds hold none)
            try:
                self._start(self.inputs.arrays(model_digest, "global model"))
            except (Missing, Altered, NotReplayable) as m:
                return NOT_REDERIVABLE, f"the legacy strategy cannot be rebuilt for this evaluation: {m}"
        results = []
        for i, e in enumerate(accepted):
            loss = e.metrics.get(LEGACY_LOSS)
            if isinstance(loss, bool) or not isinstance(loss, (int, float)):
                return MISMATCH, f"the accepted evaluate reply of {e.key_id} records no loss"
            results.append(
                (
                    _Proxy(i + 1),
                    EvaluateRes(
                        status=Status(Code.OK, "Success"),
                        loss=float(loss),
                        num_examples=e.num_examples,
                        metrics=_metrics(e),
                    ),
                )
            )
        with sandbox():
            try:
                loss, metrics = self.strategy.aggregate_evaluate(server_round, results, _failures(failures))
            except Exception:  # noqa: BLE001 - the server then records no summary metrics
                loss, metrics = None, {}
        want = dict(metrics or {})
        if loss is not None:
            want["loss"] = float(loss)
        return summary_matches(summary, accepted, encodable_metrics(want))


def _failures(count: int) -> list[BaseException]:
    return [RuntimeError("client-error") for _ in range(count)]

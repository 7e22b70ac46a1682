"""LegacyLedgerStrategy: the same verified aggregation for legacy ``flwr.server.strategy`` strategies."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Mapping
from logging import INFO
from typing import Any

from flwr.common import (
    EvaluateIns,
    EvaluateRes,
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
)
from flwr.common.logger import log
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy

from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.text import safe_text
from flower_chain.strategies._gcpause import cyclic_gc_paused
from flower_chain.strategies.core import Judgement, LedgerCore
from flower_chain.strategies.judge import Reply
from flower_chain.strategies.ledger_strategy import strategy_config
from flower_chain.strategies.legacy_replies import from_legacy
from flower_chain.strategies.options import LedgerOptions
from flower_chain.strategies.rounds import evaluate_round, train_round
from flower_chain.wire import PREFIX


def _named(parameters: Parameters) -> list:
    return [(str(i), a) for i, a in enumerate(parameters_to_ndarrays(parameters))]


def _strip(metrics: Mapping[str, Scalar]) -> dict[str, Scalar]:
    return {k: v for k, v in metrics.items() if not str(k).startswith(PREFIX)}


def _legacy_loop_rounds() -> int | None:
    """The number of rounds of the Flower loop calling this strategy, or None when it is not one Flower ships.

    Flower's legacy loops, ``flwr.server.Server.fit`` (``ServerConfig``, ``server_fn``) and
    ``flwr.server.workflow.DefaultWorkflow`` (``LegacyContext``, SecAgg+), run a fixed number of rounds but
    never tell the strategy: it is read from the loop's own frame on this thread (its code object, not a
    name, identifies it). Anything unexpected means unknown, never an error.
    """
    try:
        from flwr.server import Server
        from flwr.server.workflow import DefaultWorkflow

        fit_code, workflow_code = Server.fit.__code__, DefaultWorkflow.__call__.__code__
        frame = sys._getframe(1)
        for _ in range(64):
            if frame is None:
                return None
            if frame.f_code is fit_code:
                return int(frame.f_locals["num_rounds"])
            if frame.f_code is workflow_code:
                return int(frame.f_locals["context"].config.num_rounds)
            frame = frame.f_back
    except Exception:  # noqa: BLE001 - a Flower whose loop differs: the number of rounds is unknown
        return None
    return None


def _failure_reply(failure: tuple[ClientProxy, Any] | BaseException) -> Reply:
    if isinstance(failure, BaseException):
        return Reply(node_id=0, error=safe_text(f"{type(failure).__name__}: {failure}", 400))
    try:
        proxy, res = failure
        return Reply(node_id=int(proxy.node_id), error=safe_text(f"status {getattr(res, 'status', res)}", 400))
    except Exception as e:  # noqa: BLE001 - a failure of unexpected shape is still a verdict
        return Reply(node_id=0, error=safe_text(f"unreadable failure: {type(e).__name__}", 400))


class LegacyLedgerStrategy(Strategy):
    """:class:`~flower_chain.strategies.LedgerStrategy` for the legacy strategy API.

    Wraps any ``flwr.server.strategy.Strategy`` (FedAvg, FedProx, Krum, ...);
    the parameters of ``LedgerStrategy`` (``{run_id}`` in the ledger URI and ``min_accepted`` included)
    but ``resume``, and the same verification core.

    The run ends like a Message-API run: the summary (:func:`flower_chain.strategies.summary.summary_lines`:
    the ledger, the train and evaluate verdicts, the ``audit`` and pinned ``verify`` commands) is logged
    at INFO once the last round is done, or when ``min_accepted`` stops the run. The legacy API has no
    end-of-run hook: the last round is the one Flower's legacy loop (``Server.fit`` with its
    ``ServerConfig``, or ``DefaultWorkflow`` with its ``LegacyContext``) was started for, else
    ``num_rounds`` given here; with neither (a loop of one's own) the summary is logged after every round,
    as "so far".
    The signing mod puts the signed statement into ``FitRes.metrics`` under
    ``flower-chain.*`` keys; they are removed before the wrapped strategy
    sees the results.
    """

    def __init__(
        self,
        strategy: Strategy,
        options: LedgerOptions | None = None,
        *,
        num_rounds: int | None = None,
        **settings: Any,
    ) -> None:
        super().__init__()
        self.strategy = strategy
        if num_rounds is not None and (isinstance(num_rounds, bool) or int(num_rounds) != num_rounds or num_rounds < 1):
            raise ValueError(f"num_rounds must be a positive integer, got {num_rounds!r}")
        #: rounds of the run when the loop driving this strategy is not one of Flower's (else read from it)
        self.num_rounds = int(num_rounds) if num_rounds is not None else None
        self._summarized = 0  # the round after which the summary was last logged
        options = LedgerOptions.of(options, **settings)
        if options.resume:
            raise TypeError("LegacyLedgerStrategy does not resume a federation (resume=True): use LedgerStrategy")
        self.core = LedgerCore(
            options=options, strategy_name=type(strategy).__name__, strategy_config=strategy_config(strategy)
        )
        if self.core.opened_at_round == 0 and self.core.writer.head.header.height == 0:  # a new ledger only
            self.core.warn_if_not_auditable(strategy, strategy_config(strategy))

    @property
    def options(self) -> LedgerOptions:
        """The settings this strategy runs with."""
        return self.core.options

    @property
    def min_accepted(self) -> int:
        """Fewest accepted train replies a round needs (settable)."""
        return self.core.options.min_accepted

    @min_accepted.setter
    def min_accepted(self, value: int) -> None:
        self.core.options.min_accepted = int(value)

    def __repr__(self) -> str:
        return f"LegacyLedgerStrategy({self.strategy!r}, federation={self.core.federation_id!r})"

    @property
    def ledger(self) -> Ledger:
        return self.core.ledger

    def round_stats(self, server_round: int) -> dict[str, Any]:
        return dict(self.core.stats.get(server_round, {}))

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.strategy.initialize_parameters(client_manager)

    def _add_context(self, kind: str, server_round: int, parameters: Parameters | None, instructions):
        ctx = self.core.begin(kind, server_round, _named(parameters) if parameters is not None else None)
        out = []
        for proxy, ins in instructions:
            config = {**ins.config, **ctx.to_config(), **self.core.receipt_config(proxy.node_id)}
            out.append((proxy, dataclasses.replace(ins, config=config)))
        return out

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, FitIns]]:
        return self._add_context(
            "train", server_round, parameters, self.strategy.configure_fit(server_round, parameters, client_manager)
        )

    def _judge(self, kind: str, server_round: int, results, failures) -> tuple[list, list[Judgement]]:
        with cyclic_gc_paused():  # the round's replies stay out of the collector's passes
            limit = self.core.max_array_bytes(kind, server_round)
            parsed = [
                from_legacy(getattr(proxy, "node_id", 0), res, kind, max_array_bytes=limit) for proxy, res in results
            ]
            parsed += [_failure_reply(failure) for failure in failures]
            judgements = self.core.judge_all(kind, server_round, parsed)
            kept = [
                (j.entry.key_id, (proxy, dataclasses.replace(res, metrics=_strip(res.metrics or {}))))
                for (proxy, res), j in zip(results, judgements)
                if j.accepted
            ]
            kept.sort(key=lambda t: t[0])  # key order: the aggregate does not depend on arrival order
            return [r for _, r in kept], judgements

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        t0 = time.perf_counter()
        accepted, judgements = self._judge("train", server_round, results, failures)

        def aggregate():
            parameters, metrics = self.strategy.aggregate_fit(server_round, accepted, failures)
            return (_named(parameters) if parameters is not None else None), (parameters, metrics)

        def log_summary() -> None:  # the legacy loop has no end-of-run hook: say it before the run stops
            for line in self.core.summary_lines():
                log(INFO, "%s", line)

        named, _, got = train_round(
            self.core,
            server_round,
            judgements,
            len(accepted),
            time.perf_counter() - t0,
            self.strategy,
            aggregate,
            before_stop=log_summary,
        )
        parameters, metrics = got if got is not None else (None, {})
        if named is not None:  # the global model keeps the initial dtypes
            parameters = ndarrays_to_parameters([a for _, a in named])
        stats = self.core.stats[server_round]
        log(
            INFO,
            "[flower-chain] round %d: accepted %d, rejected %d",
            server_round,
            stats["accepted"],
            stats["rejected"],
        )
        return parameters, metrics

    def configure_evaluate(
        self, server_round: int, parameters: Parameters, client_manager: ClientManager
    ) -> list[tuple[ClientProxy, EvaluateIns]]:
        out = self._add_context(
            "evaluate", server_round, None, self.strategy.configure_evaluate(server_round, parameters, client_manager)
        )
        if not out:  # Flower's legacy loops skip federated evaluation: this round is done
            self._round_done(server_round)
        return out

    def _round_done(self, server_round: int) -> None:
        """Log the run's summary after its last round (every round, as "so far", when the last is unknown)."""
        last = _legacy_loop_rounds() or self.num_rounds
        if (last is not None and server_round != last) or self._summarized == server_round:
            return
        self._summarized = server_round
        if last is None:
            log(
                INFO,
                "flower-chain: so far, after round %d (the number of rounds is unknown to the strategy: "
                "LegacyLedgerStrategy(num_rounds=...) logs this once, at the end)",
                server_round,
            )
        for line in self.core.summary_lines():
            log(INFO, "%s", line)

    def aggregate_evaluate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, EvaluateRes]],
        failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
    ) -> tuple[float | None, dict[str, Scalar]]:
        accepted, judgements = self._judge("evaluate", server_round, results, failures)

        def summary(got) -> dict[str, Any]:
            loss, metrics = got if got is not None else (None, {})
            return {**dict(metrics or {}), **({"loss": float(loss)} if loss is not None else {})}

        got = evaluate_round(
            self.core,
            server_round,
            judgements,
            len(accepted),
            self.strategy,
            lambda: self.strategy.aggregate_evaluate(server_round, accepted, failures),
            summary,
            record=bool(results or failures),
        )
        self._round_done(server_round)  # the last call of a round with federated evaluation
        return got

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        res = self.strategy.evaluate(server_round, parameters)
        if res is not None:
            loss, metrics = res
            self.core.commit_evaluation(server_round, "centralized", 0, {**dict(metrics or {}), "loss": float(loss)})
        return res

    def close(self) -> None:
        self.core.close()

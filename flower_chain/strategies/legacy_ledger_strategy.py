"""LegacyLedgerStrategy: the same verified aggregation for legacy ``flwr.server.strategy`` strategies."""

from __future__ import annotations

import dataclasses
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
from flower_chain.strategies import replies as parse
from flower_chain.strategies.core import Judgement, LedgerCore
from flower_chain.strategies.judge import Reply
from flower_chain.strategies.options import LedgerOptions
from flower_chain.strategies.ledger_strategy import strategy_config
from flower_chain.ledger.text import safe_text
from flower_chain.wire import PREFIX
from flower_chain.strategies._gcpause import cyclic_gc_paused


def _named(parameters: Parameters) -> list:
    return [(str(i), a) for i, a in enumerate(parameters_to_ndarrays(parameters))]


def _strip(metrics: Mapping[str, Scalar]) -> dict[str, Scalar]:
    return {k: v for k, v in metrics.items() if not str(k).startswith(PREFIX)}


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
    but ``resume``, and the same verification core. The legacy loop has no end-of-run hook: the summary
    is logged when ``min_accepted`` stops the run.
    The signing mod puts the signed statement into ``FitRes.metrics`` under
    ``flower-chain.*`` keys; they are removed before the wrapped strategy
    sees the results.
    """

    def __init__(self, strategy: Strategy, options: LedgerOptions | None = None, **settings: Any) -> None:
        super().__init__()
        self.strategy = strategy
        options = LedgerOptions.of(options, **settings)
        if options.resume:
            raise TypeError("LegacyLedgerStrategy does not resume a federation (resume=True): use LedgerStrategy")
        self.core = LedgerCore(options=options, strategy_name=type(strategy).__name__,
                               strategy_config=strategy_config(strategy))

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

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        return self._add_context("train", server_round, parameters,
                                 self.strategy.configure_fit(server_round, parameters, client_manager))

    def _judge(self, kind: str, server_round: int, results, failures) -> tuple[list, list[Judgement]]:
        with cyclic_gc_paused():  # the round's replies stay out of the collector's passes
            limit = self.core.max_array_bytes(kind, server_round)
            parsed = [parse.from_legacy(getattr(proxy, "node_id", 0), res, kind, max_array_bytes=limit)
                      for proxy, res in results]
            parsed += [_failure_reply(failure) for failure in failures]
            judgements = self.core.judge_all(kind, server_round, parsed)
            kept = [(j.entry.key_id, (proxy, dataclasses.replace(res, metrics=_strip(res.metrics or {}))))
                    for (proxy, res), j in zip(results, judgements) if j.accepted]
            kept.sort(key=lambda t: t[0])  # key order: the aggregate does not depend on arrival order
            return [r for _, r in kept], judgements

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
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

        named, _, got = self.core.train_round(server_round, judgements, len(accepted), time.perf_counter() - t0,
                                              self.strategy, aggregate, before_stop=log_summary)
        parameters, metrics = got if got is not None else (None, {})
        if named is not None:  # the global model keeps the initial dtypes
            parameters = ndarrays_to_parameters([a for _, a in named])
        stats = self.core.stats[server_round]
        log(INFO, "[flower-chain] round %d: accepted %d, rejected %d", server_round, stats["accepted"],
            stats["rejected"])
        return parameters, metrics

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[tuple[ClientProxy, EvaluateIns]]:
        return self._add_context("evaluate", server_round, None,
                                 self.strategy.configure_evaluate(server_round, parameters, client_manager))

    def aggregate_evaluate(self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]],
                           failures: list[tuple[ClientProxy, EvaluateRes] | BaseException],
                           ) -> tuple[float | None, dict[str, Scalar]]:
        accepted, judgements = self._judge("evaluate", server_round, results, failures)

        def summary(got) -> dict[str, Any]:
            loss, metrics = got if got is not None else (None, {})
            return {**dict(metrics or {}), **({"loss": float(loss)} if loss is not None else {})}

        return self.core.evaluate_round(server_round, judgements, len(accepted), self.strategy,
                                        lambda: self.strategy.aggregate_evaluate(server_round, accepted, failures),
                                        summary, record=bool(results or failures))

    def evaluate(self, server_round: int, parameters: Parameters) -> tuple[float, dict[str, Scalar]] | None:
        res = self.strategy.evaluate(server_round, parameters)
        if res is not None:
            loss, metrics = res
            self.core.commit_evaluation(server_round, "centralized", 0, {**dict(metrics or {}), "loss": float(loss)})
        return res

    def close(self) -> None:
        self.core.close()

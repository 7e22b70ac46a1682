"""LedgerStrategy: wrap any Message-API strategy with verified aggregation and a round ledger."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result, Strategy

from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.policy import OWN_METRICS, strategy_metrics
from flower_chain.strategies import fast_fedavg
from flower_chain.strategies import replies as parse
from flower_chain.strategies._gcpause import cyclic_gc_paused
from flower_chain.strategies.arrivals import ArrivalGrid
from flower_chain.strategies.core import Judgement, LedgerCore
from flower_chain.strategies.options import LedgerOptions
from flower_chain.strategies.personal import PersonalCache
from flower_chain.strategies.rounds import evaluate_round, train_round
from flower_chain.strategies.state import load_strategy_state, strategy_state
from flower_chain.wire import arrays_of


def _as_judged(msg: Message, reply) -> Message:
    """The accepted reply as the wrapped strategy gets it: the judged ArrayRecord and MetricRecord, under the
    names ``arrays`` and ``metrics`` (Flower's strategies require every reply to use the same names)."""
    arrays_rec, metrics_rec = reply.records
    content = msg.content
    own = [k for k in metrics_rec if str(k).startswith(OWN_METRICS)]
    if own:  # flower-chain's receipt counters are the ledger's, not the strategy's (clients may differ in them)
        metrics_rec = MetricRecord(strategy_metrics(dict(metrics_rec.items())))
    elif content.get(parse.ARRAYS_RECORD) is arrays_rec and content.get(parse.METRICS_RECORD) is metrics_rec:
        return msg  # already so (Flower's quickstarts use these names): no copy (nor Flower's filtered views)
    return make_message(
        metadata=msg.metadata,
        content=RecordDict(
            {parse.ARRAYS_RECORD: arrays_rec, parse.METRICS_RECORD: metrics_rec}
            if arrays_rec is not None
            else {parse.METRICS_RECORD: metrics_rec}
        ),
    )


def strategy_config(strategy: Any) -> dict[str, Any]:
    """The plain settings of a strategy, and of the one it wraps (``strategy.<name>``, e.g. a DP wrapper's
    inner FedAvg): recorded in the blob store, their digest in the genesis, for ``flower-chain ledger audit``."""
    out = {
        k: v
        for k, v in sorted(vars(strategy).items())
        if isinstance(v, (bool, int, float, str)) and not k.startswith("_")
    }
    inner = vars(strategy).get("strategy")
    if inner is not None and inner is not strategy:
        out["strategy.class"] = type(inner).__name__
        out.update({f"strategy.{k}": v for k, v in strategy_config(inner).items()})
    return out


class LedgerStrategy(Strategy):
    """Verified aggregation and an auditable round ledger around any Message-API strategy.

    Every reply is checked (signature, key, federation, round, ledger head,
    base model, array and metric digests, num-examples, duplicates, shapes
    and finiteness); only accepted replies reach the wrapped strategy. Each
    round appends one signed block recording every reply received, accepted
    or rejected with its reason, and the global model digest before and
    after aggregation. Every other call delegates to the wrapped strategy.

    Parameters
    ----------
    strategy : Strategy
        The strategy to wrap (FedAvg, FedProx, FedAdam, FedMedian, Krum, a DP wrapper, ...).
    options : LedgerOptions, optional
        The settings (:class:`~flower_chain.strategies.options.LedgerOptions`).
    **settings
        Its fields as keyword arguments, applied over ``options``: ``ledger`` (a backend or URI;
        ``{run_id}`` becomes the Flower run id), ``keyring``, ``server_key`` (required unless in
        ``options``), ``federation_id``, ``store_models``, ``store_client_updates`` (``None``, the default, or
        ``True``: every round's accepted updates, whatever their size, sealed to ``audit_key`` when one
        is set; ``False``: none — `flower-chain ledger audit` then re-derives no round, NOT AUDITED),
        ``audit_key`` (the auditor's X25519 public key — the key, PEM, 64 hex digits, or a file of
        either, made by `flower-chain ledger audit-key DIR`: accepted updates are stored sealed to it,
        never in plaintext; a bad key fails before anything is written), ``resume``
        (continue the federation of a ledger that already records rounds), ``min_accepted`` (fewest
        accepted train replies a round needs; below it the round is recorded, then the run stops with
        :class:`~flower_chain.strategies.errors.TooFewAcceptedError`), ``anchor``, ``verify_workers``,
        ``witnesses``, ``witness_quorum``, ``witness_timeout``.
    """

    def __init__(self, strategy: Strategy, options: LedgerOptions | None = None, **settings: Any) -> None:
        self.strategy = strategy
        self._offset = 0  # rounds already on the ledger when this run started (resume)
        self._write_behind = False  # inside start(): train blocks are written while the loop goes on
        # inside start(): the round whose replies are awaited (kind, round, parser bounds), and the work started on
        # each reply as Flower pulled it (ArrivalGrid): id(message) -> (message, that round, future)
        self._awaiting: tuple[str, int, int, str | None] | None = None
        self._arrived: dict[int, tuple[Message, tuple[str, int, int, str | None], Future]] = {}
        self.core = LedgerCore(
            options=LedgerOptions.of(options, **settings),
            strategy_name=type(strategy).__name__,
            strategy_config=strategy_config(strategy),
        )
        if self.core.opened_at_round == 0 and self.core.writer.head.header.height == 0:  # a new ledger only
            self.core.warn_if_not_auditable(strategy, strategy_config(strategy))

    @property
    def options(self) -> LedgerOptions:
        """The settings this strategy runs with."""
        return self.core.options

    @property
    def resume(self) -> bool:
        """Continue the federation of a ledger that already records rounds (settable before ``start``)."""
        return self.core.options.resume

    @resume.setter
    def resume(self, value: bool) -> None:
        self.core.options.resume = bool(value)

    @property
    def min_accepted(self) -> int:
        """Fewest accepted train replies a round needs (settable)."""
        return self.core.options.min_accepted

    @min_accepted.setter
    def min_accepted(self, value: int) -> None:
        self.core.options.min_accepted = int(value)

    def __getattr__(self, name: str) -> Any:
        # Read-only access to the wrapped strategy's settings (fraction_train, weighted_by_key, ...).
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    @property
    def ledger(self) -> Ledger:
        """The ledger, every block this strategy appended durable in it."""
        self.core.settle()
        return self.core.ledger

    @property
    def federation_id(self) -> str:
        return self.core.federation_id

    def round_stats(self, server_round: int) -> dict[str, Any]:
        """Accepted/rejected counts, reasons and ledger time of a round (empty before it ran)."""
        return dict(self.core.stats.get(server_round, {}))

    def summary(self) -> None:
        log(
            INFO,
            "\t├──> flower-chain LedgerStrategy: federation %s, ledger %s, %d allowed keys",
            self.federation_id,
            self.core.ledger.uri,
            len(self.core.keys),
        )
        self.strategy.summary()

    def _with_context(
        self,
        kind: str,
        server_round: int,
        arrays: ArrayRecord | None,
        config: ConfigRecord,
    ) -> ConfigRecord:
        ctx = self.core.begin(kind, server_round, arrays_of(arrays) if arrays is not None else None)
        merged = ConfigRecord(dict(config.items()))
        for k, v in ctx.to_config().items():
            merged[k] = v
        return merged

    def _personalize(self, messages: Iterable[Message]) -> list[Message]:
        """Give each node its receipt: the head checkpoint, a consistency proof, its previous update's proof.

        Each message gets its own content, whose ledger ConfigRecord is the round's one plus the node's receipt
        (:class:`~flower_chain.strategies.personal.PersonalCache`); the wrapped strategy's metadata stays.
        """
        with cyclic_gc_paused():  # 10,000 new records: no collector passes over the round's messages meanwhile
            out = list(messages)
            cache = PersonalCache()
            for m in out:
                content = cache.content(m.content, self.core.receipt_config(m.metadata.dst_node_id))
                if content is not None:
                    m.content = content
            return out

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Add the ledger context to the train config, delegate, then add each node's receipt."""
        server_round += self._offset
        config = self._with_context("train", server_round, arrays, config)
        messages = self._personalize(self.strategy.configure_train(server_round, arrays, config, grid))
        self._await("train", server_round)
        return messages

    def _bounds(self, kind: str, server_round: int) -> tuple[str, int, int, str | None]:
        """What a reply of the round is parsed with: (kind, round, most array bytes, the weight's metric name)."""
        weight_key = getattr(self.strategy, "weighted_by_key", None)
        weight_key = weight_key if isinstance(weight_key, str) else None
        return kind, server_round, self.core.max_array_bytes(kind, server_round), weight_key

    def _await(self, kind: str, server_round: int) -> None:
        """The round whose replies the grid is about to pull: each one's work starts as it arrives (inside
        ``start``, with more than one verify worker: ``verify_workers=1`` keeps every check on this thread)."""
        self._forget_arrivals()
        if self._write_behind and self.core.judge.verify_workers > 1:
            self._awaiting = self._bounds(kind, server_round)

    def _forget_arrivals(self) -> None:
        """No round awaited; work started on replies and not taken by :meth:`_judge` is cancelled if not begun."""
        self._awaiting = None
        for _, _, future in self._arrived.values():
            future.cancel()
        self._arrived.clear()

    def _on_replies(self, msgs: list[Message]) -> None:
        """:class:`~flower_chain.strategies.arrivals.ArrivalGrid`'s callback: parse, hash and verify each reply on
        the judge's threads while the grid waits for the rest; :meth:`_judge` takes the results."""
        bounds = self._awaiting
        if bounds is None:
            return
        kind, _, limit, weight_key = bounds
        for msg in msgs:
            work = functools.partial(parse.from_message, msg, kind, max_array_bytes=limit, weight_key=weight_key)
            self._arrived[id(msg)] = (msg, bounds, self.core.judge.prepare_soon(work))

    def _judge(
        self,
        kind: str,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[list[Message], list[Judgement], list[Any]]:
        """Accepted messages (in key order), every judgement, and the accepted replies' parsed arrays.

        Every reply goes through the total parser (:mod:`flower_chain.strategies.replies`) and gets a
        verdict; an accepted reply is handed on holding exactly the records that were judged, under
        fixed names, so the wrapped strategy aggregates what was checked. The parsed arrays (the views
        the judge digested, in the accepted messages' order) spare FedAvg a second parse
        (:mod:`flower_chain.strategies.fast_fedavg`).
        """
        with cyclic_gc_paused():  # the round's replies stay out of the collector's passes
            msgs = list(replies)
            bounds = self._bounds(kind, server_round)
            _, _, limit, weight_key = bounds
            parsed, prepared = [], []
            for msg in msgs:  # a reply's work started on arrival counts only for this very message and round
                early = self._arrived.pop(id(msg), None)
                if early is not None and early[0] is msg and early[1] == bounds:
                    reply, evidence = early[2].result()
                else:
                    reply, evidence = parse.from_message(msg, kind, max_array_bytes=limit, weight_key=weight_key), None
                parsed.append(reply)
                prepared.append(evidence)
            self._forget_arrivals()
            judgements = self.core.judge_all(kind, server_round, parsed, prepared)
            kept = []
            for msg, reply, j in zip(msgs, parsed, judgements):
                if j.accepted:
                    kept.append((j.entry.key_id, _as_judged(msg, reply), reply.arrays))
            kept.sort(key=lambda t: t[0])  # key order: the aggregate does not depend on arrival order
            return [m for _, m, _ in kept], judgements, [a for _, _, a in kept]

    def aggregate_train(
        self,
        server_round: int,
        replies: Iterable[Message],
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Judge every reply, aggregate the accepted ones with the wrapped strategy, append the block."""
        server_round += self._offset
        t0 = time.perf_counter()
        accepted, judgements, parsed = self._judge("train", server_round, replies)
        if self._write_behind:  # the update blobs go to the ledger while the wrapped strategy aggregates
            self.core.store_updates_behind(judgements)

        def aggregate():
            got = fast_fedavg.aggregate(self.strategy, accepted, parsed) if fast_fedavg.applies(self.strategy) else None
            arrays, metrics = got if got is not None else self.strategy.aggregate_train(server_round, accepted)
            return (arrays_of(arrays) if arrays is not None else None), (arrays, metrics)

        named, views, got = train_round(
            self.core,
            server_round,
            judgements,
            len(accepted),
            time.perf_counter() - t0,
            self.strategy,
            aggregate,
            lambda: strategy_state(self.strategy),
            defer=self._write_behind,
        )
        arrays, metrics = got if got is not None else (None, None)
        if named is not None and any(c is not v for (_, c), (_, v) in zip(named, views)):
            arrays = ArrayRecord({n: Array(np.asarray(a, order="C")) for n, a in named})  # re-serialize what was cast
        return arrays, metrics

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Add the ledger context to the evaluate config, then delegate.

        Flower's FedAvg family with ``fraction_evaluate`` 0 sends no evaluate instruction: nothing is asked
        of the ledger then (a train block still being written is not waited for).
        """
        server_round += self._offset
        if (
            isinstance(self.strategy, FedAvg)
            and getattr(self.strategy.configure_evaluate, "__func__", None) is FedAvg.configure_evaluate
            and self.strategy.fraction_evaluate == 0.0
        ):
            return []
        config = self._with_context("evaluate", server_round, None, config)
        messages = self._personalize(self.strategy.configure_evaluate(server_round, arrays, config, grid))
        self._await("evaluate", server_round)
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate verified evaluate replies; record them and the aggregate in a block."""
        server_round += self._offset
        replies = list(replies)
        if not replies:  # nothing to judge or record (no block): the wrapped strategy sees none either
            self._forget_arrivals()
            return evaluate_round(
                self.core,
                server_round,
                [],
                0,
                self.strategy,
                lambda: self.strategy.aggregate_evaluate(server_round, []),
                dict,
                record=False,
            )
        accepted, judgements, _ = self._judge("evaluate", server_round, replies)
        return evaluate_round(
            self.core,
            server_round,
            judgements,
            len(accepted),
            self.strategy,
            lambda: self.strategy.aggregate_evaluate(server_round, accepted),
            lambda metrics: dict(metrics.items()) if metrics is not None else {},
            record=bool(replies),
        )

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run Flower's strategy loop; centralized evaluation results are recorded on the ledger too.

        On a ledger that already records rounds, the run resumes: the global
        model comes from the ledger's blob store (its digest checked against
        the last block) and rounds continue from the last recorded one up to
        ``num_rounds``. ``initial_arrays`` then only has to have the same shape.
        """
        self._offset = self.core.last_round if self.resume else 0
        if self._offset:
            initial_arrays = self.resume_arrays()
            state = self.core.resume_state()
            load_strategy_state(self.strategy, state)
            log(
                INFO,
                "[flower-chain] resuming federation %s after round %d%s",
                self.federation_id,
                self._offset,
                f" with the strategy state of {len(state)} arrays" if state else "",
            )
            if self._offset >= num_rounds:  # num_rounds counts every round of the federation, not extra ones
                log(
                    INFO,
                    "[flower-chain] nothing to do: %s already records round %d and num_rounds is %d "
                    "(it counts all rounds: pass a larger num_rounds to continue)",
                    self.core.ledger.uri,
                    self._offset,
                    num_rounds,
                )
                for line in self.core.summary_lines():
                    log(INFO, "%s", line)
                return Result(arrays=initial_arrays)

        def recording_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            server_round += self._offset
            res = evaluate_fn(server_round, arrays)
            # the last recorded round's evaluation, unless the crash came between its train and evaluation blocks
            resumed_initial = (
                self._offset and server_round == self._offset and self.core.records_evaluation(server_round)
            )
            if res is not None and not resumed_initial:
                self.core.commit_evaluation(server_round, "centralized", 0, dict(res.items()))
            return res

        self._write_behind = True  # each train block is written while the loop goes on (LedgerCore.settle)
        try:
            return super().start(
                ArrivalGrid(grid, self._on_replies),  # each reply's work starts as it is pulled
                initial_arrays,
                num_rounds - self._offset,
                timeout,
                train_config,
                evaluate_config,
                recording_fn if evaluate_fn is not None else None,
            )
        finally:  # where the ledger is and how to check it, whether the run finished or failed
            self._write_behind = False
            self._forget_arrivals()
            try:
                self.core.settle()  # the last block is durable before start returns (or its error is raised)
            finally:
                for line in self.core.summary_lines():
                    log(INFO, "%s", line)

    def resume_arrays(self) -> ArrayRecord:
        """The global model after the last recorded round, from the blob store, digest checked."""
        return ArrayRecord({n: Array(np.asarray(a, order="C")) for n, a in self.core.resume_arrays()})

    def close(self) -> None:
        self.core.close()

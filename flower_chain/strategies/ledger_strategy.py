"""LedgerStrategy: wrap any Message-API strategy with verified aggregation and a round ledger."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from logging import INFO
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.app.message.message import make_message
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.keys import Keyring
from flower_chain.ledger.policy import OWN_METRICS, strategy_metrics
from flower_chain.strategies import replies as parse
from flower_chain.strategies.judge import all_finite
from flower_chain.strategies.core import AggregationError, Judgement, LedgerCore, TooFewAcceptedError
from flower_chain.strategies.state import load_strategy_state, strategy_state
from flower_chain.wire import CTX_FEDERATION, arrays_of
from flower_chain.strategies._gcpause import cyclic_gc_paused


def _as_judged(msg: Message, reply) -> Message:
    """The accepted reply as the wrapped strategy gets it: the judged ArrayRecord and MetricRecord, under the
    names ``arrays`` and ``metrics`` (Flower's strategies require every reply to use the same names)."""
    arrays_rec, metrics_rec = reply.records
    content = msg.content
    own = [k for k in metrics_rec.keys() if str(k).startswith(OWN_METRICS)]
    if own:  # flower-chain's receipt counters are the ledger's, not the strategy's (clients may differ in them)
        metrics_rec = MetricRecord(strategy_metrics(dict(metrics_rec.items())))
    elif content.get(parse.ARRAYS_RECORD) is arrays_rec and content.get(parse.METRICS_RECORD) is metrics_rec:
        return msg  # already so (Flower's quickstarts use these names): no copy (nor Flower's filtered views)
    return make_message(metadata=msg.metadata, content=RecordDict(
        {parse.ARRAYS_RECORD: arrays_rec, parse.METRICS_RECORD: metrics_rec} if arrays_rec is not None
        else {parse.METRICS_RECORD: metrics_rec}))


def strategy_config(strategy: Any) -> dict[str, Any]:
    """The plain settings of a strategy, and of the one it wraps (``strategy.<name>``, e.g. a DP wrapper's
    inner FedAvg): recorded in the blob store, their digest in the genesis, for ``flower-chain ledger audit``."""
    out = {k: v for k, v in sorted(vars(strategy).items())
           if isinstance(v, (bool, int, float, str)) and not k.startswith("_")}
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
    ledger : Ledger or str
        A ledger backend or URI (``sqlite:///ledger.db``, ``jsonl:///ledger.jsonl``, ``postgresql://...``,
        ``memory:``). ``{run_id}`` in the URI becomes the Flower run id: one new ledger per ``flwr run``.
    keyring : Keyring, Mapping[str, bytes], str or Path
        Allowed client public keys (a directory of ``*.pub`` files, a file, or key id -> raw key).
    server_key : Ed25519PrivateKey, str or Path
        The server's signing key (or the path of its PEM file).
    federation_id : str, optional
        Id of a new federation; default random.
    store_models : bool, optional
        Keep every round's global model in the ledger's blob store (default True).
    store_client_updates : bool, optional
        Keep every accepted client update in the blob store, which ``flower-chain ledger audit``
        replays the aggregation from. Default ``None``: for every round whose accepted updates hold
        at most 64 MiB of array data; ``True`` always, ``False`` never.
    resume : bool, optional
        Continue the federation of a ledger that already records rounds, from
        its last verified block (default False: such a ledger is refused).
    anchor : AnchorPublisher or callable, optional
        Publishes each appended block to a chain off the round's critical path
        (``flower_chain.anchor``; a callable receives the federation id).
    min_accepted : int, optional
        Fewest accepted train replies a round needs (default 1). A round below it is still
        recorded, then the run stops with :class:`~flower_chain.strategies.core.TooFewAcceptedError`
        naming the reasons (e.g. every node lacks its key) instead of training on nothing.
    verify_workers : int, optional
        Threads hashing and scanning the replies' arrays and verifying their
        signatures (default: CPUs, at most 8; 1 keeps all checks on the calling thread).
    witnesses : sequence of (url, verifier key), optional
        C2SP tlog-witnesses that cosign each block's checkpoint; clients are sent the cosigned one.
    witness_quorum : int, optional
        Cosignatures each checkpoint should gather (a shortfall is recorded and reported).
    witness_timeout : float, optional
        Seconds a block waits for its witnesses at most (a witness that is down never stalls a round).
    """

    def __init__(self, strategy: Strategy, *, ledger: Ledger | str, keyring: Keyring | Mapping[str, bytes] | str | Path,
                 server_key: Ed25519PrivateKey | str | Path, federation_id: str | None = None,
                 store_models: bool = True, store_client_updates: bool | None = None, resume: bool = False,
                 min_accepted: int = 1,
                 anchor=None, verify_workers: int | None = None,
                 witnesses=None, witness_quorum: int = 0, witness_timeout: float = 2.0) -> None:
        self.strategy = strategy
        self.resume = resume
        self.min_accepted = int(min_accepted)
        self._offset = 0  # rounds already on the ledger when this run started (resume)
        self.core = LedgerCore(ledger, keyring, server_key, federation_id=federation_id,
                               strategy_name=type(strategy).__name__, strategy_config=strategy_config(strategy),
                               store_models=store_models, store_client_updates=store_client_updates,
                               anchor=anchor, verify_workers=verify_workers, witnesses=witnesses,
                               witness_quorum=witness_quorum, witness_timeout=witness_timeout)

    def __getattr__(self, name: str) -> Any:
        # Read-only access to the wrapped strategy's settings (fraction_train, weighted_by_key, ...).
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    @property
    def ledger(self) -> Ledger:
        return self.core.ledger

    @property
    def federation_id(self) -> str:
        return self.core.federation_id

    def round_stats(self, server_round: int) -> dict[str, Any]:
        """Accepted/rejected counts, reasons and ledger time of a round (empty before it ran)."""
        return dict(self.core.stats.get(server_round, {}))

    def summary(self) -> None:
        log(INFO, "\t├──> flower-chain LedgerStrategy: federation %s, ledger %s, %d allowed keys",
            self.federation_id, self.core.ledger.uri, len(self.core.keys))
        self.strategy.summary()

    def _with_context(self, kind: str, server_round: int, arrays: ArrayRecord | None, config: ConfigRecord,
                      ) -> ConfigRecord:
        ctx = self.core.begin(kind, server_round, arrays_of(arrays) if arrays is not None else None)
        merged = ConfigRecord(dict(config.items()))
        for k, v in ctx.to_config().items():
            merged[k] = v
        return merged

    def _personalize(self, messages: Iterable[Message]) -> list[Message]:
        """Give each node its receipt: the head checkpoint, a consistency proof, its previous update's proof."""
        out = []
        for m in messages:
            content = RecordDict()
            for name, record in m.content.items():
                if isinstance(record, ConfigRecord) and CTX_FEDERATION in record:
                    record = ConfigRecord({**dict(record.items()),
                                           **self.core.receipt_config(m.metadata.dst_node_id)})
                content[name] = record
            out.append(Message(content=content, dst_node_id=m.metadata.dst_node_id,
                               message_type=m.metadata.message_type, group_id=m.metadata.group_id,
                               ttl=m.metadata.ttl))
        return out

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Add the ledger context to the train config, delegate, then add each node's receipt."""
        server_round += self._offset
        config = self._with_context("train", server_round, arrays, config)
        return self._personalize(self.strategy.configure_train(server_round, arrays, config, grid))

    def _judge(self, kind: str, server_round: int, replies: Iterable[Message],
               ) -> tuple[list[Message], list[Judgement]]:
        """Accepted messages (in key order) and every judgement.

        Every reply goes through the total parser (:mod:`flower_chain.strategies.replies`) and gets a
        verdict; an accepted reply is handed on holding exactly the records that were judged, under
        fixed names, so the wrapped strategy aggregates what was checked.
        """
        with cyclic_gc_paused():  # the round's replies stay out of the collector's passes
            msgs = list(replies)
            limit = self.core.max_array_bytes(kind, server_round)
            weight_key = getattr(self.strategy, "weighted_by_key", None)
            weight_key = weight_key if isinstance(weight_key, str) else None
            parsed = [parse.from_message(msg, kind, max_array_bytes=limit, weight_key=weight_key) for msg in msgs]
            judgements = self.core.judge_all(kind, server_round, parsed)
            kept = []
            for msg, reply, j in zip(msgs, parsed, judgements):
                if j.accepted:
                    kept.append((j.entry.key_id, _as_judged(msg, reply)))
            kept.sort(key=lambda t: t[0])  # key order: the aggregate does not depend on arrival order
            return [m for _, m in kept], judgements

    def aggregate_train(self, server_round: int, replies: Iterable[Message],
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Judge every reply, aggregate the accepted ones with the wrapped strategy, append the block."""
        server_round += self._offset
        t0 = time.perf_counter()
        accepted, judgements = self._judge("train", server_round, replies)
        t_check = time.perf_counter() - t0
        arrays, metrics, state = None, None, None
        named = None
        if len(accepted) < self.min_accepted:  # record the round, then stop loudly: nothing to train on
            self.core.commit_train(server_round, judgements, None, t_check, None)
            raise TooFewAcceptedError.of(server_round, judgements, self.min_accepted, self.core.ledger.uri)
        try:
            if accepted:  # none accepted (min_accepted=0): nothing to aggregate; model and state stay, as verify checks
                arrays, metrics = self.strategy.aggregate_train(server_round, accepted)
                if arrays is not None:  # the global model keeps the initial dtypes, whatever the strategy returns
                    views = arrays_of(arrays)
                    named = self.core.cast_aggregate(server_round, views)
                    if not all_finite(named):  # never a NaN model: the round keeps the model and the run stops
                        named = None
                        raise ValueError("the aggregate has non-finite values")
                    if any(c is not v for (_, c), (_, v) in zip(named, views)):  # re-serialize only what was cast
                        arrays = ArrayRecord({n: Array(np.ascontiguousarray(a)) for n, a in named})
                state = strategy_state(self.strategy)
        except Exception as e:  # the last line: the checks should have refused whatever the strategy refuses
            raise AggregationError(server_round, self.strategy, e) from e
        finally:  # the replies are recorded even when the wrapped strategy fails
            self.core.commit_train(server_round, judgements, named, t_check, state)
        return arrays, metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Add the ledger context to the evaluate config, then delegate."""
        server_round += self._offset
        config = self._with_context("evaluate", server_round, None, config)
        return self._personalize(self.strategy.configure_evaluate(server_round, arrays, config, grid))

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Aggregate verified evaluate replies; record them and the aggregate in a block."""
        server_round += self._offset
        replies = list(replies)
        accepted, judgements = self._judge("evaluate", server_round, replies)
        metrics = None
        try:
            metrics = self.strategy.aggregate_evaluate(server_round, accepted)
        except Exception as e:  # noqa: BLE001 - recorded below, then the run stops with the reason
            raise AggregationError(server_round, self.strategy, e) from e
        finally:  # every judged reply is on the ledger, whatever the wrapped strategy does
            if replies:
                self.core.commit_evaluation(server_round, "federated", len(accepted),
                                            dict(metrics.items()) if metrics is not None else {}, judgements)
        return metrics

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3, timeout: float = 3600,
              train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None) -> Result:
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
            log(INFO, "[flower-chain] resuming federation %s after round %d%s", self.federation_id, self._offset,
                f" with the strategy state of {len(state)} arrays" if state else "")
            if self._offset >= num_rounds:  # num_rounds counts every round of the federation, not extra ones
                log(INFO, "[flower-chain] nothing to do: %s already records round %d and num_rounds is %d "
                    "(it counts all rounds: pass a larger num_rounds to continue)", self.core.ledger.uri,
                    self._offset, num_rounds)
                for line in self.core.summary_lines():
                    log(INFO, "%s", line)
                return Result(arrays=initial_arrays)
        def recording_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            server_round += self._offset
            res = evaluate_fn(server_round, arrays)
            resumed_initial = self._offset and server_round == self._offset  # recorded before the crash
            if res is not None and not resumed_initial:
                self.core.commit_evaluation(server_round, "centralized", 0, dict(res.items()))
            return res

        try:
            return super().start(grid, initial_arrays, num_rounds - self._offset, timeout, train_config,
                                 evaluate_config, recording_fn if evaluate_fn is not None else None)
        finally:  # where the ledger is and how to check it, whether the run finished or failed
            for line in self.core.summary_lines():
                log(INFO, "%s", line)

    def resume_arrays(self) -> ArrayRecord:
        """The global model after the last recorded round, from the blob store, digest checked."""
        return ArrayRecord({n: Array(np.ascontiguousarray(a)) for n, a in self.core.resume_arrays()})

    def close(self) -> None:
        self.core.close()

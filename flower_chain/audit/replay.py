"""Aggregation replay: recompute every round's global model from the ledger and compare it bit for bit.

An auditor who trusts nothing the server says can re-derive each train round's
``model_after`` from what the ledger stores: the round's input model
(``model_before``), the accepted client updates (their arrays in the blob store
under the ``arrays_digest`` each client signed), the strategy's state before the
round (``state_after`` of the block before), and the strategy itself (its class
name in the genesis, its scalar settings in the blob store under the genesis'
``config_digest``). :func:`audit` rebuilds the strategy, hands it the accepted
replies exactly as :class:`~flower_chain.strategies.LedgerStrategy` did (sorted
by key id, one ArrayRecord and one MetricRecord each), casts the aggregate back
to the input model's dtypes with :func:`~flower_chain.ledger.arrays.cast_like`,
and checks the digest against the signed header — and the strategy's new state
against ``state_after``. Every blob is checked against its digest before use.

Each round is replayed on its own, from the recorded state before it (as a
resume would start), so one bad round does not hide the others and rounds after
a ``--resume`` replay the same way as rounds before it. Because the state after
each round is checked too, the whole chain of states is re-derived from the
fresh strategy at round 1.

Replayable strategies
---------------------
* Flower's Message-API strategies (``flwr.serverapp.strategy``): FedAvg,
  FedProx, FedAdam, FedYogi, FedAdagrad, FedAvgM, FedMedian, FedTrimmedAvg,
  Krum, MultiKrum, Bulyan, QFedAvg, and the differential-privacy wrappers when
  they add no noise (``noise_multiplier`` 0 and, for adaptive clipping,
  ``clipped_count_stddev`` 0) and the genesis configuration records the
  strategy they wrap (keys ``strategy.class`` and ``strategy.<setting>``).
* A strategy of your own that declares itself replayable::

      class MyStrategy(FedAvg):
          flower_chain_replayable = True

          @classmethod
          def from_ledger_config(cls, config: dict) -> "MyStrategy":
              return cls(**config)          # the settings recorded in the genesis

  Its class name must be the genesis' ``strategy``; pass the class to
  :func:`audit` (``strategy_classes``) or name it on the command line
  (``flower-chain ledger audit URI --strategy-class mypkg.module:MyStrategy``).
  The replay calls ``configure_train(round, model, ConfigRecord(), grid)`` and
  then ``aggregate_train(round, replies)``; the aggregate must depend only on
  the model, the replies, the settings and the state the strategy exposes with
  ``state_dict()``/``load_state_dict()`` (see :mod:`flower_chain.strategies.state`).

Ledgers of Flower's legacy API (:class:`~flower_chain.strategies.LegacyLedgerStrategy`) are not
replayed (reported as not re-derivable): the legacy strategies aggregate differently in the last bits.

Rounds whose inputs are not all in the blob store (ledgers written before the
updates were stored, ``store_client_updates=False``, rounds over 64 MiB of
updates) or whose strategy cannot be replayed are reported as *not re-derivable*,
with the reason, never as verified.

This module imports flwr (its strategies are the reference) but not torch.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from flower_chain.ledger.arrays import array_digest, cast_like, decode_arrays, first_nonfinite
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.encoding import decode
from flower_chain.ledger.entries import ACCEPTED, EvaluationEntry, UpdateEntry, decode_entry
from flower_chain.ledger.policy import strategy_metrics
from flower_chain.ledger.text import is_decimal, safe_text
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.writer import read_genesis
from flower_chain.strategies.state import load_strategy_state, strategy_state

#: Flower strategies the replay knows how to rebuild from their recorded settings.
BUNDLED = ("FedAvg", "FedProx", "FedAdam", "FedYogi", "FedAdagrad", "FedAvgM", "FedMedian", "FedTrimmedAvg",
           "Krum", "MultiKrum", "Bulyan", "QFedAvg")
#: Flower's differential-privacy wrappers: replayable without noise, when the wrapped strategy is recorded.
DP_WRAPPERS = ("DifferentialPrivacyServerSideFixedClipping", "DifferentialPrivacyClientSideFixedClipping",
               "DifferentialPrivacyServerSideAdaptiveClipping", "DifferentialPrivacyClientSideAdaptiveClipping")
#: Settings only Flower's legacy strategies (``flwr.server.strategy``, LegacyLedgerStrategy) have.
LEGACY_SETTINGS = ("fraction_fit", "min_fit_clients", "min_available_clients", "accept_failures")
#: The class attribute a strategy of your own sets to ``True`` to be replayed (with ``from_ledger_config``).
REPLAYABLE_ATTR = "flower_chain_replayable"

OK, MISMATCH, NOT_REDERIVABLE = "ok", "mismatch", "not-rederivable"


class AuditInputError(LedgerError):
    """The audit cannot start: a strategy class that cannot be imported, a ledger without a genesis."""


class NotReplayable(Exception):
    """The recorded strategy cannot be rebuilt or replayed deterministically (the message says why)."""


@dataclass
class RoundAudit:
    """The replay of one block: ``status`` is ``ok``, ``mismatch`` or ``not-rederivable``.

    ``train`` is False for a block that records no train update (evaluation, revocation) and is listed
    only because it changes the global model or the strategy state, which such a block must not do.
    """

    height: int
    round: int
    status: str
    detail: str = ""
    accepted: int = 0
    train: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class AuditReport:
    """What :func:`audit` re-derived."""

    uri: str
    strategy: str
    rounds: list[RoundAudit] = field(default_factory=list)
    seconds: float = 0.0
    updates_replayed: int = 0

    @property
    def mismatches(self) -> list[RoundAudit]:
        return [r for r in self.rounds if r.status == MISMATCH]

    @property
    def not_rederived(self) -> list[RoundAudit]:
        return [r for r in self.rounds if r.status == NOT_REDERIVABLE]

    @property
    def rederived(self) -> list[RoundAudit]:
        return [r for r in self.rounds if r.status == OK]

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "strategy": self.strategy, "seconds": self.seconds,
                "updates_replayed": self.updates_replayed,
                "rounds_rederived": [r.round for r in self.rederived],
                "mismatches": [r.to_dict() for r in self.mismatches],
                "not_rederivable": [r.to_dict() for r in self.not_rederived],
                "ok": not self.mismatches}


# --- rebuilding the strategy -------------------------------------------------------------------------------


def load_class(spec: str) -> type:
    """Import ``module:Class`` (or ``module.Class``); raise :class:`AuditInputError` with what to fix."""
    mod, sep, name = spec.partition(":")
    if not sep:
        mod, _, name = spec.rpartition(".")
    if not mod or not name:
        raise AuditInputError(f"--strategy-class {spec!r}: write it as package.module:ClassName")
    try:
        cls = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise AuditInputError(f"cannot import the strategy class {spec!r}: {e}") from e
    if not isinstance(cls, type):
        raise AuditInputError(f"{spec!r} is not a class")
    return cls


def _flwr_class(name: str) -> type:
    import flwr.serverapp.strategy as flwr_strategies

    return getattr(flwr_strategies, name)


def _nested(config: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The settings of the strategy a wrapper wraps: keys ``strategy.<name>`` without the prefix."""
    return {k[len(prefix):]: v for k, v in config.items() if k.startswith(prefix)}


def _construct(cls: type, config: dict[str, Any], **extra: Any) -> Any:
    """``cls(**kwargs)`` from the recorded settings its constructor takes, then every recorded setting set as is.

    Setting the attributes afterwards reproduces what ``__init__`` derived (FedAvg sets
    ``min_evaluate_nodes`` to 0 when ``fraction_evaluate`` is 0, and that is what was recorded).
    """
    params = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in config.items() if k in params and "." not in k}
    if "initial_clipping_norm" in params and "clipping_norm" in config:
        kwargs["initial_clipping_norm"] = config["clipping_norm"]
    try:
        obj = cls(**kwargs, **extra)
    except (TypeError, ValueError) as e:
        raise NotReplayable(f"{cls.__name__} cannot be rebuilt from the recorded settings: {e}") from e
    for k, v in config.items():
        if "." not in k:
            try:
                setattr(obj, k, v)
            except AttributeError as e:
                raise NotReplayable(f"{cls.__name__} does not take the recorded setting {k!r}: {e}") from e
    return obj


def strategy_factory(name: str, config: dict[str, Any],
                     classes: Sequence[type] = ()) -> Callable[[], Any]:
    """A function returning a fresh strategy ``name`` configured as recorded; raise :class:`NotReplayable`."""
    custom = {c.__name__: c for c in classes}
    if name in custom:
        cls = custom[name]
        if not getattr(cls, REPLAYABLE_ATTR, False) or not callable(getattr(cls, "from_ledger_config", None)):
            raise NotReplayable(f"{cls.__module__}.{name} does not declare itself replayable (set the class "
                                f"attribute {REPLAYABLE_ATTR} = True and define the classmethod from_ledger_config)")
        return lambda: cls.from_ledger_config(dict(config))
    legacy = sorted(set(config) & set(LEGACY_SETTINGS))
    if legacy and (name in BUNDLED or name in DP_WRAPPERS):
        raise NotReplayable(f"the ledger was written through Flower's legacy API (flwr.server.strategy.{name}: "
                            f"settings {', '.join(legacy)}); the replay covers the Message-API strategies "
                            "(flwr.serverapp.strategy), whose aggregation differs in the last bits")
    if name in BUNDLED:
        cls = _flwr_class(name)
        _construct(cls, config)  # fail now, not once per round
        return lambda: _construct(cls, config)
    if name in DP_WRAPPERS:
        noisy = [k for k in ("noise_multiplier", "clipped_count_stddev") if config.get(k)]
        if noisy:
            raise NotReplayable(f"{name} adds random noise ({', '.join(f'{k}={config[k]}' for k in noisy)}): "
                                "its aggregate cannot be recomputed")
        inner_name = config.get("strategy.class")
        if not isinstance(inner_name, str):
            raise NotReplayable(f"the genesis configuration of {name} does not record the strategy it wraps "
                                "(no 'strategy.class' setting)")
        inner = strategy_factory(inner_name, _nested(config, "strategy."), classes)
        cls = _flwr_class(name)
        _construct(cls, config, strategy=inner())
        return lambda: _construct(cls, config, strategy=inner())
    raise NotReplayable(f"{name or 'the recorded strategy'} is neither one of Flower's strategies the replay "
                        "knows nor a strategy class given with --strategy-class that declares itself replayable")


# --- the replay ------------------------------------------------------------------------------------------


class _ReplayGrid:
    """Just enough of a Grid for ``configure_train``: the nodes that replied, padded to the strategy's minimum."""

    def __init__(self, node_ids: Iterable[int], minimum: int) -> None:
        ids = list(dict.fromkeys(node_ids))
        filler = (n for n in range(1, 1 << 62) if n not in set(ids))
        while len(ids) < minimum:
            ids.append(next(filler))
        self.node_ids = ids

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)


@contextlib.contextmanager
def _sandbox() -> Iterator[None]:
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


@contextlib.contextmanager
def _quiet_flwr() -> Iterator[None]:
    """Flower's strategies log every configure/aggregate call; a replay of hundreds of rounds stays quiet."""
    import logging

    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _record(named: Sequence[tuple[str, np.ndarray]]):
    from flwr.app import Array, ArrayRecord

    return ArrayRecord({n: Array(np.ascontiguousarray(a)) for n, a in named})


def _metric_value(v: Any) -> Any:
    if isinstance(v, bool) or not isinstance(v, (int, float, list)):
        return None
    if isinstance(v, list) and not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        return None
    return v


def _reply(entry: UpdateEntry, named: Sequence[tuple[str, np.ndarray]], server_round: int):
    """The accepted reply as the wrapped strategy received it: one ArrayRecord, one MetricRecord."""
    from flwr.app import Message, Metadata, MetricRecord, RecordDict

    metrics = {k: v for k, v in strategy_metrics(entry.metrics).items() if _metric_value(v) is not None}
    node = int(entry.node_id) if is_decimal(entry.node_id) else 0
    meta = Metadata(run_id=0, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="",
                    group_id=str(server_round), created_at=0.0, ttl=0.0, message_type="train")
    return Message(content=RecordDict({"arrays": _record(named), "metrics": MetricRecord(metrics)}), metadata=meta)


class _Missing(Exception):
    pass


def _blob_arrays(ledger: Ledger, digest: bytes, what: str) -> list[tuple[str, np.ndarray]]:
    """Arrays stored under ``digest``, the blob checked against it; :class:`_Missing` when absent or wrong."""
    try:
        data = ledger.get_blob(digest)
    except LedgerError:
        raise _Missing(f"{what} {digest.hex()[:16]} is not in the blob store") from None
    if hashlib.sha256(data).digest() != digest:  # the blob's address is the SHA-256 of the array stream
        raise _Missing(f"the stored {what} {digest.hex()[:16]} does not match its digest")
    try:
        return decode_arrays(data)
    except LedgerError as e:
        raise _Missing(f"the stored {what} {digest.hex()[:16]} does not decode: {e}") from None


def read_config(ledger: Ledger) -> tuple[str, dict[str, Any] | None, str]:
    """The genesis' strategy name, its recorded settings (``None`` when not stored) and why not."""
    genesis = read_genesis(ledger)
    try:
        data = ledger.get_blob(genesis.config_digest)
    except LedgerError:
        return genesis.strategy, None, ("the strategy's settings (genesis config_digest) are not in the blob store: "
                                        "the ledger was written before they were stored")
    if hashlib.sha256(data).digest() != genesis.config_digest:
        return genesis.strategy, None, "the stored strategy settings do not match the genesis config_digest"
    try:
        config = decode(data)
    except LedgerError as e:
        return genesis.strategy, None, f"the stored strategy settings do not decode: {e}"
    if not isinstance(config, dict):
        return genesis.strategy, None, "the stored strategy settings are not a map"
    return genesis.strategy, config, ""


def _replay_round(ledger: Ledger, factory: Callable[[], Any], server_round: int, header, accepted: list[UpdateEntry],
                  state_before: bytes) -> tuple[str, str]:
    """(status, detail) of one train block."""
    try:
        model = _blob_arrays(ledger, header.model_before, "global model (model_before)")
        state = _blob_arrays(ledger, state_before, "strategy state") if state_before else []
        updates, absent, bad = [], 0, []
        for e in accepted:
            try:
                updates.append(_blob_arrays(ledger, e.arrays_digest, f"client update of {e.key_id}"))
            except _Missing as m:
                absent += "is not in the blob store" in str(m)
                bad += [] if "is not in the blob store" in str(m) else [str(m)]
        if absent or bad:
            what = [f"{absent} of {len(accepted)} accepted client updates are not in the blob store"] if absent else []
            raise _Missing("; ".join(what + bad))
    except _Missing as m:
        return NOT_REDERIVABLE, str(m)
    strategy = factory()
    with _sandbox():
        from flwr.app import ConfigRecord

        load_strategy_state(strategy, state)
        minimum = max(int(getattr(strategy, "min_available_nodes", 0) or 0),
                      int(getattr(strategy, "min_train_nodes", 0) or 0), len(accepted), 1)
        grid = _ReplayGrid([int(e.node_id) for e in accepted if is_decimal(e.node_id)], minimum)
        list(strategy.configure_train(server_round, _record(model), ConfigRecord({}), grid))
        replies = [_reply(e, u, server_round) for e, u in zip(accepted, updates)]
        try:
            aggregated, _ = strategy.aggregate_train(server_round, replies)
            failed = None
        except Exception as exc:  # noqa: BLE001 - the server records the round with the model unchanged
            aggregated, failed = None, f"{type(exc).__name__}: {exc}"
    cast = None
    if aggregated is not None:
        try:
            cast = cast_like([(k, v.numpy()) for k, v in aggregated.items()], [a.dtype for _, a in model])
        except LedgerError as e:
            return MISMATCH, f"the replayed aggregate does not fit the round's model: {e}"
        if first_nonfinite(cast) is not None:  # as the server does: it refuses the model and keeps the old one
            cast, failed = None, "a non-finite aggregate"
    if cast is not None:
        after = array_digest(cast)
        state = strategy_state(strategy)
        state_after = array_digest(state) if state else b""
    else:
        after, state_after = header.model_before, state_before
    if after != header.model_after:
        why = f" (the replayed strategy raised {failed}, so the model should not have changed)" if failed else ""
        return MISMATCH, (f"model_after {header.model_after.hex()[:16]} is not the aggregate of the {len(accepted)} "
                          f"accepted updates, {after.hex()[:16]}{why}")
    if state_after != header.state_after:
        return MISMATCH, (f"state_after {header.state_after.hex()[:16] or '(none)'} is not the replayed strategy "
                          f"state {state_after.hex()[:16] or '(none)'}")
    return OK, ""


def _replay_evaluation(factory: Callable[[], Any], server_round: int, accepted: list[UpdateEntry],
                       summary: EvaluationEntry) -> tuple[str, str]:
    """(status, detail) of a federated evaluation summary: the recorded strategy's aggregate of the
    accepted evaluate replies (in key order, as the server hands them on) must be what the entry records."""
    from flwr.app import Message, Metadata, MetricRecord, RecordDict

    from flower_chain.strategies.recorder import encodable_metrics

    strategy = factory()
    replies = []
    for e in accepted:
        metrics = {k: v for k, v in strategy_metrics(e.metrics).items() if _metric_value(v) is not None}
        meta = Metadata(run_id=0, message_id="", src_node_id=int(e.node_id) if e.node_id.isdecimal() else 0,
                        dst_node_id=0, reply_to_message_id="", group_id=str(server_round), created_at=0.0,
                        ttl=0.0, message_type="evaluate")
        replies.append(Message(content=RecordDict({"metrics": MetricRecord(metrics)}), metadata=meta))
    with _sandbox():
        try:
            got = strategy.aggregate_evaluate(server_round, replies)
        except Exception:  # noqa: BLE001 - the server then records no summary metrics
            got = None
    want = encodable_metrics(dict(got.items()) if got is not None else {})
    if summary.num_replies != len(accepted) or want != summary.metrics:
        return MISMATCH, (f"the federated evaluation summary ({summary.num_replies} replies, "
                          f"{safe_text(summary.metrics, 120)}) is not the recorded strategy's aggregate of the "
                          f"{len(accepted)} accepted evaluate replies ({safe_text(want, 120)})")
    return OK, ""


def audit(ledger: Ledger, *, strategy_classes: Sequence[type] = (),
          progress: Callable[[RoundAudit], None] | None = None) -> AuditReport:
    """Replay every train round of ``ledger`` and compare with the recorded models and states.

    Parameters
    ----------
    ledger : Ledger
        An open ledger (verify it first: the audit checks aggregation, not signatures).
    strategy_classes : sequence of type
        Strategy classes of your own that declare themselves replayable (see the module docstring).
    progress : callable, optional
        Called with each :class:`RoundAudit` as it is decided.

    Returns
    -------
    AuditReport
        One :class:`RoundAudit` per train block (and per other block that changes the model or state).
    """
    with _quiet_flwr():
        return _audit(ledger, strategy_classes, progress)


def _audit(ledger: Ledger, strategy_classes: Sequence[type],
           progress: Callable[[RoundAudit], None] | None) -> AuditReport:
    t0 = time.perf_counter()
    name, config, why = read_config(ledger)
    report = AuditReport(uri=ledger.uri, strategy=name)
    factory = None
    if config is not None:
        try:
            factory = strategy_factory(name, config, strategy_classes)
        except NotReplayable as e:
            why = str(e)
    state_before, model = b"", b""
    for block in ledger.blocks(1):
        h = block.header
        entries = [decode_entry(d) for d in ledger.entries(h.first_index, h.log_size)]
        train = [e for e in entries if isinstance(e, UpdateEntry) and e.kind == "train"]
        if not train and (h.model_after != (h.model_before or model) or h.state_after != state_before):
            # a block without train updates (evaluation, revocation, cosignatures, empty) must not change them
            ra = RoundAudit(h.height, h.round, MISMATCH, "the block records no train update but changes the "
                            "global model or the strategy state", train=False)
            report.rounds.append(ra)
            if progress:
                progress(ra)
        evaluate = [e for e in entries if isinstance(e, UpdateEntry) and e.kind == "evaluate"]
        summaries = [e for e in entries if isinstance(e, EvaluationEntry) and e.source == "federated"]
        if evaluate and summaries:
            accepted = sorted((e for e in evaluate if e.verdict == ACCEPTED), key=lambda e: e.key_id)
            status, detail = (NOT_REDERIVABLE, why) if factory is None else \
                _replay_evaluation(factory, h.round, accepted, summaries[0])
            ra = RoundAudit(h.height, h.round, status, detail, len(accepted), train=False)
            report.rounds.append(ra)
            if progress:
                progress(ra)
        if train:
            accepted = sorted((e for e in train if e.verdict == ACCEPTED), key=lambda e: e.key_id)
            if factory is None:
                status, detail = NOT_REDERIVABLE, why
            else:
                status, detail = _replay_round(ledger, factory, h.round, h, accepted, state_before)
                report.updates_replayed += len(accepted) if status != NOT_REDERIVABLE else 0
            ra = RoundAudit(h.height, h.round, status, detail, len(accepted))
            report.rounds.append(ra)
            if progress:
                progress(ra)
        state_before = h.state_after
        model = h.model_after or model
    report.seconds = time.perf_counter() - t0
    return report

"""Aggregation replay: recompute every round's global model from the ledger and compare it bit for bit.

An auditor who trusts nothing the server says can re-derive each train round's
``model_after`` from what the ledger stores: the round's input model
(``model_before``), the accepted client updates (their arrays in the blob store
under the ``arrays_digest`` each client signed, or sealed to the auditor,
:mod:`flower_chain.ledger.sealed`), the strategy's state before the round
(``state_after`` of the block before), and the strategy itself (its class name
in the genesis, its settings in the blob store under the genesis'
``config_digest``). Every blob is checked against its digest before use.

* Message-API ledgers (:class:`~flower_chain.strategies.LedgerStrategy`): each
  round is replayed on its own from the recorded state before it
  (:mod:`flower_chain.audit.rounds`), and the state after it is checked too, so
  the whole chain of states is re-derived from the fresh strategy at round 1.
* Legacy ledgers (:class:`~flower_chain.strategies.LegacyLedgerStrategy`): one
  strategy object through every round in order (:mod:`flower_chain.audit.legacy`).

Which strategies can be rebuilt: :mod:`flower_chain.strategies.replayable` — Flower's
strategies of both APIs, the bundled app's partition-ordered FedAvg, FedAvgM
and FedAdam, the DP wrappers without noise, and a strategy of your own that
declares itself replayable::

    class MyStrategy(FedAvg):
        flower_chain_replayable = True

        @classmethod
        def from_ledger_config(cls, config: dict) -> "MyStrategy":
            return cls(**config)          # the settings recorded in the genesis

passed to :func:`audit` (``strategy_classes``) or named on the command line
(``flower-chain ledger audit URI --strategy-class mypkg.module:MyStrategy``).

Blocks of a SecAgg+ round (a ``secagg`` result entry, no plaintext update) are
left to :func:`flower_chain.audit.secagg.audit_secagg`, which re-derives them
from the protocol transcript (``ledger audit`` runs both).

A round whose inputs are not all available (updates never stored,
``store_client_updates=False``, sealed without the auditor's key given) or
whose strategy cannot be replayed is reported as *not re-derivable*, with the
reason, never as verified; :attr:`AuditReport.audited` is true only when every
round was re-derived.

This module imports flwr (lazily: its strategies are the reference) but not torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flower_chain.audit.inputs import Inputs, read_config
from flower_chain.audit.legacy import LegacyReplay
from flower_chain.audit.rounds import MISMATCH, NOT_REDERIVABLE, OK, replay_evaluation, replay_train
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.block import BlockHeader
from flower_chain.ledger.entries import ACCEPTED, EvaluationEntry, UpdateEntry, decode_entry
from flower_chain.ledger.writer import read_genesis
from flower_chain.strategies.replayable import (
    BUNDLED,
    DP_WRAPPERS,
    LEGACY_SETTINGS,
    REPLAYABLE_ATTR,
    AuditInputError,
    NotReplayable,
    is_legacy,
    legacy_factory,
    load_class,
    quiet_flwr,
    strategy_factory,
)

__all__ = [
    "BUNDLED",
    "DP_WRAPPERS",
    "LEGACY_SETTINGS",
    "MISMATCH",
    "NOT_REDERIVABLE",
    "OK",
    "REPLAYABLE_ATTR",
    "AuditInputError",
    "AuditReport",
    "NotReplayable",
    "RoundAudit",
    "audit",
    "load_class",
    "strategy_factory",
]


@dataclass
class RoundAudit:
    """The replay of one block: ``status`` is ``ok``, ``mismatch`` or ``not-rederivable``.

    ``kind`` is ``train`` (a train block), ``evaluate`` (a federated evaluation summary) or ``block``
    (a block that records no train update, listed only because it changes the global model or the
    strategy state); ``train`` is ``kind == "train"``. ``sealed`` is True when the round's updates are
    sealed to an auditor key that was not given.
    """

    height: int
    round: int
    status: str
    detail: str = ""
    accepted: int = 0
    kind: str = "train"
    sealed: bool = False

    @property
    def train(self) -> bool:
        return self.kind == "train"

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "train": self.train}


@dataclass
class AuditReport:
    """What :func:`audit` re-derived."""

    uri: str
    strategy: str
    rounds: list[RoundAudit] = field(default_factory=list)
    seconds: float = 0.0
    updates_replayed: int = 0
    sealed_opened: int = 0
    secagg_blocks: int = 0

    def _of(self, status: str, kind: str | None = None) -> list[RoundAudit]:
        return [r for r in self.rounds if r.status == status and (kind is None or r.kind == kind)]

    @property
    def mismatches(self) -> list[RoundAudit]:
        return self._of(MISMATCH)

    @property
    def not_rederived(self) -> list[RoundAudit]:
        return self._of(NOT_REDERIVABLE)

    @property
    def rederived(self) -> list[RoundAudit]:
        return self._of(OK)

    @property
    def train_rounds(self) -> list[RoundAudit]:
        """One per train block (its status whatever it is)."""
        return [r for r in self.rounds if r.train]

    @property
    def train_rederived(self) -> list[RoundAudit]:
        return self._of(OK, kind="train")

    @property
    def evaluations(self) -> list[RoundAudit]:
        """One per federated evaluation summary replayed (its status whatever it is)."""
        return [r for r in self.rounds if r.kind == "evaluate"]

    @property
    def audited(self) -> bool:
        """Every round (train and evaluation) was re-derived and agrees with the record."""
        return all(r.status == OK for r in self.rounds)

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "strategy": self.strategy,
            "seconds": self.seconds,
            "updates_replayed": self.updates_replayed,
            "sealed_opened": self.sealed_opened,
            "secagg_blocks": self.secagg_blocks,
            "train_rounds": len(self.train_rounds),
            "rounds_rederived": [r.round for r in self.train_rederived],
            "evaluations_rederived": [r.round for r in self._of(OK, kind="evaluate")],
            "mismatches": [r.to_dict() for r in self.mismatches],
            "not_rederivable": [r.to_dict() for r in self.not_rederived],
            "audited": self.audited,
            "ok": not self.mismatches,
        }


def audit(
    ledger: Ledger,
    *,
    strategy_classes: Sequence[type] = (),
    audit_key: Any = None,
    progress: Callable[[RoundAudit], None] | None = None,
) -> AuditReport:
    """Replay every train round (and federated evaluation) of ``ledger`` and compare with the record.

    Parameters
    ----------
    ledger : Ledger
        An open ledger (verify it first: the audit checks aggregation, not signatures).
    strategy_classes : sequence of type
        Strategy classes of your own that declare themselves replayable (see the module docstring).
    audit_key : X25519PrivateKey, optional
        The auditor's private key, which opens updates stored sealed to it.
    progress : callable, optional
        Called with each :class:`RoundAudit` as it is decided.

    Returns
    -------
    AuditReport
        One :class:`RoundAudit` per train block, per federated evaluation summary, and per other block
        that changes the model or state.
    """
    with quiet_flwr():
        return _Audit(ledger, strategy_classes, audit_key, progress).run()


def _secagg_result(entry: Any) -> bool:
    """A SecAgg+ round's successful result entry: the block changes the model with no plaintext update in it."""
    return (
        getattr(entry, "TYPE", "") == "secagg"
        and getattr(entry, "stage", "") == "result"
        and isinstance(entry.data, dict)
        and not entry.data.get("failure")
    )


class _Audit:
    """One pass over the ledger's blocks."""

    def __init__(
        self, ledger: Ledger, classes: Sequence[type], audit_key: Any, progress: Callable[[RoundAudit], None] | None
    ) -> None:
        genesis = read_genesis(ledger)
        self.ledger, self.progress = ledger, progress
        self.inputs = Inputs(ledger, genesis, audit_key)
        self.report = AuditReport(uri=ledger.uri, strategy=genesis.strategy)
        self.factory: Callable[[], Any] | None = None
        self.legacy: LegacyReplay | None = None
        config, self.why = read_config(ledger, genesis)
        if config is None:
            return
        try:
            if is_legacy(config):  # a class of one's own (--strategy-class) included: the legacy replay runs it
                self.legacy = LegacyReplay(
                    self.inputs, legacy_factory(genesis.strategy, config, classes), genesis.strategy
                )
            else:
                self.factory = strategy_factory(genesis.strategy, config, classes)
        except NotReplayable as e:
            self.why = str(e)

    def _add(self, ra: RoundAudit) -> None:
        self.report.rounds.append(ra)
        if self.progress:
            self.progress(ra)

    def run(self) -> AuditReport:
        t0 = time.perf_counter()
        state_before, model = b"", b""
        for block in self.ledger.blocks(1):
            h = block.header
            first = h.first_index
            entries = [(first + i, decode_entry(d)) for i, d in enumerate(self.ledger.entries(first, h.log_size))]
            updates = [(i, e) for i, e in entries if isinstance(e, UpdateEntry)]
            train = [(i, e) for i, e in updates if e.kind == "train"]
            secagg = any(_secagg_result(e) for _, e in entries)  # audited from its transcript (audit_secagg)
            if secagg and not train:
                self.report.secagg_blocks += 1
            elif not train and (h.model_after != (h.model_before or model) or h.state_after != state_before):
                # a block without train updates (evaluation, revocation, cosignatures, empty) must not change them
                self._add(
                    RoundAudit(
                        h.height,
                        h.round,
                        MISMATCH,
                        "the block records no train update but changes the global model or the strategy state",
                        kind="block",
                    )
                )
            if train:
                self._train(h, train, state_before)
            self._evaluation(
                h,
                [(i, e) for i, e in updates if e.kind == "evaluate"],
                [e for _, e in entries if isinstance(e, EvaluationEntry) and e.source == "federated"],
            )
            state_before = h.state_after
            model = h.model_after or model
        self.report.sealed_opened = self.inputs.sealed_opened
        self.report.seconds = time.perf_counter() - t0
        return self.report

    def _train(self, h: BlockHeader, train: list[tuple[int, UpdateEntry]], state_before: bytes) -> None:
        accepted = sorted(((i, e) for i, e in train if e.verdict == ACCEPTED), key=lambda t: t[1].key_id)
        if self.legacy is not None:
            failures = sum(1 for _, e in train if e.reason == "client-error")
            status, detail = self.legacy.train(h, accepted, failures)
        elif self.factory is not None:
            status, detail = replay_train(self.inputs, self.factory, h, accepted, state_before)
        else:
            status, detail = NOT_REDERIVABLE, self.why
        if status != NOT_REDERIVABLE:
            self.report.updates_replayed += len(accepted)
        sealed = status == NOT_REDERIVABLE and "--audit-key" in detail
        self._add(RoundAudit(h.height, h.round, status, detail, len(accepted), sealed=sealed))

    def _evaluation(
        self, h: BlockHeader, evaluate: list[tuple[int, UpdateEntry]], summaries: list[EvaluationEntry]
    ) -> None:
        if not (evaluate and summaries):
            return
        accepted = [
            e for _, e in sorted(((i, e) for i, e in evaluate if e.verdict == ACCEPTED), key=lambda t: t[1].key_id)
        ]
        if self.legacy is not None:
            failures = sum(1 for _, e in evaluate if e.reason == "client-error")
            status, detail = self.legacy.evaluate(h.round, accepted, failures, summaries[0], h.model_after)
        elif self.factory is not None:
            status, detail = replay_evaluation(self.factory, h.round, accepted, summaries[0])
        else:
            status, detail = NOT_REDERIVABLE, self.why
        self._add(RoundAudit(h.height, h.round, status, detail, len(accepted), kind="evaluate"))

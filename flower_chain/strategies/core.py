"""The server side shared by :class:`LedgerStrategy` and :class:`LegacyLedgerStrategy`.

Framework-neutral (neither torch nor flwr): replies arrive parsed
(:mod:`flower_chain.strategies.replies`), are judged
(:mod:`flower_chain.strategies.judge`), recorded
(:mod:`flower_chain.strategies.recorder`) and answered with receipts
(:mod:`flower_chain.strategies.receipts`); :mod:`flower_chain.strategies.rounds`
runs a judged round on it (aggregate, record in ``finally``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger import open_ledger
from flower_chain.ledger.arrays import cast_like
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.cosignature import check_client_cosignature
from flower_chain.ledger.entries import CosignatureEntry, EvaluationEntry, UpdateEntry
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.inspect import entries_of
from flower_chain.ledger.keys import Keyring, raw_public, verify_signature
from flower_chain.ledger.policy import CURRENT_STATEMENT_REASONS
from flower_chain.ledger.text import safe_text
from flower_chain.strategies._gcpause import cyclic_gc_paused
from flower_chain.strategies.errors import AggregationError, TooFewAcceptedError
from flower_chain.strategies.judge import Judge, Judgement, Prepared, Reply
from flower_chain.strategies.options import LedgerOptions, flower_run_id  # noqa: F401 - flower_run_id: importable here
from flower_chain.strategies.receipts import ReceiptServer
from flower_chain.strategies.recorder import Recorder
from flower_chain.strategies.summary import summary_lines
from flower_chain.wire import LedgerContext

log = logging.getLogger(__name__)
NamedArrays = Sequence[tuple[str, np.ndarray]]
__all__ = ["AggregationError", "Judgement", "LedgerCore", "LedgerOptions", "Reply", "TooFewAcceptedError"]


class LedgerCore:
    """The server side of flower-chain: a judge, receipts and a recorder over one ledger.

    :class:`~flower_chain.strategies.judge.Judge` decides verdicts (by
    :mod:`flower_chain.ledger.policy` alone), :class:`~flower_chain.strategies.receipts.ReceiptServer`
    says what each node is sent, :class:`~flower_chain.strategies.recorder.Recorder`
    writes the blocks. The strategies talk to this facade.

    Parameters
    ----------
    ledger, keyring, server_key : optional
        The first three :class:`~flower_chain.strategies.options.LedgerOptions` fields, positionally.
    options : LedgerOptions, optional
        The settings (:mod:`flower_chain.strategies.options`); keyword arguments named as its fields
        are applied over it (``LedgerCore(uri, keyring, key, store_models=False)``).
    strategy_name : str
        Recorded in the genesis.
    strategy_config : Mapping, optional
        Digest recorded in the genesis.

    Notes
    -----
    A train block may be written behind the caller (``commit_train(..., defer=True)``, what
    :meth:`LedgerStrategy.start <flower_chain.strategies.LedgerStrategy.start>` asks for inside Flower's
    loop): its blobs and block go to the ledger on a thread of their own while the server goes on (the
    centralized evaluation), and every method that reads or writes the ledger, or sends anything to a
    node, first waits until that block is durable (:meth:`settle`) and raises what writing it raised.
    Nothing a node is sent ever names a block that is not durable yet, and a crash leaves the ledger as
    a crash during the synchronous write would: the last block whole or not at all.

    After every block the checkpoint goes to the ``witnesses`` (:mod:`flower_chain.strategies.witnessing`),
    never waited on beyond ``witness_timeout``; ``verify_workers`` threads hash and verify the replies.
    """

    def __init__(
        self,
        ledger: Ledger | str | None = None,
        keyring: Keyring | Mapping[str, bytes] | str | Path | None = None,
        server_key: Ed25519PrivateKey | str | Path | None = None,
        *,
        options: LedgerOptions | None = None,
        strategy_name: str = "",
        strategy_config: Mapping[str, Any] | None = None,
        **settings: Any,
    ) -> None:
        for name, value in (("ledger", ledger), ("keyring", keyring), ("server_key", server_key)):
            if value is not None:
                settings[name] = value
        self.options = opts = LedgerOptions.of(options, **settings)
        federation_id, anchor = opts.federation_id, opts.anchor
        # Keys first: a bad key or keyring is an error before anything is written (no empty ledger left behind).
        self.server_key = opts.load_server_key()
        keys = opts.load_keys()
        audit_key = opts.load_audit_key()  # a bad auditor key too
        target = opts.ledger_target()
        self.ledger = open_ledger(target, create=True) if isinstance(target, str) else target
        self.recorder = Recorder(
            self.ledger,
            self.server_key,
            store_models=opts.store_models,
            store_client_updates=opts.store_client_updates,
            audit_key=audit_key,
        )
        self.receipts = ReceiptServer(self.ledger, raw_public(self.server_key))
        self._stats: dict[int, dict[str, Any]] = {}
        self._pending: Future | None = None  # a train block being written behind the caller (write-behind)
        self._blobs_for: Sequence[Judgement] | None = None  # the judgements whose update blobs went ahead
        self._blobs_seconds = 0.0  # how long writing them took
        self._blobs_done: Sequence[Judgement] | None = None  # set by the commit thread once they are written
        self._commit_pool: ThreadPoolExecutor | None = None
        self._committing = threading.local()  # set on the thread that writes a deferred block
        self.verdicts: Counter = Counter()  # (kind, reason) -> replies judged by this server process
        self.anchor = None
        self._parents: dict[tuple[str, int], bytes] = {}
        self._dtypes: dict[int, list] = {}  # train round -> dtypes of its global model (the aggregate is cast back)
        existed = self.ledger.block_count() > 0
        if existed:
            self.recorder.open_existing(visit=self._index_existing)
            genesis = self.writer.genesis
            if federation_id and federation_id != genesis.federation_id:
                raise LedgerError(
                    f"{self.ledger.uri} records federation {genesis.federation_id!r}, not {federation_id!r}"
                )
            extra = set(keys) - set(genesis.client_keys)
            if extra:
                log.warning("keys %s are not in the ledger's genesis keyring and will be rejected", sorted(extra))
        else:
            if not keys:
                raise LedgerError("the keyring is empty: no client could ever be accepted")
            fid = federation_id or f"fed-{uuid.uuid4().hex[:12]}"
            self._attach_anchor(anchor, fid)  # before the genesis, so the genesis block is anchored too
            self.recorder.start(fid, keys, strategy_name, strategy_config)
        self.keys = dict(self.writer.genesis.client_keys)
        # one owner of the digest version and the settings digest: the genesis, for the judge and the clients
        self.judge = Judge(self.keys, self.recorder.revoked, opts.verify_workers, **self._versions())
        self.opened_at_round = self.last_round
        if existed:  # earlier blocks were anchored by the earlier run, or are caught up by the CLI
            self._attach_anchor(anchor, self.federation_id)
        self.witnessing = None
        if opts.witnesses:  # after each block: cosignatures from the witnesses, stored and sent to the clients
            from flower_chain.strategies.witnessing import Witnessing

            self.witnessing = Witnessing(
                self.ledger, list(opts.witnesses), quorum=int(opts.witness_quorum), timeout=float(opts.witness_timeout)
            )
            self.witnessing.on_block(self.writer.head)  # the head this run starts from
            self.writer.listeners.append(self.witnessing.on_block)

    def _index_existing(self, index: int, entry) -> None:
        """Index an entry of the ledger being opened for receipts: a key's own statement for its round."""
        if isinstance(entry, UpdateEntry):
            raw = self.writer.genesis.client_keys.get(entry.key_id)
            current = entry.reason in CURRENT_STATEMENT_REASONS or (
                entry.reason == "malformed"
                and raw is not None
                and verify_signature(raw, entry.signature, entry.statement)
            )
            self.receipts.index_entry(index, entry, current)

    def _attach_anchor(self, anchor, federation_id: str) -> None:
        self.anchor = anchor(federation_id) if callable(anchor) else anchor
        if self.anchor is not None:
            self.writer.listeners.append(self.anchor.submit)

    # -- write-behind ------------------------------------------------------------------------------
    def settle(self) -> None:
        """Wait until a train block written behind the caller is durable; raise what writing it raised.

        A no-op when none is pending, and on the thread writing it.
        """
        pending = self._pending
        if pending is None or getattr(self._committing, "active", False):
            return
        try:
            pending.result()  # an interrupt while waiting leaves it pending: the next settle waits again
        finally:
            if pending.done():
                self._pending = None

    def _behind(self, fn, *args) -> None:
        """Run ``fn(*args)`` on the commit thread; the next :meth:`settle` waits for it."""
        if self._commit_pool is None:
            self._commit_pool = ThreadPoolExecutor(1, thread_name_prefix="flower-chain-commit")

        def run():
            self._committing.active = True
            try:
                fn(*args)
            finally:
                self._committing.active = False

        self._pending = self._commit_pool.submit(run)

    # -- state (read-only views; each waits for a block written behind) ------------------------------
    @property
    def stats(self) -> dict[int, dict[str, Any]]:
        """Per train round: accepted, rejected, reasons, ledger time, block height and log size."""
        self.settle()
        return self._stats

    @property
    def writer(self):
        self.settle()
        return self.recorder.writer

    @property
    def federation_id(self) -> str:
        return self.recorder.federation_id

    @property
    def last_round(self) -> int:
        self.settle()
        return self.recorder.last_round

    @property
    def model_digest(self) -> bytes:
        self.settle()
        return self.recorder.model_digest

    @property
    def state_digest(self) -> bytes:
        self.settle()
        return self.recorder.state_digest

    @property
    def revoked(self) -> set[str]:
        self.settle()
        return self.recorder.revoked

    @property
    def verify_workers(self) -> int:
        return self.judge.verify_workers

    @property
    def update_index(self) -> dict[tuple[str, int], list[int]]:
        self.settle()
        return self.receipts.update_index

    @property
    def node_seen(self) -> dict[str, int]:
        self.settle()
        return self.receipts.node_seen

    @property
    def node_pending(self) -> dict[str, tuple[str, int]]:
        self.settle()
        return self.receipts.node_pending

    # -- a round -----------------------------------------------------------------------------------
    def begin(self, kind: str, server_round: int, arrays: NamedArrays | None) -> LedgerContext:
        """The ledger context of a round; the judge remembers it to check replies against."""
        self.settle()
        self.writer.check_head()
        if kind == "train" and int(server_round) <= self.last_round:
            raise LedgerError(
                f"{self.ledger.uri} already records round {self.last_round} of federation {self.federation_id}: "
                "to continue that federation pass resume=True to LedgerStrategy (run.py: --resume); for a new run "
                "give a new ledger (run.py: another --ledger or --out; in a Flower App a URI with {run_id}, e.g. "
                "'sqlite:////absolute/path/ledger-{run_id}.db', makes one per run). Nothing was written"
            )
        parent = self.writer.head_hash
        # an evaluate round is judged against the model the ledger records (its block's model_before/after),
        # not against whatever arrays the strategy sends: an evaluation of another model is not bound
        base = self.model_digest if kind == "evaluate" else b""
        rules = self.judge.begin(self.federation_id, kind, server_round, parent, arrays, base_digest=base)
        self._parents[(kind, int(server_round))] = parent
        if kind == "train" and arrays is not None:
            self._dtypes[int(server_round)] = [np.asarray(a).dtype for _, a in arrays]
            self.recorder.store_model(arrays, rules.base_digest)  # usually stored already, as last round's result
        return LedgerContext(self.federation_id, int(server_round), parent, rules.base_digest, **self._versions())

    def _versions(self) -> dict[str, Any]:
        """The genesis' digest version and settings digest (``None``, v1 statements: not a 32-byte digest)."""
        d = self.writer.genesis.config_digest
        return {"digest_version": self.recorder.digest_version, "settings_digest": d if len(d) == 32 else None}

    def max_array_bytes(self, kind: str, server_round: int) -> int:
        """Most array bytes a reply of the round may carry (the parser's bound)."""
        return self.judge.max_array_bytes(kind, server_round)

    def receipt_config(self, node_id: int | str) -> dict[str, Any]:
        """What a node gets with its next instruction (:class:`ReceiptServer`)."""
        self.settle()
        head = self.writer.head
        note = self.witnessing.note(head) if self.witnessing is not None else head.checkpoint
        return self.receipts.config(node_id, head, note)

    def judge_all(
        self,
        kind: str,
        server_round: int,
        replies: Sequence[Reply],
        prepared: Sequence[Prepared | None] | None = None,
    ) -> list[Judgement]:
        """Judge a round's replies (in arrival order) and take what verified replies say about their nodes.

        ``prepared``: the evidence of replies whose work started as they arrived (:meth:`Judge.prepare_soon`).
        """
        self.settle()
        replies = list(replies)
        if self.judge.rules(kind, server_round) is None:  # replies for a round never configured: judge them against
            parent = self.writer.head_hash  # the head they would be recorded after and the model the block starts
            base = self.model_digest  # from, as the auditor re-derives them
            try:  # its arrays give the round's template; a model not stored leaves the template unknown
                model = self.recorder.stored(base, "global model") if base else None
            except LedgerError:
                model = None
            self.judge.begin(self.federation_id, kind, server_round, parent, model, base_digest=base)
            self._parents[(kind, int(server_round))] = parent
        judgements = self.judge.judge_all(kind, server_round, replies, prepared)
        self.verdicts.update((kind, j.reason) for j in judgements)
        for r, j in zip(replies, judgements):
            self.receipts.observe(r.node_id, j.entry.key_id, j.verified, j.seen_size, j.pending_round)
        return judgements

    def cast_aggregate(self, server_round: int, aggregated: NamedArrays) -> list[tuple[str, np.ndarray]]:
        """The aggregate in the dtypes of the round's global model (no reply can change them)."""
        dtypes = self._dtypes.get(int(server_round))
        return list(aggregated) if dtypes is None or len(dtypes) != len(aggregated) else cast_like(aggregated, dtypes)

    # -- recording ---------------------------------------------------------------------------------
    def commit_train(
        self,
        server_round: int,
        judgements: Sequence[Judgement],
        aggregated: NamedArrays | None,
        seconds: float,
        state: NamedArrays | None = None,
        *,
        defer: bool = False,
    ) -> None:
        """Append the round's block: every reply judged, the model digests before and after.

        ``aggregated`` must already be in the round's dtypes (:meth:`cast_aggregate`).
        ``state`` is the wrapped strategy's state after the round
        (:func:`flower_chain.strategies.state.strategy_state`), stored beside the
        model with its digest as the block's ``state_after``; ``None`` keeps the last.
        ``defer``: write the blobs and the block on the commit thread and return at once; the next
        call that reads or writes the ledger waits for it (:meth:`settle`). ``aggregated``, ``state``
        and the judged arrays must not change until then (Flower's records are immutable bytes).
        """
        ahead, self._blobs_for = self._blobs_for is judgements, None
        self.settle()
        # their blobs went ahead (store_updates_behind) and were written: an error someone else's settle() raised
        # leaves them unwritten, and this block writes them itself
        stored, self._blobs_done = ahead and self._blobs_done is judgements, None
        if defer:
            self._behind(self._commit_train, server_round, judgements, aggregated, seconds, state, stored)
        else:
            self._commit_train(server_round, judgements, aggregated, seconds, state, stored)

    def store_updates_behind(self, judgements: Sequence[Judgement]) -> None:
        """Start writing a judged train round's update blobs on the commit thread while the caller aggregates.

        The round's :meth:`commit_train` with these same ``judgements`` then waits for them (it settles first,
        raising what writing them raised) and writes only the model, the state and the block. The judged
        arrays must not change until then (Flower's records are immutable bytes).
        """
        self.settle()
        self._blobs_for = judgements
        updates, evidence = self._blobs_of(judgements)

        def store() -> None:
            t0 = time.perf_counter()
            self.recorder.store_updates(updates, evidence)
            self._blobs_seconds = time.perf_counter() - t0  # counted in the round's ledger time
            self._blobs_done = judgements  # only once every blob is written

        self._blobs_seconds, self._blobs_done = 0.0, None
        self._behind(store)

    @staticmethod
    def _blobs_of(judgements: Sequence[Judgement]) -> tuple[list, list]:
        """(digest, arrays) of the accepted updates, and of the signed replies kept as evidence (rejected)."""
        return (
            [(j.entry.arrays_digest, j.arrays) for j in judgements if j.accepted and j.arrays is not None],
            [(j.entry.arrays_digest, j.arrays) for j in judgements if not j.accepted and j.arrays is not None],
        )

    def _commit_train(
        self,
        server_round: int,
        judgements: Sequence[Judgement],
        aggregated: NamedArrays | None,
        seconds: float,
        state: NamedArrays | None,
        blobs_stored: bool = False,
    ) -> None:
        with cyclic_gc_paused():  # the round's replies stay out of the collector's passes
            rules = self.judge.rules("train", server_round)
            before = rules.base_digest if rules else self.model_digest
            t0 = time.perf_counter()
            entries = [j.entry for j in judgements] + self._cosignatures(server_round, judgements)
            updates, evidence = self._blobs_of(judgements)
            block = self.recorder.commit_train(
                server_round,
                self._parents.get(("train", int(server_round))),
                before,
                entries,
                updates,
                aggregated,
                state,
                evidence,
                blobs_stored=blobs_stored,
            )
            self.receipts.committed(block.header.first_index, [(j.entry, j.current) for j in judgements])
            reasons = Counter(j.reason for j in judgements if not j.accepted)
            self._stats[int(server_round)] = {
                "accepted": sum(j.accepted for j in judgements),
                "rejected": sum(not j.accepted for j in judgements),
                "reasons": dict(reasons),
                "ledger_time_s": seconds + time.perf_counter() - t0 + (self._blobs_seconds if blobs_stored else 0.0),
                "block_height": block.header.height,
                "log_size": block.header.log_size,
            }
            self._log_rejections(server_round, judgements)

    def commit_evaluation(
        self,
        server_round: int,
        source: str,
        num_replies: int,
        metrics: Mapping[str, Any],
        judgements: Sequence[Judgement] = (),
    ) -> None:
        """Append a block with an evaluation summary (and the judged evaluate replies, if any)."""
        self.settle()
        with cyclic_gc_paused():  # the round's replies stay out of the collector's passes
            entries: list = [j.entry for j in judgements] + self._cosignatures(server_round, judgements)
            entries.append(self.recorder.evaluation_entry(server_round, source, num_replies, metrics))
            parent = self._parents.get(("evaluate", int(server_round))) if judgements else None
            block = self.recorder.commit(server_round, entries, parent)
            self.receipts.committed(block.header.first_index, [(j.entry, j.current) for j in judgements])
            self._log_rejections(server_round, judgements)

    def _cosignatures(self, server_round: int, judgements: Sequence[Judgement]) -> list[CosignatureEntry]:
        """The clients' cosignatures of the checkpoint they were sent (the head this round was built on).

        Only verified replies carry one into the ledger, and only a line that verifies under the
        client's genesis key over that checkpoint is recorded (``verify`` checks each again).
        """
        head = self.writer.head
        out = []
        for j in judgements:
            if not j.cosignature:
                continue
            raw = self.keys.get(j.entry.key_id)
            if raw is not None and check_client_cosignature(j.cosignature, head.checkpoint, raw):
                out.append(
                    CosignatureEntry(
                        key_id=j.entry.key_id, round=int(server_round), size=head.header.log_size, line=j.cosignature
                    )
                )
            else:
                log.warning(
                    "round %d: node %s (key %s) sent a cosignature that does not verify over the checkpoint "
                    "of size %d it was sent",
                    server_round,
                    safe_text(j.entry.node_id, 24),
                    j.entry.key_id,
                    head.header.log_size,
                )
        return out

    @staticmethod
    def _log_rejections(server_round: int, judgements: Sequence[Judgement]) -> None:
        for j in judgements:
            if not j.accepted:
                log.warning(
                    "round %d: rejected %s reply from node %s (key %s): %s — %s",
                    server_round,
                    j.entry.kind,
                    safe_text(j.entry.node_id, 24),
                    j.entry.key_id or "-",
                    j.reason,
                    safe_text(j.detail, 300),
                )

    def warn_if_not_auditable(self, strategy: Any, config: Mapping[str, Any]) -> None:
        """Log one warning line, when a new ledger starts, if `flower-chain ledger audit` cannot re-derive the run."""
        from flower_chain.strategies.auditable import why_not_auditable  # noqa: PLC0415 - imports flwr lazily itself

        if line := why_not_auditable(strategy, config, self.options.store_client_updates):
            log.warning("%s", line)

    def summary_lines(self) -> list[str]:
        """The end-of-run summary (:func:`flower_chain.strategies.summary.summary_lines`)."""
        self.settle()
        return summary_lines(
            self.federation_id,
            self.ledger.uri,
            self.writer.head.header.height + 1,
            self.writer.log_size,
            self.verdicts,
            self.options,
        )

    def records_evaluation(self, server_round: int, source: str = "centralized") -> bool:
        """Whether a block of ``server_round`` records its ``source`` evaluation (a resume after a crash between
        a round's train block and its evaluation block finds none, and records it then)."""
        self.settle()
        for height in range(self.ledger.block_count() - 1, 0, -1):  # back from the head, over the round's blocks
            h = self.ledger.block(height).header
            if h.round < int(server_round):
                return False
            if h.round == int(server_round) and any(
                isinstance(e, EvaluationEntry) and e.source == source and e.round == h.round
                for e in entries_of(self.ledger, h)
            ):
                return True
        return False

    def resume_arrays(self) -> list[tuple[str, np.ndarray]]:
        """The global model after the last recorded round, from the blob store, its digest checked."""
        self.settle()
        if not self.model_digest:
            raise LedgerError(f"{self.ledger.uri} records no global model to resume from")
        return self.recorder.stored(self.model_digest, "global model")

    def resume_state(self) -> list[tuple[str, np.ndarray]]:
        """The wrapped strategy's state after the last recorded round (empty if it keeps none), digest checked."""
        return self.recorder.stored(self.state_digest, "strategy state") if self.state_digest else []

    def revoke(self, kid: str, reason: str) -> None:
        """Append a revocation: later updates signed by ``kid`` are rejected as ``revoked-key``."""
        self.settle()
        self.writer.revoke(kid, reason)
        self.revoked.add(kid)

    def close(self) -> None:
        """Wait for a block written behind (raising what writing it raised, after closing), then close all."""
        try:
            self.settle()
        finally:
            if self._commit_pool is not None:
                self._commit_pool.shutdown(wait=True)
                self._commit_pool = None
            self._close_parts()

    def _close_parts(self) -> None:
        self.judge.close()
        if self.witnessing is not None:
            self.witnessing.close()
        if self.anchor is not None:
            self.anchor.close()
        self.ledger.close()

"""The client's receipt check, one step per question (no torch, no flwr).

With each instruction the server sends the signed checkpoint of its ledger,
the signed header of its head block, a consistency proof from the checkpoint
it sent this node last time, and inclusion proofs (C2SP tlog-proofs) of this
node's previous updates. :class:`ReceiptChecker` asks, in order:

1. **checkpoint** — is there one, under the pinned server key, for this log?
2. **witnesses** — does it carry the quorum of trusted witnesses' cosignatures?
3. **head** — is the signed head block the head of that log, for this
   federation, the block its checkpoint names (``flower-chain/head``), and
   does it record the global model received (to train or evaluate)?
4. **consistency** — does the log extend the last one this client saw?
5. **history** — is the head no rewrite of a block header this client verified
   before (same height, another hash; or the next block linking to another)?
6. **receipts** — is every update this client sent since on the ledger, accepted?

Each step returns the :mod:`~flower_chain.clients.findings` it made (each
carrying its evidence) and whether the next steps can run; the checker never
raises on what the server sent. It reads and advances the per-log state of a
:class:`~flower_chain.clients.receipt_store.ReceiptStore` inside the caller's
transaction.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from flower_chain.clients.findings import (
    CheckpointInvalid,
    Finding,
    Fork,
    ForkSuspected,
    HeadFork,
    HeadMissing,
    HeadNotNamed,
    HeadNotOfCheckpoint,
    HeadSignatureInvalid,
    HeadUndecodable,
    HeadWrongFederation,
    ModelMismatch,
    NoCheckpoint,
    ReceiptInvalid,
    ServerKeyChanged,
    ServerKeyUnusable,
    Unwitnessed,
    UpdateMissing,
    UpdateRejected,
)
from flower_chain.clients.receipt_store import ReceiptStore, checkpoint_of, origin_for
from flower_chain.ledger import merkle
from flower_chain.ledger.block import BlockHeader
from flower_chain.ledger.checkpoint import Checkpoint, head_of, verify_checkpoint
from flower_chain.ledger.cosignature import CosignerKey, verify_cosigned_checkpoint
from flower_chain.ledger.entries import ACCEPTED, UpdateEntry, decode_entry
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.keys import public_key_problem, verify_signature
from flower_chain.ledger.tlog_proof import InclusionProof
from flower_chain.wire import (
    CTX_CHECKPOINT,
    CTX_CONSISTENCY,
    CTX_CONSISTENCY_FROM,
    CTX_HEAD,
    CTX_HEAD_SIGNATURE,
    CTX_RECEIPT,
    CTX_SERVER_KEY,
    RECEIPT_SEPARATOR,
)

log = logging.getLogger("flower_chain.clients.receipts")  # one logger for the whole receipt keeper

Step = tuple[list[Finding], bool]  # the findings of a step, and whether the next steps run


@dataclass
class CheckResult:
    """What one receipt check found.

    Attributes
    ----------
    errors : int
        Errors found by this check (each also logged and counted).
    findings : list of Finding
        The errors themselves, each with its evidence, in the order found.
    note : str or None
        The checkpoint note received, once its server signature verified.
    checkpoint : Checkpoint or None
        Its checkpoint.
    header : BlockHeader or None
        The head block header, once it verified as the head of that checkpoint.
    head_hash : bytes
        SHA-256 of that header (the block hash), empty when not verified.
    consistent : bool
        The checkpoint extends the last one this client saw (or is the first it sees).
    witnessed : bool
        False when witness keys are configured and the checkpoint lacks their quorum.
    """

    errors: int = 0
    note: str | None = None
    checkpoint: Checkpoint | None = None
    header: BlockHeader | None = None
    head_hash: bytes = b""
    consistent: bool = False
    witnessed: bool = True
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No error was found."""
        return self.errors == 0

    @property
    def cosignable(self) -> bool:
        """Every check passed on a consistent (and, if required, witnessed) checkpoint: the client may cosign it."""
        return self.ok and self.consistent and self.witnessed and self.note is not None


@dataclass
class _Run:
    """One instruction being checked: what it carried, and what the steps verified so far."""

    fid: str
    config: Mapping[str, Any]
    kind: str
    received_digest: bytes | None
    res: CheckResult
    key: bytes = b""
    previous: str | None = None
    deferred: bool = False
    deferring: bool = False  # this instruction's consistency check is deferred (the receipts step still runs)
    head: tuple[bytes, bytes] | None = None  # the head header verified (bytes, signature), kept after consistency
    named: bool = False  # the checkpoint named that head (flower-chain/head line)

    @property
    def origin(self) -> str:
        return origin_for(self.fid)


class ReceiptChecker:
    """The steps of a receipt check over one key's :class:`ReceiptStore`.

    Parameters
    ----------
    store : ReceiptStore
        The key's state (read and advanced inside the caller's transaction).
    server_key : bytes, optional
        The server's raw Ed25519 key; default: pinned on first use in the store.
    witnesses : sequence of CosignerKey
        Trusted C2SP witnesses.
    witness_quorum : int
        Cosignatures by ``witnesses`` every checkpoint must carry (0: none required).
    """

    def __init__(
        self,
        store: ReceiptStore,
        server_key: bytes | None = None,
        *,
        witnesses: Sequence[CosignerKey] = (),
        witness_quorum: int = 0,
    ) -> None:
        self.store = store
        self.pinned = server_key
        self.witnesses = list(witnesses)
        self.witness_quorum = int(witness_quorum)

    def check(
        self, fid: str, config: Mapping[str, Any], kind: str, received_digest: bytes | None, res: CheckResult
    ) -> None:
        """Run the steps in order into ``res`` (its ``findings`` grow as each step returns)."""
        run = _Run(str(fid), config, kind, received_digest, res)
        for step in (self.checkpoint, self.witnessed, self.head, self.consistency, self.history, self.receipts):
            findings, go_on = step(run)
            res.findings.extend(findings)
            res.errors = len(res.findings)
            if not go_on:
                return

    # -- the steps ---------------------------------------------------------------------------------
    def server_key(self, offered: bytes) -> tuple[bytes | None, list[Finding]]:
        """The key to check under: the pinned one (pinning ``offered`` on first use)."""
        if self.pinned is None:
            self.pinned = self.store.pinned_key()
        if self.pinned is None:  # trust on first use (under the transaction: one process pins)
            problem = public_key_problem(offered)
            if problem is not None:
                return None, [ServerKeyUnusable(offered, problem)]
            self.store.pin_key(offered)
            self.pinned = offered
            return offered, []
        if offered and offered != self.pinned:
            return self.pinned, [ServerKeyChanged(self.pinned, offered)]
        return self.pinned, []

    def checkpoint(self, run: _Run) -> Step:
        """A checkpoint for this log, signed by the (pinned) server key."""
        note = run.config.get(CTX_CHECKPOINT)
        if not note:
            return [NoCheckpoint()], False
        note = str(note)
        key, found = self.server_key(bytes(run.config.get(CTX_SERVER_KEY, b"")))
        if key is None:
            return found, False
        run.key = key
        run.previous, run.deferred = self.store.log_row(run.origin)
        if run.previous is not None and note == run.previous:
            cp = checkpoint_of(note)  # verified when it was first seen
        else:
            try:
                cp = verify_checkpoint(note, key, origin=run.origin)
            except LedgerError as e:
                return [*found, CheckpointInvalid(note, str(e))], False
        run.res.note, run.res.checkpoint = note, cp
        return found, True

    def witnessed(self, run: _Run) -> Step:
        """The quorum of trusted witnesses' cosignatures, when one is configured."""
        note, cp = run.res.note, run.res.checkpoint
        assert note is not None and cp is not None
        if self.witness_quorum <= 0:
            return [], True
        try:
            verify_cosigned_checkpoint(note, run.key, self.witnesses, self.witness_quorum, origin=run.origin)
        except LedgerError as e:
            run.res.witnessed = False
            return [Unwitnessed(note, cp, str(e))], False
        return [], True

    def head(self, run: _Run) -> Step:
        """The head block header: signed by the server, the head of the checkpointed log, and (train) the
        block whose ``model_after`` is the global model this client received (to train or to evaluate: an
        evaluation of a model the ledger does not record is not bound to it). Its findings never stop the check."""
        cp = run.res.checkpoint
        assert cp is not None
        head = bytes(run.config.get(CTX_HEAD) or b"")
        if not head:
            return [HeadMissing()], True
        signature = bytes(run.config.get(CTX_HEAD_SIGNATURE) or b"")
        if not verify_signature(run.key, signature, head):
            return [HeadSignatureInvalid(head, signature)], True
        try:
            header = BlockHeader.from_bytes(head)
        except LedgerError as e:
            return [HeadUndecodable(head, str(e))], True
        if (header.log_size, header.log_root) != (cp.size, cp.root_hash):
            return [HeadNotOfCheckpoint(header, cp)], True
        if header.federation_id != run.fid:
            return [HeadWrongFederation(header)], True
        named = self._head_named(run, header, head)
        if named is not None:  # another head than the checkpoint names: not what a cosignature vouches for
            return [named], True
        run.res.header, run.res.head_hash = header, hashlib.sha256(head).digest()
        run.head = (head, signature)
        if (
            header.model_after and run.received_digest is not None and run.received_digest != header.model_after
        ):  # train on it, or evaluate it: the same model
            return [ModelMismatch(header, run.received_digest)], True
        return [], True

    def _head_named(self, run: _Run, header: BlockHeader, head: bytes) -> Finding | None:
        """The checkpoint's head line names this header (required once this log's checkpoints named their head)."""
        cp, note = run.res.checkpoint, run.res.note
        assert cp is not None and note is not None
        block_hash = hashlib.sha256(head).digest()
        try:
            named = head_of(cp)
        except LedgerError as e:
            return CheckpointInvalid(note, str(e))
        if named is None:
            run.named = False
            return HeadNotNamed(header, block_hash, None, b"") if self.store.head_bound(run.origin) else None
        if (named.height, named.block_hash) != (header.height, block_hash):
            return HeadNotNamed(header, block_hash, named.height, named.block_hash)
        run.named = True
        return None

    def history(self, run: _Run) -> Step:
        """On a consistent log, the head header is no rewrite of a block this client verified before (the same
        height with another hash, or the next height linking to another): then it is kept as evidence."""
        header = run.res.header
        if header is None or run.head is None or run.deferring:
            return [], True
        head, signature = run.head
        for height in (header.height, header.height - 1):  # the same block, and the one it links to
            kept = self.store.head_at(run.origin, height) if height >= 0 else None
            want = run.res.head_hash if height == header.height else header.prev_hash
            if kept is not None and hashlib.sha256(kept[0]).digest() != want:
                run.res.header, run.res.head_hash = None, b""
                return [HeadFork(kept[0], kept[1], head, signature)], True
        self.store.save_head(run.origin, header.height, head, signature, run.named)
        return [], True

    def consistency(self, run: _Run) -> Step:
        """The log extends the one this client saw last (a missing proof is excused once in a row)."""
        note, cp, previous = run.res.note, run.res.checkpoint, run.previous
        assert note is not None and cp is not None
        sent_from = int(run.config.get(CTX_CONSISTENCY_FROM, -1))
        if previous is not None and sent_from == -1:
            # The server does not know this node yet (it restarted; node ids changed): it learns the
            # checkpoint this client saw from the client's reply. Allowed once per log, never again (an old
            # checkpoint sent again cannot re-arm it); the receipts it does send are still checked.
            if not run.deferred and self.store.deferrals(run.origin) == 0:
                self.store.set_log(run.origin, previous, True)
                self.store.bump(run.origin, "deferrals")
                log.info(
                    "flower-chain: the server does not know this client yet; the consistency check is "
                    "deferred to the next instruction"
                )
                run.deferring = True
                return [], True
            return [ForkSuspected(previous, note)], False
        if previous is not None and note != previous:
            blob = bytes(run.config.get(CTX_CONSISTENCY, b""))
            proof = tuple(blob[i : i + 32] for i in range(0, len(blob), 32))
            try:
                old = checkpoint_of(previous)
                if sent_from != old.size:
                    raise LedgerError(
                        f"the server proves consistency from size {sent_from}, but this client last saw size {old.size}"
                    )
                merkle.verify_consistency(old.size, cp.size, list(proof), old.root_hash, cp.root_hash)
            except (LedgerError, ValueError) as e:
                if run.deferred:
                    self.store.set_log(run.origin, previous, False)
                return [Fork(previous, note, cp.size, sent_from, proof, str(e))], False
        run.res.consistent = True
        if previous != note or run.deferred:
            self.store.set_log(run.origin, note, False)
        return [], True

    def receipts(self, run: _Run) -> Step:
        """Every update this client sent before this instruction is on the ledger, accepted; receipts kept."""
        pending = self.store.pending(run.origin)
        if not pending:
            return [], True
        found: list[Finding] = []
        proven: dict[bytes, tuple[UpdateEntry, str]] = {}
        for text in filter(None, str(run.config.get(CTX_RECEIPT) or "").split(RECEIPT_SEPARATOR)):
            entry = self._receipt(run, str(text), found)
            if entry is not None:  # a copy of this reply (replayed by another node) may be on the ledger too:
                held = proven.get(entry.statement)  # the update counts as accepted if any copy of it was
                if held is None or (held[0].verdict != "accepted" and entry.verdict == "accepted"):
                    proven[entry.statement] = (entry, str(text))
        for rnd, statement in pending:  # every update this client sent before this instruction must be on the ledger
            got = proven.get(statement)
            if got is None:
                if not run.deferring:  # a server that does not know this node yet has not been asked: kept pending
                    found.append(UpdateMissing(rnd, statement))
                continue
            entry, text = got
            self.store.save_receipt(run.fid, rnd, text, "evaluate" if entry.kind == "evaluate" else "train")
            if entry.verdict != ACCEPTED:
                found.append(UpdateRejected(rnd, entry, text))
            else:
                self.store.bump(run.origin, "receipts")
            if run.deferring:
                self.store.drop_statement(run.origin, rnd, statement)
        if not run.deferring:
            self.store.drop_pending(run.origin, pending[-1][0])
        return found, True

    def _receipt(self, run: _Run, text: str, found: list[Finding]) -> UpdateEntry | None:
        """The update entry a receipt proves against the verified checkpoint, or ``None`` (finding added)."""
        note, cp = run.res.note, run.res.checkpoint
        assert note is not None and cp is not None
        try:
            proof = InclusionProof.from_text(text)
            if proof.checkpoint == note:  # the checkpoint verified above: only the inclusion is left
                merkle.verify_inclusion(
                    merkle.leaf_hash(proof.entry), proof.index, cp.size, list(proof.hashes), cp.root_hash
                )
            else:
                got = proof.verify(run.key)
                if (got.size, got.root_hash) != (cp.size, cp.root_hash):
                    raise LedgerError("the receipt is for another checkpoint than the one sent with it")
            entry = decode_entry(proof.entry)
        except (LedgerError, ValueError) as e:
            found.append(ReceiptInvalid(text, str(e)))
            return None
        return entry if isinstance(entry, UpdateEntry) else None

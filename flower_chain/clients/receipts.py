"""Client-side receipts and fork detection (no torch, no flwr).

With each instruction the server sends the signed checkpoint of its ledger,
the signed header of its head block, a consistency proof from the checkpoint
it sent this node last time, and inclusion proofs (C2SP tlog-proofs) of this
node's previous updates. A :class:`ReceiptKeeper` checks them
(:class:`~flower_chain.clients.receipt_check.ReceiptChecker`, one step per
question, each returning typed :mod:`~flower_chain.clients.findings`) and
keeps (:class:`~flower_chain.clients.receipt_store.ReceiptStore`), in
the directory of one client key (``receipts/<key id>/``):

* ``server-key`` — the server's Ed25519 key, pinned on first use unless
  given (``FLOWER_CHAIN_SERVER_KEY`` / node config ``server-key``);
* ``state.sqlite`` — per log origin (``flower-chain/<federation id>``): the
  last checkpoint verified, the statements signed and not yet receipted,
  and the counters (receipts, errors); shared safely by every process of the
  node (each check is one SQLite transaction, counters only ever grow);
* ``<origin>/`` — one directory per log (the origin made filesystem-safe:
  its printable part and 12 hex digits of its SHA-256; ``origin.txt``
  names it), holding ``round-<R>.proof`` — the receipt of the update of
  round R (a tlog-proof anyone can check with ``flower-chain proof
  verify``) — and ``errors.log``, every problem found.

An error is: a checkpoint or head header whose signature fails; a head
header that is not the head of the checkpointed log; a train or evaluate instruction
whose global model is not the one the head block records (``model_after``);
a log that is not an extension of the last one seen (a rewritten or forked
history); an update missing from the ledger (dropped) or recorded as
rejected; a receipt that does not verify; another server key than the
pinned one. Each is logged, appended to ``errors.log`` and counted; the
counts travel in the client's signed metrics.

Witnesses and anchors (optional):

* with trusted witness keys and a quorum (:class:`ReceiptKeeper` ``witnesses``,
  ``witness_quorum``), a checkpoint without that many valid C2SP
  ``cosignature/v1`` lines by those witnesses is an error, and
  :attr:`CheckResult.witnessed` is false: the signing mod then does not sign
  the update (a split view the witnesses refused is never endorsed);
* with an :class:`~flower_chain.anchor.reader.AnchorReader` (an EVM ``LedgerAnchor`` contract, read only),
  :meth:`ReceiptKeeper.check_anchor` compares the head block with the anchor
  published for its height: another size, root or block hash, a foreign
  contract or another owner than the configured one is an error; an anchor
  not yet published is not (noted at debug level); an unreachable node is a
  warning (nothing is known against the server).

A check whose every part passed (:attr:`CheckResult.cosignable`) lets the
client cosign the checkpoint it verified (clients as witnesses).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flower_chain.anchor.reader import AnchorReader, AnchorUnavailable
from flower_chain.clients.findings import AnchorMismatch, AnchorUntrusted, Finding
from flower_chain.clients.receipt_check import CheckResult, ReceiptChecker
from flower_chain.clients.receipt_store import (
    ERRORS_LOG,
    MESSAGE_LIMIT,
    METRIC_ERRORS,
    METRIC_RECEIPTS,
    SERVER_KEY_FILE,
    STATE_FILE,
    ReceiptStore,
    origin_dir_name,
    origin_for,
    read_counts,
)
from flower_chain.ledger.cosignature import CosignerKey
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.keys import public_key_problem
from flower_chain.ledger.text import safe_text

__all__ = [
    "ERRORS_LOG",
    "MESSAGE_LIMIT",
    "METRIC_ERRORS",
    "METRIC_RECEIPTS",
    "SERVER_KEY_FILE",
    "STATE_FILE",
    "AnchorReader",
    "AnchorUnavailable",
    "CheckResult",
    "ReceiptKeeper",
    "origin_dir_name",
    "origin_for",
    "read_counts",
]

log = logging.getLogger(__name__)


class ReceiptKeeper:
    """The receipts of one client key, for every log (federation) it takes part in.

    Parameters
    ----------
    directory : str or Path
        The key's receipts directory (created when absent).
    server_key : bytes, optional
        The server's raw Ed25519 public key; default: pinned on first use in ``server-key``.
    witnesses : sequence of CosignerKey, optional
        Trusted C2SP witnesses (:func:`~flower_chain.ledger.cosignature.parse_cosigner_key`).
    witness_quorum : int
        Cosignatures by ``witnesses`` every checkpoint must carry (0: none required).

    Notes
    -----
    Every method reads the state fresh from ``state.sqlite`` and changes it in one
    transaction, so several processes (or threads) serving the same node agree
    on it and no count is lost.
    """

    def __init__(
        self,
        directory: str | Path,
        server_key: bytes | None = None,
        *,
        witnesses: Sequence[CosignerKey] = (),
        witness_quorum: int = 0,
    ) -> None:
        witnesses = list(witnesses)
        quorum = int(witness_quorum)
        if quorum < 0 or quorum > len({(w.name, w.key_id) for w in witnesses}):
            raise LedgerError(
                f"a witness quorum of {quorum} needs as many distinct witness keys ({len(witnesses)} given)"
            )
        if server_key is not None and public_key_problem(bytes(server_key)) is not None:
            raise LedgerError(f"the given server key is {public_key_problem(bytes(server_key))}")
        self.store = ReceiptStore(directory)
        self.dir = self.store.dir
        self.checker = ReceiptChecker(
            self.store,
            bytes(server_key) if server_key is not None else None,
            witnesses=witnesses,
            witness_quorum=quorum,
        )

    @property
    def pinned(self) -> bytes | None:
        """The server key checks run under (``None`` until given or pinned)."""
        return self.checker.pinned

    @property
    def witnesses(self) -> list[CosignerKey]:
        """The trusted witnesses."""
        return self.checker.witnesses

    @property
    def witness_quorum(self) -> int:
        """Cosignatures by :attr:`witnesses` every checkpoint needs (0: none)."""
        return self.checker.witness_quorum

    def log_dir(self, federation_id: str) -> Path:
        """The directory of one federation's receipts and errors (created when absent)."""
        return self.store.log_dir(federation_id)

    def _report(self, federation_id: str, findings: Sequence[Finding]) -> None:
        """Count, log and append each finding to ``errors.log`` (call inside a store transaction)."""
        for finding in findings:
            message = self.store.append_error(federation_id, finding.message)
            log.error("flower-chain receipt check (%s): %s", safe_text(federation_id), message)

    # -- what the signed reply carries -------------------------------------------------------------
    def metrics_for(self, federation_id: str) -> dict[str, int]:
        """The counters of a federation's log, as the metrics the client signs."""
        rows = self.store.counters(origin_for(federation_id))
        return {METRIC_RECEIPTS: int(rows.get("receipts", 0)), METRIC_ERRORS: int(rows.get("errors", 0))}

    def counts(self, federation_id: str | None = None) -> dict[str, int]:
        """``{"receipts": N, "errors": M}`` of one federation's log, or summed over all (read fresh)."""
        return read_counts(self.dir, federation_id)

    def record(self, federation_id: str, server_round: int | None, statement: bytes | None) -> tuple[int, int]:
        """Remember a signed statement (train or evaluate) (if given) until its receipt arrives.

        Returns
        -------
        tuple of int
            The size of the last checkpoint this client verified of the log (-1: none) and the
            round whose receipt it asks for next (-1: none), as the signed reply names them.
        """
        return self.store.record_pending(origin_for(federation_id), server_round, statement)

    def remember(self, federation_id: str, server_round: int, statement: bytes) -> None:
        """Record a signed statement (train or evaluate): its receipt is expected with a following instruction."""
        self.record(federation_id, server_round, statement)

    def seen_size(self, federation_id: str) -> int:
        """Size of the last checkpoint of the log this client verified (-1: none yet)."""
        return self.record(federation_id, None, None)[0]

    def pending_round(self, federation_id: str) -> int:
        """The round whose receipt this client asks for next (-1: none)."""
        return self.record(federation_id, None, None)[1]

    # -- checks ------------------------------------------------------------------------------------
    def check(
        self,
        federation_id: str,
        config: Mapping[str, Any],
        *,
        kind: str = "train",
        received_digest: bytes | None = None,
    ) -> CheckResult:
        """Check what the server sent with an instruction; errors are logged and counted.

        Parameters
        ----------
        federation_id : str
            The federation named by the instruction's ledger context.
        config : Mapping
            The instruction's config (checkpoint, head header, proofs).
        kind : str
            ``train`` or ``evaluate``.
        received_digest : bytes, optional
            Array digest of the global arrays received; for a train instruction it must equal the
            head block's ``model_after`` when that is not empty.

        Returns
        -------
        CheckResult
            What was verified, its findings, and whether the client may sign (``witnessed``) and
            cosign (``cosignable``).
        """
        res = CheckResult()
        fid = str(federation_id)
        with self.store.transaction(write=True):
            try:
                self.checker.check(fid, config, kind, received_digest, res)
            finally:  # what was found stays found (and counted), even if a step raised
                self._report(fid, res.findings)
        return res

    def check_anchor(self, federation_id: str, result: CheckResult, anchors: AnchorReader) -> bool:
        """Compare the verified head block with the anchor published for its height.

        Parameters
        ----------
        federation_id : str
            The federation.
        result : CheckResult
            The result of :meth:`check` for the same instruction (its ``errors`` and ``findings``
            grow on a mismatch).
        anchors : AnchorReader
            The contract to read.

        Returns
        -------
        bool
            True when the anchor matches; False when it does not (an error), when it is not
            published yet, the node cannot be read, or nothing verified to compare.
        """
        from flower_chain.anchor.evm import AnchorError

        if result.header is None or result.checkpoint is None:
            return False
        fid, h = str(federation_id), result.header
        finding: Finding | None = None
        try:
            anchored = anchors.get(fid, h.height)
            if anchored is None:
                log.debug("flower-chain anchor check: height %d of %s is not anchored yet", h.height, safe_text(fid))
                return False
            if (anchored.log_size, anchored.log_root, anchored.block_hash) != (
                result.checkpoint.size,
                result.checkpoint.root_hash,
                result.head_hash,
            ):
                finding = AnchorMismatch(h, result.checkpoint, result.head_hash, anchored)
        except AnchorUnavailable as e:
            log.warning("flower-chain anchor check (%s): %s", safe_text(fid), safe_text(str(e), 300))
            return False
        except AnchorError as e:
            finding = AnchorUntrusted(str(e))
        if finding is None:
            return True
        result.findings.append(finding)
        result.errors = len(result.findings)
        with self.store.transaction(write=True):
            self._report(fid, [finding])
        return False

    def close(self) -> None:
        """Close the state database."""
        self.store.close()

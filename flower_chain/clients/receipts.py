"""Client-side receipts and fork detection (no torch, no flwr).

With each instruction the server sends the signed checkpoint of its ledger,
the signed header of its head block, a consistency proof from the checkpoint
it sent this node last time, and inclusion proofs (C2SP tlog-proofs) of this
node's previous updates. A :class:`ReceiptKeeper` checks them and keeps, in
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
header that is not the head of the checkpointed log; a train instruction
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
* with an :class:`AnchorReader` (an EVM ``LedgerAnchor`` contract, read only),
  :meth:`ReceiptKeeper.check_anchor` compares the head block with the anchor
  published for its height: another size, root or block hash, a foreign
  contract or another owner than the configured one is an error; an anchor
  not yet published is not (noted at debug level); an unreachable node is a
  warning (nothing is known against the server).

A check whose every part passed (:attr:`CheckResult.cosignable`) lets the
client cosign the checkpoint it verified (clients as witnesses).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flower_chain.ledger import merkle
from flower_chain.ledger.block import BlockHeader
from flower_chain.ledger.checkpoint import Checkpoint, verify_checkpoint
from flower_chain.ledger.cosignature import CosignerKey, verify_cosigned_checkpoint
from flower_chain.ledger.entries import ACCEPTED, UpdateEntry, decode_entry
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.keys import public_key_problem, verify_signature
from flower_chain.ledger.text import safe_text
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

log = logging.getLogger(__name__)

METRIC_RECEIPTS = "flower-chain-receipts"
METRIC_ERRORS = "flower-chain-receipt-errors"
STATE_FILE = "state.sqlite"
SERVER_KEY_FILE = "server-key"
ERRORS_LOG = "errors.log"
MESSAGE_LIMIT = 600  # characters of one error message (they embed text sent by the server)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS counters (origin TEXT NOT NULL, name TEXT NOT NULL, n INTEGER NOT NULL,
                                     PRIMARY KEY (origin, name));
CREATE TABLE IF NOT EXISTS logs (origin TEXT PRIMARY KEY, checkpoint TEXT, deferred INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS pending (origin TEXT NOT NULL, round INTEGER NOT NULL, statement BLOB NOT NULL,
                                    PRIMARY KEY (origin, round));
"""


def origin_for(federation_id: str) -> str:
    """The checkpoint origin of a federation's log."""
    return f"flower-chain/{federation_id}"


def origin_dir_name(origin: str) -> str:
    """A filesystem-safe, collision-free directory name for a log origin.

    Its characters outside ``[A-Za-z0-9._-]`` become ``_`` (at most 48 kept,
    no leading dot), followed by ``-`` and 12 hex digits of SHA-256 of the
    origin, so two origins never share a directory.
    """
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", origin)[:48].lstrip(".") or "log"
    return f"{readable}-{hashlib.sha256(origin.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def _checkpoint_of(note: str) -> Checkpoint:
    """The checkpoint in a signed note this client verified before (its signature is not re-checked)."""
    return Checkpoint.from_text(note[: note.rfind("\n\n") + 1])


def _connect(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(str(path), isolation_level=None, timeout=60.0, check_same_thread=False)
    db.execute("PRAGMA journal_mode=WAL")  # readers never wait for the writer; a commit needs no fsync
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    return db


def read_counts(directory: str | Path, federation_id: str | None = None) -> dict[str, int]:
    """The receipt counters of a key directory (``receipts/<key id>/``), read fresh.

    Parameters
    ----------
    directory : str or Path
        The key's receipts directory.
    federation_id : str, optional
        Only this federation's log; default: the sum over every log.

    Returns
    -------
    dict
        ``{"receipts": N, "errors": M}`` (zeros when nothing was recorded yet).
    """
    out = {"receipts": 0, "errors": 0}
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        return out
    db = _connect(path)
    try:
        if federation_id is None:
            rows = db.execute("SELECT name, SUM(n) FROM counters GROUP BY name").fetchall()
        else:
            rows = db.execute("SELECT name, n FROM counters WHERE origin = ?", (origin_for(federation_id),)).fetchall()
    finally:
        db.close()
    for name, n in rows:
        if name in out:
            out[name] = int(n)
    return out


@dataclass
class CheckResult:
    """What one :meth:`ReceiptKeeper.check` found.

    Attributes
    ----------
    errors : int
        Errors found by this check (each also logged and counted).
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

    @property
    def ok(self) -> bool:
        """No error was found."""
        return self.errors == 0

    @property
    def cosignable(self) -> bool:
        """Every check passed on a consistent (and, if required, witnessed) checkpoint: the client may cosign it."""
        return self.ok and self.consistent and self.witnessed and self.note is not None


class AnchorUnavailable(LedgerError):
    """The chain node cannot be read right now (not evidence against the server)."""


class AnchorReader:
    """Read-only access to the ``LedgerAnchor`` contract that anchors a federation's blocks (needs web3).

    Parameters
    ----------
    url : str
        ``evm+http://HOST:PORT`` (or ``evm+https://``; ``evm+tester:`` in tests).
    contract : str
        Address of the deployed ``LedgerAnchor`` contract.
    owner : str, optional
        The account that must own the contract (the server operator's anchoring account).
    timeout : float
        Seconds per RPC request.

    Raises
    ------
    AnchorError
        web3 is not installed (``pip install 'flower-chain[evm]'``), or the URL or contract is missing.
    """

    def __init__(self, url: str, contract: str, owner: str | None = None, *, timeout: float = 10.0) -> None:
        from flower_chain.anchor.evm import AnchorError

        try:
            import web3  # noqa: F401 - only to fail early with a clear message
        except ImportError as e:
            raise AnchorError("the client's anchor check needs web3: pip install 'flower-chain[evm]' "
                              "(or remove the node config 'anchor')") from e
        if not str(url).startswith(("evm+http://", "evm+https://", "evm+tester:")):
            raise AnchorError(f"anchor {url!r}: anchor URLs look like evm+http://HOST:PORT")
        if not contract:
            raise AnchorError("the anchor check needs the contract address (node config 'anchor-contract')")
        self.url, self.contract, self.owner, self.timeout = str(url), str(contract), owner or None, float(timeout)
        self._anchors: dict[str, Any] = {}

    def _anchor(self, federation_id: str):
        from flower_chain.anchor.evm import AnchorError, EvmAnchor

        got = self._anchors.get(federation_id)
        if got is None:
            try:
                got = EvmAnchor(self.url, federation_id=federation_id, contract=self.contract, timeout=self.timeout)
            except AnchorError as e:
                if str(e).startswith("cannot reach"):
                    raise AnchorUnavailable(str(e)) from e
                raise
            if self.owner is not None and str(got.owner).lower() != self.owner.lower():
                raise AnchorError(f"the anchor contract {got.address} is owned by {got.owner}, not by the "
                                  f"configured owner {self.owner}")
            if len(self._anchors) < 16:
                self._anchors[federation_id] = got
        return got

    def get(self, federation_id: str, height: int):
        """The anchor of block ``height`` (``ChainAnchor``), or ``None`` when not published yet.

        Raises
        ------
        AnchorError
            A foreign contract, another federation's, or another owner's.
        AnchorUnavailable
            The node cannot be read.
        """
        anchor = self._anchor(federation_id)
        try:
            return anchor.get(int(height))
        except Exception as e:  # noqa: BLE001 - any transport failure: not readable now
            self._anchors.pop(federation_id, None)
            raise AnchorUnavailable(f"cannot read the anchor of height {height}: {type(e).__name__}") from e


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

    def __init__(self, directory: str | Path, server_key: bytes | None = None, *,
                 witnesses: Sequence[CosignerKey] = (), witness_quorum: int = 0) -> None:
        self.witnesses = list(witnesses)
        self.witness_quorum = int(witness_quorum)
        if self.witness_quorum < 0 or self.witness_quorum > len({(w.name, w.key_id) for w in self.witnesses}):
            raise LedgerError(f"a witness quorum of {self.witness_quorum} needs as many distinct witness keys "
                              f"({len(self.witnesses)} given)")
        self._result: CheckResult | None = None
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        if server_key is not None and public_key_problem(bytes(server_key)) is not None:
            raise LedgerError(f"the given server key is {public_key_problem(bytes(server_key))}")
        self.pinned = bytes(server_key) if server_key is not None else None
        self._lock = threading.Lock()
        self._db = _connect(self.dir / STATE_FILE)
        self._log_dirs: dict[str, Path] = {}

    # -- storage -----------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self, write: bool):
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self._db
            finally:  # what was found stays found (and counted), even if a check raised
                self._db.execute("COMMIT")

    def _bump(self, origin: str, name: str) -> None:
        self._db.execute("INSERT INTO counters (origin, name, n) VALUES (?, ?, 1) "
                         "ON CONFLICT (origin, name) DO UPDATE SET n = n + 1", (origin, name))

    def log_dir(self, federation_id: str) -> Path:
        """The directory of one federation's receipts and errors (created when absent)."""
        d = self._log_dirs.get(federation_id)
        if d is None:
            origin = origin_for(federation_id)
            d = self.dir / origin_dir_name(origin)
            if not d.is_dir():
                d.mkdir(parents=True, exist_ok=True)
                (d / "origin.txt").write_text(safe_text(origin, 300) + "\n")
            if len(self._log_dirs) < 64:  # a handful of federations per key; never grows without bound
                self._log_dirs[federation_id] = d
        return d

    def _error(self, federation_id: str, message: str) -> None:
        message = safe_text(message, MESSAGE_LIMIT)
        if self._result is not None:
            self._result.errors += 1
        self._bump(origin_for(federation_id), "errors")
        log.error("flower-chain receipt check (%s): %s", safe_text(federation_id), message)
        with open(self.log_dir(federation_id) / ERRORS_LOG, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")

    def _log_row(self, origin: str) -> tuple[str | None, bool]:
        row = self._db.execute("SELECT checkpoint, deferred FROM logs WHERE origin = ?", (origin,)).fetchone()
        return (row[0], bool(row[1])) if row else (None, False)

    def _set_log(self, origin: str, checkpoint: str | None, deferred: bool) -> None:
        self._db.execute("INSERT INTO logs (origin, checkpoint, deferred) VALUES (?, ?, ?) ON CONFLICT (origin) "
                         "DO UPDATE SET checkpoint = excluded.checkpoint, deferred = excluded.deferred",
                         (origin, checkpoint, int(deferred)))

    # -- what the signed reply carries -------------------------------------------------------------
    def metrics_for(self, federation_id: str) -> dict[str, int]:
        """The counters of a federation's log, as the metrics the client signs."""
        origin = origin_for(federation_id)
        with self._lock:  # one statement: a consistent read without an explicit transaction
            rows = dict(self._db.execute("SELECT name, n FROM counters WHERE origin = ?", (origin,)).fetchall())
        return {METRIC_RECEIPTS: int(rows.get("receipts", 0)), METRIC_ERRORS: int(rows.get("errors", 0))}

    def counts(self, federation_id: str | None = None) -> dict[str, int]:
        """``{"receipts": N, "errors": M}`` of one federation's log, or summed over all (read fresh)."""
        return read_counts(self.dir, federation_id)

    def record(self, federation_id: str, server_round: int | None, statement: bytes | None) -> tuple[int, int]:
        """Remember a signed train statement (if given) until its receipt arrives.

        Returns
        -------
        tuple of int
            The size of the last checkpoint this client verified of the log (-1: none) and the
            round whose receipt it asks for next (-1: none), as the signed reply names them.
        """
        origin = origin_for(federation_id)
        with self._lock:  # single statements, each atomic: no explicit transaction needed
            if statement is not None:
                self._db.execute("INSERT OR REPLACE INTO pending (origin, round, statement) VALUES (?, ?, ?)",
                                 (origin, int(server_round), bytes(statement)))
            note, _ = self._log_row(origin)
            first = self._db.execute("SELECT MIN(round) FROM pending WHERE origin = ?", (origin,)).fetchone()[0]
        seen = _checkpoint_of(note).size if note else -1
        return seen, int(first) if first is not None else -1

    def remember(self, federation_id: str, server_round: int, statement: bytes) -> None:
        """Record a signed train statement: its receipt is expected with a following instruction."""
        self.record(federation_id, server_round, statement)

    def seen_size(self, federation_id: str) -> int:
        """Size of the last checkpoint of the log this client verified (-1: none yet)."""
        return self.record(federation_id, None, None)[0]

    def pending_round(self, federation_id: str) -> int:
        """The round whose receipt this client asks for next (-1: none)."""
        return self.record(federation_id, None, None)[1]

    # -- checks ------------------------------------------------------------------------------------
    def _server_key(self, federation_id: str, offered: bytes) -> bytes | None:
        if self.pinned is None:
            stored = self.dir / SERVER_KEY_FILE
            if stored.is_file():
                self.pinned = base64.b64decode(stored.read_text())
        if self.pinned is None:  # trust on first use (under the transaction: one process pins)
            problem = public_key_problem(offered)
            if problem is not None:
                self._error(federation_id, f"the server sent no usable server key ({problem})")
                return None
            tmp = self.dir / (SERVER_KEY_FILE + ".tmp")
            tmp.write_text(base64.b64encode(offered).decode())
            tmp.replace(self.dir / SERVER_KEY_FILE)
            self.pinned = offered
            return offered
        if offered and offered != self.pinned:
            self._error(federation_id, "the server now presents another server key than the one pinned")
        return self.pinned

    def check(self, federation_id: str, config: Mapping[str, Any], *, kind: str = "train",
              received_digest: bytes | None = None) -> CheckResult:
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
            What was verified, and whether the client may sign (``witnessed``) and cosign (``cosignable``).
        """
        res = CheckResult()
        with self._transaction(write=True):
            self._result = res
            try:
                self._check(str(federation_id), config, kind, received_digest, res)
            finally:
                self._result = None
        return res

    def check_anchor(self, federation_id: str, result: CheckResult, anchors: AnchorReader) -> bool:
        """Compare the verified head block with the anchor published for its height.

        Parameters
        ----------
        federation_id : str
            The federation.
        result : CheckResult
            The result of :meth:`check` for the same instruction (its ``errors`` grow on a mismatch).
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
        try:
            anchored = anchors.get(fid, h.height)
            problem = None
            if anchored is None:
                log.debug("flower-chain anchor check: height %d of %s is not anchored yet", h.height, safe_text(fid))
                return False
            if (anchored.log_size, anchored.log_root, anchored.block_hash) != \
                    (result.checkpoint.size, result.checkpoint.root_hash, result.head_hash):
                problem = (f"the checkpoint at height {h.height} (log size {result.checkpoint.size}, block "
                           f"{result.head_hash.hex()[:16]}) differs from the one anchored on chain (log size "
                           f"{anchored.log_size}, block {anchored.block_hash.hex()[:16]}): the server forked or "
                           "rewrote its history")
        except AnchorUnavailable as e:
            log.warning("flower-chain anchor check (%s): %s", safe_text(fid), safe_text(str(e), 300))
            return False
        except AnchorError as e:
            problem = f"the anchor cannot be trusted: {e}"
        if problem is None:
            return True
        with self._transaction(write=True):
            self._result = result
            try:
                self._error(fid, problem)
            finally:
                self._result = None
        return False

    def _check(self, fid: str, config: Mapping[str, Any], kind: str, received_digest: bytes | None,
               res: CheckResult) -> None:
        origin = origin_for(fid)
        note = config.get(CTX_CHECKPOINT)
        if not note:
            self._error(fid, "the server sent no checkpoint")
            return
        note = str(note)
        key = self._server_key(fid, bytes(config.get(CTX_SERVER_KEY, b"")))
        if key is None:
            return
        previous, deferred = self._log_row(origin)
        if previous is not None and note == previous:
            cp = _checkpoint_of(note)  # verified when it was first seen
        else:
            try:
                cp = verify_checkpoint(note, key, origin=origin)
            except LedgerError as e:
                self._error(fid, f"checkpoint does not verify: {e}")
                return
        res.note, res.checkpoint = note, cp
        if self.witness_quorum > 0:
            try:
                verify_cosigned_checkpoint(note, key, self.witnesses, self.witness_quorum, origin=origin)
            except LedgerError as e:
                res.witnessed = False
                self._error(fid, f"UNWITNESSED: the checkpoint at size {cp.size} lacks the quorum of trusted "
                                 f"witnesses ({e}); this client does not sign updates for it (a split view?)")
                return
        self._check_head(fid, config, cp, key, kind, received_digest, res)
        sent_from = int(config.get(CTX_CONSISTENCY_FROM, -1))
        if previous is not None and sent_from == -1:
            # The server does not know this node yet (it restarted; node ids changed): it learns the
            # checkpoint this client saw from the client's reply. Allowed once in a row, never twice.
            if not deferred:
                self._set_log(origin, previous, True)
                log.info("flower-chain: the server does not know this client yet; checks deferred to the next "
                         "instruction")
                return
            self._error(fid, "FORK?: the server again sent no consistency proof from the checkpoint this client saw")
            return
        if previous is not None and note != previous:
            try:
                old = _checkpoint_of(previous)
                if sent_from != old.size:
                    raise LedgerError(f"the server proves consistency from size {sent_from}, "
                                      f"but this client last saw size {old.size}")
                blob = bytes(config.get(CTX_CONSISTENCY, b""))
                proof = [blob[i : i + 32] for i in range(0, len(blob), 32)]
                merkle.verify_consistency(old.size, cp.size, proof, old.root_hash, cp.root_hash)
            except (LedgerError, ValueError) as e:
                if deferred:
                    self._set_log(origin, previous, False)
                self._error(fid, f"FORK: the server's log at size {cp.size} is not an extension of the log this "
                                 f"client saw before ({e}); the server rewrote or forked its history")
                return
        res.consistent = True
        if previous != note or deferred:
            self._set_log(origin, note, False)
        pending = self._db.execute("SELECT round, statement FROM pending WHERE origin = ? ORDER BY round",
                                   (origin,)).fetchall()
        if not pending:
            return
        proven: dict[bytes, tuple[UpdateEntry, str]] = {}
        for text in filter(None, str(config.get(CTX_RECEIPT) or "").split(RECEIPT_SEPARATOR)):
            entry = self._check_receipt(fid, str(text), note, cp, key)
            if entry is not None:  # a copy of this reply (replayed by another node) may be on the ledger too:
                held = proven.get(entry.statement)  # the update counts as accepted if any copy of it was
                if held is None or (held[0].verdict != "accepted" and entry.verdict == "accepted"):
                    proven[entry.statement] = (entry, str(text))
        for rnd, statement in pending:  # every update this client sent before this instruction must be on the ledger
            got = proven.get(bytes(statement))
            if got is None:
                self._error(fid, f"no valid receipt for this client's update of round {rnd}: the update is "
                                 "missing from the ledger (dropped by the server)")
                continue
            entry, text = got
            (self.log_dir(fid) / f"round-{int(rnd)}.proof").write_text(text)
            if entry.verdict != ACCEPTED:
                self._error(fid, f"the server recorded this client's valid update of round {rnd} as rejected: "
                                 f"{entry.reason} ({entry.detail})")
            else:
                self._bump(origin, "receipts")
        self._db.execute("DELETE FROM pending WHERE origin = ? AND round <= ?", (origin, int(pending[-1][0])))

    def _check_head(self, fid: str, config: Mapping[str, Any], cp: Checkpoint, key: bytes, kind: str,
                    received_digest: bytes | None, res: CheckResult | None = None) -> None:
        """The head block header: signed by the server, the head of the checkpointed log, and (train) the
        block whose ``model_after`` is the global model this client received."""
        head = bytes(config.get(CTX_HEAD) or b"")
        if not head:
            self._error(fid, "the server sent a checkpoint but no head block header (flower-chain.head); a "
                             "server this old cannot prove which model its log records")
            return
        if not verify_signature(key, bytes(config.get(CTX_HEAD_SIGNATURE) or b""), head):
            self._error(fid, "the head block header's signature does not verify under the server key")
            return
        try:
            header = BlockHeader.from_bytes(head)
        except LedgerError as e:
            self._error(fid, f"the head block header does not decode: {e}")
            return
        if (header.log_size, header.log_root) != (cp.size, cp.root_hash):
            self._error(fid, f"the head block header (height {header.height}, log size {header.log_size}) is not "
                             f"the head of the checkpointed log (size {cp.size})")
            return
        if header.federation_id != fid:
            self._error(fid, f"the head block header is for federation {header.federation_id!r}")
            return
        if res is not None:
            res.header, res.head_hash = header, hashlib.sha256(head).digest()
        if kind == "train" and header.model_after and received_digest is not None \
                and received_digest != header.model_after:
            self._error(fid, f"the server sent this client another global model than its log records: received "
                             f"arrays with digest {received_digest.hex()[:16]}, the head block (height "
                             f"{header.height}, round {header.round}) records model_after "
                             f"{header.model_after.hex()[:16]}")

    def _check_receipt(self, fid: str, text: str, note: str, cp: Checkpoint, key: bytes) -> UpdateEntry | None:
        """The update entry a receipt proves against the checkpoint ``cp``, or ``None`` (error logged)."""
        try:
            proof = InclusionProof.from_text(text)
            if proof.checkpoint == note:  # the checkpoint verified above: only the inclusion is left
                merkle.verify_inclusion(merkle.leaf_hash(proof.entry), proof.index, cp.size, list(proof.hashes),
                                        cp.root_hash)
            else:
                got = proof.verify(key)
                if (got.size, got.root_hash) != (cp.size, cp.root_hash):
                    raise LedgerError("the receipt is for another checkpoint than the one sent with it")
            entry = decode_entry(proof.entry)
        except (LedgerError, ValueError) as e:
            self._error(fid, f"a receipt does not verify: {e}")
            return None
        return entry if isinstance(entry, UpdateEntry) else None

    def close(self) -> None:
        """Close the state database."""
        with self._lock:
            self._db.close()

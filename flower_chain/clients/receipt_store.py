"""The state a client keeps per key for its receipts (no torch, no flwr).

In the directory of one client key (``receipts/<key id>/``):

* ``server-key`` — the server's Ed25519 key, pinned on first use unless given;
* ``state.sqlite`` — per log origin (``flower-chain/<federation id>``): the
  last checkpoint verified (and whether a check was deferred), every head block
  header verified (with its signature, and whether its checkpoint named it: the
  evidence of a fork when another header of the same height comes), the statements
  signed and not yet receipted, and the counters (receipts, errors); shared
  safely by every process of the node (each check is one SQLite transaction,
  counters only ever grow);
* ``<origin>/`` — one directory per log (:func:`origin_dir_name`;
  ``origin.txt`` names it), holding ``round-<R>.proof`` receipts and
  ``errors.log``.
"""

from __future__ import annotations

import base64
import hashlib
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from flower_chain.ledger.checkpoint import Checkpoint
from flower_chain.ledger.entries import UpdateStatement
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.text import safe_text
from flower_chain.ledger.writer import origin_for

__all__ = [
    "ERRORS_LOG",
    "MESSAGE_LIMIT",
    "METRIC_ERRORS",
    "METRIC_RECEIPTS",
    "SERVER_KEY_FILE",
    "STATE_FILE",
    "ReceiptStore",
    "checkpoint_of",
    "origin_dir_name",
    "origin_for",
    "read_counts",
]

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
CREATE TABLE IF NOT EXISTS heads (origin TEXT NOT NULL, height INTEGER NOT NULL, header BLOB NOT NULL,
                                  signature BLOB NOT NULL, bound INTEGER NOT NULL, PRIMARY KEY (origin, height));
CREATE TABLE IF NOT EXISTS pending (origin TEXT NOT NULL, round INTEGER NOT NULL, statement BLOB NOT NULL,
                                    PRIMARY KEY (origin, round));
CREATE TABLE IF NOT EXISTS pending_replies (origin TEXT NOT NULL, round INTEGER NOT NULL, kind TEXT NOT NULL,
                                            statement BLOB NOT NULL, PRIMARY KEY (origin, round, kind));
INSERT OR IGNORE INTO pending_replies (origin, round, kind, statement)
    SELECT origin, round, 'train', statement FROM pending;
DELETE FROM pending;
"""
# ``pending`` (one train statement per round) is the table of stores written before evaluate replies got
# receipts: its rows move to ``pending_replies`` (one statement per round and kind) when a store opens.


def origin_dir_name(origin: str) -> str:
    """A filesystem-safe, collision-free directory name for a log origin.

    Its characters outside ``[A-Za-z0-9._-]`` become ``_`` (at most 48 kept,
    no leading dot), followed by ``-`` and 12 hex digits of SHA-256 of the
    origin, so two origins never share a directory.
    """
    readable = re.sub(r"[^A-Za-z0-9._-]", "_", origin)[:48].lstrip(".") or "log"
    return f"{readable}-{hashlib.sha256(origin.encode('utf-8', 'surrogatepass')).hexdigest()[:12]}"


def _statement_kind(statement: bytes) -> str:
    """The kind (``train``/``evaluate``) of a statement this client signed itself."""
    try:
        return UpdateStatement.from_bytes(bytes(statement)).kind
    except (LedgerError, TypeError, ValueError):
        return "train"


def checkpoint_of(note: str) -> Checkpoint:
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


class ReceiptStore:
    """The receipt state of one client key: SQLite state, pinned server key, receipt files, errors.log.

    Parameters
    ----------
    directory : str or Path
        The key's receipts directory (created when absent).

    Notes
    -----
    Callers change the state inside :meth:`transaction` (one SQLite transaction, so several processes
    serving the same node agree on it and no count is lost); the single-statement reads and writes
    (:meth:`record_pending`, :meth:`counters`) are atomic on their own.
    """

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = _connect(self.dir / STATE_FILE)
        self._log_dirs: dict[str, Path] = {}

    @contextmanager
    def transaction(self, write: bool = True) -> Iterator[ReceiptStore]:
        """One SQLite transaction (``BEGIN IMMEDIATE`` when writing); committed even if the body raises."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield self
            finally:  # what was found stays found (and counted), even if a check raised
                self._db.execute("COMMIT")

    # -- per-log state -----------------------------------------------------------------------------
    def log_row(self, origin: str) -> tuple[str | None, bool]:
        """(the last checkpoint note verified, whether the check of the last instruction was deferred)."""
        row = self._db.execute("SELECT checkpoint, deferred FROM logs WHERE origin = ?", (origin,)).fetchone()
        return (row[0], bool(row[1])) if row else (None, False)

    def set_log(self, origin: str, checkpoint: str | None, deferred: bool) -> None:
        """Remember the checkpoint note verified (and the deferral flag) of a log."""
        self._db.execute(
            "INSERT INTO logs (origin, checkpoint, deferred) VALUES (?, ?, ?) ON CONFLICT (origin) "
            "DO UPDATE SET checkpoint = excluded.checkpoint, deferred = excluded.deferred",
            (origin, checkpoint, int(deferred)),
        )

    def head_at(self, origin: str, height: int) -> tuple[bytes, bytes] | None:
        """The head block header (and its signature) verified at ``height`` of a log, if any."""
        row = self._db.execute(
            "SELECT header, signature FROM heads WHERE origin = ? AND height = ?", (origin, int(height))
        ).fetchone()
        return (bytes(row[0]), bytes(row[1])) if row else None

    def head_bound(self, origin: str) -> bool:
        """Whether a checkpoint of this log already named its head block (flower-chain/head line)."""
        return self._db.execute("SELECT 1 FROM heads WHERE origin = ? AND bound = 1", (origin,)).fetchone() is not None

    def save_head(self, origin: str, height: int, header: bytes, signature: bytes, bound: bool) -> None:
        """Keep a verified head block header (the first one of each height stays: it is the evidence)."""
        self._db.execute(
            "INSERT OR IGNORE INTO heads (origin, height, header, signature, bound) VALUES (?, ?, ?, ?, ?)",
            (origin, int(height), bytes(header), bytes(signature), int(bound)),
        )

    def pending(self, origin: str) -> list[tuple[int, bytes]]:
        """The (round, statement) pairs signed and not yet receipted (train and evaluate), oldest first."""
        rows = self._db.execute(
            "SELECT round, statement FROM pending_replies WHERE origin = ? ORDER BY round, kind DESC", (origin,)
        ).fetchall()
        return [(int(r), bytes(s)) for r, s in rows]

    def drop_pending(self, origin: str, up_to_round: int) -> None:
        """Forget the pending statements of rounds up to ``up_to_round`` (their receipts were checked)."""
        self._db.execute("DELETE FROM pending_replies WHERE origin = ? AND round <= ?", (origin, int(up_to_round)))

    def drop_statement(self, origin: str, server_round: int, statement: bytes) -> None:
        """Forget one pending statement (its receipt was checked)."""
        self._db.execute(
            "DELETE FROM pending_replies WHERE origin = ? AND round = ? AND statement = ?",
            (origin, int(server_round), bytes(statement)),
        )

    def record_pending(self, origin: str, server_round: int | None, statement: bytes | None) -> tuple[int, int]:
        """Remember a signed statement (train or evaluate, if given); return (size last verified, first pending
        round)."""
        kind = _statement_kind(statement) if statement is not None else ""
        with self._lock:  # single statements, each atomic: no explicit transaction needed
            if statement is not None:
                self._db.execute(
                    "INSERT OR REPLACE INTO pending_replies (origin, round, kind, statement) VALUES (?, ?, ?, ?)",
                    (origin, int(server_round), kind, bytes(statement)),  # type: ignore[arg-type]
                )
            note, _ = self.log_row(origin)
            first = self._db.execute("SELECT MIN(round) FROM pending_replies WHERE origin = ?", (origin,)).fetchone()[0]
        seen = checkpoint_of(note).size if note else -1
        return seen, int(first) if first is not None else -1

    # -- counters ----------------------------------------------------------------------------------
    def bump(self, origin: str, name: str) -> None:
        """Add one to a counter (``receipts`` or ``errors``) of a log."""
        self._db.execute(
            "INSERT INTO counters (origin, name, n) VALUES (?, ?, 1) "
            "ON CONFLICT (origin, name) DO UPDATE SET n = n + 1",
            (origin, name),
        )

    def deferrals(self, origin: str) -> int:
        """How often the check of this log was deferred (a server that did not know the client; inside
        :meth:`transaction`)."""
        row = self._db.execute("SELECT n FROM counters WHERE origin = ? AND name = 'deferrals'", (origin,)).fetchone()
        return int(row[0]) if row else 0

    def counters(self, origin: str) -> dict[str, int]:
        """The counters of one log (one statement: a consistent read)."""
        with self._lock:
            return {
                str(k): int(v)
                for k, v in self._db.execute("SELECT name, n FROM counters WHERE origin = ?", (origin,)).fetchall()
            }

    # -- files -------------------------------------------------------------------------------------
    def pinned_key(self) -> bytes | None:
        """The server key pinned in ``server-key``, if any."""
        stored = self.dir / SERVER_KEY_FILE
        return base64.b64decode(stored.read_text()) if stored.is_file() else None

    def pin_key(self, key: bytes) -> None:
        """Pin the server key (atomically replaced; call under :meth:`transaction`: one process pins)."""
        tmp = self.dir / (SERVER_KEY_FILE + ".tmp")
        tmp.write_text(base64.b64encode(key).decode())
        tmp.replace(self.dir / SERVER_KEY_FILE)

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

    def save_receipt(self, federation_id: str, server_round: int, text: str, kind: str = "train") -> None:
        """Keep the receipt of a round's update as ``round-<R>.proof`` (an evaluate reply's as
        ``round-<R>-evaluate.proof``)."""
        name = f"round-{int(server_round)}" + ("" if kind == "train" else "-evaluate")
        (self.log_dir(federation_id) / f"{name}.proof").write_text(text)

    def append_error(self, federation_id: str, message: str) -> str:
        """Count an error of a log and append it to its ``errors.log``; return the (escaped) line written."""
        message = safe_text(message, MESSAGE_LIMIT)
        self.bump(origin_for(federation_id), "errors")
        with open(self.log_dir(federation_id) / ERRORS_LOG, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")
        return message

    def close(self) -> None:
        """Close the state database."""
        with self._lock:
            self._db.close()

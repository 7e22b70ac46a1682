"""SQLite backend (``sqlite:///path``): the embedded default.

WAL journal, ``synchronous=FULL`` and one transaction per block, so a block
is durable when :meth:`append` returns and a ``kill -9`` at any moment leaves
either the whole block or none of it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from flower_chain.ledger.backends.base import Ledger, Node
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.errors import LedgerCorruptError, LedgerError, LedgerOpenError

FORMAT = "flower-chain-ledger"
VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY, header BLOB NOT NULL, signature BLOB NOT NULL, checkpoint TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, height INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (
    level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL, PRIMARY KEY (level, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blobs (digest BLOB PRIMARY KEY, data BLOB NOT NULL);
"""


@contextmanager
def _db_errors(path: Path):
    try:
        yield
    except sqlite3.DatabaseError as e:
        raise LedgerCorruptError(f"{path}: the SQLite database is damaged ({e})") from e


class SQLiteLedger(Ledger):
    """Blocks, entries, subtree hashes and blobs in one SQLite file."""

    def __init__(self, path: str | Path, *, create: bool = True, uri: str | None = None) -> None:
        self.path = Path(path)
        self.uri = uri or f"sqlite:///{self.path}"
        if self.path.is_dir():
            raise LedgerOpenError(f"{self.path} is a directory, not a ledger file")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if not exists and not create:
            raise LedgerOpenError(f"ledger file {self.path} is empty" if self.path.exists()
                                  else f"ledger file {self.path} not found")
        if not exists:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            if exists:
                self._check_format()
            else:
                self._db.executescript(_SCHEMA)
                self._db.executemany(
                    "INSERT INTO meta VALUES (?, ?)", [("format", FORMAT), ("version", VERSION)]
                )
        except sqlite3.DatabaseError as e:
            raise LedgerOpenError(f"{self.path} is not a flower-chain SQLite ledger ({e})") from e

    def _check_format(self) -> None:
        try:
            rows = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as e:
            raise LedgerOpenError(f"{self.path} is an SQLite file but not a flower-chain ledger") from e
        if rows.get("format") != FORMAT:
            raise LedgerOpenError(f"{self.path} is an SQLite file but not a flower-chain ledger")
        if rows.get("version") != VERSION:
            raise LedgerOpenError(f"{self.path} has ledger format version {rows.get('version')}, expected {VERSION}")

    def _append(self, block: StoredBlock, entries: Sequence[bytes], nodes: Sequence[Node]) -> None:
        h = block.header
        first = h.first_index
        db = self._db
        with _db_errors(self.path):
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    "INSERT INTO entries VALUES (?, ?, ?)",
                    ((first + i, h.height, bytes(e)) for i, e in enumerate(entries)),
                )
                db.executemany("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?)", nodes)
                db.execute(
                    "INSERT INTO blocks VALUES (?, ?, ?, ?)",
                    (h.height, block.header_bytes, block.signature, block.checkpoint),
                )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise

    def block_count(self) -> int:
        with _db_errors(self.path):
            return self._db.execute("SELECT COALESCE(MAX(height) + 1, 0) FROM blocks").fetchone()[0]

    def blocks(self, start: int = 0, end: int | None = None) -> Iterator[StoredBlock]:
        end = 2**62 if end is None else end
        with _db_errors(self.path):
            cur = self._db.execute(
                "SELECT height, header, signature, checkpoint FROM blocks WHERE height >= ? AND height < ? "
                "ORDER BY height",
                (start, end),
            )
            for _height, header, sig, cp in cur:
                yield StoredBlock(bytes(header), bytes(sig), cp)

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        end = 2**62 if end is None else end
        with _db_errors(self.path):
            cur = self._db.execute("SELECT data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (start, end))
            while rows := cur.fetchmany(4096):
                for (data,) in rows:
                    yield bytes(data)

    def node(self, level: int, index: int) -> bytes:
        with _db_errors(self.path):
            row = self._db.execute("SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index)).fetchone()
        if row is None:
            raise LedgerError(f"no subtree hash at level {level}, index {index}")
        return bytes(row[0])

    def _put_blob(self, digest: bytes, data: bytes) -> None:
        with _db_errors(self.path):
            self._db.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?)", (digest, bytes(data)))

    def get_blob(self, digest: bytes) -> bytes:
        with _db_errors(self.path):
            row = self._db.execute("SELECT data FROM blobs WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            raise LedgerError(f"no blob {digest.hex()} in {self.path}")
        return bytes(row[0])

    def has_blob(self, digest: bytes) -> bool:
        with _db_errors(self.path):
            return self._db.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone() is not None

    def close(self) -> None:
        self._db.close()

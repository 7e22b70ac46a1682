"""SQLite backend (``sqlite:///path``): the embedded default.

WAL journal, ``synchronous=FULL`` and one transaction per block, so a block
is durable when :meth:`append` returns and a ``kill -9`` at any moment leaves
either the whole block or none of it.

Single writer: each append reads the head (height and block hash) *inside* its
``BEGIN IMMEDIATE`` transaction, which holds SQLite's write lock, and refuses a
block that does not extend it (:class:`LedgerConflictError`). Two servers (threads or
processes) on one file therefore never fork it: one wins each block, the other
gets a clear error and nothing of its block is stored.

WAL checkpoints run on a thread of their own (:class:`_Checkpointer`), not inside
the commit that crosses SQLite's 1,000-page mark: the writer's connection has
automatic checkpoints off, and after each write a second connection copies the
WAL into the database file. A checkpoint never changes what a commit made
durable (the WAL is fsynced at every commit); it only moves it, so a kill at any
moment leaves what it left before.

Read-only opening: ``create=False`` (what ``flower-chain ledger summary``,
``verify``, ... use) opens the file through a ``file:...?mode=ro`` URI and sets
no pragma, so neither a foreign SQLite file nor a rollback-journal ledger is
changed by looking at it. The first write through such a handle (a tool that
appends to an existing ledger) reopens it read-write with WAL.
"""

from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from flower_chain.ledger.backends import cells
from flower_chain.ledger.backends.base import Ledger, Node
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.errors import LedgerConflictError, LedgerCorruptError, LedgerError, LedgerOpenError
from flower_chain.ledger.location import file_uri

log = logging.getLogger(__name__)
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
def _db_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise LedgerError(
                f"{path}: another process has held the database's write lock for 30 s ({e}); "
                "only one server may write a ledger"
            ) from e
        raise LedgerCorruptError(f"{path}: the SQLite database is damaged or unreadable ({e})") from e
    except sqlite3.DatabaseError as e:
        raise LedgerCorruptError(f"{path}: the SQLite database is damaged ({e})") from e


class _Checkpointer:
    """Copies the WAL into the database file on a thread of its own, after each write it is told of.

    The writer's commits stay fsynced and atomic; only the checkpoint (a second copy of the written pages,
    and an fsync of the database file) leaves the commit's critical path. A checkpoint that cannot finish
    (a reader holding an old snapshot) is retried at the next write; a WAL grown past ``truncate_above``
    bytes is truncated after its checkpoint (a long run's WAL does not keep its largest size); the first
    failure is logged once. Where no thread
    can be started, the writer's connection goes back to SQLite's own automatic checkpoints. The last
    connection to close checkpoints what is left, as SQLite does.
    """

    truncate_above = 64 << 20  # bytes of WAL after which a checkpoint also truncates it

    def __init__(self, path: Path, fallback: Callable[[], None]) -> None:
        self._wal = Path(f"{path.resolve()}-wal")
        self._uri = f"{path.resolve().as_uri()}?mode=rw".replace("file://", "file:", 1)  # never creates a file
        self._fallback = weakref.WeakMethod(fallback)  # the writer's automatic checkpoints back on (no cycle)
        self._wake = threading.Event()
        self._stop = False
        self._failed = False
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """Ask for a checkpoint; never raises (a write it follows is already committed)."""
        if self._stop or self._failed:
            return
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="flower-chain-wal-checkpoint", daemon=True)
            try:
                thread.start()
            except RuntimeError as e:  # no thread to be had: SQLite checkpoints inside commits, as before
                self._give_up(f"cannot start the checkpoint thread ({e})")
                return
            self._thread = thread
        self._wake.set()

    def _give_up(self, why: str) -> None:
        self._failed = True
        log.warning("flower-chain: %s; WAL checkpoints go back to the writer's commits", why)
        fallback = self._fallback()
        try:
            if fallback is not None:
                fallback()
        except sqlite3.Error:
            pass

    def _run(self) -> None:
        try:
            db = sqlite3.connect(self._uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
        except sqlite3.Error as e:
            self._give_up(f"the checkpoint thread cannot open the ledger ({e})")
            return
        warned = False
        try:
            while True:
                self._wake.wait()
                self._wake.clear()
                if self._stop:
                    return
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                    if self._wal.exists() and self._wal.stat().st_size > self.truncate_above:
                        db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
                except (sqlite3.Error, OSError) as e:  # e.g. busy: the next write asks again
                    if not warned:
                        warned = True
                        log.warning("flower-chain: a WAL checkpoint failed (%s); retried after the next write", e)
        finally:
            db.close()

    def close(self) -> None:
        self._stop = True
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()


class SQLiteLedger(Ledger):
    """Blocks, entries, subtree hashes and blobs in one SQLite file."""

    def __init__(self, path: str | Path, *, create: bool = True, uri: str | None = None) -> None:
        self.path = Path(path)
        self.uri = uri or file_uri("sqlite", self.path)
        if self.path.is_dir():
            raise LedgerOpenError(f"{self.path} is a directory, not a ledger file")
        exists = self.path.exists() and self.path.stat().st_size > 0
        if not exists and not create:
            raise LedgerOpenError(
                f"ledger file {self.path} is empty" if self.path.exists() else f"ledger file {self.path} not found"
            )
        if not exists:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._checkpointer = _Checkpointer(self.path, self._automatic_checkpoints)
        # a ledger dropped without close() does not leave its checkpoint thread (and connection) behind
        weakref.finalize(self, _Checkpointer.close, self._checkpointer)
        self._read_only = exists and not create
        try:
            if self._read_only:
                self._conn = sqlite3.connect(
                    f"{self.path.resolve().as_uri()}?mode=ro".replace("file://", "file:", 1),
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                )
                self._check_format()
                return
            self._conn = self._connect_rw()
            if exists:
                self._check_format()
            else:
                self._conn.executescript(_SCHEMA)
                self._conn.executemany("INSERT INTO meta VALUES (?, ?)", [("format", FORMAT), ("version", VERSION)])
        except sqlite3.DatabaseError as e:
            raise LedgerOpenError(f"{self.path} is not a flower-chain SQLite ledger ({e})") from e

    def _connect_rw(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA wal_autocheckpoint=0")  # checkpoints run on their own thread (_Checkpointer)
        return db

    def _automatic_checkpoints(self) -> None:
        """SQLite's own checkpoints inside commits (where the checkpoint thread cannot run)."""
        with self._lock:
            if not self._read_only:
                self._conn.execute("PRAGMA wal_autocheckpoint=1000")

    def _writable(self) -> None:
        """Reopen a read-only handle read-write before its first write (the format was checked on open)."""
        if self._read_only:
            with _db_errors(self.path):
                db = self._connect_rw()
            self._conn.close()
            self._conn, self._read_only = db, False

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection, read-write: for tools that write through it directly (a read-only handle is reopened)."""
        with self._lock:
            self._writable()
            return self._conn

    @property
    def read_only(self) -> bool:
        """True while this handle has only read (opened with ``create=False`` and no write yet)."""
        return self._read_only

    def _check_format(self) -> None:
        try:
            rows = dict(self._conn.execute("SELECT key, value FROM meta WHERE key IN ('format', 'version')").fetchall())
        except sqlite3.DatabaseError as e:
            raise LedgerOpenError(f"{self.path} is an SQLite file but not a flower-chain ledger") from e
        if rows.get("format") != FORMAT:
            raise LedgerOpenError(f"{self.path} is an SQLite file but not a flower-chain ledger")
        if rows.get("version") != VERSION:
            raise LedgerOpenError(
                f"{self.path} has ledger format version {rows.get('version')!r:.40}, expected {VERSION}"
            )

    def _append(self, block: StoredBlock, entries: Sequence[bytes], nodes: Sequence[Node]) -> None:
        h = block.header
        first = h.first_index
        with self._lock:
            self._writable()
            db = self._conn
            with _db_errors(self.path):
                db.execute("BEGIN IMMEDIATE")  # takes the write lock: the head read below cannot go stale
                try:
                    row = db.execute("SELECT height, header FROM blocks ORDER BY height DESC LIMIT 1").fetchone()
                    count, head = (
                        (
                            cells.count(row[0], f"{self.path}: head height") + 1,
                            hashlib.sha256(
                                cells.blob(row[1], f"{self.path}: head header", cells.MAX_HEADER_BYTES)
                            ).digest(),
                        )
                        if row
                        else (0, None)
                    )
                    self._check_extends(block, count, head)
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
                except sqlite3.IntegrityError as e:
                    db.execute("ROLLBACK")
                    raise LedgerConflictError(
                        f"{self.path}: block {h.height} collides with stored data ({e}); "
                        "another writer appended to this ledger"
                    ) from e
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
        self._checkpointer.poke()  # after the commit, outside its error handling: poke never raises

    def block_count(self) -> int:
        """Number of blocks; the stored heights must be exactly ``0 .. count - 1`` (no gap, none negative)."""
        with _db_errors(self.path):
            n, low, high = self._conn.execute("SELECT COUNT(*), MIN(height), MAX(height) FROM blocks").fetchone()
        if n and (low != 0 or high != n - 1):
            err = LedgerCorruptError(
                f"{self.path}: the stored block heights are not 0..{n - 1} (lowest {low}, "
                f"highest {high}): rows were added or removed outside the ledger"
            )
            err.height = 0 if low != 0 else self._first_missing_height()  # verify names the block
            raise err
        return int(n)  # COUNT(*) is an integer

    def _first_missing_height(self) -> int | None:
        """The lowest height above 0 with no stored block below the highest stored one (a deleted block)."""
        with _db_errors(self.path):
            row = self._conn.execute(
                "SELECT MIN(height + 1) FROM blocks WHERE height + 1 NOT IN (SELECT height FROM blocks) "
                "AND height < (SELECT MAX(height) FROM blocks)"
            ).fetchone()
        value = row[0] if row else None
        return value if isinstance(value, int) else None

    def blocks(self, start: int = 0, end: int | None = None) -> Iterator[StoredBlock]:
        end = 2**62 if end is None else end
        with _db_errors(self.path):
            cur = self._conn.execute(
                "SELECT height, header, signature, checkpoint FROM blocks WHERE height >= ? AND height < ? "
                "ORDER BY height",
                (max(start, 0), end),
            )
            expected = max(start, 0)
            for height, header, sig, cp in cur:
                if height != expected:
                    raise LedgerCorruptError(
                        f"{self.path}: block {expected} is missing (the next stored height is {height})"
                    )
                yield cells.stored_block(header, sig, cp, f"{self.path}: block {height}")
                expected += 1

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        end = 2**62 if end is None else end
        with _db_errors(self.path):
            cur = self._conn.execute(
                "SELECT idx, data FROM entries WHERE idx >= ? AND idx < ? ORDER BY idx", (max(start, 0), end)
            )
            while rows := cur.fetchmany(4096):
                for idx, data in rows:
                    yield cells.blob(data, f"{self.path}: entry {idx}", cells.MAX_ENTRY_BYTES)

    def node(self, level: int, index: int) -> bytes:
        with _db_errors(self.path):
            row = self._conn.execute("SELECT hash FROM nodes WHERE level = ? AND idx = ?", (level, index)).fetchone()
        if row is None:
            raise LedgerError(f"no subtree hash at level {level}, index {index}")
        return cells.hash_cell(row[0], f"{self.path}: subtree hash ({level}, {index})")

    def _put_blob(self, digest: bytes, data: bytes) -> None:
        with self._lock, _db_errors(self.path):
            self._writable()
            self._conn.execute("INSERT OR IGNORE INTO blobs VALUES (?, ?)", (digest, bytes(data)))
        self._checkpointer.poke()

    def put_blobs(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Many blobs in one transaction (one fsync, not one per blob)."""
        rows = [(bytes(d), bytes(data)) for d, data in items]
        if not rows:
            return
        with self._lock, _db_errors(self.path):
            self._writable()
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.executemany("INSERT OR IGNORE INTO blobs VALUES (?, ?)", rows)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        self._checkpointer.poke()

    def get_blob(self, digest: bytes) -> bytes:
        with _db_errors(self.path):
            row = self._conn.execute("SELECT data FROM blobs WHERE digest = ?", (digest,)).fetchone()
        if row is None:
            raise LedgerError(f"no blob {digest.hex()} in {self.path}")
        return cells.blob(row[0], f"{self.path}: blob {digest.hex()[:16]}", None)

    def has_blob(self, digest: bytes) -> bool:
        with _db_errors(self.path):
            return self._conn.execute("SELECT 1 FROM blobs WHERE digest = ?", (digest,)).fetchone() is not None

    def close(self) -> None:
        self._checkpointer.close()
        self._conn.close()

"""PostgreSQL backend (``postgresql://user@host:port/db``): a ledger that outlives one machine.

Needs psycopg 3 (``pip install 'flower-chain[postgres]'``), imported only when such a
URI is opened. The URI is handed to libpq as is, so everything libpq accepts works:
``?sslmode=require``, ``?options=-csearch_path%3Dfed1`` (one ledger per schema),
passwords from ``PGPASSWORD`` or ``~/.pgpass``. Passwords are never shown in messages.

The tables and their schema: :mod:`flower_chain.ledger.backends.pg_support`.

Single writer, never a fork. Each block is one transaction that first takes the row lock
on the one-row head table (``SELECT ... FROM fc_head WHERE id = 1 FOR UPDATE``) and
compares the stored block count and head hash with the new block's ``height`` and
``prev_hash``; only then are entries, subtree hashes and the block written and the head
row moved (``UPDATE ... WHERE block_count = old AND head_hash = old``), and the
transaction commits. A second writer blocks on that row lock until the first commits;
under READ COMMITTED its ``FOR UPDATE`` then re-reads the *new* head row, the comparison
fails and it raises :class:`LedgerConflictError` having written nothing. Explicit row
locking was chosen over SERIALIZABLE because it needs no retry loop and names the
conflict precisely; the ``UNIQUE`` constraints on ``height`` (primary key) and
``prev_hash`` make a fork impossible even for a writer that bypassed the head row.

Durability and failures. A block is durable when :meth:`append` returns
(``synchronous_commit`` as the server is configured, ``on`` by default). A lost connection
mid-append is recovered: the backend reconnects (for up to ``retry_seconds``), reads the
head, and either finds its block committed (done), finds the head unchanged (appends it
again) or finds another writer's block (:class:`LedgerConflictError`). If the server does
not come back in time it raises :class:`LedgerConnectionError`; the block is then stored
whole or not at all, and ``--resume`` continues from whichever it is.

Read-only use: a ledger opened with ``create=False`` (``flower-chain ledger summary``,
``verify``, ...) connects with ``default_transaction_read_only=on`` so every statement runs
in a read-only transaction; the first write through such a handle switches the session to
read-write.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from flower_chain.ledger.backends import cells
from flower_chain.ledger.backends.base import Ledger, Node
from flower_chain.ledger.backends.pg_support import (  # the schema and message helpers
    _PAGE,
    FORMAT,
    SCHEMA_VERSION,
    TABLES,
    Connection,
    _hint,
    _one_line,
    head_row,
    open_schema,
    redact,
)
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.errors import (
    LedgerConflictError,
    LedgerConnectionError,
    LedgerCorruptError,
    LedgerError,
    LedgerOpenError,
)

log = logging.getLogger(__name__)

__all__ = ["FORMAT", "SCHEMA_VERSION", "TABLES", "PostgresLedger", "redact"]


class PostgresLedger(Ledger):
    """Blocks, entries, subtree hashes and blobs in one PostgreSQL database.

    Parameters
    ----------
    uri : str
        ``postgresql://user[:password]@host[:port]/database[?libpq-params]``.
    create : bool
        Create the schema in an empty database; with ``False`` the ledger must exist and
        the session is read-only until the first write.
    retry_seconds : float
        How long a lost connection is retried before :class:`LedgerConnectionError`.
    connect_timeout : int
        Seconds libpq waits for the server at each connection attempt (unless the URI sets it).
    """

    def __init__(self, uri: str, *, create: bool = True, retry_seconds: float = 30.0, connect_timeout: int = 5) -> None:
        try:
            import psycopg  # noqa: PLC0415 - optional dependency, only for this backend
        except ImportError as e:
            raise LedgerOpenError(
                "the postgresql ledger backend needs psycopg 3: "
                "pip install 'flower-chain[postgres]' (or 'psycopg[binary]')"
            ) from e
        self._pg = psycopg
        self._conninfo = str(uri)
        self.uri = redact(self._conninfo)
        self.retry_seconds = float(retry_seconds)
        try:
            params = psycopg.conninfo.conninfo_to_dict(self._conninfo)
        except psycopg.ProgrammingError as e:
            raise LedgerOpenError(f"{self.uri}: not a valid PostgreSQL connection string ({_one_line(e)})") from e
        self._connect_kwargs: dict[str, Any] = {"autocommit": True, "application_name": "flower-chain"}
        if "connect_timeout" not in params:
            self._connect_kwargs["connect_timeout"] = int(connect_timeout)
        self._read_only = not create
        self._lock = threading.RLock()
        try:
            self._conn: Connection = self._connect()
        except psycopg.OperationalError as e:
            msg = _one_line(e)
            raise LedgerOpenError(f"cannot open ledger {self.uri}: {msg}; {_hint(msg)}") from e
        try:
            open_schema(self._conn, self.uri, create)
        except psycopg.Error as e:
            self._conn.close()
            raise LedgerOpenError(f"{self.uri}: cannot read the ledger schema ({_one_line(e)})") from e
        except LedgerError:
            self._conn.close()
            raise

    # -- connection ------------------------------------------------------------------------------
    def _connect(self) -> Connection:
        conn = self._pg.connect(self._conninfo, **self._connect_kwargs)
        if self._read_only:
            conn.execute("SET default_transaction_read_only = on")
        return conn

    def _reconnect(self, what: str, cause: BaseException) -> None:
        """Replace a broken connection, retrying for ``retry_seconds``; else :class:`LedgerConnectionError`."""
        deadline = time.monotonic() + self.retry_seconds
        delay, last = 0.1, cause
        msg = "%s: lost the connection while %s (%s); reconnecting for up to %.0f s"
        log.warning(msg, self.uri, what, _one_line(cause), self.retry_seconds)
        try:
            self._conn.close()
        except Exception:  # noqa: BLE001 - the old connection is gone either way
            pass
        while True:
            try:
                self._conn = self._connect()
                return
            except self._pg.OperationalError as e:
                last = e
            if time.monotonic() + delay > deadline:
                break
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
        raise LedgerConnectionError(
            f"{self.uri}: lost the connection to PostgreSQL while {what} and could not reconnect within "
            f"{self.retry_seconds:.0f} s ({_one_line(last)}). Nothing is half-written: each block is stored "
            "whole or not at all. When the database is back, restart the server with --resume"
        ) from cause

    def _run(self, what: str, fn: Callable[..., Any]) -> Any:
        """Run an idempotent read or write ``fn(conn)``, once more after a reconnect if the connection broke."""
        with self._lock:
            try:
                return fn(self._conn)
            except self._pg.OperationalError as e:
                if not self._conn.closed and not self._conn.broken:
                    raise self._db_error(what, e) from e
                self._reconnect(what, e)
                try:
                    return fn(self._conn)
                except self._pg.OperationalError as e2:
                    raise LedgerConnectionError(
                        f"{self.uri}: {what} failed again after reconnecting ({_one_line(e2)})"
                    ) from e2
            except self._pg.Error as e:
                raise self._db_error(what, e) from e

    def _db_error(self, what: str, e: BaseException) -> LedgerError:
        return LedgerCorruptError(f"{self.uri}: {what} failed: {_one_line(e)}")

    def _writable(self) -> None:
        if self._read_only:
            self._read_only = False
            self._run("switching to read-write", lambda c: c.execute("SET default_transaction_read_only = off"))

    @property
    def read_only(self) -> bool:
        """True while this handle has only read (opened with ``create=False`` and no write yet)."""
        return self._read_only

    # -- writing ---------------------------------------------------------------------------------
    def _append(self, block: StoredBlock, entries: Sequence[bytes], nodes: Sequence[Node]) -> None:
        with self._lock:
            self._writable()
            deadline = time.monotonic() + self.retry_seconds
            what = f"appending block {block.header.height}"
            while True:
                try:
                    self._append_once(block, entries, nodes)
                    return
                except self._pg.OperationalError as e:
                    if not (self._conn.closed or self._conn.broken):
                        raise self._db_error(what, e) from e
                    if time.monotonic() > deadline:
                        raise LedgerConnectionError(
                            f"{self.uri}: {what} kept failing for {self.retry_seconds:.0f} s ({_one_line(e)}); "
                            "nothing of it is half-written. Restart the server with --resume when the database "
                            "is stable"
                        ) from e
                    self._reconnect(what, e)  # raises LedgerConnectionError if the server stays away
                    try:
                        if self._stored_after_loss(block):
                            return
                    except self._pg.OperationalError:
                        continue  # lost again: the next attempt reconnects or gives up at the deadline
                except self._pg.Error as e:
                    raise self._db_error(what, e) from e

    def _stored_after_loss(self, block: StoredBlock) -> bool:
        """After a lost connection: True if the block was committed; raise if another writer's block is there."""
        count, head = head_row(
            self._conn.execute("SELECT block_count, head_hash FROM fc_head WHERE id = 1").fetchone(), self.uri
        )
        if count == block.header.height + 1 and bytes(head) == block.hash:
            log.warning("%s: block %d was committed before the connection was lost", self.uri, block.header.height)
            return True
        self._check_extends(block, count, bytes(head))  # unchanged head: the caller appends again
        return False

    def _append_once(self, block: StoredBlock, entries: Sequence[bytes], nodes: Sequence[Node]) -> None:
        h = block.header
        first = h.first_index
        conn = self._conn
        try:
            with conn.transaction(), conn.cursor() as cur:
                # The compare-and-swap: the head row is locked for the rest of the transaction.
                cur.execute("SELECT block_count, head_hash FROM fc_head WHERE id = 1 FOR UPDATE")
                count, head = head_row(cur.fetchone(), self.uri)
                self._check_extends(block, count, bytes(head))
                with cur.copy("COPY fc_entries (idx, height, data) FROM STDIN (FORMAT BINARY)") as cp:
                    cp.set_types(["int8", "int8", "bytea"])
                    for i, e in enumerate(entries):
                        cp.write_row((first + i, h.height, bytes(e)))
                if nodes:
                    with cur.copy("COPY fc_nodes (level, idx, hash) FROM STDIN (FORMAT BINARY)") as cp:
                        cp.set_types(["int4", "int8", "bytea"])
                        for node in nodes:
                            cp.write_row(node)
                cur.execute(
                    "INSERT INTO fc_blocks VALUES (%s, %s, %s, %s, %s, %s)",
                    (h.height, block.hash, h.prev_hash, block.header_bytes, block.signature, block.checkpoint),
                )
                cur.execute(
                    "UPDATE fc_head SET block_count = %s, head_hash = %s "
                    "WHERE id = 1 AND block_count = %s AND head_hash = %s",
                    (count + 1, block.hash, count, head),
                )
                if cur.rowcount != 1:
                    raise LedgerConflictError(f"{self.uri}: the head moved during the append of block {h.height}")
        except self._pg.errors.IntegrityError as e:
            raise LedgerConflictError(
                f"{self.uri}: block {h.height} collides with stored data ({_one_line(e)}): another writer "
                "appended to this ledger; only one server may write it"
            ) from e
        except self._pg.errors.ReadOnlySqlTransaction as e:
            raise LedgerError(
                f"{self.uri}: the database refuses writes ({_one_line(e)}): connect to the "
                "primary server, not a read-only replica"
            ) from e

    # -- reading ---------------------------------------------------------------------------------
    def block_count(self) -> int:
        row = self._run(
            "reading the head", lambda c: c.execute("SELECT block_count FROM fc_head WHERE id = 1").fetchone()
        )
        if row is None:
            raise LedgerCorruptError(f"{self.uri}: the head row of fc_head is missing")
        return cells.count(row[0], f"{self.uri}: fc_head.block_count")

    def head(self) -> StoredBlock | None:
        def q(c: Connection) -> tuple[Any, ...] | None:
            return (
                c.cursor(binary=True)
                .execute(
                    "SELECT b.header, b.signature, b.checkpoint FROM fc_head h JOIN fc_blocks b "
                    "ON b.height = h.block_count - 1 WHERE h.id = 1"
                )
                .fetchone()
            )

        row = self._run("reading the head", q)
        if row is None:
            if self.block_count():
                raise LedgerCorruptError(f"{self.uri}: fc_head counts blocks but its last block is not stored")
            return None
        return cells.stored_block(row[0], row[1], row[2], f"{self.uri}: head block")

    def blocks(self, start: int = 0, end: int | None = None) -> Iterator[StoredBlock]:
        end = 2**62 if end is None else end
        start = max(start, 0)
        while start < end:
            lo, hi = start, min(end, start + 1024)
            rows = self._run(
                "reading blocks",
                lambda c, lo=lo, hi=hi: (
                    c.cursor(binary=True)
                    .execute(
                        "SELECT height, header, signature, checkpoint FROM fc_blocks WHERE height >= %s AND height < %s "
                        "ORDER BY height",
                        (lo, hi),
                    )
                    .fetchall()
                ),
            )
            for expected, (height, header, sig, cp) in enumerate(rows, start=lo):
                if height != expected:
                    raise LedgerCorruptError(
                        f"{self.uri}: block {expected} is missing (the next stored height is {height})"
                    )
                yield cells.stored_block(header, sig, cp, f"{self.uri}: block {height}")
            if len(rows) < hi - lo:
                return
            start = hi

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        end = 2**62 if end is None else end
        start = max(start, 0)
        while start < end:
            lo, hi = start, min(end, start + _PAGE)
            rows = self._run(
                "reading entries",
                lambda c, lo=lo, hi=hi: (
                    c.cursor(binary=True)
                    .execute("SELECT idx, data FROM fc_entries WHERE idx >= %s AND idx < %s ORDER BY idx", (lo, hi))
                    .fetchall()
                ),
            )
            for idx, data in rows:
                yield cells.blob(data, f"{self.uri}: entry {idx}", cells.MAX_ENTRY_BYTES)
            if len(rows) < hi - lo:
                return
            start = hi

    def node(self, level: int, index: int) -> bytes:
        row = self._run(
            "reading a subtree hash",
            lambda c: (
                c.cursor(binary=True)
                .execute("SELECT hash FROM fc_nodes WHERE level = %s AND idx = %s", (level, index))
                .fetchone()
            ),
        )
        if row is None:
            raise LedgerError(f"no subtree hash at level {level}, index {index}")
        return cells.hash_cell(row[0], f"{self.uri}: subtree hash ({level}, {index})")

    # -- blobs -----------------------------------------------------------------------------------
    def _put_blob(self, digest: bytes, data: bytes) -> None:
        self._writable()
        self._run(
            "storing a blob",
            lambda c: c.execute(
                "INSERT INTO fc_blobs VALUES (%s, %s) ON CONFLICT (digest) DO NOTHING", (digest, bytes(data))
            ),
        )

    def put_blobs(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Many blobs in one transaction (idempotent: a retry after a reconnect inserts nothing twice)."""
        rows = [(bytes(d), bytes(data)) for d, data in items]
        if not rows:
            return
        self._writable()

        def insert(c: Connection) -> None:
            with c.transaction():
                c.cursor().executemany("INSERT INTO fc_blobs VALUES (%s, %s) ON CONFLICT (digest) DO NOTHING", rows)

        self._run("storing blobs", insert)

    def get_blob(self, digest: bytes) -> bytes:
        row = self._run(
            "reading a blob",
            lambda c: (
                c.cursor(binary=True).execute("SELECT data FROM fc_blobs WHERE digest = %s", (digest,)).fetchone()
            ),
        )
        if row is None:
            raise LedgerError(f"no blob {digest.hex()} in {self.uri}")
        return cells.blob(row[0], f"{self.uri}: blob {digest.hex()[:16]}", None)

    def has_blob(self, digest: bytes) -> bool:
        return (
            self._run(
                "reading a blob", lambda c: c.execute("SELECT 1 FROM fc_blobs WHERE digest = %s", (digest,)).fetchone()
            )
            is not None
        )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()

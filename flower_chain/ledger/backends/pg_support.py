"""The PostgreSQL backend's schema and its message helpers (password redaction, one-line errors, hints).

Kept apart from :mod:`flower_chain.ledger.backends.postgres` (the storage logic) so each stays one concept.

Layout (schema version 1, created on first use by a writer, recorded in ``fc_meta``)::

    fc_meta    (key, value)                          format, schema_version
    fc_head    (id = 1, block_count, head_hash)      one row: the compare-and-swap target
    fc_blocks  (height PK, hash UNIQUE, prev_hash UNIQUE, header, signature, checkpoint)
    fc_entries (idx PK, height, data)
    fc_nodes   (level, idx, hash)  PK (level, idx)
    fc_blobs   (digest PK, data)                     models and strategy state, in the database
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, TypeAlias

from flower_chain.ledger.errors import LedgerCorruptError, LedgerOpenError
from flower_chain.ledger.text import is_decimal

if TYPE_CHECKING:
    import psycopg

#: A psycopg 3 connection (psycopg is imported only when a PostgreSQL ledger is opened).
Connection: TypeAlias = "psycopg.Connection[Any]"

FORMAT = "flower-chain-ledger"
SCHEMA_VERSION = 1
TABLES = ("fc_meta", "fc_head", "fc_blocks", "fc_entries", "fc_nodes", "fc_blobs")
_PAGE = 8192  # entries fetched per query when streaming
_CREATE_LOCK = 0x666C6F77  # advisory lock key held while creating the schema ("flow")

_SCHEMA = """
CREATE TABLE fc_meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE fc_head (id smallint PRIMARY KEY CHECK (id = 1), block_count bigint NOT NULL,
                      head_hash bytea NOT NULL);
CREATE TABLE fc_blocks (height bigint PRIMARY KEY, hash bytea NOT NULL UNIQUE, prev_hash bytea NOT NULL UNIQUE,
                        header bytea NOT NULL, signature bytea NOT NULL, checkpoint text NOT NULL);
CREATE TABLE fc_entries (idx bigint PRIMARY KEY, height bigint NOT NULL, data bytea NOT NULL);
CREATE TABLE fc_nodes (level integer NOT NULL, idx bigint NOT NULL, hash bytea NOT NULL, PRIMARY KEY (level, idx));
CREATE TABLE fc_blobs (digest bytea PRIMARY KEY, data bytea NOT NULL);
INSERT INTO fc_head VALUES (1, 0, '\\x');
"""


def redact(uri: str) -> str:
    """``uri`` with any password replaced by ``***`` (for messages and ``Ledger.uri``)."""
    uri = re.sub(r"(://[^:/@?#]*:)[^@/?#]*@", r"\1***@", uri)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", uri)


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text or type(e).__name__


def _hint(msg: str) -> str:
    low = msg.lower()
    if "password authentication failed" in low or "no password supplied" in low:
        return "check the user and password (in the URI, PGPASSWORD or ~/.pgpass)"
    if "does not exist" in low and "database" in low:
        return "create the database first (createdb NAME) or fix its name in the URI"
    if "role" in low and "does not exist" in low:
        return "fix the user name in the URI or create the role"
    if "refused" in low or "timeout" in low or "could not translate" in low or "no such file" in low:
        return "check that PostgreSQL is running and that the host and port in the URI are right"
    return "check the connection string"


def head_row(row: tuple[Any, ...] | None, uri: str) -> tuple[Any, ...]:
    """The ``fc_head`` row ``(block_count, head_hash)``; :class:`LedgerCorruptError` when it is missing."""
    if row is None:
        raise LedgerCorruptError(f"{uri}: the head row of fc_head is missing")
    return row


def existing_tables(conn: Connection, uri: str) -> set[str]:
    """The flower-chain tables in the connection's current schema."""
    row = conn.execute("SELECT current_schema()").fetchone()
    if row is None or row[0] is None:
        raise LedgerOpenError(
            f"{uri}: no schema on the search_path exists to hold the ledger; "
            "create it or fix the options=-csearch_path=... in the URI"
        )
    rows = conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relname = ANY(%s)",
        (list(TABLES),),
    ).fetchall()
    return {r[0] for r in rows}


def open_schema(conn: Connection, uri: str, create: bool) -> None:
    """Check the ledger schema (creating it in an empty database when ``create``); :class:`LedgerOpenError`
    names what is wrong and what to do."""
    found = existing_tables(conn, uri)
    if not found:
        if not create:
            raise LedgerOpenError(
                f"{uri}: the database holds no flower-chain ledger (no fc_meta "
                "table); a server creates one on first use (--ledger URI)"
            )
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_CREATE_LOCK,))  # two servers starting at once
            if not existing_tables(conn, uri):
                for stmt in filter(str.strip, _SCHEMA.split(";")):
                    conn.execute(stmt)
                conn.execute(
                    "INSERT INTO fc_meta VALUES ('format', %s), ('schema_version', %s)",
                    (FORMAT, str(SCHEMA_VERSION)),
                )
        found = existing_tables(conn, uri)
    if "fc_meta" not in found:
        raise LedgerOpenError(
            f"{uri}: the database has tables {', '.join(sorted(found))} but no fc_meta: "
            "a foreign or damaged schema, not a flower-chain ledger; use another database "
            "or schema"
        )
    meta = dict(conn.execute("SELECT key, value FROM fc_meta").fetchall())
    if meta.get("format") != FORMAT:
        raise LedgerOpenError(
            f"{uri}: fc_meta names format {meta.get('format')!r}, not {FORMAT!r}: "
            "a foreign schema, not a flower-chain ledger; use another database or schema"
        )
    version = meta.get("schema_version", "")
    if version != str(SCHEMA_VERSION):
        newer = is_decimal(version) and int(version) > SCHEMA_VERSION
        raise LedgerOpenError(
            f"{uri}: ledger schema version {version!r}, this flower-chain reads version {SCHEMA_VERSION}"
            + ("; upgrade flower-chain" if newer else "")
        )
    missing = set(TABLES) - found
    if missing:
        raise LedgerOpenError(
            f"{uri}: a flower-chain ledger schema without tables "
            f"{', '.join(sorted(missing))}: damaged; restore it from a backup"
        )

"""The PostgreSQL backend's schema and its message helpers (password redaction, one-line errors, hints).

Kept apart from :mod:`flower_chain.ledger.backends.postgres` (the storage logic) so each stays one concept.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, TypeAlias

from flower_chain.ledger.errors import LedgerCorruptError

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

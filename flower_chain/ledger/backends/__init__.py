"""Ledger backends, chosen by URI.

=========================  ==============================================
``memory:``                in-memory (:class:`MemoryLedger`)
``sqlite:///rel/path.db``  SQLite; four slashes for an absolute path
``jsonl:///rel/path``      JSON Lines; four slashes for an absolute path
``postgresql://u@h:p/db``  PostgreSQL (psycopg 3, ``pip install 'flower-chain[postgres]'``)
``PATH.db`` / ``PATH.jsonl``  a plain path, backend by suffix
``SCHEME:...``             a third-party backend registered under the
                           entry-point group ``flower_chain.ledgers``
=========================  ==============================================

An entry point ``SCHEME = package.module:factory`` names a callable
``factory(uri: str, *, create: bool) -> Ledger``.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.backends.jsonl import JSONLLedger
from flower_chain.ledger.backends.memory import MemoryLedger
from flower_chain.ledger.backends.postgres import PostgresLedger
from flower_chain.ledger.backends.sqlite import SQLiteLedger
from flower_chain.ledger.errors import LedgerOpenError
from flower_chain.ledger.location import parse_ledger_uri

ENTRY_POINT_GROUP = "flower_chain.ledgers"

__all__ = [
    "ENTRY_POINT_GROUP",
    "JSONLLedger",
    "Ledger",
    "MemoryLedger",
    "PostgresLedger",
    "SQLiteLedger",
    "open_ledger",
]


def open_ledger(uri: str, *, create: bool = False) -> Ledger:
    """Open the ledger at ``uri``; ``create`` makes a new empty one where none exists.

    A writer (``create=True``) opening a JSONL file with a torn last line drops
    that line with a warning; a reader gets :class:`LedgerCorruptError`.
    """
    uri = str(uri)
    location = parse_ledger_uri(uri)  # the one place URIs are split (flower_chain.ledger.location)
    scheme = location.scheme
    if not scheme:  # a plain path
        p = Path(uri)
        if p.suffix == ".jsonl":
            return JSONLLedger(p, create=create, drop_torn_tail=create)
        if p.suffix in (".db", ".sqlite", ".sqlite3") or (p.exists() and not create):
            return SQLiteLedger(p, create=create)
        raise LedgerOpenError(
            f"{uri!r}: not a ledger URI; use sqlite:///PATH, jsonl:///PATH, postgresql://USER@HOST:PORT/DB or memory:"
        )
    if scheme == "memory":
        return MemoryLedger(uri)
    if scheme == "sqlite" and location.path is not None:  # parse_ledger_uri gives sqlite: a path
        return SQLiteLedger(location.path, create=create, uri=uri)
    if scheme == "jsonl" and location.path is not None:  # and jsonl:
        return JSONLLedger(location.path, create=create, uri=uri, drop_torn_tail=create)
    if scheme == "postgresql":
        return PostgresLedger(uri, create=create)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == scheme:
            ledger = ep.load()(uri, create=create)
            if not isinstance(ledger, Ledger):
                raise LedgerOpenError(f"backend {scheme!r} ({ep.value}) did not return a Ledger")
            return ledger
    known = ["memory", "sqlite", "jsonl", "postgresql"] + sorted(
        {ep.name for ep in entry_points(group=ENTRY_POINT_GROUP)}
    )
    raise LedgerOpenError(f"{uri!r}: unknown ledger scheme {scheme!r}; known: {', '.join(known)}")

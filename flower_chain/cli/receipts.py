"""``flower-chain receipts check``: censorship at a client's last contact, checked offline.

A client checks the receipts of its updates with the server's *next* instruction; after the last round there
is none, so an honest update dropped, or recorded as rejected, in the final round would go unnoticed. This
command reads a node's receipt store (``receipts/<key id>/``: the statements it signed and has no receipt
for yet, and the server key it pinned) and looks for each of them in the published log — a ledger URI, or
the log's tlog-tiles URL — checked under that server key. It fails (exit 1), naming the round, the kind and
the key, on any pending statement that is absent from the log or recorded only as rejected; exit 0 when every
one is in the log, accepted. Bad input (no store, no pinned key, an unreachable URL, a ledger that cannot be
opened) is one ``error:`` line, exit 2. Nothing is written to the store.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from flower_chain.cli.common import EXIT_FAILED, fail, open_or_fail, read_server_key, say
from flower_chain.cli.errors import Meaning, meanings
from flower_chain.ledger.entries import ACCEPTED, Entry, GenesisEntry, UpdateEntry, UpdateStatement, decode_entry
from flower_chain.ledger.errors import LedgerError, ProofError, VerificationError
from flower_chain.ledger.genesis import GenesisError, leading_genesis, read_genesis
from flower_chain.ledger.keys import public_key_problem, verify_signature
from flower_chain.ledger.writer import origin_for

receipts_app = typer.Typer(help="Check a node's receipts offline.", no_args_is_help=True)

STATE_FILE = "state.sqlite"  # flower_chain.clients.receipt_store.STATE_FILE (the CLI imports no client module)
SERVER_KEY_FILE = "server-key"
MAX_PENDING = 1 << 20  # pending statements read from one store (a node signs one or two per round)


@dataclass(frozen=True)
class Pending:
    """A statement the node signed and holds no receipt for."""

    origin: str
    round: int
    kind: str
    statement: bytes


def read_pending(keydir: Path) -> list[Pending]:
    """The pending statements of a key's receipt store, read-only (both the current and the older table)."""
    path = keydir / STATE_FILE
    if not path.is_file():
        fail(f"{keydir} holds no receipt store ({STATE_FILE}): not a receipts/<key id> directory")
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as e:
        fail(f"{path}: {e}")
    try:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        rows: list[tuple[Any, ...]] = []
        if "pending_replies" in tables:
            rows += db.execute(
                "SELECT origin, round, kind, statement FROM pending_replies LIMIT ?", (MAX_PENDING,)
            ).fetchall()
        if "pending" in tables:  # a store not opened since evaluate replies got receipts: train statements
            rows += db.execute(
                "SELECT origin, round, 'train', statement FROM pending LIMIT ?", (MAX_PENDING,)
            ).fetchall()
    except sqlite3.Error as e:
        fail(f"{path}: not a receipt store ({e})")
    finally:
        db.close()
    out = []
    for origin, rnd, kind, statement in rows:
        if not (
            isinstance(origin, str) and isinstance(rnd, int) and isinstance(kind, str) and isinstance(statement, bytes)
        ):
            fail(f"{path}: a pending row of the wrong type")
        out.append(Pending(origin, rnd, kind, statement))
    return sorted(out, key=lambda p: (p.origin, p.round, p.kind != "train"))


def pinned_key(keydir: Path, given: str | None) -> bytes:
    """The server key to check the log under: ``--server-key``, else the one the node pinned."""
    if given:
        return read_server_key(given)
    path = keydir / SERVER_KEY_FILE
    if not path.is_file():
        fail(f"{keydir} has no pinned server key ({SERVER_KEY_FILE}); give --server-key")
    try:
        key = base64.b64decode(path.read_text(encoding="ascii").strip(), validate=True)
    except (UnicodeDecodeError, binascii.Error, ValueError):
        fail(f"{path} is not a base64 server key")
    problem = public_key_problem(key)
    if problem is not None:
        fail(f"{path}: {problem}")
    return key


def log_entries(log: str, server_key: bytes) -> tuple[Iterator[Entry], Entry | None]:
    """(the log's decoded entries after the genesis, and its genesis) from a ledger URI or a tiles URL, each
    checked under ``server_key`` (a ledger: verified in full; tiles: against the signed checkpoint)."""
    if log.startswith(("http://", "https://")):
        from flower_chain.ledger.tiles import TilesClient

        client = TilesClient(log, server_key)
        cp, _ = client.checkpoint()
        client.verify_tree(cp)  # the tiles hash to the signed checkpoint's root: the entries below are the log's
        datas = list(client.entries(0, cp.size, cp.size))
        entries = [decode_entry(d) for d in datas]
        if not entries or not isinstance(entries[0], GenesisEntry):
            return iter(entries[1:]), entries[0] if entries else None
        try:  # the keyring: the genesis and the keys entries right after it
            genesis, n = leading_genesis(entries)
        except GenesisError as e:
            raise VerificationError(str(e), height=0, entry=e.entry) from e
        return iter(entries[n:]), genesis
    from flower_chain.ledger.verify import verify

    ledger = open_or_fail(log)
    try:
        seen: list[Entry] = []
        verify(ledger, server_key=server_key, visit=lambda _i, e: seen.append(e))
        genesis = read_genesis(ledger)
    finally:
        ledger.close()
    return iter(seen), genesis


def problems_of(pending: list[Pending], entries: Iterator[Entry], genesis: GenesisEntry) -> list[str]:
    """One line per pending statement that is not in the log, accepted."""
    copies: dict[bytes, list[UpdateEntry]] = {p.statement: [] for p in pending}
    for e in entries:
        if isinstance(e, UpdateEntry) and e.statement in copies:
            copies[e.statement].append(e)
    out = []
    for p in pending:
        try:
            kid = UpdateStatement.from_bytes(p.statement).key_id
        except (LedgerError, TypeError, ValueError):
            kid = "?"
        found = copies[p.statement]
        what = f"round {p.round} ({p.kind}), key {kid}"
        if not found:
            out.append(f"{what}: the signed statement is absent from the log (dropped)")
        elif not any(e.verdict == ACCEPTED for e in found):
            e = found[0]
            raw = genesis.client_keys.get(kid)
            valid = raw is not None and verify_signature(raw, e.signature, p.statement)
            sig = (
                "although its recorded signature is valid"
                if valid
                else "with a signature that is not the one this node made (recorded as unsigned or altered)"
            )
            out.append(f"{what}: recorded as rejected ({e.reason}) {sig}")
    return out


@receipts_app.command("check")
@meanings(
    Meaning((VerificationError, ProofError), "{log}: ", EXIT_FAILED, not_verified=True),
    Meaning((LedgerError,), "{log}: "),
)
def receipts_check(
    keydir: Path = typer.Argument(..., metavar="KEYDIR", help="a node's receipts/<key id> directory"),
    log: str = typer.Option(..., "--log", help="the published log: a ledger URI or its tiles URL"),
    server_key: str | None = typer.Option(None, "--server-key", help="default: the key the node pinned"),
) -> None:
    """Fail on any statement this node signed that the published log lacks or records as rejected."""
    if not keydir.is_dir():
        fail(f"{keydir} is not a directory")
    pending = read_pending(keydir)
    pub = pinned_key(keydir, server_key)
    entries, genesis = log_entries(log, pub)
    if not isinstance(genesis, GenesisEntry):
        fail(f"{log}: the log does not start with a genesis entry")
    origin = origin_for(genesis.federation_id)
    mine = [p for p in pending if p.origin == origin]
    problems = problems_of(mine, entries, genesis)
    for line in problems:
        say("MISSING" if "absent" in line else "REJECTED", "bold red", line, stderr=True)
    if problems:
        say(
            "NOT VERIFIED",
            "bold red",
            f"{len(problems)} of the {len(mine)} statements this node signed for "
            f"federation {genesis.federation_id} and holds no receipt for are not in the log, accepted",
            stderr=True,
        )
        raise typer.Exit(EXIT_FAILED)
    others = len(pending) - len(mine)
    say(
        "VERIFIED",
        "bold green",
        f"all {len(mine)} statements this node signed for federation "
        f"{genesis.federation_id} and holds no receipt for are in the log, accepted"
        + (f" ({others} pending for other logs not checked)" if others else ""),
    )

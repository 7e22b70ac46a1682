"""A C2SP tlog-witness: the ``add-checkpoint`` endpoint, with its state in SQLite.

https://c2sp.org/tlog-witness. For each configured log (origin → trusted
signed-note verifier keys) the witness keeps the latest checkpoint it cosigned
and cosigns a new one only when it is consistent with it. Request body::

    old <size>\\n
    <base64 consistency proof hash>\\n    (0..63 lines)
    \\n
    <signed checkpoint note>

Answers (checked in this order): 400 malformed body, more than 63 proof
lines, or a signed note the C2SP signed-note spec refuses (a malformed signature
line anywhere, a control character, two lines for one key: every line is checked
before any signature, so the answer never depends on line order); 404 unknown origin; 403 no valid signature by a trusted key; 400 old
size larger than the checkpoint size; 409 old size differs from the stored
size (body ``<stored size>\\n``, ``Content-Type: text/x.tlog.size``); 422 the
consistency proof does not verify (or is not empty for old size 0); 409 equal
sizes with another root; the ``flower-chain/head`` line (docs/ledger-format.md
§5.1): 400 malformed, 422 missing after a cosigned checkpoint of the log had one,
409 equal size and root naming another block of the same or a lower height (a
re-signed header); 200 with one ``cosignature/v1`` line.

The compare of the old size with the stored one and the save of the new
checkpoint run in one ``BEGIN IMMEDIATE`` SQLite transaction whose ``UPDATE``
also compares the stored size, so two concurrent submissions for one log can
never both succeed, even from two witness processes on one database file.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger import merkle
from flower_chain.ledger.checkpoint import Checkpoint, head_of, open_note, parse_note, parse_verifier_key
from flower_chain.ledger.cosignature import cosigner_verifier_key, sign_cosignature
from flower_chain.ledger.errors import CheckpointError, KeyFileError, ProofError
from flower_chain.ledger.text import is_decimal

if TYPE_CHECKING:
    from starlette.applications import Starlette

MAX_PROOF_LINES = 63
MAX_BODY_BYTES = 64 * 1024
SIZE_CONTENT_TYPE = "text/x.tlog.size"
_MAX_SIZE = 2**63 - 1  # SQLite INTEGER

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS logs (
    origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL, checkpoint TEXT NOT NULL,
    updated INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, body and content type."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


def parse_log_option(value: str) -> tuple[str, tuple[str, bytes]]:
    """``ORIGIN=VKEY`` → ``(origin, (key name, raw key))``; raise :class:`KeyFileError` if malformed."""
    origin, sep, vkey = value.partition("=")
    if not sep or not origin or not vkey:
        raise KeyFileError(f"--log {value!r}: write ORIGIN=NAME+KEYID+BASE64KEY")
    return origin, parse_verifier_key(vkey)


class WitnessStore:
    """The witness's persistent record: per origin, the size, root and note of the latest cosigned checkpoint.

    Parameters
    ----------
    path : str or Path
        The SQLite file (created if missing).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(_SCHEMA)
            db.execute("INSERT OR IGNORE INTO meta VALUES ('format', 'flower-chain-witness/1')")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return db

    def get(self, origin: str) -> tuple[int, bytes]:
        """The stored ``(size, root)`` for ``origin``; ``(0, empty root)`` if never cosigned."""
        db = self._connect()
        try:
            row = db.execute("SELECT size, root FROM logs WHERE origin = ?", (origin,)).fetchone()
        finally:
            db.close()
        return (row[0], bytes(row[1])) if row else (0, merkle.EMPTY_ROOT)

    def latest(self, origin: str) -> str | None:
        """The latest checkpoint note cosigned for ``origin`` (``None`` if none)."""
        db = self._connect()
        try:
            row = db.execute("SELECT checkpoint FROM logs WHERE origin = ?", (origin,)).fetchone()
        finally:
            db.close()
        return row[0] if row else None

    def compare_and_update(
        self, origin: str, old_size: int, proof: Sequence[bytes], cp: Checkpoint, note: str
    ) -> Reply | None:
        """Atomically: check ``old_size`` against the stored size, the proof, then store ``cp``.

        Returns ``None`` when ``cp`` was stored, else the refusal (409 or 422).
        """
        db = self._connect()
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT size, root, checkpoint FROM logs WHERE origin = ?", (origin,)).fetchone()
                size, root = (row[0], bytes(row[1])) if row else (0, merkle.EMPTY_ROOT)
                if old_size != size:
                    db.execute("ROLLBACK")
                    return Reply(409, f"{size}\n".encode(), SIZE_CONTENT_TYPE)
                if old_size == cp.size and cp.root_hash != root:
                    db.execute("ROLLBACK")
                    return Reply(409, f"{size}\n".encode(), SIZE_CONTENT_TYPE)
                if old_size == 0 and proof:
                    db.execute("ROLLBACK")
                    return Reply(422, b"the consistency proof from size 0 must be empty\n")
                try:
                    merkle.verify_consistency(old_size, cp.size, list(proof), root, cp.root_hash)
                except ProofError as e:
                    db.execute("ROLLBACK")
                    return Reply(422, f"consistency proof: {e}\n".encode())
                head_refused = _head_refusal(row[2] if row else None, size, cp)
                if head_refused is not None:
                    db.execute("ROLLBACK")
                    return head_refused
                now = int(time.time())
                if row is None:
                    db.execute("INSERT INTO logs VALUES (?, ?, ?, ?, ?)", (origin, cp.size, cp.root_hash, note, now))
                else:
                    cur = db.execute(
                        "UPDATE logs SET size = ?, root = ?, checkpoint = ?, updated = ? "
                        "WHERE origin = ? AND size = ? AND root = ?",
                        (cp.size, cp.root_hash, note, now, origin, size, root),
                    )
                    if cur.rowcount != 1:  # cannot happen under BEGIN IMMEDIATE; refuse rather than roll back
                        db.execute("ROLLBACK")
                        return Reply(409, f"{self.get(origin)[0]}\n".encode(), SIZE_CONTENT_TYPE)
                db.execute("COMMIT")
                return None
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        finally:
            db.close()


def _head_refusal(stored_note: str | None, size: int, cp: Checkpoint) -> Reply | None:
    """The head line rules (docs/ledger-format.md §5.1) against the latest checkpoint cosigned for the log.

    Once a cosigned checkpoint of a log named its head block, every later one must (422); a checkpoint
    naming another block of the same or a lower height than the one cosigned is refused (409: a re-signed
    header, or a head height going back while the log grew). A later height at the same size is an empty
    block appended. (The witness sees heights and hashes, not the header chain between them: a rewrite of an
    earlier header followed by a new block is the clients' to catch, docs/design.md.)
    """
    if stored_note is None:
        return None
    try:
        before = head_of(Checkpoint.from_text(stored_note[: stored_note.rfind("\n\n") + 1]))
        now = head_of(cp)
    except CheckpointError:
        return Reply(400, b"malformed flower-chain/head line\n")
    if before is None:
        return None
    if now is None:
        return Reply(422, b"this log's checkpoints name their head block (flower-chain/head); this one does not\n")
    if now != before and now.height <= before.height:  # a longer log needs a later block; the same size, the same
        return Reply(409, f"{size}\n".encode(), SIZE_CONTENT_TYPE)  # block (or an empty one appended)
    return None


class Witness:
    """The add-checkpoint logic, independent of HTTP.

    Parameters
    ----------
    name : str
        The witness key name (a schema-less URL by convention).
    key : Ed25519PrivateKey
        The witness's cosigning key.
    logs : mapping
        Origin → list of ``(key name, raw Ed25519 key)`` the witness trusts for that log.
    store : WitnessStore
        Persistent state.
    """

    def __init__(
        self,
        name: str,
        key: Ed25519PrivateKey,
        logs: Mapping[str, Sequence[tuple[str, bytes]]],
        store: WitnessStore,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not name or any(c.isspace() for c in name) or "+" in name:
            raise KeyFileError(f"witness name {name!r} must be non-empty, without spaces or '+'")
        self.name = name
        self.key = key
        self.logs = {o: list(ks) for o, ks in logs.items()}
        self.store = store
        self.clock = clock

    @property
    def verifier_key(self) -> str:
        """The witness's cosigner vkey, for clients and log operators."""
        return cosigner_verifier_key(self.name, self.key.public_key())

    def add_checkpoint(self, body: bytes) -> Reply:
        """Handle one add-checkpoint request body; never raises on bad input."""
        if len(body) > MAX_BODY_BYTES:
            return Reply(413, b"request body too large\n")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return Reply(400, b"request body is not UTF-8\n")
        head, sep, note = text.partition("\n\n")
        if not sep or not note:
            return Reply(400, b"no empty line between the old size and proof lines and the checkpoint\n")
        lines = head.split("\n")
        first = lines[0]
        if not first.startswith("old "):
            return Reply(400, b"the first line must be 'old <size>'\n")
        size_s = first[4:]
        if not is_decimal(size_s) or (len(size_s) > 1 and size_s[0] == "0") or len(size_s) > 20:
            return Reply(400, b"the old size must be a decimal number without leading zeros\n")
        old_size = int(size_s)
        proof_lines = lines[1:]
        if len(proof_lines) > MAX_PROOF_LINES:
            return Reply(400, f"more than {MAX_PROOF_LINES} consistency proof lines\n".encode())
        proof = []
        for pl in proof_lines:
            try:
                h = base64.b64decode(pl, validate=True)
            except (binascii.Error, ValueError):
                return Reply(400, b"a consistency proof line is not base64\n")
            if len(h) != merkle.HASH_SIZE:
                return Reply(400, b"a consistency proof line is not a 32-byte hash\n")
            proof.append(h)
        try:
            parse_note(note)  # strictly, every line first: the answer never depends on their order
        except CheckpointError as e:
            return Reply(400, f"malformed signed note: {e}\n".encode())
        origin = note.split("\n", 1)[0]
        keys = self.logs.get(origin)
        if keys is None:
            return Reply(404, b"unknown log origin\n")
        cp_body = None
        for name, raw in keys:
            try:
                cp_body = open_note(note, name, raw)
                break
            except (CheckpointError, KeyFileError):
                continue
        if cp_body is None:
            return Reply(403, b"no valid signature by a key trusted for this log\n")
        try:
            cp = Checkpoint.from_text(cp_body)
        except CheckpointError as e:
            return Reply(400, f"checkpoint: {e}\n".encode())
        if cp.origin != origin:
            return Reply(400, b"checkpoint origin mismatch\n")
        if cp.size > _MAX_SIZE:
            return Reply(400, b"checkpoint size does not fit in 63 bits\n")
        if old_size > cp.size:
            return Reply(400, b"the old size is larger than the checkpoint size\n")
        try:
            head_of(cp)
        except CheckpointError as e:
            return Reply(400, f"checkpoint: {e}\n".encode())
        refused = self.store.compare_and_update(origin, old_size, proof, cp, note)
        if refused is not None:
            return refused
        line = sign_cosignature(cp_body, self.name, self.key, int(self.clock()))
        return Reply(200, line.encode())


def build_app(witness: Witness) -> Starlette:
    """The Starlette application: ``POST /add-checkpoint`` (and ``GET /`` with the witness's vkey)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def add_checkpoint(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and (not is_decimal(declared) or int(declared) > MAX_BODY_BYTES):
            return PlainTextResponse("request body too large\n", status_code=413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return PlainTextResponse("request body too large\n", status_code=413)
        r = witness.add_checkpoint(body)
        # The content type exactly as given: Starlette would add "; charset=utf-8" to a text/* media type,
        # and C2SP tlog-witness clients compare text/x.tlog.size for equality.
        return Response(r.body, status_code=r.status, headers={"Content-Type": r.content_type})

    async def index(request: Request) -> Response:
        return PlainTextResponse(
            f"flower-chain tlog-witness\n{witness.verifier_key}\nlogs: {', '.join(sorted(witness.logs))}\n"
        )

    return Starlette(
        routes=[Route("/add-checkpoint", add_checkpoint, methods=["POST"]), Route("/", index, methods=["GET"])]
    )

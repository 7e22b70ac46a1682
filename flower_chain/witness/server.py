"""A C2SP tlog-witness: the ``add-checkpoint`` endpoint, with its state in SQLite.

https://c2sp.org/tlog-witness. For each configured log (origin → trusted
signed-note verifier keys) the witness keeps the latest checkpoint it cosigned
and cosigns a new one only when it is consistent with it. Request body::

    old <size>\n
    <base64 consistency proof hash>\n    (0..63 lines)
    flower-chain/header <base64 header>\n    (0..4,096 lines: our extension, flower_chain.witness.chain)
    \n
    <signed checkpoint note>

Answers (checked in this order): 413 a body over :data:`MAX_BODY_BYTES`, or over
64 KiB without its header lines; 400 malformed body, more than 63 proof
lines, or a signed note the C2SP signed-note spec refuses (a malformed signature
line anywhere, a control character, two lines for one key: every line is checked
before any signature, so the answer never depends on line order); 404 unknown origin; 403 no valid signature by a trusted key; 400 old
size larger than the checkpoint size; the header lines (docs/ledger-format.md §5.2):
400 malformed, too many, two of one height, or given for a checkpoint without a head
line, 422 they skip a height, do not link by ``prev_hash`` or do not end at the block
the checkpoint names; 409 old size differs from the stored
size (body ``<stored size>\n``, ``Content-Type: text/x.tlog.size``); 422 the
consistency proof does not verify (or is not empty for old size 0); 409 equal
sizes with another root; the ``flower-chain/head`` line (docs/ledger-format.md
§5.1): 400 malformed, 422 missing after a cosigned checkpoint of the log had one,
409 equal size and root naming another block of the same or a lower height (a
re-signed header); for a later head than the one cosigned last, 422 header lines
that do not reach down to it, 409 a chain that does not link to it (the body names
both hashes); 200 with one ``cosignature/v1`` line.

``GET /latest-checkpoint?origin=<percent-encoded origin>`` answers the latest
checkpoint cosigned for that log with a fresh cosignature line (404 if none), so
an auditor can tell a ledger cut back to an older head (``ledger verify
--witness-latest``).

The compare of the old size with the stored one and the save of the new
checkpoint run in one ``BEGIN IMMEDIATE`` SQLite transaction whose ``UPDATE``
also compares the stored size, so two concurrent submissions for one log can
never both succeed, even from two witness processes on one database file.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger import merkle
from flower_chain.ledger.checkpoint import Checkpoint, HeadLine, head_of, open_note, parse_note, parse_verifier_key
from flower_chain.ledger.cosignature import add_cosignatures, cosigner_verifier_key, note_body, sign_cosignature
from flower_chain.ledger.errors import CheckpointError, KeyFileError, ProofError
from flower_chain.ledger.text import is_decimal
from flower_chain.witness.chain import (
    ChainHeader,
    ChainRefusal,
    check_chain,
    check_link,
    decode_headers,
)
from flower_chain.witness.request import MAX_BODY_BYTES, Reply, parse_request

if TYPE_CHECKING:
    from starlette.applications import Starlette

SIZE_CONTENT_TYPE = "text/x.tlog.size"
LATEST_PATH = "/latest-checkpoint"
"""``GET LATEST_PATH?origin=<percent-encoded origin>``: the latest checkpoint cosigned for a log."""
_MAX_SIZE = 2**63 - 1  # SQLite INTEGER

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS logs (
    origin TEXT PRIMARY KEY, size INTEGER NOT NULL, root BLOB NOT NULL, checkpoint TEXT NOT NULL,
    updated INTEGER NOT NULL);
"""


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
        self,
        origin: str,
        old_size: int,
        proof: Sequence[bytes],
        cp: Checkpoint,
        note: str,
        chain: Sequence[ChainHeader] = (),
    ) -> Reply | None:
        """Atomically: check ``old_size`` against the stored size, the proof, the head line and the header
        ``chain`` against the head cosigned last, then store ``cp``.

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
                head_refused = _head_refusal(row[2] if row else None, size, cp, chain)
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


def _head_refusal(stored_note: str | None, size: int, cp: Checkpoint, chain: Sequence[ChainHeader]) -> Reply | None:
    """The head line rules (docs/ledger-format.md §5.1) against the latest checkpoint cosigned for the log.

    Once a cosigned checkpoint of a log named its head block, every later one must (422); a checkpoint
    naming another block of the same or a lower height than the one cosigned is refused (409: a re-signed
    header, or a head height going back while the log grew). A later height at the same size is an empty
    block appended. A later head must be reached by the request's header ``chain`` from the head cosigned
    last (:func:`~flower_chain.witness.chain.check_link`: 409 with both hashes if it does not link, 422 if it
    is incomplete), so an earlier header re-signed and then built on is refused. The head cosigned last at
    another size is refused (409: one block ends one log size). With no head cosigned before (first contact,
    or a log whose checkpoints named none) the head is trusted on first use; header lines sent then are
    checked (:func:`~flower_chain.witness.chain.check_chain`: the head's own header ties it to the
    checkpoint's size and root).
    """
    try:
        now = head_of(cp)
        stored = Checkpoint.from_text(stored_note[: stored_note.rfind("\n\n") + 1]) if stored_note else None
        before = head_of(stored) if stored is not None else None
    except CheckpointError:
        return Reply(400, b"malformed flower-chain/head line\n")
    if before is not None and now == before and cp.size != size:  # one block cannot end two log sizes
        return Reply(409, f"{size}\n".encode(), SIZE_CONTENT_TYPE)
    if before is None:
        return None
    if now is None:
        return Reply(422, b"this log's checkpoints name their head block (flower-chain/head); this one does not\n")
    if now != before and now.height <= before.height:  # a longer log needs a later block; the same size, the same
        return Reply(409, f"{size}\n".encode(), SIZE_CONTENT_TYPE)  # block (or an empty one appended)
    if now.height > before.height:
        return _link_refusal(chain, before, now)
    return None


def _link_refusal(chain: Sequence[ChainHeader], before: HeadLine, now: HeadLine) -> Reply | None:
    try:
        check_link(chain, before, now)
    except ChainRefusal as e:
        return Reply(e.status, f"{e.message}\n".encode())
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
        parsed = parse_request(body)
        if isinstance(parsed, Reply):
            return parsed
        old_size, proof, header_payloads, note = parsed
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
            named = head_of(cp)
        except CheckpointError as e:
            return Reply(400, f"checkpoint: {e}\n".encode())
        try:
            chain = decode_headers(header_payloads)  # after the signature: no work for unsigned requests
            check_chain(chain, cp, named)
        except ChainRefusal as e:
            return Reply(e.status, f"{e.message}\n".encode())
        refused = self.store.compare_and_update(origin, old_size, proof, cp, note, chain)
        if refused is not None:
            return refused
        line = sign_cosignature(cp_body, self.name, self.key, int(self.clock()))
        return Reply(200, line.encode())

    def latest(self, origin: str) -> Reply:
        """``GET /latest-checkpoint?origin=ORIGIN``: the latest checkpoint cosigned for ``origin``, with a fresh
        cosignature (its timestamp says when the witness last vouched that this is its latest); 404 if none."""
        if origin not in self.logs:
            return Reply(404, b"unknown log origin\n")
        note = self.store.latest(origin)
        if note is None:
            return Reply(404, b"no checkpoint of this log cosigned yet\n")
        line = sign_cosignature(note_body(note), self.name, self.key, int(self.clock()))
        return Reply(200, add_cosignatures(note, [line]).encode())


def build_app(witness: Witness) -> Starlette:
    """The Starlette application: ``POST /add-checkpoint``, ``GET /latest-checkpoint?origin=`` and ``GET /``
    (the witness's vkey)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse, Response
    from starlette.routing import Route

    async def add_checkpoint(request: Request) -> Response:
        declared = request.headers.get("content-length")
        if declared is not None and (not is_decimal(declared) or int(declared) > MAX_BODY_BYTES):
            return PlainTextResponse("request body too large\n", status_code=413)
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                return PlainTextResponse("request body too large\n", status_code=413)
        r = witness.add_checkpoint(bytes(body))
        # The content type exactly as given: Starlette would add "; charset=utf-8" to a text/* media type,
        # and C2SP tlog-witness clients compare text/x.tlog.size for equality.
        return Response(r.body, status_code=r.status, headers={"Content-Type": r.content_type})

    async def latest(request: Request) -> Response:
        origin = request.query_params.get("origin")
        if origin is None or len(origin) > 1024:
            return PlainTextResponse("give the log as ?origin=ORIGIN (percent-encoded)\n", status_code=400)
        r = witness.latest(origin)
        return Response(r.body, status_code=r.status, headers={"Content-Type": r.content_type})

    async def index(request: Request) -> Response:
        return PlainTextResponse(
            f"flower-chain tlog-witness\n{witness.verifier_key}\nlogs: {', '.join(sorted(witness.logs))}\n"
            f"latest cosigned checkpoint: GET {LATEST_PATH}?origin=ORIGIN (percent-encoded)\n"
        )

    return Starlette(
        routes=[
            Route("/add-checkpoint", add_checkpoint, methods=["POST"]),
            Route(LATEST_PATH, latest, methods=["GET"]),
            Route("/", index, methods=["GET"]),
        ]
    )

"""JSON Lines backend (``jsonl:///path``): human-readable and append-only.

Line 1 is ``{"format": "flower-chain-ledger", "version": 1}``. Then one line
per block::

    {"height": 3, "header": "<base64>", "signature": "<base64>", "checkpoint": "...",
     "entries": ["<base64>", ...], "view": {...}}

The base64 fields are authoritative; ``view`` is the decoded header for
people reading the file (and ``jq``), and ``height`` repeats the header's height.
Both must equal the signed header: loading a line whose readable copy differs
fails with :class:`LedgerCorruptError` naming the line and the field, so what a
person reads is what was signed. Each line is written
with one ``write`` and fsynced, so a crash leaves at most one torn last line;
that line is detected and reported (never read as a block). A writer opening
the file drops the torn line, which was never acknowledged, and says so.
Blobs live beside the file in ``<file>.blobs/`` (one file per digest).

Single writer: an append takes an exclusive ``flock`` on the file, reloads
what other processes appended, and refuses a block that does not extend the
head it finds (:class:`LedgerConflictError`) before writing its line.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from flower_chain.ledger import json_input
from flower_chain.ledger.backends import cells
from flower_chain.ledger.backends.base import Ledger, Node
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.errors import EncodingError, LedgerCorruptError, LedgerError, LedgerOpenError
from flower_chain.ledger.json_input import JSONInputError
from flower_chain.ledger.location import file_uri
from flower_chain.ledger.merkle import CompactRange, leaf_hash
from flower_chain.ledger.text import safe_text

fcntl: ModuleType | None
try:
    import fcntl as _fcntl

    fcntl = _fcntl
except ImportError:  # not POSIX: threads of one process are still serialized by the lock below
    fcntl = None

log = logging.getLogger(__name__)
MAGIC = {"format": "flower-chain-ledger", "version": 1}


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def _unb64(s: object, where: str, limit: int | None = None) -> bytes:
    """Base64 text of at most ``limit`` decoded bytes (checked on the text's length, before decoding)."""
    if not isinstance(s, str):
        raise LedgerCorruptError(f"{where}: expected base64 text")
    if limit is not None and len(s) > 4 * ((limit + 2) // 3):
        raise LedgerCorruptError(f"{where}: more than the {limit} bytes allowed")
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:  # ValueError: non-ASCII input
        raise LedgerCorruptError(f"{where}: not valid base64") from e


def _view(block: StoredBlock) -> dict[str, Any]:
    return {
        k: (v.hex() if isinstance(v, bytes) else v) for k, v in block.header.__dict__.items() if not k.startswith("_")
    }


class JSONLLedger(Ledger):
    """All blocks in memory after open (this backend is for readability, not for millions of entries)."""

    def __init__(
        self, path: str | Path, *, create: bool = True, uri: str | None = None, drop_torn_tail: bool = False
    ) -> None:
        self.path = Path(path)
        self.uri = uri or file_uri("jsonl", self.path)
        self.blob_dir = self.path.with_name(self.path.name + ".blobs")
        self._blocks: list[StoredBlock] = []
        self._entries: list[bytes] = []
        self._nodes: dict[tuple[int, int], bytes] = {}
        self._range = CompactRange()
        self._lock = threading.RLock()
        if self.path.is_dir():
            raise LedgerOpenError(f"{self.path} is a directory, not a ledger file")
        if not self.path.exists() or self.path.stat().st_size == 0:
            if not create:
                raise LedgerOpenError(
                    f"ledger file {self.path} not found"
                    if not self.path.exists()
                    else f"ledger file {self.path} is empty"
                )
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._write_line(json.dumps(MAGIC))
        else:
            self._load(drop_torn_tail)
        self._size = self.path.stat().st_size

    def reload(self) -> None:
        if self.path.stat().st_size != self._size:
            self._blocks, self._entries, self._nodes, self._range = [], [], {}, CompactRange()
            self._load(False)
            self._size = self.path.stat().st_size

    def _load(self, drop_torn_tail: bool) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        torn = lines.pop()  # bytes after the last newline: empty unless the last write was torn
        try:
            magic = json_input.loads(lines[0]) if lines else None
        except JSONInputError:
            magic = None
        if magic != MAGIC:
            raise LedgerOpenError(f"{self.path} is not a flower-chain JSONL ledger (first line is not {MAGIC})")
        offset = len(lines[0]) + 1
        for lineno, raw in enumerate(lines[1:], start=2):
            try:
                rec = json_input.loads(raw)
            except JSONInputError as e:
                raise LedgerCorruptError(f"{self.path}: line {lineno} {e}") from None
            try:
                self._load_block(rec, lineno)
            except RecursionError:  # a value nested as deep as the parser allows, compared or shown
                raise LedgerCorruptError(f"{self.path}: line {lineno} is nested too deeply") from None
            offset += len(raw) + 1
        if torn:
            msg = (
                f"{self.path}: the last line ({len(torn)} bytes at offset {offset}) is torn: an append was "
                "interrupted before it completed"
            )
            if not drop_torn_tail:
                raise LedgerCorruptError(
                    msg + "; the blocks before it are intact. Run "
                    "`flower-chain ledger repair` (or reopen it for writing) to drop it"
                )
            log.warning("%s; dropping it (it was never acknowledged)", msg)
            with open(self.path, "r+b") as f:
                f.truncate(offset)
                f.flush()
                os.fsync(f.fileno())

    def _load_block(self, rec: object, lineno: int) -> None:
        where = f"{self.path}: line {lineno}"
        if not isinstance(rec, dict) or not isinstance(rec.get("entries"), list):
            raise LedgerCorruptError(f"{where}: not a block record")
        block = cells.stored_block(
            _unb64(rec.get("header"), f"{where} header", cells.MAX_HEADER_BYTES),
            _unb64(rec.get("signature"), f"{where} signature", cells.MAX_SIGNATURE_BYTES),
            rec.get("checkpoint"),
            where,
        )
        entries = [_unb64(e, f"{where} entry {i}", cells.MAX_ENTRY_BYTES) for i, e in enumerate(rec["entries"])]
        self._check_readable(rec, block, where)
        self._index(block, entries)

    @staticmethod
    def _check_readable(rec: dict[str, Any], block: StoredBlock, where: str) -> None:
        """The human-readable ``height`` and ``view`` must equal the signed header (what people read is what was signed)."""
        try:
            signed = _view(block)
        except EncodingError:
            return  # the header itself does not decode: verify reports that block with the reason
        view = rec.get("view")
        if not isinstance(view, dict):
            raise LedgerCorruptError(f"{where}: the readable header copy 'view' is missing or not an object")
        for field in sorted(set(signed) | set(view)):
            if field not in view or field not in signed or view[field] != signed[field]:
                raise LedgerCorruptError(
                    f"{where}: readable field view.{safe_text(field)} = {view.get(field)!r:.80} differs from the signed "
                    f"header ({signed.get(field)!r:.80}): the line was edited; the signed header is authoritative"
                )
        if rec.get("height") != signed["height"]:
            raise LedgerCorruptError(
                f"{where}: readable field height = {rec.get('height')!r:.40} differs from the "
                f"signed header ({signed['height']!r}): the line was edited"
            )

    def _index(self, block: StoredBlock, entries: Sequence[bytes]) -> None:
        for e in entries:
            for lv, ix, h in self._range.append(leaf_hash(e)):
                self._nodes[(lv, ix)] = h
        self._entries.extend(entries)
        self._blocks.append(block)

    def _write_line(self, line: str) -> None:
        data = (line + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)

    def _append(self, block: StoredBlock, entries: Sequence[bytes], nodes: Sequence[Node]) -> None:
        rec = {
            "height": block.header.height,
            "header": _b64(block.header_bytes),
            "signature": _b64(block.signature),
            "checkpoint": block.checkpoint,
            "entries": [_b64(e) for e in entries],
            "view": _view(block),
        }
        line = json.dumps(rec, separators=(",", ":"))
        with self._lock:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_EX)  # released when fd closes, after the line is fsynced
                self.reload()  # what other processes appended before we took the lock
                self._check_extends(block, len(self._blocks), self._blocks[-1].hash if self._blocks else None)
                self._write_line(line)
                self._size = self.path.stat().st_size
                self._index(block, [bytes(e) for e in entries])
            finally:
                os.close(fd)

    def block_count(self) -> int:
        return len(self._blocks)

    def blocks(self, start: int = 0, end: int | None = None) -> Iterator[StoredBlock]:
        yield from self._blocks[start:end]

    def entries(self, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        yield from self._entries[start:end]

    def node(self, level: int, index: int) -> bytes:
        try:
            return self._nodes[(level, index)]
        except KeyError:
            raise LedgerError(f"no subtree hash at level {level}, index {index}") from None

    def _blob_path(self, digest: bytes) -> Path:
        return self.blob_dir / digest.hex()

    def _put_blob(self, digest: bytes, data: bytes) -> None:
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._blob_path(digest).with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._blob_path(digest))

    def get_blob(self, digest: bytes) -> bytes:
        p = self._blob_path(digest)
        if not p.is_file():
            raise LedgerError(f"no blob {digest.hex()} in {self.blob_dir}")
        return p.read_bytes()

    def has_blob(self, digest: bytes) -> bool:
        return self._blob_path(digest).is_file()

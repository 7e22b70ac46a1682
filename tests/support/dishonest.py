"""A dishonest server: rewrites the history of its own SQLite ledger and re-signs it with its own key.

The result verifies on its own (hash chain, Merkle roots, header signatures, checkpoints are all
recomputed and re-signed), which is the point: only checks that do not trust the server (aggregation
replay, verdict re-derivation, client receipts, anchors) can catch it.

``rewrite(ledger_path, server_key, edit_fn)`` reads every block as ``[fields, entries]`` — ``fields`` a
dict of the header fields, ``entries`` a list of :class:`~flower_chain.ledger.entries.Entry` — and calls
``edit_fn(blocks)``. The function may change header fields (``round``, ``model_before``,
``model_after``, ``state_after``, ``timestamp_ms``, ...), replace, insert or drop entries (``Entry``
objects or raw entry bytes), or drop or insert whole blocks; it edits the list in place or returns a new
one. Then every block is rebuilt: ``height``, ``prev_hash``, ``entries_root``, ``entry_count``,
``log_size`` and ``log_root`` are recomputed, and each header and checkpoint is signed again with
``server_key``. Blobs are left as they are (``put_blob``/``drop_blob`` below edit them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger import merkle
from flower_chain.ledger.block import ZERO_HASH, BlockHeader, StoredBlock
from flower_chain.ledger.checkpoint import Checkpoint, head_line, sign_checkpoint
from flower_chain.ledger.entries import Entry, decode_entry
from flower_chain.ledger.writer import origin_for

Block = list  # [fields: dict, entries: list[Entry | bytes]]


def _path(ledger_path: str | Path) -> Path:
    s = str(ledger_path)
    return Path(s.split(":///", 1)[1] if s.startswith("sqlite:///") else s)


def read_blocks(ledger_path: str | Path) -> list[Block]:
    """Every block of an SQLite ledger as ``[header fields, decoded entries]``, in height order."""
    db = sqlite3.connect(_path(ledger_path))
    try:
        blocks = []
        for height, header in db.execute("SELECT height, header FROM blocks ORDER BY height"):
            h = BlockHeader.from_bytes(bytes(header))
            datas = [
                bytes(d) for (d,) in db.execute("SELECT data FROM entries WHERE height = ? ORDER BY idx", (height,))
            ]
            blocks.append([dataclasses.asdict(h), [decode_entry(d) for d in datas]])
        return blocks
    finally:
        db.close()


def rewrite(
    ledger_path: str | Path,
    server_key: Ed25519PrivateKey,
    edit_fn: Callable[[list[Block]], list[Block] | None],
    *,
    head_lines: bool = False,
) -> list[Block]:
    """Rewrite an SQLite ledger's history with ``edit_fn`` and re-sign all of it with ``server_key``.

    Parameters
    ----------
    ledger_path : str or Path
        The ledger file, or its ``sqlite:///`` URI. No process may have it open for writing.
    server_key : Ed25519PrivateKey
        The server's own key (the genesis' server key, so the result verifies).
    edit_fn : callable
        Gets the list of ``[fields, entries]`` blocks; edits it in place or returns a new list.
    head_lines : bool
        Sign each checkpoint with its ``flower-chain/head`` line, as this version's writer does (default: without,
        as ledgers from before the line).

    Returns
    -------
    list
        The blocks as written (fields recomputed).
    """
    blocks = read_blocks(ledger_path)
    edited = edit_fn(blocks)
    if edited is not None:
        blocks = edited
    log = merkle.CompactRange()
    prev, rows_blocks, rows_entries, rows_nodes = ZERO_HASH, [], [], {}
    for height, (fields, entries) in enumerate(blocks):
        datas = [e if isinstance(e, bytes) else e.to_bytes() for e in entries]
        leaves = [merkle.leaf_hash(d) for d in datas]
        first = log.size
        for lh in leaves:
            for level, idx, h in log.append(lh):
                rows_nodes[(level, idx)] = h
        header = BlockHeader(
            **{
                **fields,
                "height": height,
                "prev_hash": prev,
                "entries_root": merkle.root(leaves),
                "entry_count": len(datas),
                "log_size": log.size,
                "log_root": log.root(),
            }
        )
        hb = header.to_bytes()
        ext = (head_line(height, hashlib.sha256(hb).digest()),) if head_lines else ()
        cp = sign_checkpoint(Checkpoint(origin_for(header.federation_id), log.size, log.root(), ext), server_key)
        block = StoredBlock(hb, server_key.sign(hb), cp)
        rows_blocks.append((height, hb, block.signature, cp))
        rows_entries += [(first + i, height, d) for i, d in enumerate(datas)]
        prev = block.hash
        fields.update(dataclasses.asdict(header))
    db = sqlite3.connect(_path(ledger_path))
    try:
        with db:
            db.execute("DELETE FROM blocks")
            db.execute("DELETE FROM entries")
            db.execute("DELETE FROM nodes")
            db.executemany("INSERT INTO blocks VALUES (?, ?, ?, ?)", rows_blocks)
            db.executemany("INSERT INTO entries VALUES (?, ?, ?)", rows_entries)
            db.executemany("INSERT INTO nodes VALUES (?, ?, ?)", [(lv, i, h) for (lv, i), h in rows_nodes.items()])
    finally:
        db.close()
    return blocks


def put_blob(ledger_path: str | Path, digest: bytes, data: bytes) -> None:
    """Store (or replace) a blob under ``digest`` — a server that swaps what it stored."""
    db = sqlite3.connect(_path(ledger_path))
    with db:
        db.execute("INSERT OR REPLACE INTO blobs VALUES (?, ?)", (digest, data))
    db.close()


def drop_blob(ledger_path: str | Path, digest: bytes) -> None:
    """Delete the blob stored under ``digest``."""
    db = sqlite3.connect(_path(ledger_path))
    with db:
        db.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
    db.close()


def train_blocks(blocks: list[Block]) -> list[Block]:
    """The blocks that record train updates, in order."""
    return [b for b in blocks if any(getattr(e, "TYPE", "") == "update" and e.kind == "train" for e in b[1])]


__all__ = ["Entry", "drop_blob", "put_blob", "read_blocks", "rewrite", "train_blocks"]

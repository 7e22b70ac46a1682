"""Tamper suite on stored ledgers (SQLite and JSONL): every manipulation is caught by verify, which
names where. Property-based over random positions (hypothesis), plus the structural attacks."""

from __future__ import annotations

import base64
import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flower_chain.ledger import LedgerError, LedgerWriter, VerificationError, open_ledger, verify
from flower_chain.ledger.entries import decode_entry
from tests.conftest import Federation

ROUNDS = 4
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    d = tmp_path_factory.mktemp("pristine")
    out = {}
    for backend, suffix in (("sqlite", "db"), ("jsonl", "jsonl")):
        f = Federation(f"{backend}:///{d}/ledger.{suffix}")
        for r in range(1, ROUNDS + 1):
            f.add_round(r, n=3, rejected=1)
        f.ledger.close()
        out[backend] = (d / f"ledger.{suffix}", f)
    other = Federation(f"sqlite:///{d}/other.db", federation_id="fed-other")
    other.add_round(1)
    other.ledger.close()
    out["other"] = (d / "other.db", other)
    return out


def _copy(src: Path, tmp: Path, name: str) -> Path:
    dst = tmp / name
    if dst.exists():
        dst.unlink()
    shutil.copy(src, dst)
    return dst


def _caught(uri: str) -> VerificationError | LedgerError:
    try:
        ledger = open_ledger(uri)
    except LedgerError as e:  # damaged beyond opening: also caught, with a message
        return e
    with pytest.raises(VerificationError) as info:
        verify(ledger, client_signatures=True)
    ledger.close()
    assert info.value.height is not None, "verify must name the block"
    return info.value


def _flip(data: bytes, pos: int, bit: int) -> bytes:
    b = bytearray(data)
    b[pos % len(b)] ^= 1 << bit
    return bytes(b)


COLUMNS = {
    "entry": ("entries", "data", "idx"),
    "header": ("blocks", "header", "height"),
    "signature": ("blocks", "signature", "height"),
}


@SETTINGS
@given(
    what=st.sampled_from(sorted(COLUMNS)), row=st.integers(0, 10_000), pos=st.integers(0, 10_000), bit=st.integers(0, 7)
)
def test_sqlite_any_flipped_bit_is_caught(pristine, tmp_path, what, row, pos, bit):
    path = _copy(pristine["sqlite"][0], tmp_path, "t.db")
    table, col, key = COLUMNS[what]
    db = sqlite3.connect(path)
    keys = [k for (k,) in db.execute(f"SELECT {key} FROM {table} ORDER BY {key}")]
    k = keys[row % len(keys)]
    (data,) = db.execute(f"SELECT {col} FROM {table} WHERE {key} = ?", (k,)).fetchone()
    db.execute(f"UPDATE {table} SET {col} = ? WHERE {key} = ?", (_flip(data, pos, bit), k))
    db.commit()
    db.close()
    err = _caught(f"sqlite:///{path}")
    if what != "entry" and isinstance(err, VerificationError):
        assert err.height == k


@SETTINGS
@given(
    line=st.integers(1, 10_000),
    field=st.sampled_from(["header", "signature", "entries", "checkpoint"]),
    pos=st.integers(0, 10_000),
    bit=st.integers(0, 7),
)
def test_jsonl_any_flipped_bit_in_a_record_is_caught(pristine, tmp_path, line, field, pos, bit):
    path = _copy(pristine["jsonl"][0], tmp_path, "t.jsonl")
    lines = path.read_text().splitlines()
    i = 1 + (line % (len(lines) - 1))
    rec = json.loads(lines[i])
    if field == "entries":
        j = pos % len(rec["entries"])
        rec["entries"][j] = base64.b64encode(_flip(base64.b64decode(rec["entries"][j]), pos // 7, bit)).decode()
    elif field == "checkpoint":
        rec["checkpoint"] = _flip(rec["checkpoint"].encode(), pos, bit).decode("utf-8", "replace")
    else:
        rec[field] = base64.b64encode(_flip(base64.b64decode(rec[field]), pos, bit)).decode()
    lines[i] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")
    err = _caught(f"jsonl:///{path}")
    if isinstance(err, VerificationError):
        assert err.height == i - 1


@SETTINGS
@given(cut=st.integers(1, 10_000))
def test_truncation_anywhere_is_caught(pristine, tmp_path, cut):
    for backend, name in (("sqlite", "t.db"), ("jsonl", "t.jsonl")):
        path = _copy(pristine[backend][0], tmp_path, name)
        data = path.read_bytes()
        keep = cut % len(data)
        if backend == "jsonl" and data[:keep].endswith(b"\n"):
            keep -= 1  # cutting exactly at a record boundary leaves a shorter ledger that is valid
        path.write_bytes(data[:keep])
        for wal in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            wal.unlink(missing_ok=True)
        try:
            ledger = open_ledger(f"{backend}:///{path}")
        except LedgerError:
            continue
        with pytest.raises(VerificationError):
            verify(ledger)


def _sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path}"


def test_deleted_block_is_caught(pristine, tmp_path):
    path = _copy(pristine["sqlite"][0], tmp_path, "t.db")
    db = sqlite3.connect(path)
    db.execute("DELETE FROM blocks WHERE height = 2")
    db.commit()
    db.close()
    err = _caught(_sqlite_uri(path))
    assert isinstance(err, VerificationError) and err.height == 2


def test_deleted_jsonl_line_is_caught(pristine, tmp_path):
    path = _copy(pristine["jsonl"][0], tmp_path, "t.jsonl")
    lines = path.read_text().splitlines()
    del lines[3]
    path.write_text("\n".join(lines) + "\n")
    assert _caught(f"jsonl:///{path}").height == 2


def test_swapped_blocks_are_caught(pristine, tmp_path):
    path = _copy(pristine["jsonl"][0], tmp_path, "t.jsonl")
    lines = path.read_text().splitlines()
    lines[2], lines[3] = lines[3], lines[2]
    path.write_text("\n".join(lines) + "\n")
    assert _caught(f"jsonl:///{path}").height == 1


def test_block_spliced_from_another_federation_is_caught(pristine, tmp_path):
    path = _copy(pristine["sqlite"][0], tmp_path, "t.db")
    other = sqlite3.connect(pristine["other"][0])
    header, sig, cp = other.execute("SELECT header, signature, checkpoint FROM blocks WHERE height = 1").fetchone()
    other.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE blocks SET header = ?, signature = ?, checkpoint = ? WHERE height = 3", (header, sig, cp))
    db.commit()
    db.close()
    err = _caught(_sqlite_uri(path))
    assert err.height == 3


def test_tail_replaced_by_a_resigned_fork_under_another_key(pristine, tmp_path):
    """Rebuild blocks 3.. with different entries and sign them with another key: verify stops at 3."""
    path = _copy(pristine["sqlite"][0], tmp_path, "t.db")
    fed = pristine["sqlite"][1]
    db = sqlite3.connect(path)
    db.execute("DELETE FROM blocks WHERE height >= 3")
    head_size = db.execute("SELECT MAX(idx) + 1 FROM entries WHERE height < 3").fetchone()[0]
    db.execute("DELETE FROM entries WHERE idx >= ?", (head_size,))
    db.execute("DELETE FROM nodes")  # the forger recomputes every subtree hash
    db.commit()
    db.close()
    ledger = open_ledger(_sqlite_uri(path))
    entries = list(ledger.entries())
    from flower_chain.ledger import merkle

    cr = merkle.CompactRange()
    nodes = []
    for e in entries:
        nodes.extend(cr.append(merkle.leaf_hash(e)))
    ledger._db.executemany("INSERT OR REPLACE INTO nodes VALUES (?, ?, ?)", nodes)
    forger = Ed25519PrivateKey.generate()
    w = LedgerWriter.__new__(LedgerWriter)  # a writer that skips the server-key check: the forger's tool
    w.ledger, w.server_key, w.clock, w.listeners = ledger, forger, __import__("time").time, []
    w.genesis = decode_entry(entries[0])
    w._head, w._range = ledger.head(), cr
    w.append(3, [fed.update(3, 0)], model_before=ledger.head().header.model_after, model_after=b"\x09" * 32)
    ledger.close()
    err = _caught(_sqlite_uri(path))
    assert isinstance(err, VerificationError) and err.height == 3 and "signature" in err.what


def test_pinned_server_key_catches_a_ledger_rebuilt_from_scratch(pristine, tmp_path):
    """A server that re-creates the whole ledger under a new key passes self-consistency; pinning the key does not."""
    fed = pristine["sqlite"][1]
    forged = Federation(f"sqlite:///{tmp_path}/forged.db", federation_id=fed.federation_id)
    forged.add_round(1)
    from flower_chain.ledger.keys import raw_public

    verify(forged.ledger)  # internally consistent ...
    with pytest.raises(VerificationError, match="server key"):
        verify(forged.ledger, server_key=raw_public(fed.server_key))  # ... but not the auditor's server


def test_an_edited_non_frontier_merkle_node_is_caught(pristine, tmp_path):
    """Proofs are served from the stored subtree hashes: an edited inner node (not on the head's frontier,
    so opening the ledger does not notice) must fail verify, before `prove` hands out proofs that fail."""
    path = _copy(pristine["sqlite"][0], tmp_path, "t.db")
    db = sqlite3.connect(path)
    db.execute("UPDATE nodes SET hash = ? WHERE level = 1 AND idx = 0", (b"\x07" * 32,))
    assert db.total_changes == 1
    db.commit()
    db.close()
    err = _caught(_sqlite_uri(path))
    assert isinstance(err, VerificationError) and "Merkle node (level 1, index 0)" in err.what, err

"""SQLite ledgers checkpoint their WAL on a thread of their own, never inside a writer's commit (issue 21)."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
import time

from flower_chain.ledger import open_ledger


def _checkpointers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "flower-chain-wal-checkpoint"]


def test_the_writer_never_checkpoints_and_the_thread_copies_the_wal_into_the_file(tmp_path):
    path = tmp_path / "l.db"
    before = len(_checkpointers())
    led = open_ledger(f"sqlite:///{path}", create=True)
    assert led._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # no checkpoint in a commit
    blob = bytes(range(256)) * 16384  # 4 MiB: past SQLite's 1,000-page checkpoint mark
    digest = hashlib.sha256(blob).digest()
    led.put_blobs([(digest, blob)])
    assert len(_checkpointers()) == before + 1
    deadline = time.monotonic() + 30
    while path.stat().st_size < len(blob) and time.monotonic() < deadline:  # the thread copies the WAL over
        time.sleep(0.01)
    assert path.stat().st_size >= len(blob)
    other = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # another reader sees the committed blob
    assert other.execute("SELECT data FROM blobs WHERE digest = ?", (digest,)).fetchone()[0] == blob
    other.close()
    led.close()
    assert len(_checkpointers()) == before  # close stops the thread
    assert not (tmp_path / "l.db-wal").exists() or (tmp_path / "l.db-wal").stat().st_size == 0


def test_a_read_only_handle_starts_no_checkpoint_thread(tmp_path):
    path = tmp_path / "l.db"
    with open_ledger(f"sqlite:///{path}", create=True) as led:
        led.put_blobs([(b"\x01" * 32, b"x")])
    before = len(_checkpointers())
    with open_ledger(f"sqlite:///{path}") as led:
        assert led.get_blob(b"\x01" * 32) == b"x"
        assert len(_checkpointers()) == before

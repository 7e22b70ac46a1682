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
    before = set(_checkpointers())  # only this test's threads count: another test's ledger may end its own
    led = open_ledger(f"sqlite:///{path}", create=True)
    assert led._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # no checkpoint in a commit
    blob = bytes(range(256)) * 16384  # 4 MiB: past SQLite's 1,000-page checkpoint mark
    digest = hashlib.sha256(blob).digest()
    led.put_blobs([(digest, blob)])
    ours = set(_checkpointers()) - before
    assert len(ours) == 1
    deadline = time.monotonic() + 30
    while path.stat().st_size < len(blob) and time.monotonic() < deadline:  # the thread copies the WAL over
        time.sleep(0.01)
    assert path.stat().st_size >= len(blob)
    other = sqlite3.connect(f"file:{path}?mode=ro", uri=True)  # another reader sees the committed blob
    assert other.execute("SELECT data FROM blobs WHERE digest = ?", (digest,)).fetchone()[0] == blob
    other.close()
    led.close()
    assert not any(t.is_alive() for t in ours)  # close stops the thread
    assert not (tmp_path / "l.db-wal").exists() or (tmp_path / "l.db-wal").stat().st_size == 0


def test_a_read_only_handle_starts_no_checkpoint_thread(tmp_path):
    path = tmp_path / "l.db"
    with open_ledger(f"sqlite:///{path}", create=True) as led:
        led.put_blobs([(b"\x01" * 32, b"x")])
    before = set(_checkpointers())
    with open_ledger(f"sqlite:///{path}") as led:
        assert led.get_blob(b"\x01" * 32) == b"x"
        assert not set(_checkpointers()) - before


def test_a_checkpoint_thread_that_cannot_start_leaves_the_commit_as_it_was(tmp_path, monkeypatch):
    """Review 5 D1: the block is committed before the thread starts; its failure is never the write's."""
    path = tmp_path / "p.db"
    with open_ledger(f"sqlite:///{path}", create=True):
        pass
    led = open_ledger(f"sqlite:///{path}", create=True)
    real_start = threading.Thread.start

    def failing_start(self):
        if self.name == "flower-chain-wal-checkpoint":
            raise RuntimeError("can't start new thread")
        return real_start(self)

    monkeypatch.setattr(threading.Thread, "start", failing_start)
    led.put_blobs([(b"\x02" * 32, b"y")])  # committed; no error although no thread could start
    assert led._conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 1000  # SQLite's own checkpoints again
    led.put_blobs([(b"\x03" * 32, b"z")])
    led.close()  # nothing to join
    with open_ledger(f"sqlite:///{path}") as again:
        assert again.get_blob(b"\x02" * 32) == b"y" and again.get_blob(b"\x03" * 32) == b"z"


def test_the_checkpoint_thread_follows_the_ledger_not_the_working_directory(tmp_path, monkeypatch):
    """Review 5 D2: a relative path opened before a chdir; the thread must checkpoint that file, create none."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    monkeypatch.chdir(a)
    led = open_ledger("sqlite:///ledger.db", create=True)
    monkeypatch.chdir(b)
    blob = bytes(range(256)) * 16384
    led.put_blobs([(hashlib.sha256(blob).digest(), blob)])
    deadline = time.monotonic() + 30
    while (a / "ledger.db").stat().st_size < len(blob) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (a / "ledger.db").stat().st_size >= len(blob)
    assert not (b / "ledger.db").exists()
    led.close()


def test_a_ledger_dropped_without_close_does_not_leave_its_thread(tmp_path):
    """Review 5 D3: the checkpoint thread (and its connection) ends with the ledger object."""
    import gc

    before = set(_checkpointers())  # other tests' ledgers in this process may end theirs meanwhile: only ours count
    for i in range(5):
        led = open_ledger(f"sqlite:///{tmp_path / f'd{i}.db'}", create=True)
        led.put_blobs([(b"\x04" * 32, b"w")])
        del led
    gc.collect()
    deadline = time.monotonic() + 10
    while set(_checkpointers()) - before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not set(_checkpointers()) - before


def test_a_wal_grown_past_the_limit_is_truncated_after_its_checkpoint(tmp_path, monkeypatch):
    """A long run's WAL does not keep its largest size: past ``truncate_above`` bytes it is truncated."""
    from flower_chain.ledger.backends.sqlite import _Checkpointer

    monkeypatch.setattr(_Checkpointer, "truncate_above", 1 << 20)
    path = tmp_path / "t.db"
    led = open_ledger(f"sqlite:///{path}", create=True)
    blob = bytes(range(256)) * 16384  # 4 MiB of WAL
    led.put_blobs([(hashlib.sha256(blob).digest(), blob)])
    wal = tmp_path / "t.db-wal"
    deadline = time.monotonic() + 30
    while wal.stat().st_size > 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert wal.stat().st_size == 0  # the default limit (64 MiB) would have kept these 4 MiB
    assert led.get_blob(hashlib.sha256(blob).digest()) == blob
    led.close()

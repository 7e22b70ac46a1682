"""The PostgreSQL backend against a real server (tests/pgserver.py): schema, read-only sessions, bad connection
strings, foreign schemas, lost connections, a server restart mid-run, and kill -9 failover of a run.py server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from flower_chain.ledger import LedgerError, LedgerOpenError, LedgerWriter, open_ledger, verify
from flower_chain.ledger.backends.postgres import SCHEMA_VERSION, PostgresLedger, redact
from flower_chain.ledger.errors import LedgerConflictError, LedgerConnectionError

ROOT = Path(__file__).resolve().parents[2]


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flower_chain.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def _sql(uri: str, *stmts: str) -> list:
    import psycopg

    with psycopg.connect(uri, autocommit=True) as c:
        out = []
        for s in stmts:
            cur = c.execute(s)
            out.append(cur.fetchall() if cur.description else None)
        return out


def test_schema_is_created_versioned_and_holds_blobs(federation_factory):
    f = federation_factory("postgresql")
    f.add_round(1, n=5)
    digest = f.ledger.put_blob(b"model bytes")
    assert f.ledger.get_blob(digest) == b"model bytes" and f.ledger.has_blob(digest)
    (meta,) = _sql(f.uri, "SELECT key, value FROM fc_meta ORDER BY key")
    assert meta == [("format", "flower-chain-ledger"), ("schema_version", str(SCHEMA_VERSION))]
    (rows,) = _sql(f.uri, "SELECT block_count FROM fc_head")
    assert rows == [(2,)]
    with pytest.raises(LedgerError, match="no blob"):
        f.ledger.get_blob(b"\x01" * 32)
    with pytest.raises(LedgerError, match="no subtree hash"):
        f.ledger.node(40, 0)


def test_read_only_commands_use_read_only_transactions(federation_factory):
    import psycopg

    f = federation_factory("postgresql")
    f.add_round(1)
    led = open_ledger(f.uri)  # what `flower-chain ledger summary/verify` do
    assert isinstance(led, PostgresLedger) and led.read_only
    assert led._conn.execute("SHOW transaction_read_only").fetchone()[0] == "on"
    with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        led._conn.execute("INSERT INTO fc_meta VALUES ('x', 'y')")
    assert verify(led).blocks == 2
    led.close()
    for cmd in (("ledger", "summary"), ("ledger", "blocks")):
        r = _cli(*cmd, f.uri)
        assert r.returncode == 0 and "fc-secret" not in r.stdout, r.stderr
    empty = f.uri.rsplit("/", 1)[0] + "/postgres"
    with pytest.raises(LedgerOpenError, match="holds no flower-chain ledger"):
        open_ledger(empty)  # a reader never creates the schema
    assert _sql(empty, "SELECT to_regclass('fc_meta')") == [[(None,)]]


@pytest.mark.parametrize(
    "what,match",
    [
        ("password", "password authentication failed.*check the user and password"),
        ("database", "does not exist.*create the database"),
        ("unreachable", "refused.*check that PostgreSQL is running"),
    ],
)
def test_bad_connection_string_is_one_clear_error(postgres_server, what, match):
    uri = {
        "password": postgres_server.uri("postgres", password="wrong-secret"),
        "database": postgres_server.uri("no_such_db"),
        "unreachable": "postgresql://fc:pw@127.0.0.1:1/postgres",
    }[what]
    with pytest.raises(LedgerOpenError, match=match) as e:
        open_ledger(uri, create=True)  # what a server does before any training
    assert "wrong-secret" not in str(e.value)
    r = _cli("ledger", "summary", uri)
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr, r.stderr
    assert "wrong-secret" not in r.stderr


def _keyring() -> dict:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from flower_chain.ledger.keys import key_id, raw_public

    k = Ed25519PrivateKey.generate()
    return {key_id(k): raw_public(k)}


def test_a_strategy_fails_before_any_round_on_a_wrong_password(postgres_server):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from flwr.serverapp.strategy import FedAvg

    from flower_chain.strategies import LedgerStrategy

    with pytest.raises(LedgerOpenError, match="password authentication failed"):
        LedgerStrategy(
            FedAvg(),
            ledger=postgres_server.uri("postgres", password="nope"),
            keyring=_keyring(),
            server_key=Ed25519PrivateKey.generate(),
        )


def test_password_is_redacted_in_the_ledger_uri():
    assert redact("postgresql://fc:s3cret@h:5/db") == "postgresql://fc:***@h:5/db"
    assert redact("postgresql://h/db?user=fc&password=s3cret&x=1") == "postgresql://h/db?user=fc&password=***&x=1"


@pytest.mark.parametrize(
    "setup,match",
    [
        (["CREATE TABLE fc_blocks (x int)"], "no fc_meta: a foreign or damaged schema"),
        (
            ["CREATE TABLE fc_meta (key text, value text)", "INSERT INTO fc_meta VALUES ('format', 'other-app')"],
            "names format 'other-app'.*foreign schema",
        ),
        (
            [
                "CREATE TABLE fc_meta (key text, value text)",
                "INSERT INTO fc_meta VALUES ('format', 'flower-chain-ledger'), ('schema_version', '99')",
            ],
            "schema version '99'.*upgrade flower-chain",
        ),
        (
            [
                "CREATE TABLE fc_meta (key text, value text)",
                "INSERT INTO fc_meta VALUES ('format', 'flower-chain-ledger'), ('schema_version', '1')",
            ],
            "without tables fc_blobs, fc_blocks",
        ),
    ],
)
def test_foreign_schema_is_refused_and_left_alone(pg_uri, setup, match):
    _sql(pg_uri, *setup)
    before = _sql(pg_uri, "SELECT relname FROM pg_class WHERE relname LIKE 'fc%' ORDER BY relname")
    for create in (True, False):
        with pytest.raises(LedgerOpenError, match=match):
            open_ledger(pg_uri, create=create)
    assert _sql(pg_uri, "SELECT relname FROM pg_class WHERE relname LIKE 'fc%' ORDER BY relname") == before


def test_another_federations_ledger_is_refused(federation_factory):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from flwr.serverapp.strategy import FedAvg

    from flower_chain.strategies import LedgerStrategy

    f = federation_factory("postgresql")
    f.add_round(1)
    with pytest.raises(LedgerError, match="server key"):  # another federation's server, same database
        LedgerStrategy(FedAvg(), ledger=f.uri, keyring=_keyring(), server_key=Ed25519PrivateKey.generate())
    with pytest.raises(LedgerError, match="records federation 'fed-test', not 'fed-other'"):
        LedgerStrategy(FedAvg(), ledger=f.uri, keyring=_keyring(), server_key=f.server_key, federation_id="fed-other")
    assert verify(open_ledger(f.uri)).blocks == 2


def test_connection_lost_mid_append_is_recovered_without_a_torn_block(federation_factory, postgres_server, monkeypatch):
    f = federation_factory("postgresql")
    f.add_round(1)
    led = f.ledger
    real = PostgresLedger._append_once
    calls = []

    def killed_mid_copy(self, block, entries, nodes):
        if not calls:  # the first attempt: the server drops our connection after the entries went in
            calls.append("killed")
            pid = self._conn.info.backend_pid
            orig_copy = self._conn.cursor().__class__.copy

            def copy_then_die(cur, stmt, *a, **kw):
                if "fc_nodes" in stmt:
                    with postgres_server.admin() as admin:
                        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
                return orig_copy(cur, stmt, *a, **kw)

            monkeypatch.setattr(self._conn.cursor().__class__, "copy", copy_then_die)
            try:
                return real(self, block, entries, nodes)
            finally:
                monkeypatch.setattr(self._conn.cursor().__class__, "copy", orig_copy)
        calls.append("again")
        return real(self, block, entries, nodes)

    monkeypatch.setattr(PostgresLedger, "_append_once", killed_mid_copy)
    f.add_round(2, n=50)
    assert calls == ["killed", "again"]
    rep = verify(open_ledger(f.uri))
    assert (rep.blocks, rep.entries) == (3, 54)


def test_commit_acknowledgement_lost_is_not_appended_twice(federation_factory, monkeypatch):
    import psycopg

    f = federation_factory("postgresql")
    real = PostgresLedger._append_once

    def commit_then_lose(self, block, entries, nodes):
        real(self, block, entries, nodes)  # committed ...
        self._conn.close()  # ... but the acknowledgement never arrived
        raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(PostgresLedger, "_append_once", commit_then_lose)
    f.add_round(1, n=4)
    monkeypatch.setattr(PostgresLedger, "_append_once", real)
    f.add_round(2, n=4)
    assert verify(open_ledger(f.uri)).blocks == 3


def test_server_down_longer_than_the_retry_window_stops_cleanly(federation_factory, postgres_server):
    f = federation_factory("postgresql")
    f.add_round(1)
    f.ledger.retry_seconds = 1.0
    postgres_server.stop("fast")
    try:
        t = time.monotonic()
        with pytest.raises(LedgerConnectionError, match="restart the server with --resume"):
            f.add_round(2)
        assert time.monotonic() - t < 15
    finally:
        postgres_server.start()
    rep = verify(open_ledger(f.uri))
    assert rep.blocks == 2  # nothing of block 2: no torn block, nothing lost
    resumed = LedgerWriter(open_ledger(f.uri, create=True), f.server_key)
    base = resumed.head.header.model_after  # a train block names its base model: the previous round's
    resumed.append(2, [f.update(2, 0, base=base)], model_before=base, model_after=f.rng.randbytes(32))
    assert verify(open_ledger(f.uri)).blocks == 3


WRITER = textwrap.dedent("""
    import sys
    from tests.conftest import Federation
    f = Federation(sys.argv[1])
    print("ready", flush=True)
    for r in range(1, int(sys.argv[2]) + 1):
        f.add_round(r, n=100)
        print(r, flush=True)
""")


def test_postgres_restarted_mid_run_the_writer_retries(pg_uri, postgres_server):
    rounds = 60
    p = subprocess.Popen(
        [sys.executable, "-c", WRITER, pg_uri, str(rounds)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout.readline().strip() == "ready"
        assert int(p.stdout.readline()) >= 1
        postgres_server.stop("immediate")  # like a crash: no shutdown checkpoint, connections dropped
        time.sleep(0.5)
        postgres_server.start()
        out, err = p.communicate(timeout=120)
    finally:
        p.kill()
    assert p.returncode == 0, err[-3000:]
    assert "lost the connection" in err  # it did go through a reconnect
    rep = verify(open_ledger(pg_uri))
    assert (rep.blocks, rep.entries) == (1 + rounds, 1 + 100 * rounds)


# --- failover: kill -9 a run.py server, resume from another process and directory --------------------------


def _pg_blocks(uri: str) -> int:
    try:
        return _sql(uri, "SELECT block_count FROM fc_head")[0][0][0]
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def _final(uri: str):
    with open_ledger(uri) as led:
        rep = verify(led, client_signatures=True)
    return rep.model_digest, rep.state_digest, rep.last_round


def test_failover_kill_9_then_resume_elsewhere_matches_uninterrupted_run(postgres_server, tmp_path):
    from tests.support.crash import env, kill_tree, run_args

    rounds, clients = 3, 3
    ref_uri = postgres_server.create_database("failover_ref")
    keys, data = tmp_path / "keys", tmp_path / "data"
    r = subprocess.run(
        run_args(tmp_path / "ref", keys, data, rounds, clients) + ["--ledger", ref_uri],
        capture_output=True,
        text=True,
        env=env(),
        timeout=600,
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    reference = _final(ref_uri)
    assert reference[2] == rounds

    uri = postgres_server.create_database("failover_run")
    first_dir = tmp_path / "machine-a"
    first_dir.mkdir()
    args = run_args(first_dir / "out", keys, data, rounds, clients) + ["--ledger", uri]
    p = subprocess.Popen(
        args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(), cwd=first_dir, start_new_session=True
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline and p.poll() is None and _pg_blocks(uri) < 3:
            time.sleep(0.05)
        assert p.poll() is None, "the run finished before the kill"
    finally:
        kill_tree(p.pid)
        p.wait()
    with open_ledger(uri) as led:  # no half-written block
        rep = verify(led, client_signatures=True)
    assert rep.last_round < rounds

    second_dir = tmp_path / "machine-b"
    second_dir.mkdir()
    args = run_args(second_dir / "out", keys, data, rounds, clients) + ["--ledger", uri, "--resume"]
    r = subprocess.run(args, capture_output=True, text=True, env=env(), timeout=600, cwd=second_dir)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert _final(uri) == reference, "the resumed run must end with the uninterrupted run's model and state"
    doc = json.loads((second_dir / "out" / "metrics.json").read_text())
    assert doc["summary"]["ledger"].startswith("postgresql://")


def test_second_server_on_the_same_database_fails_at_its_first_append(federation_factory):
    f = federation_factory("postgresql")
    f.add_round(1)
    second = LedgerWriter(open_ledger(f.uri, create=True), f.server_key)
    f.add_round(2)
    with pytest.raises(LedgerConflictError, match="block 2 .*its head is block 2"):
        second.append(2, [f.update(2, 1)])
    (n,) = _sql(f.uri, "SELECT count(*) FROM fc_blocks")
    assert n == [(3,)] and verify(open_ledger(f.uri)).blocks == 3

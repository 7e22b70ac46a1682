"""Shared fixtures: isolated Flower/Ray homes and small ledgers built the way the server builds them."""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger import GenesisEntry, LedgerWriter, UpdateEntry, UpdateStatement, open_ledger
from flower_chain.ledger.entries import metrics_digest
from flower_chain.ledger.keys import key_id, raw_public

#: What each test folder starts (registered as markers in pyproject.toml; ``pytest -m unit`` etc.).
STAGES = ("unit", "integration", "e2e", "adversarial")


def pytest_collection_modifyitems(config, items):
    """Mark every test with the folder it lives in: ``tests/unit`` -> ``unit``, and so on."""
    for item in items:
        parts = item.path.parts
        for stage in STAGES:
            if stage in parts and parts[parts.index(stage) - 1] == "tests":
                item.add_marker(getattr(pytest.mark, stage))
                break


@pytest.fixture(autouse=True)
def _isolated_homes(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("FLWR_HOME", str(home / "flwr"))
    # Ray puts Unix sockets under RAY_TMPDIR/ray/session_<date>_<pid>/sockets/, and a socket path
    # longer than 107 bytes makes Ray fail to start (the simulation then waits forever). pytest's
    # tmp paths grow with the run and test counters, so Ray gets a short directory of its own.
    ray_dir = tempfile.mkdtemp(prefix="fc-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
    monkeypatch.setenv("RAY_TMPDIR", ray_dir)
    monkeypatch.setenv("FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))
    monkeypatch.setenv("MPLCONFIGDIR", str(home / "mpl"))
    yield
    shutil.rmtree(ray_dir, ignore_errors=True)


@pytest.fixture
def task_identity(monkeypatch):
    """What a running Flower app sets: lets strategies build Messages outside a run."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)


class Federation:
    """A server key, client keys and a writer on a ledger URI."""

    def __init__(self, uri: str, n_clients: int = 3, federation_id: str = "fed-test", seed: int = 0):
        self.uri = uri
        self.server_key = Ed25519PrivateKey.generate()
        self.client_keys = [Ed25519PrivateKey.generate() for _ in range(n_clients)]
        self.federation_id = federation_id
        self.rng = random.Random(seed)
        self.ledger = open_ledger(uri, create=True)
        self.writer = LedgerWriter(self.ledger, self.server_key)
        self.writer.init(
            GenesisEntry(
                federation_id=federation_id,
                origin=f"flower-chain/{federation_id}",
                server_key=raw_public(self.server_key),
                client_keys={key_id(k): raw_public(k) for k in self.client_keys},
                strategy="FedAvg",
                config_digest=b"\x00" * 32,
                created_ms=int(time.time() * 1000),
            )
        )

    def update(self, rnd: int, i: int, *, verdict="accepted", reason="ok", base: bytes = b"") -> UpdateEntry:
        """Client i's train update of round rnd, as an honest server records it in the next block.

        ``base`` is the round's global model digest (the block's ``model_before``). A ``bad-signature``
        entry carries a signature that really does not verify, as the verdict policy re-derives.
        """
        k = self.client_keys[i % len(self.client_keys)]
        digest = self.rng.randbytes(32)
        metrics = {"train_loss": self.rng.random()}
        st = UpdateStatement(
            "train",
            self.federation_id,
            rnd,
            key_id(k),
            self.writer.head_hash,
            base,
            digest,
            10 + i,
            metrics_digest(metrics),
        )
        sb = st.to_bytes()
        sig = bytearray(k.sign(sb))
        if reason == "bad-signature":
            sig[0] ^= 1
        return UpdateEntry(
            kind="train",
            round=rnd,
            node_id=str(i),
            key_id=key_id(k),
            verdict=verdict,
            reason=reason,
            detail="",
            num_examples=10 + i,
            arrays_digest=digest,
            metrics=metrics,
            statement=sb,
            signature=bytes(sig),
        )

    def add_round(self, rnd: int, n: int = 3, rejected: int = 0):
        before = self.writer.head.header.model_after or bytes(32)
        entries = [self.update(rnd, i, base=before) for i in range(n)]
        entries += [
            self.update(rnd, n + j, verdict="rejected", reason="bad-signature", base=before) for j in range(rejected)
        ]
        after = self.rng.randbytes(32) if n else before  # nothing accepted, nothing aggregated: the model stays
        return self.writer.append(rnd, entries, model_before=before, model_after=after)

    def add_block(self, rnd: int, entries):
        """A block that leaves the model where it is (evaluation), as an honest server records it."""
        model = self.writer.head.header.model_after
        return self.writer.append(rnd, entries, model_before=model, model_after=model)


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the whole session (tests/pgserver.py), stopped by PID at the end.

    Skips with the reason only where the binaries or psycopg are not installed.
    """
    from tests.support.pgserver import PostgresServer, why_unavailable

    reason = why_unavailable()
    if reason:
        pytest.skip(reason)
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture
def pg_uri(postgres_server, request):
    """The URI of a fresh, empty PostgreSQL database for this test."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[-50:]
    return postgres_server.create_database(name)


@pytest.fixture
def federation_factory(tmp_path, request):
    made = []

    def make(backend: str = "sqlite", **kw) -> Federation:
        if backend == "postgresql":
            uri = request.getfixturevalue("postgres_server").create_database(
                f"f{len(made)}_" + "".join(c if c.isalnum() else "_" for c in request.node.name.lower())[-40:]
            )
            f = Federation(uri, **kw)
            made.append(f)
            return f
        uri = {
            "memory": "memory:",
            "sqlite": f"sqlite:///{tmp_path}/l{len(made)}.db",
            "jsonl": f"jsonl:///{tmp_path}/l{len(made)}.jsonl",
        }[backend]
        f = Federation(uri, **kw)
        made.append(f)
        return f

    yield make
    for f in made:
        f.ledger.close()

"""Accepted updates sealed to the auditor (audit_key): the server's blob store holds no plaintext update and
no blob addressed by one; `ledger audit` without the key says NOT AUDITED (sealed), with the key it opens
every update and re-derives every round bit for bit; a wrong key is named."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.serverapp.strategy import FedAdam

from flower_chain.audit.replay import NOT_REDERIVABLE, OK, audit
from flower_chain.ledger import open_ledger, verify
from flower_chain.ledger.entries import UpdateEntry, decode_entry
from flower_chain.ledger.sealed import load_audit_private, sealed_address
from flower_chain.ledger.writer import read_genesis
from flower_chain.strategies import LedgerStrategy
from tests.integration.audit.test_audit import cli, kw, run_rounds
from tests.support.fl_helpers import Clients, arrays

pytestmark = pytest.mark.usefixtures("task_identity")


def sealing_strategy(inner, audit_pub, **opts) -> LedgerStrategy:
    """LedgerStrategy(inner, audit_key=...): accepted updates are stored sealed to the auditor's key."""
    return LedgerStrategy(inner, audit_key=audit_pub, **opts)


def auditor_keys(tmp_path: Path) -> tuple[Path, Path]:
    r = cli("ledger", "audit-key", tmp_path / "auditor")
    assert r.returncode == 0 and "public key (hex): " in r.stdout, r.stdout + r.stderr
    return tmp_path / "auditor" / "audit.audit.key", tmp_path / "auditor" / "audit.audit.pub"


def sealed_run(tmp_path, pub, rounds=3, name="s.db"):
    clients, key = Clients(4), Ed25519PrivateKey.generate()
    uri = f"sqlite:///{tmp_path / name}"
    s = sealing_strategy(
        FedAdam(**kw(eta=0.05, tau=1e-3)),
        pub,
        ledger=uri,
        keyring=clients.keyring,
        server_key=key,
        federation_id="fed-sealed",
    )
    run_rounds(s, clients, range(1, rounds + 1), arrays(0))
    s.close()
    return uri, key


def accepted_entries(uri) -> list[tuple[int, UpdateEntry]]:
    with open_ledger(uri) as led:
        out = [(i, decode_entry(d)) for i, d in enumerate(led.entries(0, led.log_size()))]
    return [(i, e) for i, e in out if isinstance(e, UpdateEntry) and e.verdict == "accepted"]


def all_blobs(uri) -> list[tuple[bytes, bytes]]:
    db = sqlite3.connect(uri.removeprefix("sqlite:///"))
    try:
        return [(bytes(d), bytes(b)) for d, b in db.execute("SELECT digest, data FROM blobs")]
    finally:
        db.close()


def test_no_plaintext_update_is_stored_and_audit_needs_the_key(tmp_path):
    priv, pub = auditor_keys(tmp_path)
    uri, _ = sealed_run(tmp_path, pub)
    accepted = accepted_entries(uri)
    assert len(accepted) == 12
    blobs = all_blobs(uri)
    addresses = {d for d, _ in blobs}
    with open_ledger(uri) as led:
        origin = read_genesis(led).origin
    for _, e in accepted:
        assert e.arrays_digest not in addresses  # nothing addressed by the update's content
        assert sealed_address(origin, e.arrays_digest) in addresses
    # the updates the clients sent (the test knows them; the ledger must not): no blob holds their bytes
    for rnd in (1, 2, 3):
        for i in range(4):
            sent = arrays(100 * rnd + i)["w"].numpy().tobytes()  # 128 bytes of the update's first array
            assert not any(sent in data for _, data in blobs)
    with open_ledger(uri) as led:
        verify(led, client_signatures=True, blobs=True)
        locked = audit(led)
        opened = audit(led, audit_key=load_audit_private(priv))
    assert {(r.status, r.sealed) for r in locked.rounds} == {(NOT_REDERIVABLE, True)}
    assert (
        "4 of 4 accepted client updates are sealed to the auditor key" in locked.rounds[0].detail
        and "--audit-key" in locked.rounds[0].detail
    )
    assert [(r.round, r.status) for r in opened.rounds] == [(1, OK), (2, OK), (3, OK)]
    assert opened.sealed_opened == 12 and opened.audited

    r = cli("ledger", "audit", uri)
    assert r.returncode == 3 and "NOT AUDITED" in r.stderr and "--audit-key" in r.stderr, r.stdout + r.stderr
    r = cli("ledger", "audit", uri, "--audit-key", priv, "--strict")
    assert r.returncode == 0 and "AUDITED" in r.stdout and "12 opened from sealed blobs" in r.stdout, r.stderr
    j = json.loads(cli("ledger", "audit", uri, "--audit-key", priv, "--json").stdout)
    assert j["audited"] is True and j["sealed_opened"] == 12 and j["arrays_unchecked"] == 0


def test_a_wrong_or_unreadable_audit_key(tmp_path):
    _, pub = auditor_keys(tmp_path)
    uri, _ = sealed_run(tmp_path, pub, rounds=1)
    r = cli("ledger", "audit-key", tmp_path / "other")
    other = tmp_path / "other" / "audit.audit.key"
    r = cli("ledger", "audit", uri, "--audit-key", other)
    assert r.returncode == 3 and "sealed to another auditor key" in r.stderr, r.stderr
    r = cli("ledger", "audit", uri, "--audit-key", tmp_path / "nope.key")
    assert r.returncode == 2 and r.stderr.startswith("error:") and len(r.stderr.strip().splitlines()) == 1
    r = cli("ledger", "audit", uri, "--audit-key", pub)  # the public key where the private one belongs
    assert r.returncode == 2 and "X25519 private key" in r.stderr
    r = cli("ledger", "audit-key", tmp_path / "other")  # never overwrites a key
    assert r.returncode == 2 and "refusing to overwrite" in r.stderr


def test_a_bad_audit_key_fails_when_the_recorder_is_made(tmp_path):
    """The key is loaded before the recorder touches the ledger (it is given none here)."""
    from flower_chain.ledger.errors import LedgerError
    from flower_chain.strategies.recorder import Recorder

    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(LedgerError, match="X25519 public key"):
        Recorder(None, Ed25519PrivateKey.generate(), audit_key=bad)
    with pytest.raises(LedgerError, match="cannot read the audit key"):
        Recorder(None, Ed25519PrivateKey.generate(), audit_key=tmp_path / "absent.pub")


def test_store_client_updates_false_opts_out_and_is_not_audited(tmp_path):
    _, pub = auditor_keys(tmp_path)
    clients, key = Clients(4), Ed25519PrivateKey.generate()
    uri = f"sqlite:///{tmp_path / 'none.db'}"
    s = sealing_strategy(
        FedAdam(**kw(eta=0.05, tau=1e-3)),
        pub,
        ledger=uri,
        keyring=clients.keyring,
        server_key=key,
        store_client_updates=False,
    )
    run_rounds(s, clients, [1, 2], arrays(0))
    s.close()
    with open_ledger(uri) as led:
        rep = audit(led)
    assert [(r.status, r.sealed) for r in rep.rounds] == [(NOT_REDERIVABLE, False)] * 2
    assert "not in the blob store" in rep.rounds[0].detail
    addresses = {d for d, _ in all_blobs(uri)}
    with open_ledger(uri) as led:
        origin = read_genesis(led).origin
    for _, e in accepted_entries(uri):  # the opt-out stores nothing to open, sealed or not
        assert e.arrays_digest not in addresses and sealed_address(origin, e.arrays_digest) not in addresses


@pytest.mark.parametrize("bad", ["-----BEGIN PUBLIC KEY-----\nnot a key\n-----END PUBLIC KEY-----\n", "missing.pub"])
def test_a_bad_audit_key_fails_before_the_ledger_is_created(tmp_path, bad):
    from flower_chain.ledger.errors import LedgerError

    clients, path = Clients(2), tmp_path / "never.db"
    with pytest.raises(LedgerError, match="audit"):
        LedgerStrategy(
            FedAdam(**kw(eta=0.05, tau=1e-3)),
            audit_key=bad,
            ledger=f"sqlite:///{path}",
            keyring=clients.keyring,
            server_key=Ed25519PrivateKey.generate(),
        )
    assert not path.exists()  # no empty ledger left behind

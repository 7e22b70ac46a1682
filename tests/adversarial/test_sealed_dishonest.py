"""A dishonest server and updates sealed to the auditor: it holds the auditor's public key, so it can seal
anything, move sealed blobs around and copy them from other ledgers — the audit with the private key fails
the round naming the entry and its key, every time; it cannot open what it stored."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.serverapp.strategy import FedAvg

from flower_chain.audit.replay import MISMATCH, OK, audit
from flower_chain.ledger import open_ledger
from flower_chain.ledger.arrays import encode_arrays
from flower_chain.ledger.sealed import SealedError, open_sealed, seal, sealed_address
from flower_chain.ledger.writer import read_genesis
from tests.integration.audit.test_audit import cli, kw, run_rounds
from tests.integration.audit.test_sealed_audit import accepted_entries, all_blobs, sealing_strategy
from tests.support import dishonest
from tests.support.fl_helpers import Clients, arrays

pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.fixture
def sealed_ledger(tmp_path):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    auditor = X25519PrivateKey.generate()
    clients, key = Clients(4), Ed25519PrivateKey.generate()
    uri = f"sqlite:///{tmp_path / 'd.db'}"
    s = sealing_strategy(
        FedAvg(**kw()), auditor.public_key(), ledger=uri, keyring=clients.keyring, server_key=key, federation_id="fed-d"
    )
    run_rounds(s, clients, [1, 2, 3], arrays(0))
    s.close()
    with open_ledger(uri) as led:
        origin = read_genesis(led).origin
    return uri, auditor, origin


def _round_of(uri, index):
    with open_ledger(uri) as led:
        for b in led.blocks(1):
            if b.header.first_index <= index < b.header.log_size:
                return b.header.round
    raise AssertionError(index)


def _audit(uri, auditor):
    with open_ledger(uri) as led:
        return audit(led, audit_key=auditor)


def test_honest_baseline(sealed_ledger):
    uri, auditor, _ = sealed_ledger
    assert {r.status for r in _audit(uri, auditor).rounds} == {OK}


def test_a_sealed_blob_swapped_for_another_updates_fails_naming_round_and_entry(sealed_ledger, tmp_path):
    uri, auditor, origin = sealed_ledger
    accepted = accepted_entries(uri)
    (vi, victim), (_, other) = accepted[5], accepted[6]  # two updates of round 2
    assert _round_of(uri, vi) == 2
    blobs = dict(all_blobs(uri))
    dishonest.put_blob(
        uri, sealed_address(origin, victim.arrays_digest), blobs[sealed_address(origin, other.arrays_digest)]
    )
    rep = _audit(uri, auditor)
    assert [(r.round, r.status) for r in rep.rounds] == [(1, OK), (2, MISMATCH), (3, OK)]
    detail = rep.rounds[1].detail
    assert f"client update of {victim.key_id} (entry {vi})" in detail and "does not open" in detail, detail
    (tmp_path / "a.key").write_text(auditor.private_bytes_raw().hex())
    r = cli("ledger", "audit", uri, "--audit-key", tmp_path / "a.key")
    assert r.returncode == 1 and "AUDIT FAILED" in r.stderr and "NOT RE-DERIVED round 2 (block 2)" in r.stderr
    assert f"entry {vi}" in r.stderr, r.stderr


def test_other_arrays_sealed_under_the_signed_digest_fail(sealed_ledger):
    """Sealing needs only the public key: the server seals arrays of its choosing, bound to the right digest.
    The opened stream must hash to the digest the client signed."""
    uri, auditor, origin = sealed_ledger
    vi, victim = accepted_entries(uri)[0]
    fake = encode_arrays([("w", np.zeros((8, 4), np.float32)), ("b", np.zeros(4, np.float32))])
    dishonest.put_blob(
        uri,
        sealed_address(origin, victim.arrays_digest),
        seal(fake, auditor.public_key(), origin, victim.arrays_digest),
    )
    rep = _audit(uri, auditor)
    assert rep.rounds[0].status == MISMATCH
    assert f"opened client update of {victim.key_id} (entry {vi})" in rep.rounds[0].detail
    assert "does not match its digest" in rep.rounds[0].detail


def test_a_sealed_blob_from_another_ledger_does_not_open(sealed_ledger):
    uri, auditor, origin = sealed_ledger
    vi, victim = accepted_entries(uri)[-1]
    stream = encode_arrays([(n, a.numpy()) for n, a in arrays(303).items()])  # an update sealed in another ledger
    other = seal(stream, auditor.public_key(), "flower-chain/fed-elsewhere", victim.arrays_digest)
    dishonest.put_blob(uri, sealed_address(origin, victim.arrays_digest), other)
    rep = _audit(uri, auditor)
    assert rep.rounds[2].status == MISMATCH and f"entry {vi}" in rep.rounds[2].detail
    assert "sealed for another update or another ledger" in rep.rounds[2].detail


def test_garbage_and_truncated_blobs_fail_without_a_traceback(sealed_ledger):
    uri, auditor, origin = sealed_ledger
    (vi, victim), (wi, wrong) = accepted_entries(uri)[:2]
    blobs = dict(all_blobs(uri))
    dishonest.put_blob(uri, sealed_address(origin, victim.arrays_digest), b"\x00garbage")
    dishonest.put_blob(
        uri, sealed_address(origin, wrong.arrays_digest), blobs[sealed_address(origin, wrong.arrays_digest)][:-1]
    )
    rep = _audit(uri, auditor)
    assert rep.rounds[0].status == MISMATCH
    assert f"entry {vi}" in rep.rounds[0].detail and "not a sealed blob" in rep.rounds[0].detail
    assert f"entry {wi}" in rep.rounds[0].detail


def test_the_server_cannot_open_what_it_stored(sealed_ledger):
    """Everything the server holds (its own keys, every blob) opens no sealed update."""
    uri, auditor, origin = sealed_ledger
    vi, victim = accepted_entries(uri)[0]
    blob = dict(all_blobs(uri))[sealed_address(origin, victim.arrays_digest)]
    for guess in (X25519PrivateKey.generate() for _ in range(3)):
        with pytest.raises(SealedError):
            open_sealed(blob, guess, origin, victim.arrays_digest)
    assert open_sealed(blob, auditor, origin, victim.arrays_digest)  # only the auditor's key does

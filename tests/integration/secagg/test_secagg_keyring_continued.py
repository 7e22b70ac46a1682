"""A SecAgg+ round in a federation whose genesis keyring continues in ``keys`` entries (over ~1,150 keys,
docs/ledger-format.md §3.1a): the commit proof carries the continuation, every node checks its neighbours'
committed statements against the whole keyring, the round aggregates and the auditor proves it."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.audit.secagg import audit_secagg
from flower_chain.ledger.entries import KeysEntry, decode_entry
from flower_chain.ledger.keys import key_id, raw_public
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")


def _key(i: int) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"keyring-continued-%d" % i).digest())


def test_a_round_with_node_keys_in_the_keyring_continuation_aggregates_and_audits(tmp_path):
    extra = {key_id(k): raw_public(k) for k in map(_key, range(2_500))}
    fed = SecAggFederation(f"sqlite:///{tmp_path / 'l.sqlite'}", n=5, num_shares=5, threshold=3, extra_keyring=extra)
    figures = fed.run_round(1)
    assert not figures["failure"], figures
    head = fed.ledger.block(0).header
    continued = set()
    for data in fed.ledger.entries(1, head.log_size):
        entry = decode_entry(data)
        assert isinstance(entry, KeysEntry)
        continued |= set(entry.client_keys)
    in_continuation = [key_id(k) for k in fed.keys if key_id(k) in continued]
    assert in_continuation, "no node key landed in a keys entry: the test proves nothing"
    report = audit_secagg(fed.ledger)
    assert report.ok and report.proved, report.lines()

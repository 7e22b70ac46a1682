"""The array digest version's one owner in SecAgg+ rounds: the ledger's genesis (docs/secagg.md §2.1,
docs/ledger-format.md §6.1). On a ledger whose genesis names v1, the round header carries 1, the nodes check
the model sent and digest their masked vectors (and encode their blobs) under it, the server judges and
records under it, and ``ledger verify --blobs`` and ``ledger audit --strict`` pass. The model is over 1 MiB,
so its v1 and v2 digests differ. A node refuses a header naming a version it does not know."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Message, RecordDict

from flower_chain.audit.secagg import audit_secagg
from flower_chain.clients.secagg import RECORD
from flower_chain.ledger.arrays import array_digest
from flower_chain.ledger.encoding import decode, encode
from flower_chain.ledger.entries import decode_entry
from flower_chain.ledger.keys import key_id, raw_public
from flower_chain.ledger.secagg import HEADER, VERSION_FIELD, SecAggEntry
from tests.support.digest_ledgers import cli, write_genesis
from tests.support.fl_helpers import with_content
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")
SHAPES = [(520, 520), (4,), ()]  # 270,405 float32, over 1 MiB, and a 0-d array: v1 and v2 digests differ
FID = "fed-secagg"


def v1_federation(tmp_path, n: int = 4, shapes=SHAPES) -> tuple[SecAggFederation, str]:
    """A SecAgg+ federation continuing a ledger whose genesis names digest version 1 (as older ledgers)."""
    uri, keys = f"sqlite:///{tmp_path}/v1.db", [Ed25519PrivateKey.generate() for _ in range(n)]
    server_key = Ed25519PrivateKey.generate()
    write_genesis(uri, {key_id(k): raw_public(k) for k in keys}, server_key, 1, {"strategy": "FedAvg"}, FID)
    fed = SecAggFederation(uri, n=n, num_shares=n, threshold=3, shapes=shapes, keys=keys, server_key=server_key)
    return fed, uri


def named(arrays) -> list:
    return [(str(i), np.asarray(a)) for i, a in enumerate(arrays)]


def headers(ledger) -> list[dict]:
    entries = map(decode_entry, ledger.entries())
    return [e.data for e in entries if isinstance(e, SecAggEntry) and e.stage == HEADER]


def test_a_secagg_round_on_a_v1_ledger_digests_everything_under_v1_and_verifies_and_audits(tmp_path):
    fed, uri = v1_federation(tmp_path)
    assert array_digest(named(fed.initial), 1) != array_digest(named(fed.initial), 2)  # the test means something
    for rnd in (1, 2):  # round 2's base model is round 1's model_after: the model chain under v1
        figures = fed.run_round(rnd)
        assert figures["failure"] == "" and figures["masked"] == 4, (figures, fed.grid.errors)
    assert not fed.grid.errors, fed.grid.errors
    assert [h[VERSION_FIELD] for h in headers(fed.ledger)] == [1, 1]
    assert fed.ledger.head().header.model_after == array_digest(named(fed.model()), 1)
    assert [a.shape for a in fed.model()] == [(520, 520), (4,), ()]  # the 0-d array stays 0-d
    report = audit_secagg(fed.ledger)
    assert report.ok and report.rounds == 2, report.lines()
    fed.strategy.close()
    code, out = cli("ledger", "verify", uri, "--blobs")
    assert code == 0 and "VERIFIED" in out, out
    code, out = cli("ledger", "audit", uri, "--strict")
    assert code == 0 and "AUDITED" in out, out


@pytest.mark.parametrize("sent", [3, 0, -1])
def test_a_node_refuses_a_header_naming_an_unknown_digest_version(tmp_path, sent):
    fed, _ = v1_federation(tmp_path)

    def rewrite(nid, stage, msg: Message) -> Message:
        if stage != "setup":
            return msg
        req = decode(msg.content.config_records[RECORD]["request"])
        req["content"]["header"][VERSION_FIELD] = sent  # a server naming a version no node can digest under
        content = RecordDict(dict(msg.content.items()))
        content.config_records[RECORD] = ConfigRecord({"request": encode(req)})
        return with_content(msg, content)

    fed.grid.rewrite = rewrite
    model = fed.model()
    figures = fed.run_round(1)
    assert figures["failure"] or figures.get("setup", 0) == 0, figures
    refusals = [str(e) for _, stage, e in fed.grid.errors if stage == "setup"]
    assert len(refusals) == 4 and all(f"unknown array digest version {sent}" in r for r in refusals), refusals
    for got, want in zip(fed.model(), model):  # no node took part: the model stays
        np.testing.assert_array_equal(got, want)


def test_the_audit_names_a_header_whose_digest_version_is_not_the_genesis(tmp_path, monkeypatch):
    """A server writing a header under version 2 on a v1 ledger: with a model under 1 MiB (its v1 and v2
    digests agree) the round runs, and the header's version is what the audit names."""
    from flower_chain.strategies.recorder import Recorder

    fed, _ = v1_federation(tmp_path, shapes=[(6, 4)])
    monkeypatch.setattr(Recorder, "digest_version", property(lambda self: 2))
    assert fed.run_round(1)["failure"] == ""
    monkeypatch.undo()
    report = audit_secagg(fed.ledger)
    assert not report.ok
    errors = [(f.round, f.stage, f.message) for f in report.findings if f.severity == "error"]
    what = "the header names array digest version 2, the ledger's is 1: its nodes digested under another"
    assert errors[0] == (1, "header", what), errors
    assert all("digest" not in m for _, s, m in errors[1:]), errors  # no digest differs: the replay stops after it

"""Issue 19 items 5 and 6: what the server acts on is signed, the signature binds the head the client verified,
and the client signs the settings digest (a node can pin the one it expects).

* an edit in transit of ``checkpoint-size``/``pending-round`` beside a v2 statement changes nothing (before: the
  honest server sent consistency proofs from a size the client never saw and looked forked);
* a client shown a parent other than the head block it verified refuses (no training result is signed);
* a client that signed other settings than the genesis records is rejected ``wrong-settings``, a verdict the
  auditor re-derives from the ledger alone (and a ledger recording it accepted fails verification);
* a node pinning a settings digest refuses a server announcing another, or none; a node keeping receipts
  refuses a log that announced its digest before and now announces none (a downgrade to v1);
* a v1 statement (an older client, a context from an older server) is still accepted and verifies.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from flwr.app import ConfigRecord

from flower_chain.clients.settings import ENV_SETTINGS_DIGEST, settings_pin
from flower_chain.clients.signing import make_signing_mod
from flower_chain.ledger import UpdateEntry, UpdateStatement, decode_entry
from flower_chain.ledger.errors import KeyFileError, VerificationError
from flower_chain.ledger.keys import key_id
from flower_chain.ledger.verify import verify
from flower_chain.wire import CTX_PARENT, CTX_SETTINGS, PENDING_ROUND, SEEN_SIZE, SIG_RECORD
from tests.conftest import Federation
from tests.integration.clients.test_receipts import NODES, World
from tests.support.fl_helpers import FakeGrid, context, copy_config, train_reply
from tests.support.statements import statement_of

statement_of_bytes = UpdateStatement.from_bytes

pytestmark = pytest.mark.usefixtures("task_identity")
OTHER = hashlib.sha256(b"settings nobody consented to").digest()


def head_updates(w: World) -> list[UpdateEntry]:
    ledger = w.strategy.core.ledger
    return [
        e for e in map(decode_entry, ledger.entries(ledger.head().header.first_index)) if isinstance(e, UpdateEntry)
    ]


def test_an_edit_in_transit_of_the_unsigned_fields_changes_nothing(tmp_path):
    w = World(tmp_path)
    for rnd in (1, 2, 3, 4):
        replies = w.round(rnd, aggregate=False)
        for r in replies:  # a man in the middle: "this client saw size 1 and wants every receipt since round 0"
            r.content[SIG_RECORD][SEEN_SIZE] = 1
            r.content[SIG_RECORD][PENDING_ROUND] = 0
        w.global_arrays, _ = w.strategy.aggregate_train(rnd, replies)
        signed = [statement_of(r) for r in replies]
        assert all(st.version == 2 for st in signed)
        for node, st in zip(NODES, signed):  # the server acts on what the client signed, nothing else
            assert w.strategy.core.node_seen.get(str(node), -1) == st.seen_size
            assert w.strategy.core.node_pending[str(node)] == (st.key_id, st.pending_round)
    for i in range(len(NODES)):  # the honest server does not look forked or censoring
        assert w.counts(i) == {"receipts": 3, "errors": 0}
        assert not (w.dir(i) / "errors.log").exists()


def test_a_client_shown_another_parent_than_its_verified_head_refuses(tmp_path):
    w = World(tmp_path)
    w.round(1)
    other_head = hashlib.sha256(b"a block of another history").digest()
    replies = w.round(2, aggregate=False, tamper={0: lambda c: {**c, CTX_PARENT: other_head}})
    assert replies[0].has_error()  # an error reply: nothing signed (the server records client-error)
    assert "names ledger head" in replies[0].error.reason
    assert "names ledger head " + other_head.hex()[:16] in (w.dir(0) / "errors.log").read_text()
    assert w.counts(0)["errors"] == 1
    head = w.strategy.core.writer.head_hash
    assert [statement_of(r).parent for r in replies[1:]] == [head, head]  # the others sign the head they verified


def test_without_receipts_the_named_parent_is_signed_as_before(tmp_path):
    """No receipts directory, no verified head: nothing to bind (docs/ledger-format.md §7)."""
    w = World(tmp_path)
    w.mods = [make_signing_mod(k) for k in w.clients.keys]
    named = hashlib.sha256(b"named").digest()
    replies = w.round(1, aggregate=False, tamper={0: lambda c: {**c, CTX_PARENT: named}})
    assert statement_of(replies[0]).parent == named


def test_other_settings_are_rejected_and_the_auditor_rederives_it(tmp_path):
    w = World(tmp_path, ledger=f"sqlite:///{tmp_path}/l.db")
    genesis = w.strategy.core.writer.genesis
    replies = w.round(1, aggregate=False, tamper={0: lambda c: {**c, CTX_SETTINGS: OTHER}})
    assert statement_of(replies[0]).settings_digest == OTHER
    assert statement_of(replies[1]).settings_digest == genesis.config_digest
    w.strategy.aggregate_train(1, replies)
    got = {e.key_id: (e.verdict, e.reason) for e in head_updates(w)}
    assert got[key_id(w.clients.keys[0])] == ("rejected", "wrong-settings")
    assert got[key_id(w.clients.keys[1])] == ("accepted", "ok")
    report = verify(w.strategy.core.ledger, client_signatures=True)
    assert report.rejected_proven == 1 and report.accepted_proven == 2


def _v2_update(fed: Federation, i: int, settings: bytes, **recorded) -> UpdateEntry:
    """Client i's round-1 update as a v2 client signs it, naming ``settings``, recorded as ``recorded`` says."""
    entry = fed.update(1, i, base=fed.writer.head.header.model_after or bytes(32))
    st = dataclasses.replace(
        statement_of_bytes(entry.statement), seen_size=-1, pending_round=1, settings_digest=settings
    ).to_bytes()
    k = next(k for k in fed.client_keys if key_id(k) == entry.key_id)
    return dataclasses.replace(entry, statement=st, signature=k.sign(st), **recorded)


def _append(fed: Federation, entries: list[UpdateEntry]) -> None:
    model = fed.writer.head.header.model_after or bytes(32)
    fed.writer.append(1, entries, model_before=model, model_after=hashlib.sha256(b"m1").digest())


def test_a_ledger_recording_other_settings_as_accepted_fails_verification():
    honest = Federation("memory:", federation_id="fed-settings")  # genesis config_digest: 32 zero bytes
    _append(
        honest,
        [_v2_update(honest, 0, bytes(32)), _v2_update(honest, 1, OTHER, verdict="rejected", reason="wrong-settings")],
    )
    assert verify(honest.ledger, client_signatures=True).rejected_proven == 1
    lying = Federation("memory:", federation_id="fed-settings")
    _append(lying, [_v2_update(lying, 0, OTHER)])  # accepted: a consent to other settings used under these
    with pytest.raises(VerificationError, match="wrong-settings"):
        verify(lying.ledger, client_signatures=True)


def test_a_pinned_node_refuses_other_settings_or_none(tmp_path, monkeypatch):
    w = World(tmp_path)
    genesis = w.strategy.core.writer.genesis
    trained = []

    def body(m, _c):
        trained.append(m)
        return train_reply(m, w.global_arrays, 10)

    pinned = [make_signing_mod(k, receipts_dir=tmp_path / "r", settings_digest=OTHER.hex()) for k in w.clients.keys]
    msgs = sorted(
        w.strategy.configure_train(1, w.global_arrays, ConfigRecord({}), FakeGrid(NODES)),
        key=lambda m: m.metadata.dst_node_id,
    )
    reply = pinned[0](msgs[0], context(), body)
    assert reply.has_error() and "pins" in reply.error.reason and not trained  # refused before training
    ok = make_signing_mod(w.clients.keys[1], settings_digest=genesis.config_digest.hex())(msgs[1], context(), body)
    assert statement_of(ok).settings_digest == genesis.config_digest
    older = copy_config(msgs[2])  # an older server, or the digest stripped in transit: no settings announced
    del older.content["config"][CTX_SETTINGS]
    monkeypatch.setenv(ENV_SETTINGS_DIGEST, genesis.config_digest.hex())
    reply = make_signing_mod(w.clients.keys[2])(older, context(), body)
    assert reply.has_error() and "no settings digest" in reply.error.reason
    monkeypatch.delenv(ENV_SETTINGS_DIGEST)
    unpinned = make_signing_mod(w.clients.keys[2])(older, context(), body)
    assert statement_of(unpinned).version == 1  # an older server gets the statement it reads


def test_a_log_that_announced_its_settings_is_not_downgraded_to_v1(tmp_path):
    """Stripping the settings digest in transit would get a v1 statement, whose receipt fields travel unsigned:
    a client keeping receipts remembers per log that it was announced and refuses."""
    w = World(tmp_path)
    w.round(1)
    stripped = w.round(2, aggregate=False, tamper={0: lambda c: {k: v for k, v in c.items() if k != CTX_SETTINGS}})
    assert stripped[0].has_error() and "announced one before" in stripped[0].error.reason
    assert "announced one before" in (w.dir(0) / "errors.log").read_text()
    assert statement_of(stripped[1]).version == 2


def test_a_settings_pin_that_does_not_parse_is_a_key_file_error(monkeypatch):
    monkeypatch.setenv(ENV_SETTINGS_DIGEST, "not hex")
    with pytest.raises(KeyFileError, match="64 hex digits"):
        settings_pin(context())
    assert settings_pin(context(), OTHER) == OTHER and settings_pin(context(), OTHER.hex().upper()) == OTHER


def test_a_v1_reply_of_an_older_client_is_accepted_and_verifies(tmp_path):
    w = World(tmp_path)

    def older_client(config):  # what a client before v2 saw: it ignores the settings digest
        return {k: v for k, v in config.items() if k != CTX_SETTINGS}

    for rnd in (1, 2, 3):
        replies = w.round(rnd, aggregate=False, tamper={0: older_client})
        assert statement_of(replies[0]).version == 1 and statement_of(replies[1]).version == 2
        assert replies[0].content[SIG_RECORD][SEEN_SIZE] >= -1  # v1: the fields travel beside the signature
        w.global_arrays, _ = w.strategy.aggregate_train(rnd, replies)
        assert all(e.verdict == "accepted" for e in head_updates(w))
    assert w.counts(0) == {"receipts": 2, "errors": 0}
    verify(w.strategy.core.ledger, client_signatures=True)

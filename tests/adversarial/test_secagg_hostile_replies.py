"""Hostile SecAgg+ stage replies and damaged transcripts: verdicts and findings, never an exception."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, RecordDict

from flower_chain.audit.secagg import audit_secagg
from flower_chain.clients.secagg import RECORD
from flower_chain.ledger.encoding import encode
from flower_chain.ledger.entries import EvaluationEntry, decode_entry
from flower_chain.ledger.secagg import (
    COMMIT,
    HEADER,
    UNMASK,
    SecAggEntry,
    StageStatement,
)
from tests.support.fl_helpers import with_content
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")


def entries_of(fed, **where):
    return [
        e
        for e in map(decode_entry, fed.ledger.entries())
        if isinstance(e, SecAggEntry) and all(getattr(e, k) == v for k, v in where.items())
    ]


def replace_record(reply, record: dict):
    content = RecordDict(dict(reply.content.items()))
    content.config_records[RECORD] = ConfigRecord(record)
    return with_content(reply, content)


def resigned(fed, nid, reply, edit):
    """A malicious client: its own statement edited by ``edit(reply_dict)`` and signed with its own key."""
    rec = reply.content.config_records[RECORD]
    st = StageStatement.from_bytes(rec["statement"])
    new = StageStatement(**{**st.__dict__, "reply": edit(dict(st.reply))}).to_bytes()
    key = fed.keys[fed.node_ids.index(nid)]
    return replace_record(reply, {"statement": new, "signature": key.sign(new), "payload": rec["payload"]})


def test_replayed_stage_replies_are_rejected_and_the_round_goes_on():
    fed = SecAggFederation("memory:", n=7, num_shares=7, threshold=4)  # a strict majority of 7
    a, b, c = fed.node_ids[0], fed.node_ids[3], fed.node_ids[5]
    kept: dict = {}

    def tamper(nid, stage, msg, reply):
        if reply.has_error():
            return reply
        if nid == a and stage == "setup":
            kept["setup"] = reply
        if nid == a and stage == "share-keys":  # answers stage 1 with its stage 0 reply
            return replace_record(reply, dict(kept["setup"].content.config_records[RECORD].items()))
        if nid == b and stage == "masked-input":
            if "masked" in kept:  # round 2: last round's signed masked input
                return replace_record(reply, dict(kept["masked"].content.config_records[RECORD].items()))
            kept["masked"] = reply
        if nid == c and stage == "unmask":
            if "unmask" in kept:  # round 2: last round's signed unmask reply (another checkpoint, other lists)
                return replace_record(reply, dict(kept["unmask"].content.config_records[RECORD].items()))
            kept["unmask"] = reply
        return reply

    fed.grid.tamper = tamper
    assert fed.run_round(1)["failure"] == ""
    assert fed.run_round(2)["failure"] == ""
    assert entries_of(fed, round=1, stage="share-keys", node_id=str(a))[0].reason == "replayed"
    replayed = entries_of(fed, round=2, stage="masked-input", node_id=str(b))[0]
    assert replayed.reason == "replayed" and replayed.verdict == "rejected"
    assert str(b) in entries_of(fed, round=2, stage=COMMIT)[0].data["dropped"]
    assert entries_of(fed, round=2, stage=UNMASK, node_id=str(c))[0].reason == "replayed"
    report = audit_secagg(fed.ledger)
    assert report.ok and not report.findings, report.lines()  # a rightly rejected replay is no evidence of a fork


@pytest.mark.parametrize(
    "damage,reason",
    [
        (lambda r: {}, "unsigned"),
        (lambda r: {**r, "statement": b"\x00garbage"}, "malformed"),
        (lambda r: {**r, "signature": bytes(64)}, "bad-signature"),
        (lambda r: {**r, "payload": b"\xff\xff"}, "malformed"),
        (lambda r: {**r, "payload": encode({"vector": b"not arrays"})}, "malformed"),
        (lambda r: {"statement": 5, "signature": "x", "payload": 1.5}, "unsigned"),
    ],
)
def test_malformed_masked_input_is_a_verdict(damage, reason):
    fed = SecAggFederation("memory:", n=6)
    bad = fed.node_ids[2]

    def tamper(nid, stage, msg, reply):
        if nid == bad and stage == "masked-input":
            return replace_record(reply, damage(dict(reply.content.config_records[RECORD].items())))
        return reply

    fed.grid.tamper = tamper
    assert fed.run_round(1)["failure"] == ""
    assert entries_of(fed, stage="masked-input", node_id=str(bad))[0].reason == reason
    report = audit_secagg(fed.ledger)
    assert report.ok, report.lines()


def test_error_replies_and_wrong_senders_are_dropouts():
    fed = SecAggFederation("memory:", n=6)

    def tamper(nid, stage, msg, reply):
        if nid == fed.node_ids[0] and stage == "share-keys":
            raise_reply = replace_record(reply, {})
            return raise_reply
        return reply

    fed.grid.tamper = tamper
    fed.grid.drop[fed.node_ids[5]] = "share-keys"  # dropped in stage 1: does not halt the round
    figures = fed.run_round(1)
    assert figures["failure"] == "" and figures["share_keys"] == 4
    assert audit_secagg(fed.ledger).ok


def liars_flip_their_seed_shares(fed, liars):
    def tamper(nid, stage, msg, reply):
        if nid in liars and stage == UNMASK and not reply.has_error():
            flip = lambda shares: {k: v[:4] + bytes(x ^ 0x5A for x in v[4:]) for k, v in shares.items()}
            return resigned(fed, nid, reply, lambda r: {**r, "seed_shares": flip(r["seed_shares"])})
        return reply

    return tamper


def test_a_wrong_share_is_outvoted_and_named():
    fed = SecAggFederation("memory:", n=5, num_shares=5, threshold=3)
    liar = fed.node_ids[2]
    fed.grid.tamper = liars_flip_their_seed_shares(fed, {liar})
    assert fed.run_round(1)["failure"] == ""  # each seed rebuilt from shares that fit its commitment
    report = audit_secagg(fed.ledger)
    assert report.ok, report.lines()
    named = [f for f in report.findings if f.severity == "warning" and f.stage == UNMASK]
    assert named and {f.node for f in named} == {str(liar)} and all(f.round == 1 for f in named)


def test_shares_that_do_not_reconstruct_fail_the_round_not_the_server():
    fed = SecAggFederation("memory:", n=5, num_shares=5, threshold=3)
    fed.grid.tamper = liars_flip_their_seed_shares(fed, set(fed.node_ids[:3]))
    before = fed.model()
    figures = fed.run_round(1)
    assert "mask seed" in figures["failure"]
    assert all((a == b).all() for a, b in zip(before, fed.model()))  # the model stays
    report = audit_secagg(fed.ledger)
    assert any(f.round == 1 and f.stage == "result" and "failed" in f.message for f in report.findings)
    assert not report.proved


class Hiding:
    """A ledger whose entries of some kinds read as something else: a transcript with a missing stage."""

    def __init__(self, ledger, hide):
        self._ledger, self._hide = ledger, hide

    def __getattr__(self, name):
        return getattr(self._ledger, name)

    def entries(self, start=0, end=None):
        for data in self._ledger.entries(start, end):
            try:
                e = decode_entry(data)
            except Exception:  # noqa: BLE001
                yield data
                continue
            if isinstance(e, SecAggEntry) and self._hide(e):
                yield EvaluationEntry(round=e.round, source="federated", num_replies=0, metrics={}).to_bytes()
            else:
                yield data


@pytest.mark.parametrize(
    "hide,stage,node",
    [
        (lambda e: e.stage == HEADER, "header", False),
        (lambda e: e.stage == COMMIT, "commit", False),
        (lambda e: e.stage == "result", "result", False),
        (lambda e: e.stage == UNMASK, "unmask", True),
        (lambda e: e.stage == "masked-input", "masked-input", True),
    ],
)
def test_transcript_with_a_missing_stage_is_a_finding(hide, stage, node):
    fed = SecAggFederation("memory:", n=5)
    fed.run_round(1)
    report = audit_secagg(Hiding(fed.ledger, hide))
    assert not report.ok
    hits = [f for f in report.findings if f.round == 1 and f.stage == stage]
    assert hits, report.lines()
    assert all(f.node for f in hits) if node else True


def test_audit_of_unreadable_ledger_is_a_finding():
    class Broken:
        def block_count(self):
            return 0

        uri = "memory:broken"

    report = audit_secagg(Broken())
    assert not report.ok and report.findings[0].stage == "genesis"

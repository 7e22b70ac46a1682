"""SecAgg+ findings of review 1 (F4, F5, F7, F8, F11, F12): each test fails on the code before the fix."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import flower_chain.strategies.secagg_workflow as wf
from flower_chain.audit.secagg import audit_secagg
from flower_chain.audit.secagg_closure import FORWARDED
from flower_chain.ledger import open_ledger
from flower_chain.ledger.errors import EncodingError
from flower_chain.ledger.secagg import MASKED, SETUP, SHARE_KEYS, UNMASK, SecAggEntry, StageStatement
from flower_chain.strategies.secagg_unmask import unmask
from tests.adversarial.test_secagg_dishonest_server import findings_of, request_of, unmask_replies, with_request
from tests.adversarial.test_secagg_hostile_replies import entries_of, resigned
from tests.support import dishonest
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")


def _statement(reply) -> StageStatement:
    return StageStatement.from_bytes(reply.content.config_records["flower-chain.secagg"]["statement"])


def test_f4_a_server_forwarding_unsigned_commitments_cannot_frame_the_holder(monkeypatch):
    """Owner o signs a false commitment for holder h and encrypts the true share; the server forwards h the
    true share's digest. h's signed masked-input request binds what it was forwarded, the auditor recomputes
    it from o's signed share-keys statement: the server is caught, h is never named a wrong revealer."""
    fed = SecAggFederation("memory:", n=5, num_shares=5, threshold=3)
    owner, holder = str(fed.node_ids[1]), str(fed.node_ids[3])
    true: dict = {}

    def tamper(nid, stage, msg, reply):
        if str(nid) == owner and stage == SHARE_KEYS and not reply.has_error():

            def lie(r):
                true["c"] = r["shares"][holder]
                return {**r, "shares": {**r["shares"], holder: [b"\x5a" * 32, r["shares"][holder][1]]}}

            return resigned(fed, nid, reply, lie)
        return reply

    honest = wf._Round._commitments

    def commitments(self, h, sources):
        out = honest(self, h, sources)
        if h == holder and owner in out:
            out[owner] = true["c"]
        return out

    monkeypatch.setattr(wf._Round, "_commitments", commitments)
    fed.grid.tamper = tamper
    fed.run_round(1)
    (entry,) = entries_of(fed, round=1, stage=MASKED, node_id=holder)
    assert owner in StageStatement.from_bytes(entry.statement).reply["sources"]  # it took the share
    report = audit_secagg(fed.ledger)
    assert not report.ok and not report.proved
    on_holder = findings_of(report, round=1, node=holder)
    assert not [f for f in on_holder if "committed to for it at share-keys" in f.message], report.lines()
    assert [f for f in on_holder if f.stage == MASKED and f.message == FORWARDED], report.lines()


def test_f8_sources_outside_the_committed_sets_stop_the_node_the_server_and_the_audit(monkeypatch):
    """The server forwards z's ciphertexts, then records z's share-keys reply rejected and leaves z out of
    `dropped`: z's pairwise masks could never be removed. Nodes refuse to reveal, the round fails, the model
    stays, the audit names z as neither live nor dropped."""
    fed = SecAggFederation("memory:", n=6, num_shares=6, threshold=4)
    z = str(fed.node_ids[2])
    fed.grid.drop[int(z)] = MASKED
    original = wf._Round._commit_block

    def commit_block(self, commit):
        if z in commit.data["dropped"]:
            commit.data["dropped"].remove(z)
            self.entries = [
                dataclasses.replace(e, verdict="rejected", reason="mismatch", detail="recorded as rejected")
                if (e.stage, e.node_id) == (SHARE_KEYS, z)
                else e
                for e in self.entries
            ]
        return original(self, commit)

    monkeypatch.setattr(wf._Round, "_commit_block", commit_block)
    replies: dict = {}
    fed.grid.tamper = unmask_replies(replies)
    before = fed.model()
    figures = fed.run_round(1)
    assert figures["failure"]
    assert all((a == b).all() for a, b in zip(before, fed.model()))
    assert replies and all("neither live nor dropped" in r["refused"] for r in replies.values()), replies
    report = audit_secagg(fed.ledger)
    assert not report.ok and not report.proved
    on_commit = [f for f in findings_of(report, round=1, node="") if "neither live nor dropped" in f.message]
    assert on_commit and all(f.stage == "commit" and f"node {z}" in f.message for f in on_commit), report.lines()
    assert not findings_of(report, round=1, node=z), report.lines()  # z signed nothing wrong


def test_f8_unmask_refuses_a_source_it_cannot_remove():
    vec = {"1": [np.zeros(2, dtype=np.int64)], "2": [np.zeros(2, dtype=np.int64)]}
    seeds = {"1": b"a" * 32, "2": b"b" * 32}
    out = unmask(vec, seeds, {}, {}, {"1": ["2", "9"], "2": ["1"]}, 2**16, "flwr-randomstate-32")
    assert isinstance(out, str) and "node 9" in out


def _resign_with(tmp_path, edit):
    path = tmp_path / "l.sqlite"
    fed = SecAggFederation(f"sqlite:///{path}", n=5, num_shares=5, threshold=3)
    fed.run_round(1)
    fed.ledger.close()
    dishonest.rewrite(path, fed.server_key, lambda blocks: edit(fed, blocks))
    with open_ledger(f"sqlite:///{path}") as led:
        report = audit_secagg(led)  # must not raise
    assert not report.ok
    assert not [f for f in report.findings if "unreadable round" in f.message], report.lines()
    return report


@pytest.mark.parametrize("bad", ["x", "\u00b2", "\u0663"])
def test_f5_audit_of_a_non_decimal_node_id_is_a_finding(tmp_path, bad):
    def edit(fed, blocks):
        for _, entries in blocks:
            for i, e in enumerate(entries):
                if isinstance(e, SecAggEntry) and e.stage == UNMASK and e.verdict == "accepted":
                    entries.insert(i, dataclasses.replace(e, node_id=bad))
                    return

    _resign_with(tmp_path, edit)


@pytest.mark.parametrize("target,source", [(SETUP, SHARE_KEYS), (MASKED, SETUP), (SHARE_KEYS, SETUP)])
def test_f5_audit_of_another_stages_statement_is_a_finding(tmp_path, target, source):
    def edit(fed, blocks):
        x = str(fed.node_ids[1])
        ents = [e for _, es in blocks for e in es if isinstance(e, SecAggEntry) and e.node_id == x]
        src = next(e for e in ents if e.stage == source)
        for _, es in blocks:
            for i, e in enumerate(es):
                if isinstance(e, SecAggEntry) and e.node_id == x and e.stage == target:
                    es[i] = dataclasses.replace(e, statement=src.statement, signature=src.signature)

    _resign_with(tmp_path, edit)


def test_f5_statement_node_ids_must_be_ascii_decimal():
    from flower_chain.ledger.secagg import _ids

    with pytest.raises(EncodingError):
        _ids(["1", "\u00b2"], "sources")
    assert _ids(["1", "22"], "sources") == ["1", "22"]


@pytest.mark.parametrize(
    "stage,edit",
    [
        (MASKED, lambda c: c["ciphertexts"].__setitem__("\u00b2", b"x")),  # F5: '²'.isdigit() is True
        (UNMASK, lambda c: c.__setitem__("active", c["active"][:1] + [b""])),  # F11: bytes in active
        (UNMASK, lambda c: c.__setitem__("dead", [7])),  # F11: an int in dead
    ],
)
def test_f5_f11_hostile_ids_in_a_request_get_no_exception_from_the_node(stage, edit):
    fed = SecAggFederation("memory:", n=4, num_shares=4, threshold=3)
    victim = fed.node_ids[0]

    def rewrite(nid, st, msg):
        if nid == victim and st == stage:
            req = request_of(msg)
            edit(req["content"])
            return with_request(msg, req)
        return msg

    replies: dict = {}
    fed.grid.rewrite = rewrite
    fed.grid.tamper = unmask_replies(replies)
    fed.run_round(1)
    assert not fed.grid.errors, fed.grid.errors
    if stage == UNMASK:  # a signed refusal: the node's evidence against the server
        assert "not lists of node ids" in replies[victim]["refused"]


def test_f12_a_copied_setup_key_is_rejected_and_the_round_goes_on():
    fed = SecAggFederation("memory:", n=5, num_shares=5, threshold=3)
    honest, liar = fed.node_ids[0], fed.node_ids[4]
    seen: dict = {}

    def tamper(nid, stage, msg, reply):
        if stage == SETUP and nid == honest and not reply.has_error():
            seen["pk1"] = _statement(reply).reply["pk1"]
        if stage == SETUP and nid == liar and not reply.has_error():
            return resigned(fed, nid, reply, lambda r: {**r, "pk1": seen["pk1"]})
        return reply

    fed.grid.tamper = tamper
    figures = fed.run_round(1)
    (e,) = entries_of(fed, round=1, stage=SETUP, node_id=str(liar))
    assert (e.verdict, e.reason) == ("rejected", "duplicate") and e.statement  # its signed copy is kept
    assert not figures["failure"]
    assert all(x.verdict == "accepted" for x in entries_of(fed, round=1, stage=SHARE_KEYS))
    assert audit_secagg(fed.ledger).ok


def test_f12_the_auditor_names_an_accepted_duplicate_key():
    from flower_chain.audit.secagg_closure import duplicate_key_findings

    class Rec:
        def __init__(self, pk1, pk2):
            self.statement = type("S", (), {"reply": {"pk1": pk1, "pk2": pk2}})()

    found: list = []
    duplicate_key_findings(1, {SETUP: {"7": Rec(b"a", b"b"), "10": Rec(b"c", b"a"), "8": Rec(b"d", b"e")}}, found)
    # neither signature proves who holds the secret: the pair, under the server's setup stage, blaming no one
    assert [(f.node, f.stage) for f in found] == [("", SETUP)] and "nodes 7 and 10" in found[0].message


def test_f7_a_node_leaving_a_neighbour_out_is_named_by_what_it_signed():
    """The liar drops neighbour x from its signed sources: the round fails closed (documented, §4); the
    findings state what each signature proves, as warnings (the failed round is the server's right call); x,
    seeing the liar's signed sources in the commitment, refuses to reveal (its signed refusal stays an error)."""
    fed = SecAggFederation("memory:", n=7, num_shares=7, threshold=4)
    liar = str(fed.node_ids[2])
    dropped: dict = {}

    def tamper(nid, stage, msg, reply):
        if str(nid) == liar and stage == MASKED and not reply.has_error():

            def edit(r):
                dropped["x"] = r["sources"][0]
                return {**r, "sources": r["sources"][1:]}

            return resigned(fed, nid, reply, edit)
        return reply

    fed.grid.tamper = tamper
    figures = fed.run_round(1)
    x = dropped["x"]
    assert f"{liar}, forwarded {x}'s shares, signed its sources without {x}" in figures["failure"]
    report = audit_secagg(fed.ledger)
    on_liar = [f for f in findings_of(report, round=1, stage=MASKED, node=liar) if f"left node {x} out" in f.message]
    assert on_liar and all(f.severity == "warning" for f in on_liar), report.lines()
    errors = [f for f in report.findings if f.severity == "error"]  # only x's signed refusal, which states
    assert all(f.stage == UNMASK and f.node == x and "refused" in f.message for f in errors), report.lines()


def test_r2_10_a_source_no_one_forwarded_is_held_against_the_node_that_signed_it_not_the_source():
    """A live node colluding with the server signs `sources` naming an idle keyring node 5555: the finding is on
    the signer (its signed request is the recorded one and no accepted owner sent it shares), never on 5555."""
    from flower_chain.audit.secagg_closure import closure_findings, masked_request

    class St:
        def __init__(self, reply, request=b""):
            self.reply, self.request = reply, request

    class Rec:
        def __init__(self, reply, request=b""):
            self.statement = St(reply, request)

    acc: dict = {SHARE_KEYS: {"1000": Rec({"sent": {"2000": b"d" * 32}, "shares": {"2000": []}})}, MASKED: {}}
    acc[MASKED]["1000"] = Rec({"sources": ["2000"]}, masked_request(acc, "1000"))
    acc[MASKED]["2000"] = Rec({"sources": ["1000", "5555"]}, masked_request(acc, "2000"))
    found: list = []
    closure_findings(1, acc, ["1000", "2000"], [], found)
    assert [(f.node, f.stage) for f in found] == [("2000", MASKED)] and "node 5555" in found[0].message
    # the same sources with a request the server forwarded unrecorded ciphertexts in: the server's commitment
    acc[MASKED]["2000"] = Rec({"sources": ["1000", "5555"]}, b"other request digest")
    found = []
    closure_findings(1, acc, ["1000", "2000"], [], found)
    assert [(f.node, f.stage) for f in found] == [("", "commit")], found

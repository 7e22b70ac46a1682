"""A dishonest SecAgg+ server: split stories, a forked log, dropped/added/reused masked inputs, a substituted aggregate.

Each attack is a server that signs whatever it likes (the workflow with one step replaced, or its messages
rewritten on the way out): honest nodes must not reveal what would expose an update, and ``audit_secagg``
must fail naming round, stage and node.
"""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

import flower_chain.strategies.secagg_workflow as workflow_module
from flower_chain.audit.secagg import audit_secagg
from flower_chain.clients.secagg import RECORD, STATE
from flower_chain.ledger import open_ledger, proofs
from flower_chain.ledger.arrays import array_digest, encode_arrays
from flower_chain.ledger.encoding import decode, encode
from flower_chain.ledger.entries import decode_entry
from flower_chain.ledger.secagg import COMMIT, SecAggEntry, StageStatement
from flower_chain.ledger.writer import LedgerWriter
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")


def request_of(msg: Message) -> dict:
    return decode(msg.content.config_records[RECORD]["request"])


def with_request(msg: Message, req: dict) -> Message:
    content = RecordDict(dict(msg.content.items()))
    content.config_records[RECORD] = ConfigRecord({"request": encode(req)})
    from tests.support.fl_helpers import with_content

    return with_content(msg, content)


def unmask_replies(collected: dict):
    """A grid hook collecting each node's stage 3 statement reply as it leaves the node."""

    def tamper(nid, stage, msg, reply):
        if stage == "unmask" and not reply.has_error():
            collected[nid] = StageStatement.from_bytes(reply.content.config_records[RECORD]["statement"]).reply
        return reply

    return tamper


def findings_of(report, **where):
    return [f for f in report.findings if all(getattr(f, k) == v for k, v in where.items())]


def test_split_story_honest_node_reveals_nothing_and_audit_names_it():
    fed = SecAggFederation("memory:", n=6)
    picked: dict = {}

    def rewrite(nid, stage, msg):
        if stage != "unmask" or picked:
            return msg
        req = request_of(msg)
        victim = next(m for m in req["content"]["active"] if m != str(nid))
        picked.update(teller=str(nid), victim=victim)
        c = req["content"]
        c["active"] = [m for m in c["active"] if m != victim]
        c["dead"] = sorted(c["dead"] + [victim])  # "the victim dropped": asks for its key share
        return with_request(msg, req)

    replies: dict = {}
    fed.grid.rewrite, fed.grid.tamper = rewrite, unmask_replies(replies)
    fed.run_round(1)
    told = replies[int(picked["teller"])]
    assert told["refused"] and not told["seed_shares"] and not told["key_shares"]
    seeds = {o for r in replies.values() for o in r["seed_shares"]}
    keys = {o for r in replies.values() for o in r["key_shares"]}
    assert not seeds & keys, "some node had both secrets revealed"
    report = audit_secagg(fed.ledger)
    assert not report.ok
    assert findings_of(report, round=1, stage="unmask", node=picked["teller"])


def test_forked_commit_is_detected_by_the_node_and_by_the_audit(tmp_path):
    """Two logs, two stories: the node told the fork reveals (no witness quorum), the fork is caught twice."""
    db = tmp_path / "ledger.db"
    fed = SecAggFederation(f"sqlite:///{db}", n=6)
    state: dict = {}

    def rewrite(nid, stage, msg):
        if stage == "masked-input" and "fork" not in state:  # the log before the commit block: copy it
            src, dst = sqlite3.connect(db), sqlite3.connect(tmp_path / "fork.db")
            src.backup(dst)
            src.close(), dst.close()
            state["fork"] = open_ledger(f"sqlite:///{tmp_path}/fork.db")
        if stage != "unmask" or "teller" in state:
            return msg
        req = request_of(msg)
        victim = next(m for m in req["content"]["active"] if m != str(nid))
        main = fed.ledger
        commit_entry = decode_entry(req["proof"]["entry"])
        data = dict(commit_entry.data)
        data["live"] = [m for m in data["live"] if m != victim]
        data["dropped"] = sorted(data["dropped"] + [victim], key=int)
        data["masked"] = {k: v for k, v in data["masked"].items() if k != victim}
        data["statements"] = {k: v for k, v in data["statements"].items() if k != victim}
        forked = SecAggEntry(**{**commit_entry.__dict__, "data": data})
        start = main.block(main.block_count() - 1).header.first_index
        others = [e for e in main.entries(start, req["proof"]["index"])]
        writer = LedgerWriter(state["fork"], fed.server_key)
        seen = state["fork"].log_size()  # the checkpoint every node verified at stage 0
        base = main.block(main.block_count() - 1).header.model_before
        block = writer.append(1, others + [forked.to_bytes()], model_before=base, model_after=base)
        index, size = block.header.first_index + len(others), block.header.log_size
        c = req["content"]
        c["active"] = [m for m in c["active"] if m != victim]
        c["dead"] = sorted(c["dead"] + [victim])
        c["commit_index"], c["log_size"] = index, size
        req["proof"] = {
            "checkpoint": block.checkpoint,
            "head": block.header_bytes,  # the fork's signed head, as its checkpoint's head line names it
            "head_signature": block.signature,
            "entry": forked.to_bytes(),
            "index": index,
            "inclusion": b"".join(proofs.inclusion_proof(state["fork"], index, size)),
            "consistency": b"".join(proofs.consistency_proof(state["fork"], seen, size)),
            "genesis": req["proof"]["genesis"],
            "genesis_inclusion": b"".join(proofs.inclusion_proof(state["fork"], 0, size)),
        }
        state.update(teller=str(nid), victim=victim)
        return with_request(msg, req)

    replies: dict = {}
    fed.grid.rewrite, fed.grid.tamper = rewrite, unmask_replies(replies)
    fed.run_round(1)
    teller = int(state["teller"])
    assert replies[teller]["key_shares"].keys() == {state["victim"]}  # fooled: no quorum to stop it
    report = audit_secagg(fed.ledger)
    assert not report.ok
    forks = findings_of(report, round=1, stage="unmask", node=state["teller"])
    assert any("fork" in f.message for f in forks)
    assert findings_of(report, round=1, stage="unmask", node=state["victim"])  # both secrets revealed: named
    # next round: the fooled node holds the fork's checkpoint; the real log is not consistent with it
    fed.grid.rewrite = fed.grid.tamper = None
    fed.run_round(2)
    node_state = decode(fed.grid.contexts[teller].state.config_records[STATE]["state"])
    assert node_state["round"]["header"]["round"] == 1  # it refused to set up round 2
    entries = [e for e in map(decode_entry, fed.ledger.entries()) if isinstance(e, SecAggEntry) and e.round == 2]
    setup = next(e for e in entries if e.stage == "setup" and e.node_id == state["teller"])
    assert setup.reason == "client-error" and "fork" in setup.detail


@pytest.mark.parametrize("attack", ["dropped", "added"])
def test_commitment_that_drops_or_adds_a_masked_input_fails_audit(attack, monkeypatch):
    fed = SecAggFederation("memory:", n=6)
    fed.grid.drop[fed.node_ids[2]] = "masked-input"
    honest = workflow_module.server_record
    named: dict = {}

    def evil(server_round, stage, data):
        if stage == COMMIT:
            data = dict(data)
            if attack == "dropped":
                victim = data["live"][0]
                data["live"] = data["live"][1:]
                data["dropped"] = sorted(data["dropped"] + [victim], key=int)
                data["masked"] = {k: v for k, v in data["masked"].items() if k != victim}
                data["statements"] = {k: v for k, v in data["statements"].items() if k != victim}
            else:
                victim = data["dropped"][0]  # a node that sent nothing gets an input
                fake = [
                    ("0", np.array([5], dtype=np.uint32)),
                    ("1", np.zeros((6, 4), dtype=np.uint32)),
                    ("2", np.zeros((4,), dtype=np.uint32)),
                ]
                digest = array_digest(fake)
                fed.ledger.put_blob(encode_arrays(fake), digest)
                data["dropped"] = [m for m in data["dropped"] if m != victim]
                data["live"] = sorted(data["live"] + [victim], key=int)
                data["masked"] = {**data["masked"], victim: digest}
                data["statements"] = {**data["statements"], victim: [b"", b""]}
            named["victim"] = victim
        return honest(server_round, stage, data)

    monkeypatch.setattr(workflow_module, "server_record", evil)
    fed.run_round(1)
    report = audit_secagg(fed.ledger)
    assert not report.ok
    assert findings_of(report, round=1, stage="masked-input", node=named["victim"]), report.lines()


def test_masked_input_reused_from_an_earlier_round_fails_audit(monkeypatch):
    fed = SecAggFederation("memory:", n=5)
    fed.run_round(1)
    first = next(e for e in map(decode_entry, fed.ledger.entries()) if isinstance(e, SecAggEntry) and e.stage == COMMIT)
    victim, old = next(iter(first.data["masked"].items()))
    honest = workflow_module.server_record

    def evil(server_round, stage, data):
        if stage == COMMIT:
            data = {**data, "masked": {**data["masked"], victim: old}}
        return honest(server_round, stage, data)

    monkeypatch.setattr(workflow_module, "server_record", evil)
    fed.run_round(2)
    report = audit_secagg(fed.ledger)
    assert not report.ok
    assert findings_of(report, round=2, stage="masked-input", node=victim)
    assert not findings_of(report, round=1)


def test_substituted_aggregate_fails_audit(monkeypatch):
    fed = SecAggFederation("memory:", n=5)
    honest = workflow_module.finish_aggregate
    monkeypatch.setattr(workflow_module, "finish_aggregate", lambda *a: [x + 0.01 for x in honest(*a)])
    fed.run_round(1)
    report = audit_secagg(fed.ledger)
    assert not report.ok
    assert findings_of(report, round=1, stage="result")


def test_withheld_ciphertexts_that_would_expose_an_input_are_refused_and_named(monkeypatch):
    """The server forwards node o only the shares of nodes that then drop: o's input would carry no live
    pairwise mask. No node reveals o's seed (each checks o's signed sources in the commitment), the round
    fails (masks that do not cancel), the audit names o."""
    fed = SecAggFederation("memory:", n=6, num_shares=5, threshold=3)
    o = fed.node_ids[0]
    honest = workflow_module._Round._exchange

    def exchange(self, stage, requests, expect):
        if stage == "masked-input" and str(o) in requests:
            cts = requests[str(o)][0]["ciphertexts"]
            keep = sorted(cts, key=int)[:2]
            requests[str(o)][0]["ciphertexts"] = {k: cts[k] for k in keep}
            for k in keep:  # ... and those nodes drop before sending their own masked input
                fed.grid.drop[int(k)] = "masked-input"
        return honest(self, stage, requests, expect)

    monkeypatch.setattr(workflow_module._Round, "_exchange", exchange)
    replies: dict = {}
    fed.grid.tamper = unmask_replies(replies)
    before = fed.model()
    figures = fed.run_round(1)
    assert replies[o]["refused"] and not replies[o]["seed_shares"] and not replies[o]["key_shares"]
    revealed = [n for n, r in replies.items() if str(o) in r["seed_shares"]]
    assert not revealed, f"nodes {revealed} revealed o's seed share: o's input would be exposed"
    assert figures["failure"]  # the model stays
    assert all((a == b).all() for a, b in zip(before, fed.model()))
    report = audit_secagg(fed.ledger)
    assert not report.ok
    named = findings_of(report, round=1, stage="masked-input", node=str(o))
    assert any("no live node shares a pairwise mask" in f.message for f in named), report.lines()
    assert any("do not cancel" in f.message for f in report.findings if f.round == 1)

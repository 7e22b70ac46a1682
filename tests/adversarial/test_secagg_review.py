"""Review findings on SecAgg+ (docs/secagg.md §7): a threshold that is not a strict majority of a node's
neighbourhood lets a dishonest server append a second live/dropped commitment for the round to the same
(unforked) log and collect a node's seed shares from one group of neighbours and its key shares from another."""

from __future__ import annotations

import pytest
from flwr.supercore.task_identity import TaskIdentity

from flower_chain.clients import secagg_checks as checks
from flower_chain.clients.secagg import RECORD, STATE
from flower_chain.ledger import proofs
from flower_chain.ledger.encoding import decode
from flower_chain.ledger.entries import decode_entry
from flower_chain.ledger.secagg import SecAggEntry, StageStatement
from flower_chain.strategies.secagg_unmask import combine
from tests.adversarial.test_secagg_dishonest_server import request_of, with_request
from tests.support.secagg_federation import SecAggFederation


@pytest.fixture(autouse=True)
def _identity():
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = 1, 1, 0


def _header(n: int, shares: int, t: int) -> dict:
    """A well-formed round header as the workflow writes it (its graph seed, its parameters)."""
    fed = SecAggFederation("memory:", n=n, num_shares=shares, threshold=max(t, shares // 2 + 1))
    fed.run_round(1)
    hdr = next(
        e for e in map(decode_entry, fed.ledger.entries()) if isinstance(e, SecAggEntry) and e.stage == "header"
    ).data
    return {**hdr, "params": {**hdr["params"], "threshold": t}}


@pytest.mark.parametrize(("n", "shares", "t"), [(10, 5, 2), (10, 10, 4), (10, 10, 5), (6, 5, 2), (4, 3, 1)])
def test_node_refuses_a_threshold_that_is_not_a_strict_majority_of_its_neighbourhood(n, shares, t):
    hdr = _header(n, shares, t)
    for nid in hdr["sampled"]:
        assert checks.header_problem(hdr, nid) is not None


@pytest.mark.parametrize(("n", "shares", "t"), [(10, 5, 3), (10, 10, 6), (6, 5, 3), (4, 3, 2)])
def test_node_takes_part_with_a_strict_majority(n, shares, t):
    hdr = _header(n, shares, t)
    for nid in hdr["sampled"]:
        assert 2 * t > len(checks.neighbours_of(hdr, nid))
        assert checks.header_problem(hdr, nid) is None


def _double_commit(n: int, shares: int, t: int) -> tuple[list, list, SecAggFederation]:
    """/tmp/r1/attack_double_commit.py: group A told the victim is live, group B (shown a second commit
    block of the same round, appended to the same log) told it dropped; return the victim's revealed
    seed shares and key shares."""
    fed = SecAggFederation("memory:", n=n, num_shares=shares, threshold=t)
    victim, state, replies = str(fed.node_ids[0]), {}, {}

    def rewrite(nid, stage, msg):
        nid = str(nid)
        if stage != "unmask":
            return msg
        req = request_of(msg)
        c = req["content"]
        if "groups" not in state:
            nb = [m for m in sorted(set(c["active"]) | set(c["dead"]), key=int) if m != victim]
            state["groups"] = {"A": [victim] + nb[: t - 1], "B": nb[t - 1 :]}
        if nid not in state["groups"]["B"]:
            return msg
        if "commitB" not in state:
            a = decode_entry(req["proof"]["entry"])
            d = dict(a.data)
            d["live"] = [m for m in d["live"] if m != victim]
            d["dropped"] = sorted([*d["dropped"], victim], key=int)
            d["masked"] = {k: v for k, v in d["masked"].items() if k != victim}
            d["statements"] = {k: v for k, v in d["statements"].items() if k != victim}
            b = SecAggEntry(**{**a.__dict__, "data": d})
            base = fed.ledger.block(fed.ledger.block_count() - 1).header.model_before
            blk = fed.strategy.core.writer.append(a.round, [b], model_before=base, model_after=base)
            state["commitB"] = (b, blk)
        b, blk = state["commitB"]
        index, size = blk.header.first_index, blk.header.log_size
        seen = decode(fed.grid.contexts[int(nid)].state.config_records[STATE]["state"])["round"]["cp_size"]
        live, dropped, allnb = set(b.data["live"]), set(b.data["dropped"]), set(c["active"]) | set(c["dead"])
        c["active"] = sorted([m for m in allnb if m in live], key=int)
        c["dead"] = sorted([m for m in allnb if m in dropped], key=int)
        c["commit_index"], c["log_size"] = index, size
        req["proof"] = {
            "checkpoint": blk.checkpoint,
            "head": blk.header_bytes,  # the second commit block's signed header, as its checkpoint names it
            "head_signature": blk.signature,
            "entry": b.to_bytes(),
            "index": index,
            "inclusion": b"".join(proofs.inclusion_proof(fed.ledger, index, size)),
            "consistency": b"".join(proofs.consistency_proof(fed.ledger, seen, size)),
            "genesis": req["proof"]["genesis"],
            "genesis_inclusion": b"".join(proofs.inclusion_proof(fed.ledger, 0, size)),
        }
        return with_request(msg, req)

    def tamper(nid, stage, msg, reply):
        if stage == "unmask" and not reply.has_error():
            replies[str(nid)] = StageStatement.from_bytes(reply.content.config_records[RECORD]["statement"]).reply
        return reply

    fed.grid.rewrite, fed.grid.tamper = rewrite, tamper
    try:
        fed.run_round(1)
    except Exception:  # noqa: BLE001, S110 - the workflow may give up after the stage-3 replies; the leak is what counts
        pass
    seed_sh = [r["seed_shares"][victim] for r in replies.values() if victim in r["seed_shares"]]
    key_sh = [r["key_shares"][victim] for r in replies.values() if victim in r["key_shares"]]
    return seed_sh, key_sh, fed


@pytest.mark.parametrize(("n", "shares", "t"), [(6, 5, 2), (10, 5, 2), (10, 10, 4), (6, 5, 3)])
def test_a_second_commit_reveals_no_second_secret_of_the_victim(n, shares, t):
    seed_sh, key_sh, _ = _double_commit(n, shares, t)
    both = isinstance(combine(seed_sh, t), bytes) and isinstance(combine(key_sh, t), bytes)
    assert not both, f"{len(seed_sh)} seed shares and {len(key_sh)} key shares of the victim were revealed"
    assert len(seed_sh) < t or len(key_sh) < t


def test_the_auditor_names_a_second_commit_for_the_round_not_a_fork():
    from flower_chain.audit.secagg import audit_secagg

    _, key_sh, fed = _double_commit(6, 5, 3)
    assert key_sh, "group B was shown the second commit and answered it"
    rep = audit_secagg(fed.ledger)
    assert not rep.ok
    msgs = [(f.stage, f.message) for f in rep.findings]
    assert ("commit", "a second commit for the round") in msgs
    told = [m for s, m in msgs if s == "unmask" and "checkpoint of size" in m]
    assert told and all(m.endswith("a second commit for the round") for m in told)
    assert not any("fork" in m for _, m in msgs)


def test_a_node_sent_another_model_than_base_digest_refuses():
    """/tmp/r1/attack_model_inconsistency.py: every node but one trains on an all-zero model."""
    import numpy as np
    from flwr.app import RecordDict
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat

    from tests.support.fl_helpers import with_content

    fed = SecAggFederation("memory:", n=6, num_shares=5, threshold=3)
    victim, rewritten, answered = fed.node_ids[0], set(), {}

    def rewrite(nid, stage, msg):
        if stage != "masked-input" or nid == victim:
            return msg
        content = RecordDict(dict(msg.content.items()))
        arrs = compat.arrayrecord_to_parameters(content.array_records["fitins.parameters"], keep_input=True)
        zeros = [np.zeros_like(a) for a in parameters_to_ndarrays(arrs)]
        content.array_records["fitins.parameters"] = compat.parameters_to_arrayrecord(
            ndarrays_to_parameters(zeros), True
        )
        rewritten.add(nid)
        return with_content(msg, content)

    def tamper(nid, stage, msg, reply):
        if stage == "masked-input":
            answered[nid] = not reply.has_error()
        return reply

    fed.grid.rewrite, fed.grid.tamper = rewrite, tamper
    base = fed.model()
    try:
        fed.run_round(1)
    except Exception:  # noqa: BLE001, S110 - too few masked inputs may end the round; the refusals are what counts
        pass
    assert rewritten == set(fed.node_ids) - {victim}
    assert answered[victim] is True
    assert not any(answered[n] for n in rewritten)
    assert all(np.array_equal(a, b) for a, b in zip(fed.model(), base))  # no model from the rewritten inputs


def test_the_auditor_fails_a_header_whose_base_digest_is_not_model_before():
    from flower_chain.audit.secagg import audit_secagg

    fed = SecAggFederation("memory:", n=5)
    writer = fed.strategy.core.writer
    append = writer.append

    def lying_append(rnd, entries, **kw):
        if any(isinstance(e, SecAggEntry) and e.stage == "commit" for e in entries):
            kw["model_before"] = bytes(32)  # the block says the round trained on another model than the header's
        return append(rnd, entries, **kw)

    writer.append = lying_append
    fed.run_round(1)
    rep = audit_secagg(fed.ledger)
    assert not rep.ok
    assert any(
        f.stage == "header" and f.message == "the header's base_digest is not the commit block's model_before"
        for f in rep.findings
    )


def test_base_problem_never_raises_on_a_hostile_model():
    class Hostile:
        def items(self):
            raise ValueError("boom")

    assert checks.base_problem(None, bytes(32), 2) is not None
    assert "does not digest" in checks.base_problem(Hostile(), bytes(32), 2)

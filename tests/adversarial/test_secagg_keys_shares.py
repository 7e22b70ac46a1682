"""SecAgg+ review F2 and F3: stage 0 public keys that do not parse, and wrong shares revealed at unmask.

F2: the judge parses and uses every stage 0 key exactly as the nodes will, so a key that does not parse is
rejected (the node counts as dropped) and never reaches a neighbour; a node forwarded such a key refuses,
naming it; the auditor names an accepted one. F3: each node commits, at share-keys, the digest of every
share it creates, so a wrong share revealed at unmask is named (the revealer) and left out, and the secret
is rebuilt from the verified shares in one pass (no search over subsets).
"""

from __future__ import annotations

import base64
import os

import pytest
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.supercore.primitives.asymmetric import generate_key_pairs, public_key_to_bytes

import flower_chain.strategies.secagg_judge as judge_module
import flower_chain.strategies.secagg_unmask as unmask_module
from flower_chain.audit.secagg import audit_secagg
from flower_chain.clients.secagg import Refusal
from flower_chain.ledger.secagg import MASKED, SETUP, SHARE_KEYS, UNMASK, StageStatement, seed_digest, share_digest
from flower_chain.strategies.secagg_unmask import check_seed, public_key_problem, rebuild
from tests.adversarial.test_secagg_dishonest_server import findings_of, request_of, with_request
from tests.adversarial.test_secagg_hostile_replies import entries_of, resigned
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")


def off_curve(pem: bytes) -> bytes:
    """``pem`` with one bit of the point flipped: the same length, PEM framing intact, not a point of the curve."""
    lines = pem.strip().split(b"\n")
    der = bytearray(base64.b64decode(b"".join(lines[1:-1])))
    der[-1] ^= 1
    body = base64.b64encode(bytes(der))
    out = b"\n".join([lines[0], *(body[i : i + 64] for i in range(0, len(body), 64)), lines[-1]]) + b"\n"
    assert len(out) == len(pem) and out != pem and public_key_problem(out) is not None
    return out


def bad_key_from(fed, liar: int, name: str):
    """Node ``liar`` signs a setup reply whose key ``name`` does not parse."""

    def tamper(nid, stage, msg, reply):
        if nid == liar and stage == SETUP and not reply.has_error():
            return resigned(fed, nid, reply, lambda r: {**r, name: off_curve(r[name])})
        return reply

    return tamper


@pytest.mark.parametrize("name", ["pk1", "pk2"])
def test_a_key_that_does_not_parse_is_rejected_and_never_reaches_a_neighbour(name):
    fed = SecAggFederation("memory:", n=5, num_shares=5, threshold=3)
    liar = fed.node_ids[1]
    fed.grid.tamper = bad_key_from(fed, liar, name)
    figures = fed.run_round(1)
    (entry,) = entries_of(fed, round=1, stage=SETUP, node_id=str(liar))
    assert (entry.verdict, entry.reason) == ("rejected", "malformed") and name in entry.detail, entry.detail
    assert figures["failure"] == "" and figures["setup"] == 4 and figures["masked"] == 4
    assert fed.grid.errors == []  # no honest neighbour failed on it
    assert not [nid for nid, stage in fed.grid.sent if nid == liar and stage != SETUP]  # dropped from stage 0
    report = audit_secagg(fed.ledger)
    assert report.ok and report.proved, report.lines()


def test_the_auditor_names_an_accepted_key_that_does_not_parse(monkeypatch):
    monkeypatch.setattr(judge_module, "public_key_problem", lambda raw: None)  # a server that takes any key
    fed = SecAggFederation("memory:", n=5, num_shares=5, threshold=3)
    liar = fed.node_ids[3]
    fed.grid.tamper = bad_key_from(fed, liar, "pk1")
    fed.run_round(1)
    named = findings_of(audit_secagg(fed.ledger), round=1, stage=SETUP, node=str(liar), severity="error")
    assert named and "pk1" in named[0].message and "does not parse" in named[0].message, named


@pytest.mark.parametrize("name", ["pk1", "pk2"])
def test_a_node_forwarded_a_key_that_does_not_parse_refuses_naming_it(name):
    fed = SecAggFederation("memory:", n=5, num_shares=5, threshold=3)
    victim, other = fed.node_ids[0], str(fed.node_ids[2])

    def rewrite(nid, stage, msg):  # a dishonest server forwards a broken key of ``other`` to ``victim``
        if nid != victim or stage != SHARE_KEYS:
            return msg
        req = request_of(msg)
        pair = req["content"]["keys"][other]
        req["content"]["keys"][other] = (
            [off_curve(pair[0]), pair[1]] if name == "pk1" else [pair[0], off_curve(pair[1])]
        )
        return with_request(msg, req)

    fed.grid.rewrite = rewrite
    fed.run_round(1)
    ((nid, stage, err),) = fed.grid.errors
    assert (nid, stage, type(err)) == (victim, SHARE_KEYS, Refusal), fed.grid.errors
    assert f"public key {name} of node {other} does not parse" in str(err)
    (entry,) = entries_of(fed, round=1, stage=SHARE_KEYS, node_id=str(victim))
    assert entry.reason == "client-error" and f"node {other}" in entry.detail


def liars_reveal_garbage(fed, liars):
    """Nodes that reveal random seed shares (right length, right index) at unmask, signed with their keys."""

    def garbage(shares):
        return {k: v[:4] + os.urandom(len(v) - 4) for k, v in shares.items()}

    def tamper(nid, stage, msg, reply):
        if nid in liars and stage == UNMASK and not reply.has_error():
            return resigned(fed, nid, reply, lambda r: {**r, "seed_shares": garbage(r["seed_shares"])})
        return reply

    return tamper


def test_wrong_shares_are_named_and_left_out_in_one_pass(monkeypatch):
    calls = []
    combine_shares = unmask_module.combine_shares
    monkeypatch.setattr(unmask_module, "combine_shares", lambda s: calls.append(len(s)) or combine_shares(s))
    fed = SecAggFederation("memory:", n=7, num_shares=7, threshold=4)
    liars = set(fed.node_ids[:3])  # 3 of 7 reveal garbage: 4 verified shares remain per seed
    fed.grid.tamper = liars_reveal_garbage(fed, liars)
    figures = fed.run_round(1)
    assert figures["failure"] == "" and figures["masked"] == 7
    assert calls == [4] * 7, calls  # one combination per seed, of the verified shares only
    calls.clear()
    report = audit_secagg(fed.ledger)
    assert report.ok and report.proved, report.lines()
    assert calls == [4] * 7, calls
    named = findings_of(report, round=1, stage=UNMASK, severity="warning")
    assert {f.node for f in named} == {str(n) for n in liars}
    assert all("committed to for it at share-keys" in f.message for f in named)


def test_rebuild_takes_the_committed_shares_where_a_search_would_give_up():
    """20 holders, threshold 11, 9 wrong shares: the honest 11 are one subset of 167960; one pass finds them."""
    secret, t, n = os.urandom(32), 11, 20
    holders = [str(100 + i) for i in range(n)]
    made = dict(zip(holders, create_shares(secret, t, n)))
    committed = {h: share_digest(s) for h, s in made.items()}
    liars = holders[:9]
    revealed = {h: (s[:4] + os.urandom(len(s) - 4) if h in liars else s) for h, s in made.items()}
    got, bad, problem = rebuild(revealed, committed, t, lambda s: check_seed(s, seed_digest(secret)))
    assert (got, sorted(bad), problem) == (secret, liars, "")


def test_an_owner_whose_committed_shares_are_inconsistent_is_the_problem():
    secret, t, n = os.urandom(32), 3, 5
    holders = [str(100 + i) for i in range(n)]
    made = dict(zip(holders, create_shares(secret, t, n)))
    other = dict(zip(holders, create_shares(os.urandom(32), t, n)))
    mixed = {h: (other[h] if i % 2 else made[h]) for i, h in enumerate(holders)}  # the owner mixed two secrets
    committed = {h: share_digest(s) for h, s in mixed.items()}
    got, bad, problem = rebuild(mixed, committed, t, lambda s: check_seed(s, seed_digest(secret)))
    assert got is None and bad == [] and "the owner's committed shares are inconsistent" in problem
    revealed = {h: mixed[h] for h in holders[:2]}  # too few shares: said so, never a search
    got, bad, problem = rebuild(revealed, committed, t, lambda s: None)
    assert got is None and problem.startswith("2 of the 2 shares revealed are the committed ones, 3 needed")


def test_public_key_problem_is_total_on_hostile_keys():
    pem = public_key_to_bytes(generate_key_pairs()[1])
    assert public_key_problem(pem) is None
    for raw in (b"", b"\x00" * 215, pem[:-10], off_curve(pem), pem.replace(b"PUBLIC", b"PRIVATE")):
        assert isinstance(public_key_problem(raw), str)


def test_an_owner_cannot_frame_a_holder_with_a_commitment_other_than_the_share_it_sent():
    """The owner signs, at share-keys, a digest for ``holder`` that is not the share it encrypted for it: the
    holder (forwarded the commitments at masked-input) takes no share and no mask from it, so it never reveals
    a share that would name it; the owner's input is the one whose masks do not cancel, and it is named."""
    fed = SecAggFederation("memory:", n=5, num_shares=5, threshold=3)
    owner, holder = fed.node_ids[1], str(fed.node_ids[3])

    def tamper(nid, stage, msg, reply):
        if nid == owner and stage == SHARE_KEYS and not reply.has_error():
            lie = lambda r: {**r, "shares": {**r["shares"], holder: [b"\x5a" * 32, r["shares"][holder][1]]}}
            return resigned(fed, nid, reply, lie)
        return reply

    fed.grid.tamper = tamper
    figures = fed.run_round(1)
    (entry,) = entries_of(fed, round=1, stage=MASKED, node_id=holder)
    assert str(owner) not in StageStatement.from_bytes(entry.statement).reply["sources"]
    assert f"nodes {owner} and {holder} did not both mask" in figures["failure"]
    report = audit_secagg(fed.ledger)
    blamed = [f for f in findings_of(report, round=1, stage=UNMASK, node=holder) if "committed to" in f.message]
    assert not blamed, report.lines()  # it refused to reveal the owner's seed (it holds no share of it)
    assert any(f"masked with node {holder}" in f.message for f in findings_of(report, round=1, node=str(owner)))

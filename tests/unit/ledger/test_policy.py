"""One test per rule of ``flower_chain.ledger.policy`` (the only verdict code; server and auditor both run it).

Each test builds the evidence of one honest reply, breaks exactly what the rule is about, and checks that the
rule (and no earlier one) decides the verdict; the honest reply is accepted in the same round.
"""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger.entries import UpdateEntry, UpdateStatement, metrics_digest
from flower_chain.ledger.keys import key_id, raw_public
from flower_chain.ledger.policy import (
    MAX_STATEMENT,
    OK,
    Evidence,
    RoundRules,
    equivocating_keys,
    evidence_of,
    judge_round,
    metric_schema,
    recorded_reason,
    strategy_metrics,
)

FED = "fed-policy"
PARENT = hashlib.sha256(b"head").digest()
BASE = hashlib.sha256(b"global model").digest()
TEMPLATE = (("w", (2, 2), "<f4"), ("b", (2,), "<f4"))


class Node:
    def __init__(self):
        self.sk = Ed25519PrivateKey.generate()
        self.kid = key_id(self.sk)
        self.raw = raw_public(self.sk)

    def evidence(
        self,
        *,
        kind="train",
        round=3,
        federation=FED,
        parent=PARENT,
        base=BASE,
        digest=None,
        num_examples=10,
        metrics=None,
        signed_metrics=None,
        reply_examples=None,
        reply_digest=None,
        **extra,
    ) -> Evidence:
        digest = digest if digest is not None else hashlib.sha256(self.kid.encode()).digest()
        metrics = {"loss": 0.5} if metrics is None else metrics
        st = UpdateStatement(
            kind=kind,
            federation_id=federation,
            round=round,
            key_id=self.kid,
            parent=parent,
            base_digest=base,
            arrays_digest=digest,
            num_examples=num_examples,
            metrics_digest=metrics_digest(signed_metrics if signed_metrics is not None else metrics),
        )
        data = st.to_bytes()
        return Evidence(
            statement=data,
            signature=self.sk.sign(data),
            num_examples=num_examples if reply_examples is None else reply_examples,
            arrays_digest=digest if reply_digest is None else reply_digest,
            metrics=metrics,
            arrays_meta=extra.pop("arrays_meta", TEMPLATE),
            **extra,
        )


@pytest.fixture
def nodes():
    return [Node() for _ in range(3)]


def rules(nodes, kind="train", revoked=()) -> RoundRules:
    return RoundRules(
        federation_id=FED,
        kind=kind,
        round=3,
        parent=PARENT,
        base_digest=BASE,
        keys={n.kid: n.raw for n in nodes},
        revoked=frozenset(revoked),
        template=TEMPLATE,
    )


def judge(nodes, evidence, **kw):
    return judge_round(rules(nodes, **kw), evidence)


def only(nodes, ev, **kw):
    """The verdict on ``ev`` judged beside an honest reply of another node (which must be accepted)."""
    honest = nodes[-1].evidence()
    got, other = judge(nodes, [ev, honest], **kw)
    assert other.reason == OK, other
    return got


def test_an_honest_reply_is_accepted_and_attributed(nodes):
    v = only(nodes, nodes[0].evidence())
    assert (v.reason, v.accepted, v.verified, v.key_id) == (OK, True, True, nodes[0].kid)


def test_rule_1_precheck_is_kept_as_the_server_reached_it(nodes):
    v = only(nodes, Evidence(precheck=("client-error", "status 500")))
    assert (v.reason, v.detail, v.verified) == ("client-error", "status 500", False)


@pytest.mark.parametrize("missing", ["statement", "signature"])
def test_rule_2_unsigned(nodes, missing):
    ev = dataclasses.replace(nodes[0].evidence(), **{missing: b""})
    assert only(nodes, ev).reason == "unsigned"


def test_rule_3_a_statement_that_does_not_decode_is_malformed(nodes):
    ev = dataclasses.replace(nodes[0].evidence(), statement=b"\x00garbage")
    v = only(nodes, ev)
    assert v.reason == "malformed" and "does not decode" in v.detail
    big = dataclasses.replace(nodes[0].evidence(), statement=b"x" * (MAX_STATEMENT + 1))
    assert "at most" in only(nodes, big).detail


def test_rule_4_unknown_key(nodes):
    stranger = Node()
    v = only(nodes, stranger.evidence())
    assert v.reason == "unknown-key" and not v.verified


def test_rule_4_revoked_key(nodes):
    v = only(nodes, nodes[0].evidence(), revoked={nodes[0].kid})
    assert v.reason == "revoked-key" and not v.verified


def test_rule_4_bad_signature(nodes):
    ev = nodes[0].evidence()
    forged = dataclasses.replace(ev, signature=bytes([ev.signature[0] ^ 1]) + ev.signature[1:])
    assert only(nodes, forged).reason == "bad-signature"
    other_key = dataclasses.replace(ev, signature=nodes[1].sk.sign(ev.statement))
    assert only(nodes, other_key).reason == "bad-signature"
    short = dataclasses.replace(ev, signature=ev.signature[:63])
    assert only(nodes, short).reason == "bad-signature"


@pytest.mark.parametrize("change", [{"kind": "evaluate"}, {"round": 2}])
def test_rule_5_wrong_round(nodes, change):
    v = only(nodes, nodes[0].evidence(**change))
    assert v.reason == "wrong-round" and v.verified and not v.statement_ok


def test_rule_5_wrong_federation(nodes):
    v = only(nodes, nodes[0].evidence(federation="another-federation"))
    assert v.reason == "wrong-federation" and not v.statement_ok


def test_rule_6_stale_parent(nodes):
    v = only(nodes, nodes[0].evidence(parent=hashlib.sha256(b"older head").digest()))
    assert v.reason == "stale-parent" and v.statement_ok


def test_rule_7_wrong_base_model_for_train_and_evaluate(nodes):
    # issue 19 item 2: an evaluation of another model than the round's is not bound to the ledger (this test
    # asserted [OK, OK, OK] for evaluate before: the rule was train-only)
    other_base = hashlib.sha256(b"another model").digest()
    assert only(nodes, nodes[0].evidence(base=other_base)).reason == "wrong-base-model"
    evaluate = [n.evidence(kind="evaluate", base=other_base if i == 0 else BASE) for i, n in enumerate(nodes)]
    got = judge(nodes, evaluate, kind="evaluate")
    assert [v.reason for v in got] == ["wrong-base-model", OK, OK]
    assert "evaluated other arrays" in got[0].detail


def test_rule_8_digest_mismatch_of_the_arrays(nodes):
    v = only(nodes, nodes[0].evidence(reply_digest=hashlib.sha256(b"other arrays").digest()))
    assert v.reason == "digest-mismatch" and "arrays" in v.detail


def test_rule_8_num_examples_mismatch(nodes):
    assert only(nodes, nodes[0].evidence(reply_examples=11)).reason == "num-examples-mismatch"


def test_rule_8_digest_mismatch_of_the_metrics(nodes):
    v = only(nodes, nodes[0].evidence(metrics={"loss": 0.5}, signed_metrics={"loss": 0.25}))
    assert v.reason == "digest-mismatch" and "metrics" in v.detail


@pytest.mark.parametrize("n", [0, -2])
def test_rule_9_num_examples_not_positive(nodes, n):
    v = only(nodes, nodes[0].evidence(num_examples=n))
    assert v.reason == "malformed" and "not positive" in v.detail
    assert only(nodes, nodes[0].evidence(num_examples=-1)).reason == OK  # -1: no count, weighed by a metric


def test_rule_9_a_metric_that_is_not_finite(nodes):
    v = only(nodes, nodes[0].evidence(metrics={"loss": float("nan")}))
    assert v.reason == "malformed" and "not finite" in v.detail


@pytest.mark.parametrize(
    "meta, words",
    [
        ((("w", (2, 2), "<f4"),), "1 arrays"),
        ((("v", (2, 2), "<f4"), ("b", (2,), "<f4")), "'v'"),
        ((("w", (4,), "<f4"), ("b", (2,), "<f4")), "shape"),
        ((("w", (2, 2), "<f8"), ("b", (2,), "<f4")), "dtype"),
    ],
)
def test_rule_9_arrays_other_than_the_global_models(nodes, meta, words):
    v = only(nodes, nodes[0].evidence(arrays_meta=meta))
    assert v.reason == "malformed" and words in v.detail


def test_rule_9_unknown_array_shapes_skip_the_template_rule(nodes):
    assert only(nodes, nodes[0].evidence(arrays_meta=None)).reason == OK


def test_rule_9_a_non_finite_array(nodes):
    v = only(nodes, nodes[0].evidence(nonfinite="w"))
    assert v.reason == "malformed" and "non-finite" in v.detail


def test_rule_10_equivocation_loses_every_reply_of_the_key(nodes):
    a = nodes[0].evidence()
    b = nodes[0].evidence(digest=hashlib.sha256(b"a second update").digest())
    verdicts = judge(nodes, [a, b, nodes[1].evidence()])
    assert [v.reason for v in verdicts] == ["equivocation", "equivocation", OK]
    assert equivocating_keys(verdicts) == {nodes[0].kid}


def test_rule_11_duplicate_keeps_the_first_copy(nodes):
    a = nodes[0].evidence()
    verdicts = judge(nodes, [a, a, nodes[1].evidence()])
    assert [v.reason for v in verdicts] == [OK, "duplicate", OK]


def test_rule_12_the_metric_schema_most_replies_share_wins(nodes):
    odd = nodes[0].evidence(metrics={"loss": 0.5, "extra": 1.0})
    verdicts = judge(nodes, [odd, nodes[1].evidence(), nodes[2].evidence()])
    assert [v.reason for v in verdicts] == ["malformed", OK, OK]
    assert "most of the round" in verdicts[0].detail


def test_rule_12_a_tie_rejects_every_tied_reply(nodes):
    verdicts = judge(nodes[:2], [nodes[0].evidence(metrics={"acc": 0.5}), nodes[1].evidence(metrics={"loss": 0.5})])
    assert [v.reason for v in verdicts] == ["malformed", "malformed"]
    assert all("tie" in v.detail for v in verdicts)


def test_rule_12_ignores_flower_chains_own_counters(nodes):
    own = nodes[0].evidence(metrics={"loss": 0.5, "flower-chain-receipts": 3})
    assert only(nodes, own).reason == OK
    assert metric_schema({"loss": 1.0, "flower-chain-receipts": 2}) == (("loss", "number"),)
    assert strategy_metrics({"loss": 1.0, "flower-chain.x": 2}) == {"loss": 1.0}


def test_the_first_failing_rule_is_the_reason(nodes):
    # wrong federation *and* wrong digest: rule 5 comes before rule 8
    ev = nodes[0].evidence(federation="x", reply_digest=b"\x00" * 32)
    assert only(nodes, ev).reason == "wrong-federation"


def test_the_auditor_reads_the_same_evidence_from_an_entry(nodes):
    ev = nodes[0].evidence()
    entry = UpdateEntry(
        round=3,
        kind="train",
        node_id=7,
        key_id=nodes[0].kid,
        verdict="accepted",
        reason="ok",
        detail="",
        statement=ev.statement,
        signature=ev.signature,
        num_examples=ev.num_examples,
        arrays_digest=ev.arrays_digest,
        metrics=dict(ev.metrics),
    )
    assert recorded_reason(entry) == OK
    again = evidence_of(entry, arrays_meta=TEMPLATE)
    assert judge(nodes, [again])[0].reason == OK

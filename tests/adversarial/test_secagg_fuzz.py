"""Fuzzing both directions of SecAgg+: hostile server requests reach a node, hostile (validly signed) replies
reach the server. A node answers or refuses (``Refusal``, a Flower error reply); the server records a verdict;
neither raises anything else, and the audit never crashes."""

from __future__ import annotations

import random

import pytest

from flower_chain.audit.secagg import audit_secagg
from flower_chain.clients.secagg import RECORD, Refusal
from flower_chain.ledger.encoding import decode, encode
from flower_chain.ledger.secagg import StageStatement
from tests.adversarial.test_secagg_dishonest_server import request_of, with_request
from tests.adversarial.test_secagg_hostile_replies import replace_record
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")
STAGES = ("setup", "share-keys", "masked-input", "unmask")
VALUES = (None, 0, -1, 2**63 - 1, 1.5, "", "x", "18446744073709551615", b"", b"\x00" * 33, [], ["1"], {}, {"1": b""})


def mutate(value, rng: random.Random):
    """``value`` with one leaf somewhere replaced, one map key removed or one added."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(sorted(value))
        op = rng.random()
        if op < 0.15:
            return {k: v for k, v in value.items() if k != key}
        if op < 0.25:
            return {**value, "zz-extra": rng.choice(VALUES)}
        return {**value, key: mutate(value[key], rng)}
    if isinstance(value, list) and value and rng.random() < 0.7:
        i = rng.randrange(len(value))
        return value[:i] + [mutate(value[i], rng)] + value[i + 1 :]
    if isinstance(value, bytes) and value and rng.random() < 0.5:
        b = bytearray(value)
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        return bytes(b)
    return rng.choice(VALUES)


@pytest.mark.parametrize("stage", STAGES)
def test_hostile_requests_are_answered_or_refused(stage):
    rng = random.Random(STAGES.index(stage))
    for trial in range(8):
        fed = SecAggFederation("memory:", n=5, seed=trial)
        target = fed.node_ids[trial % 5]

        def rewrite(nid, s, msg, target=target):
            if nid != target or s != stage:
                return msg
            if rng.random() < 0.1:  # not even CE1
                from flwr.app import ConfigRecord, RecordDict

                content = RecordDict(dict(msg.content.items()))
                content.config_records[RECORD] = ConfigRecord({"request": bytes(rng.randrange(256) for _ in range(9))})
                from tests.support.fl_helpers import with_content

                return with_content(msg, content)
            return with_request(msg, mutate(request_of(msg), rng))

        fed.grid.rewrite = rewrite
        fed.run_round(1)
        unexpected = [(n, s, e) for n, s, e in fed.grid.errors if not isinstance(e, Refusal)]
        assert not unexpected, unexpected
        audit_secagg(fed.ledger).lines()


@pytest.mark.parametrize("stage", STAGES)
def test_hostile_signed_replies_are_verdicts(stage):
    rng = random.Random(100 + STAGES.index(stage))
    for trial in range(8):
        fed = SecAggFederation("memory:", n=5, seed=trial)
        target = fed.node_ids[trial % 5]

        def tamper(nid, s, msg, reply, target=target, fed=fed):
            if nid != target or s != stage or reply.has_error():
                return reply
            rec = dict(reply.content.config_records[RECORD].items())
            st = decode(rec["statement"][len(b"flower-chain:secagg-stage:v1\x00") :])
            if rng.random() < 0.5:
                st = mutate(st, rng)
                new = b"flower-chain:secagg-stage:v1\x00" + encode(st)
                rec = {**rec, "statement": new, "signature": fed.keys[fed.node_ids.index(nid)].sign(new)}
            else:
                rec = {**rec, "payload": encode(mutate(decode(rec["payload"]), rng))}
            return replace_record(reply, rec)

        fed.grid.tamper = tamper
        figures = fed.run_round(1)  # never raises
        assert figures["sampled"] == 5
        report = audit_secagg(fed.ledger)
        report.lines()
        if figures["failure"] == "":
            assert report.ok or any(f.node == str(target) for f in report.findings), report.lines()


def test_statement_decoder_sees_every_mutation_as_encoding_error_or_value():
    rng = random.Random(5)
    fed = SecAggFederation("memory:", n=5)
    fed.run_round(1)
    from flower_chain.ledger.entries import decode_entry
    from flower_chain.ledger.errors import EncodingError
    from flower_chain.ledger.secagg import SecAggEntry

    statements = [
        e.statement for e in map(decode_entry, fed.ledger.entries()) if isinstance(e, SecAggEntry) and e.statement
    ]
    for raw in statements:
        for _ in range(20):
            d = decode(raw[len(b"flower-chain:secagg-stage:v1\x00") :])
            try:
                StageStatement.from_bytes(b"flower-chain:secagg-stage:v1\x00" + encode(mutate(d, rng)))
            except EncodingError:
                pass

"""SecAgg+ review: a masked sum that could wrap modulo ``mod_range``, and the base model each node names.

``num_live * quantization_range < mod_range`` is checked by the workflow at the round's start, by every node
at stage 0 (and its own weight before masking), and by the auditor. Each signed masked-input statement names
the header's ``base_digest`` (the model the node checked it was sent): the judge and the auditor check it.
"""

from __future__ import annotations

import pytest

import flower_chain.clients.secagg_checks as checks_module
import flower_chain.strategies.secagg_judge as judge_module
import flower_chain.strategies.secagg_workflow as workflow_module
from flower_chain.audit.secagg import audit_secagg
from flower_chain.clients.secagg import Refusal
from flower_chain.ledger.secagg import MASKED, overflow_problem
from tests.adversarial.test_secagg_dishonest_server import findings_of
from tests.adversarial.test_secagg_hostile_replies import entries_of, resigned
from tests.adversarial.test_secagg_review import _header
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.mark.parametrize(
    ("nodes", "q", "mod", "wraps"),
    [(4, 2**30, 2**32, True), (3, 2**30, 2**32, False), (1024, 2**22, 2**32, True), (1023, 2**22, 2**32, False)],
)
def test_overflow_bound(nodes, q, mod, wraps):
    problem = overflow_problem({"quantization_range": q, "mod_range": mod}, nodes)
    assert (problem is not None) == wraps and (not wraps or "could wrap" in problem)


def test_a_node_refuses_a_header_whose_sum_could_wrap():
    hdr = _header(5, 5, 3)
    wide = {**hdr, "params": {**hdr["params"], "quantization_range": 2**30}}  # 5 * 2**30 >= 2**32
    for nid in hdr["sampled"]:
        assert checks_module.header_problem(hdr, nid) is None
        assert "could wrap" in (checks_module.header_problem(wide, nid) or "")


def test_the_workflow_skips_a_round_whose_sum_could_wrap():
    fed = SecAggFederation("memory:", n=4, num_shares=4, threshold=3, quantization_range=2**30)
    height = fed.strategy.core.writer.head.header.height
    fed.run_round(1)
    assert fed.grid.sent == [] and fed.strategy.core.writer.head.header.height == height


def test_the_auditor_fails_a_header_whose_sum_could_wrap(monkeypatch):
    for module in (workflow_module, checks_module):  # a server and nodes that do not check the bound
        monkeypatch.setattr(module, "overflow_problem", lambda params, nodes: None)
    fed = SecAggFederation("memory:", n=4, num_shares=4, threshold=3, quantization_range=2**30)
    fed.run_round(1)
    named = findings_of(audit_secagg(fed.ledger), round=1, stage="header", severity="error")
    assert any("could wrap" in f.message for f in named), named


def test_a_node_whose_weight_could_wrap_the_sum_refuses_to_mask():
    fed = SecAggFederation("memory:", n=5, num_shares=5, threshold=3, max_weight=0.1)
    # examples 10, 15, 20, 25, 30: weights 100..300 * 2**22; 5 of them reach 2**32 from 204.8 * 2**22 on
    heavy = [n for n in fed.node_ids if 5 * round(fed.examples[n] / 0.1 * 2**22) >= 2**32]
    assert len(heavy) == 2
    figures = fed.run_round(1)
    refused = {(nid, stage) for nid, stage, e in fed.grid.errors if isinstance(e, Refusal) and "could wrap" in str(e)}
    assert refused == {(n, MASKED) for n in heavy}
    assert figures["failure"] == "" and figures["masked"] == 3 and figures["dropped"] == 2
    assert audit_secagg(fed.ledger).ok


def test_a_weight_above_max_weight_that_cannot_wrap_is_taken():
    """Flower only warns when num_examples > max_weight; the sum cannot wrap here (5 * 3 * 2**22 < 2**32)."""
    fed = SecAggFederation("memory:", n=5, num_shares=5, threshold=3, max_weight=10.0)
    figures = fed.run_round(1)
    assert fed.grid.errors == [] and figures["failure"] == "" and figures["masked"] == 5
    assert audit_secagg(fed.ledger).ok


def test_weight_problem_is_total():
    hdr = _header(3, 3, 2)
    for bad in (-1, True, 1.5, "7", None):
        assert "not a count" in (checks_module.weight_problem(bad, hdr) or "")
    assert checks_module.weight_problem(0, hdr) is None


def another_base_from(fed, liar):
    def tamper(nid, stage, msg, reply):
        if nid == liar and stage == MASKED and not reply.has_error():
            return resigned(fed, nid, reply, lambda r: {**r, "base_digest": b"\x5a" * 32})
        return reply

    return tamper


def test_a_masked_input_naming_another_base_model_is_rejected():
    fed = SecAggFederation("memory:", n=5, num_shares=5, threshold=3)
    liar = fed.node_ids[2]
    fed.grid.tamper = another_base_from(fed, liar)
    figures = fed.run_round(1)
    (entry,) = entries_of(fed, round=1, stage=MASKED, node_id=str(liar))
    assert (entry.verdict, entry.reason) == ("rejected", "mismatch") and "base_digest" in entry.detail
    assert figures["failure"] == "" and figures["masked"] == 4 and figures["dropped"] == 1
    assert audit_secagg(fed.ledger).ok


def test_the_auditor_and_the_nodes_name_an_accepted_masked_input_of_another_base(monkeypatch):
    masked = judge_module._PAYLOAD[MASKED]
    monkeypatch.setitem(  # a server that does not compare the base model
        judge_module._PAYLOAD,
        MASKED,
        lambda reply, payload, expect: masked(reply, payload, {**expect, "base_digest": reply["base_digest"]}),
    )
    fed = SecAggFederation("memory:", n=5, num_shares=5, threshold=3)
    liar = fed.node_ids[2]
    fed.grid.tamper = another_base_from(fed, liar)
    fed.run_round(1)
    report = audit_secagg(fed.ledger)
    named = findings_of(report, round=1, stage=MASKED, node=str(liar), severity="error")
    assert any("base_digest" in f.message for f in named), report.lines()
    refusals = [f for f in findings_of(report, round=1, stage="unmask") if f"node {liar}'s committed" in f.message]
    assert refusals, report.lines()  # its neighbours would not reveal its seed

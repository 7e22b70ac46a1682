"""SecAgg+ stage verdicts reach the end-of-run summary and ``ledger.inspect.summary`` (requests-J 2 and 3)."""

from __future__ import annotations

import json

import pytest

from flower_chain.ledger.inspect import block_rows, summary
from flower_chain.strategies.secagg_workflow import SECAGG_KIND
from tests.support.secagg_federation import SecAggFederation

pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.fixture
def fed(tmp_path):
    f = SecAggFederation(f"sqlite:///{tmp_path}/ledger.db", n=6)
    f.grid.drop[f.node_ids[4]] = "setup"  # no-reply in stage 0
    f.grid.drop[f.node_ids[1]] = "masked-input"  # no-reply in stage 2
    return f


def test_each_stage_verdict_is_counted_in_the_core_counter(fed):
    assert fed.run_round(1)["failure"] == ""
    # setup: 5 ok + 1 no-reply; share-keys: 5 ok; masked-input: 4 ok + 1 no-reply; unmask: 4 ok
    assert fed.strategy.core.verdicts == {(SECAGG_KIND, "ok"): 18, (SECAGG_KIND, "no-reply"): 2}
    fed.grid.drop.clear()
    assert fed.run_round(2)["failure"] == ""
    assert fed.strategy.core.verdicts == {(SECAGG_KIND, "ok"): 18 + 24, (SECAGG_KIND, "no-reply"): 2}
    lines = fed.strategy.core.summary_lines()
    assert not any("no replies were judged" in line for line in lines), lines


def test_a_duplicate_reply_is_counted_too(fed):
    fed.grid.drop.clear()
    twice = fed.node_ids[2]
    real = fed.grid.send_and_receive

    def send_and_receive(messages, *, timeout=None):
        out = real(messages, timeout=timeout)
        return out + [r for r in out if r.metadata.src_node_id == twice]

    fed.grid.send_and_receive = send_and_receive
    assert fed.run_round(1)["failure"] == ""
    assert fed.strategy.core.verdicts == {(SECAGG_KIND, "ok"): 24, (SECAGG_KIND, "duplicate"): 4}


def test_summary_of_a_secagg_ledger_counts_stage_verdicts(fed):
    fed.run_round(1)
    s = summary(fed.ledger)
    assert s["secagg"] == {
        "setup": {"ok": 5, "no-reply": 1},
        "share-keys": {"ok": 5},
        "masked-input": {"ok": 4, "no-reply": 1},
        "unmask": {"ok": 4},
    }
    assert list(s["secagg"]) == ["setup", "share-keys", "masked-input", "unmask"]  # protocol order
    assert list(s["secagg"]["setup"]) == ["ok", "no-reply"]  # accepted first, as in "verdicts"
    assert s["verdicts"] == {"train": {}, "evaluate": {}}
    assert s["rounds"] == 1
    json.dumps(s)  # what `ledger summary --json` prints
    rows = [r.to_dict() for r in block_rows(fed.ledger, 1)]
    json.dumps(rows)  # what `ledger blocks --json` prints
    assert [r["secagg"] for r in rows] == [  # the commit block: stages 0-2; the result block: stage 3
        {"setup": {"ok": 5, "no-reply": 1}, "share-keys": {"ok": 5}, "masked-input": {"ok": 4, "no-reply": 1}},
        {"unmask": {"ok": 4}},
    ]


def test_summary_of_a_ledger_without_secagg_has_an_empty_secagg_key(federation_factory):
    f = federation_factory("sqlite")
    f.add_round(1, n=3, rejected=1)
    s = summary(f.ledger)
    assert s["secagg"] == {} and s["rounds"] == 1 and s["verdicts"]["train"] == {"ok": 3, "bad-signature": 1}

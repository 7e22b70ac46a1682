"""A server that names another array digest version than its ledger's genesis gains nothing.

On a v1 ledger, round 2, the server sends one node a context naming v2: the node's receipt check finds the
model it received does not digest (under the version named) to the head block's signed ``model_after``,
and its reply, digested under v2, is recorded ``wrong-base-model`` — a verdict the auditor re-derives
under the genesis' version (``ledger verify`` and ``ledger audit`` pass: the ledger is consistent, the
client holds the evidence).
"""

from __future__ import annotations

import pytest

from flower_chain.clients.receipts import read_counts
from flower_chain.clients.signing import make_signing_mod
from flower_chain.ledger.keys import key_id
from flower_chain.wire import CTX_DIGEST_VERSION
from tests.support.digest_ledgers import cli, instructions, model, strategy_on
from tests.support.fl_helpers import context, copy_config, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")


def test_a_server_naming_another_version_than_its_genesis_is_caught_by_the_client(tmp_path):
    strategy, clients, uri = strategy_on(tmp_path, 1)
    mods = [make_signing_mod(k, receipts_dir=tmp_path / f"receipts-{i}") for i, k in enumerate(clients.keys)]
    current = model(0)
    for rnd in (1, 2):
        msgs = instructions(strategy, rnd, current)
        if rnd == 2:  # the lie: node 0 is told v2 while the ledger (and its head's model_after) is v1
            msgs[0] = copy_config(msgs[0])
            msgs[0].content["config"][CTX_DIGEST_VERSION] = 2
        replies = [
            mod(m, context(), lambda m, c, i=i: train_reply(m, model(10 * rnd + i), 10 + i))
            for i, (m, mod) in enumerate(zip(msgs, mods))
        ]
        current, _ = strategy.aggregate_train(rnd, replies)
    stats = strategy.round_stats(2)
    strategy.close()
    assert stats["accepted"] == 2 and stats["reasons"] == {"wrong-base-model": 1}, stats
    lied_to = read_counts(tmp_path / "receipts-0" / key_id(clients.keys[0]))
    assert lied_to["errors"] == 1, lied_to
    errors = next((tmp_path / "receipts-0").rglob("errors.log")).read_text()  # the ModelMismatch finding
    assert "another global model than its log records" in errors, errors
    assert all(read_counts(tmp_path / f"receipts-{i}" / key_id(clients.keys[i]))["errors"] == 0 for i in (1, 2))
    code, out = cli("ledger", "verify", uri)
    assert code == 0 and "wrong-base-model 1" in out, out
    code, out = cli("ledger", "audit", uri, "--strict")
    assert code == 0, out

"""One owner of the array digest version: the ledger's genesis (issue 21 follow-up).

A ledger whose genesis names digest v1 (an older ledger) continued by today's LedgerStrategy: the server
sends the version in the ledger context, the judge and the signing mod digest under it, so honest replies
are accepted and ``ledger verify`` and ``ledger audit`` pass; a reply digested under the other version is
rejected; a version the client does not know is refused by the client with a finding, untrained and unsigned.
The model carries a 0-d array, so its v1 and v2 digests differ (a 1 MiB model would do too, slower).
"""

from __future__ import annotations

import pytest
from flwr.app import Message, MetricRecord, RecordDict

from flower_chain.clients.receipts import read_counts
from flower_chain.clients.signing import make_signing_mod, sign_reply
from flower_chain.ledger import open_ledger
from flower_chain.ledger.arrays import array_digest
from flower_chain.ledger.entries import UpdateEntry, decode_entry
from flower_chain.ledger.keys import key_id
from flower_chain.ledger.text import safe_text
from flower_chain.strategies.errors import TooFewAcceptedError
from flower_chain.wire import CTX_DIGEST_VERSION, arrays_of
from tests.support.digest_ledgers import FID, cli, instructions, model, named, strategy_on
from tests.support.fl_helpers import context, copy_config, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")


def evaluate_reply(msg: Message, _ctx) -> Message:
    return Message(RecordDict({"metrics": MetricRecord({"num-examples": 5, "eval_loss": 0.5})}), reply_to=msg)


def test_the_model_digests_differently_under_v1_and_v2():  # what makes the tests below mean something
    assert array_digest(named(model(0)), 1) != array_digest(named(model(0)), 2)


def test_a_v1_ledger_continued_by_todays_server_accepts_honest_replies_and_verifies_and_audits(tmp_path):
    strategy, clients, uri = strategy_on(tmp_path, 1, fraction_evaluate=1.0, min_evaluate_nodes=1)
    mods = [make_signing_mod(k, receipts_dir=tmp_path / f"receipts-{i}") for i, k in enumerate(clients.keys)]
    current = model(0)
    for rnd in (1, 2):
        msgs = instructions(strategy, rnd, current)
        assert all(m.content["config"][CTX_DIGEST_VERSION] == 1 for m in msgs)  # the ledger's, from its genesis
        replies = [
            mod(m, context(), lambda m, c, i=i: train_reply(m, model(10 * rnd + i), 10 + i))
            for i, (m, mod) in enumerate(zip(msgs, mods))
        ]
        current, _ = strategy.aggregate_train(rnd, replies)
        stats = strategy.round_stats(rnd)
        assert stats["accepted"] == 3 and stats["rejected"] == 0, stats
        msgs = instructions(strategy, rnd, current, "evaluate")  # evaluated: the base digest is v1 too
        replies = [mod(m, context(), evaluate_reply) for m, mod in zip(msgs, mods)]
        assert strategy.aggregate_evaluate(rnd, replies) is not None
        assert strategy.core.verdicts[("evaluate", "ok")] == 3 * rnd, strategy.core.verdicts
    strategy.close()
    # the clients' receipt checks agree: the model each received is the one the head block records (v1 digests)
    assert all(read_counts(tmp_path / f"receipts-{i}")["errors"] == 0 for i in range(3))
    ledger = open_ledger(uri)
    try:
        assert ledger.head().header.model_after == array_digest(named(current), 1)
    finally:
        ledger.close()
    code, out = cli("ledger", "verify", uri)
    assert code == 0 and "VERIFIED" in out, out
    code, out = cli("ledger", "audit", uri, "--strict")
    assert code == 0 and "AUDITED" in out, out


@pytest.mark.parametrize("ledger_version, signed_version", [(1, 2), (2, 1)])
def test_a_reply_digested_under_the_other_version_is_rejected(tmp_path, ledger_version, signed_version):
    """A client that ignores the context's version: all of it under the other version names another base
    model (``wrong-base-model``, the first rule that fails); the right base but its update digested under the
    other version is ``digest-mismatch``; an honest neighbour is accepted."""
    strategy, clients, _ = strategy_on(tmp_path, ledger_version)
    current = model(0)
    msgs = instructions(strategy, 1, current)
    replies = []
    for i, m in enumerate(msgs[:2]):  # nodes 0 and 1 digest under the other version
        other = copy_config(m)
        other.content["config"][CTX_DIGEST_VERSION] = signed_version
        base = array_digest(arrays_of(m.content["arrays"]), ledger_version) if i == 1 else None
        replies.append(sign_reply(other, train_reply(m, model(10 + i), 10), clients.keys[i], base_digest=base))
    replies.append(make_signing_mod(clients.keys[2])(msgs[2], context(), lambda m, c: train_reply(m, model(12), 12)))
    strategy.aggregate_train(1, replies)
    stats = strategy.round_stats(1)
    strategy.close()
    assert stats["accepted"] == 1 and stats["reasons"] == {"wrong-base-model": 1, "digest-mismatch": 1}, stats


@pytest.mark.parametrize("sent", [3, 0, "2", 2.0, True, b"\x02"])
def test_a_digest_version_the_client_does_not_know_is_refused_with_a_finding(tmp_path, sent):
    strategy, clients, uri = strategy_on(tmp_path, 1)
    msg = copy_config(instructions(strategy, 1, model(0))[0])
    msg.content["config"][CTX_DIGEST_VERSION] = sent
    trained = []

    def train(m, c):
        trained.append(m)
        return train_reply(m, model(10), 10)

    reply = make_signing_mod(clients.keys[0], receipts_dir=tmp_path / "receipts")(msg, context(), train)
    assert reply.has_error() and not trained  # refused before training: nothing signed
    reason = reply.error.reason
    assert f"digest-version = {safe_text(repr(sent))}): not an array digest version" in reason, reason
    assert "does not sign" in reason, reason
    counts = read_counts(tmp_path / "receipts" / key_id(clients.keys[0]), FID)  # counted, and in errors.log
    assert counts["errors"] == 1, counts
    log = next((tmp_path / "receipts").rglob("errors.log")).read_text()
    assert "array digest version" in log and "ledger context is unusable" in log
    with pytest.raises(TooFewAcceptedError):  # the server records why: a client-error naming the version
        strategy.aggregate_train(1, [reply])
    strategy.close()
    ledger = open_ledger(uri)
    try:
        entry = decode_entry(next(iter(ledger.entries(1, 2))))
    finally:
        ledger.close()
    assert isinstance(entry, UpdateEntry) and entry.reason == "client-error", entry
    assert "array digest version" in entry.detail and "does not sign" in entry.detail, entry.detail


def test_a_context_without_a_version_means_the_current_version(tmp_path):
    """Backward compatibility: a server older than the field judged under the library's version (2)."""
    strategy, clients, _ = strategy_on(tmp_path, 2)
    msgs = instructions(strategy, 1, model(0))
    replies = []
    for i, m in enumerate(msgs):
        old = copy_config(m)
        del old.content["config"][CTX_DIGEST_VERSION]
        replies.append(sign_reply(old, train_reply(m, model(10 + i), 10), clients.keys[i]))
    strategy.aggregate_train(1, replies)
    stats = strategy.round_stats(1)
    strategy.close()
    assert stats["accepted"] == 3, stats

"""Inside ``LedgerStrategy.start`` each train block is written behind Flower's loop (issue 21): the centralized
evaluation runs while the blobs and the block go to the ledger, and every later step that touches the ledger or
sends anything to a node waits until that block is durable (``LedgerCore.settle``), raising what writing it raised.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from flower_chain.audit.replay import OK, audit
from flower_chain.ledger import open_ledger, verify
from flower_chain.ledger.errors import LedgerError
from flower_chain.strategies import LedgerStrategy
from flower_chain.wire import parse_context
from tests.support.fl_helpers import Clients, arrays, context, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")
NODES = [31, 32, 33]


class LoopGrid:
    """A Grid whose nodes answer in process: train replies signed by the real mod, evaluate replies too."""

    def __init__(self, clients: Clients) -> None:
        from flower_chain.clients.signing import make_signing_mod

        self.mods = {node: make_signing_mod(k) for node, k in zip(NODES, clients.keys)}
        self.sent: list = []  # every instruction, in order
        self.rng = np.random.default_rng(3)

    def get_node_ids(self):
        return list(NODES)

    def send_and_receive(self, messages, timeout=None):
        out = []
        for msg in messages:
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            if msg.metadata.message_type.startswith("train"):
                body = arrays(int(self.rng.integers(1 << 30)))
                out.append(self.mods[node](msg, context(node), lambda m, c, b=body: train_reply(m, b, 10)))
            else:
                metrics = MetricRecord({"num-examples": 10, "eval_acc": 0.5})
                out.append(
                    self.mods[node](
                        msg, context(node), lambda m, c: Message(RecordDict({"metrics": metrics}), reply_to=m)
                    )
                )
        return out


def strategy(tmp_path, clients, **kw) -> LedgerStrategy:
    inner = FedAvg(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=kw.pop("fraction_evaluate", 0.0))
    return LedgerStrategy(
        inner,
        ledger=f"sqlite:///{tmp_path / 'behind.db'}",
        keyring=clients.keyring,
        server_key=Ed25519PrivateKey.generate(),
        **kw,
    )


def fail_put_blobs(s: LedgerStrategy, call: int):
    """Make the ledger's ``call``-th ``put_blobs`` raise (a full disk); return the real method."""
    real = s.core.recorder.ledger.put_blobs
    calls = {"n": 0}

    def failing(items):
        calls["n"] += 1
        if calls["n"] == call:
            raise LedgerError("disk full (test)")
        return real(items)

    s.core.recorder.ledger.put_blobs = failing
    return real


def test_each_train_block_is_written_behind_the_loop_and_durable_when_start_returns(tmp_path):
    clients = Clients(len(NODES))
    s = strategy(tmp_path, clients)
    seen = []

    def evaluate_fn(server_round, _arrays):
        # the train block of this round was handed to the commit thread: nothing waited for it since
        seen.append((server_round, s.core._pending is not None))
        stats = s.round_stats(server_round)  # waits for it
        assert s.core._pending is None
        if server_round:
            assert stats["accepted"] == 3 and stats["block_height"] >= server_round
        return MetricRecord({"accuracy": 0.5})

    s.start(LoopGrid(clients), arrays(1), num_rounds=3, evaluate_fn=evaluate_fn)
    assert seen == [(0, False), (1, True), (2, True), (3, True)]
    assert s.core._pending is None  # start settled the last one
    uri = s.ledger.uri
    s.close()
    with open_ledger(uri) as led:
        report = verify(led, blobs=True)
        assert (
            report.blocks == 2 + 3 * 2
        )  # genesis, round 0's evaluation, then a train and an evaluation block per round
        assert all(r.status == OK for r in audit(led).rounds)


def test_outside_start_aggregate_train_writes_its_block_before_returning(tmp_path):
    clients = Clients(len(NODES))
    s = strategy(tmp_path, clients)
    grid = LoopGrid(clients)
    msgs = list(s.configure_train(1, arrays(1), ConfigRecord({}), grid))
    s.aggregate_train(1, grid.send_and_receive(msgs))
    assert s.core._pending is None
    assert s.core.ledger.block_count() == 2
    s.close()


def test_evaluate_instructions_name_the_durable_train_block(tmp_path):
    clients = Clients(len(NODES))
    s = strategy(tmp_path, clients, fraction_evaluate=1.0)
    grid = LoopGrid(clients)
    s.start(grid, arrays(1), num_rounds=2)
    with open_ledger(s.ledger.uri) as led:
        blocks = list(led.blocks())
    hashes = [hashlib.sha256(b.header_bytes).digest() for b in blocks]
    evaluates = [m for m in grid.sent if m.metadata.message_type.startswith("evaluate")]
    assert len(evaluates) == 2 * len(NODES)
    for msg in evaluates:  # sent right after the round's train block, which is the head it names
        ctx = parse_context(msg.content["config"])
        block = blocks[hashes.index(ctx.parent)]
        assert block.header.round == ctx.round and block.header.model_after  # the round's train block
    s.close()


def test_an_error_writing_behind_is_raised_by_the_next_step_and_the_ledger_verifies(tmp_path):
    clients = Clients(len(NODES))
    s = strategy(tmp_path, clients)
    real = fail_put_blobs(s, 2)  # round 2's update blobs
    with pytest.raises(LedgerError, match="disk full"):
        s.start(LoopGrid(clients), arrays(1), num_rounds=4, evaluate_fn=lambda r, a: MetricRecord({"accuracy": 0.5}))
    uri = s.core.ledger.uri
    s.core.recorder.ledger.put_blobs = real
    s.close()
    with open_ledger(uri) as led:
        report = verify(led, blobs=True)  # the block of round 2 was never appended: round 1 is the last
        assert max(b.header.round for b in led.blocks()) == 1
        assert report.blocks >= 2


def test_an_interrupted_wait_keeps_the_block_pending_and_its_error(tmp_path):
    """Review 5 D4: Ctrl-C while waiting must not forget a block still being written, nor its error."""
    import signal
    import threading

    clients = Clients(len(NODES))
    s = strategy(tmp_path, clients)
    started, release = threading.Event(), threading.Event()

    def slow_failing_commit(*a, **k):
        started.set()
        release.wait(10)
        raise LedgerError("disk full (test)")

    s.core.recorder.commit_train = slow_failing_commit
    s.core.commit_train(1, [], None, 0.0, None, defer=True)
    assert started.wait(5)

    def ctrl_c(*_):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, ctrl_c)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        with pytest.raises(KeyboardInterrupt):
            s.core.settle()
    finally:
        signal.signal(signal.SIGALRM, old)
    assert s.core._pending is not None  # still pending: the next wait waits again
    release.set()
    with pytest.raises(LedgerError, match="disk full"):
        s.core.settle()
    s.core.settle()  # raised once
    s.close()


def test_the_summary_is_logged_when_the_last_block_fails(tmp_path, caplog):
    """Review 5 D5: where the ledger is and how to check it, even when the last deferred block failed."""
    clients = Clients(len(NODES))
    s = strategy(tmp_path, clients)
    real = fail_put_blobs(s, 2)  # round 2 (the last) update blobs
    with caplog.at_level("INFO"), pytest.raises(LedgerError, match="disk full"):
        s.start(LoopGrid(clients), arrays(1), num_rounds=2)
    assert any("verify it:" in r.getMessage() for r in caplog.records)
    s.core.recorder.ledger.put_blobs = real
    s.close()


def test_a_configure_evaluate_set_on_the_instance_is_still_called(tmp_path):
    """Review 5 D6: the fraction_evaluate == 0 shortcut applies to Flower's own configure_evaluate only."""
    clients = Clients(len(NODES))
    s = strategy(tmp_path, clients)
    called = []

    def custom(server_round, arr, config, grid):
        called.append(server_round)
        return []

    s.strategy.configure_evaluate = custom
    assert list(s.configure_evaluate(1, arrays(1), ConfigRecord({}), LoopGrid(clients))) == []
    assert called == [1]
    s.close()


def test_a_failed_train_write_leaves_the_state_digest_of_the_last_block(tmp_path):
    """Review 5 P1: the strategy state a failed block would have recorded is not taken as recorded."""
    from flwr.serverapp.strategy import FedAvgM

    clients = Clients(len(NODES))
    inner = FedAvgM(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0, server_momentum=0.9)
    s = LedgerStrategy(
        inner, ledger=f"sqlite:///{tmp_path / 'm.db'}", keyring=clients.keyring, server_key=Ed25519PrivateKey.generate()
    )
    real = fail_put_blobs(s, 3)  # round 3's update blobs, after its state blob was stored
    with pytest.raises(LedgerError, match="disk full"):
        s.start(LoopGrid(clients), arrays(1), num_rounds=4)
    s.core.recorder.ledger.put_blobs = real
    with open_ledger(s.core.ledger.uri) as led:
        last = list(led.blocks())[-1].header
    assert last.round == 2 and s.core.state_digest == last.state_after
    s.core.commit_evaluation(2, "centralized", 0, {"accuracy": 0.5})  # an app that records after catching it
    with open_ledger(s.core.ledger.uri) as led:
        verify(led, blobs=True)
    s.close()


def test_a_resume_records_the_evaluation_a_crash_left_out(tmp_path):
    """Review 5 P2: a crash between round 2's train block and its evaluation block; the resume records it."""
    from flower_chain.ledger.entries import EvaluationEntry, decode_entry

    clients = Clients(len(NODES))
    server_key = Ed25519PrivateKey.generate()
    uri = f"sqlite:///{tmp_path / 'r.db'}"
    inner = FedAvg(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0)
    s = LedgerStrategy(inner, ledger=uri, keyring=clients.keyring, server_key=server_key)

    def evaluate_fn(server_round, _arrays):
        if server_round == 2:
            raise RuntimeError("the server died (test)")
        return MetricRecord({"accuracy": 0.5 + server_round})

    with pytest.raises(RuntimeError, match="died"):
        s.start(LoopGrid(clients), arrays(1), num_rounds=3, evaluate_fn=evaluate_fn)
    s.close()
    inner = FedAvg(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0)
    again = LedgerStrategy(inner, ledger=uri, keyring=clients.keyring, server_key=server_key, resume=True)
    again.start(LoopGrid(clients), arrays(1), num_rounds=3, evaluate_fn=lambda r, a: MetricRecord({"accuracy": r}))
    again.close()
    with open_ledger(uri) as led:
        verify(led)
        evaluated = [
            e.round
            for e in map(decode_entry, led.entries())
            if isinstance(e, EvaluationEntry) and e.source == "centralized"
        ]
    assert evaluated == [0, 1, 2, 3]


def test_update_blobs_are_written_while_the_wrapped_strategy_aggregates_and_only_once(tmp_path, monkeypatch):
    """Issue 21 §2: inside start() a round's update blobs go to the ledger on the commit thread as soon as the
    round is judged; the wrapped strategy's aggregation runs meanwhile; the block then writes no update twice."""
    import threading

    clients = Clients(len(NODES))
    s = strategy(tmp_path, clients)
    stored = threading.Event()
    real_store = s.core.recorder.store_updates
    puts: list[list[bytes]] = []
    real_put = s.core.recorder.ledger.put_blobs

    def store(updates, evidence=()):
        real_store(updates, evidence)
        stored.set()

    def put_blobs(items):
        items = list(items)
        puts.append([digest for digest, _ in items])
        return real_put(items)

    s.core.recorder.store_updates = store
    s.core.recorder.ledger.put_blobs = put_blobs
    from flower_chain.strategies import fast_fedavg

    real_aggregate = fast_fedavg.aggregate  # FedAvg's aggregation (bit for bit, without a second parse)
    waited = []

    def aggregate(*args, **kwargs):
        waited.append(stored.wait(30))  # the blobs are written while this runs (a serial commit would wait 30 s)
        stored.clear()
        return real_aggregate(*args, **kwargs)

    monkeypatch.setattr(fast_fedavg, "aggregate", aggregate)
    s.start(LoopGrid(clients), arrays(1), num_rounds=2)
    uri = s.ledger.uri
    s.close()
    assert waited == [True, True]
    update_puts = [p for p in puts if len(p) == len(NODES)]
    assert len(update_puts) == 2  # one write of the three updates per round, never again with the block
    assert all(len(set(p)) == len(NODES) for p in update_puts)
    with open_ledger(uri) as led:
        verify(led, blobs=True)
        assert all(r.status == OK for r in audit(led).rounds)


class Peeking(FedAvg):
    """A FedAvg whose aggregate_train reads the wrapper's stats first (it settles: a failed blob write surfaces)."""

    holder: list = []

    def aggregate_train(self, server_round, replies):
        try:
            self.holder[0].round_stats(server_round - 1)
        except LedgerError:
            pass  # a strategy that logs and carries on
        return super().aggregate_train(server_round, replies)


def _missing_update_blobs(uri: str) -> tuple[int, list]:
    from flower_chain.ledger.entries import UpdateEntry
    from flower_chain.ledger.inspect import entries_of

    with open_ledger(uri) as led:
        accepted = [
            e
            for b in led.blocks()
            for e in entries_of(led, b.header)
            if isinstance(e, UpdateEntry) and e.verdict == "accepted"
        ]
        return len(accepted), [e for e in accepted if not led.has_blob(e.arrays_digest)]


def test_a_blob_write_error_another_step_raised_never_records_the_round_without_its_blobs(tmp_path):
    """Review 6 D1: the early blob write failed and someone else's settle() took the error: the block writes the
    blobs itself (it never takes 'went ahead' for 'written')."""
    clients = Clients(len(NODES))
    inner = Peeking(min_available_nodes=3, min_train_nodes=3, fraction_evaluate=0.0)
    s = LedgerStrategy(
        inner,
        ledger=f"sqlite:///{tmp_path / 'peek.db'}",
        keyring=clients.keyring,
        server_key=Ed25519PrivateKey.generate(),
    )
    Peeking.holder = [s]
    real = fail_put_blobs(s, 1)  # round 1's update blobs, written ahead
    s.start(LoopGrid(clients), arrays(1), num_rounds=2)
    s.core.recorder.ledger.put_blobs = real
    uri = s.core.ledger.uri
    s.close()
    accepted, missing = _missing_update_blobs(uri)
    assert accepted == 6 and missing == []
    with open_ledger(uri) as led:
        verify(led, blobs=True)  # (Peeking is not a strategy the replay knows: the audit says so, not 'missing')


def test_core_a_settled_blob_error_makes_commit_train_write_the_blobs(tmp_path):
    clients = Clients(len(NODES))
    s = strategy(tmp_path, clients)
    grid = LoopGrid(clients)
    msgs = list(s.configure_train(1, arrays(1), ConfigRecord({}), grid))
    _, judgements, _ = s._judge("train", 1, grid.send_and_receive(msgs))
    real = fail_put_blobs(s, 1)
    s.core.store_updates_behind(judgements)
    with pytest.raises(LedgerError, match="disk full"):
        s.core.model_digest  # noqa: B018 - any read settles: the blob error surfaces here
    s.core.recorder.ledger.put_blobs = real
    s.core.commit_train(1, judgements, None, 0.0, None)  # the caller goes on: the block carries its blobs
    uri = s.core.ledger.uri
    s.close()
    accepted, missing = _missing_update_blobs(uri)
    assert accepted == 3 and missing == []

"""Inside ``LedgerStrategy.start`` each reply's parse, digest and signature check start as Flower pulls it
(``ArrivalGrid``, issue 21 §2), while the grid waits for the rest; the verdicts and the block are the same
as when everything is judged after the last reply.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.superlink.grid.inmemory_grid import InMemoryGrid

from flower_chain.audit.replay import OK, audit
from flower_chain.ledger import open_ledger, verify
from flower_chain.ledger.entries import UpdateEntry
from flower_chain.ledger.inspect import entries_of
from flower_chain.strategies import LedgerStrategy
from flower_chain.strategies.arrivals import ArrivalGrid
from flower_chain.strategies.judge import Judge
from tests.support.fl_helpers import Clients, arrays, context, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")
NODES = [41, 42, 43, 44]


def _tampered(reply: Message) -> Message:
    """The signed reply with its arrays changed after signing (a man in the middle)."""
    rec = reply.content["arrays"]
    first = next(iter(rec.keys()))
    rec[first] = Array(rec[first].numpy() + np.float32(1.0))
    return reply


class Answers:
    """In-process nodes: train and evaluate replies signed by the real mod; node 44 tampers its update."""

    def __init__(self, clients: Clients) -> None:
        from flower_chain.clients.signing import make_signing_mod

        self.mods = {node: make_signing_mod(k) for node, k in zip(NODES, clients.keys)}
        self.rng = np.random.default_rng(5)

    def __call__(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        if msg.metadata.message_type.startswith("train"):
            body = arrays(int(self.rng.integers(1 << 30)))
            reply = self.mods[node](msg, context(node), lambda m, c: train_reply(m, body, 10))
            return _tampered(reply) if node == 44 else reply
        metrics = MetricRecord({"num-examples": 10, "eval_acc": 0.5})
        return self.mods[node](msg, context(node), lambda m, c: Message(RecordDict({"metrics": metrics}), reply_to=m))


class PulledGrid(InMemoryGrid):
    """Flower's own in-memory loop (``InMemoryGrid.send_and_receive``, not overridden) over replies made in
    process: each pull returns one reply, and records how many replies the strategy had started work on."""

    def __init__(self, clients: Clients, started: list) -> None:  # no LinkState: only what the loop reads
        self.pull_interval = 0.0
        self.answers = Answers(clients)
        self.waiting: dict[str, Message] = {}
        self.started = started
        self.started_at_pull: list[int] = []

    def get_node_ids(self):
        return list(NODES)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())  # as InMemoryGrid does
            self.waiting[msg.metadata.message_id] = self.answers(msg)
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        self.started_at_pull.append(len(self.started))
        for mid in message_ids:
            if mid in self.waiting:
                return [self.waiting.pop(mid)]
        return []


class OpaqueGrid:
    """A grid of its own (not Flower's loop): the strategy cannot see arrivals and judges after the last reply."""

    def __init__(self, clients: Clients) -> None:
        self.answers = Answers(clients)

    def get_node_ids(self):
        return list(NODES)

    def send_and_receive(self, messages, timeout=None):
        return [self.answers(m) for m in messages]


def _strategy(tmp_path, clients, name) -> LedgerStrategy:
    inner = FedAvg(min_available_nodes=4, min_train_nodes=4, fraction_evaluate=1.0, min_evaluate_nodes=4)
    return LedgerStrategy(
        inner,
        ledger=f"sqlite:///{tmp_path / name}",
        keyring=clients.keyring,
        server_key=Ed25519PrivateKey.generate(),
        federation_id="fed-arrivals",
    )


def _spy_prepare_soon(monkeypatch) -> list:
    started = []
    real = Judge.prepare_soon

    def spy(self, work):
        started.append(work)
        return real(self, work)

    monkeypatch.setattr(Judge, "prepare_soon", spy)
    return started


def _reasons(uri: str) -> list[tuple[str, int, str, str, str]]:
    """Every update entry's (kind, round, node, verdict, reason), after the ledger verified and replayed."""
    with open_ledger(uri) as led:
        assert verify(led, blobs=True).blocks == led.block_count()  # raises on any inconsistency
        assert all(r.status == OK for r in audit(led).rounds)
        return sorted(
            (e.kind, e.round, e.node_id, e.verdict, e.reason)
            for block in led.blocks(0, None)
            for e in entries_of(led, block.header)
            if isinstance(e, UpdateEntry)
        )


def test_each_reply_is_worked_on_as_it_arrives_with_the_same_verdicts(tmp_path, monkeypatch):
    clients = Clients(len(NODES))
    started = _spy_prepare_soon(monkeypatch)
    grid = PulledGrid(clients, started)
    s = _strategy(tmp_path, clients, "early.db")
    s.start(grid, arrays(1), num_rounds=2)
    uri = s.ledger.uri
    s.close()
    # every reply (4 train, 4 evaluate per round) was started when pulled, before the next pull
    assert len(started) == 2 * 2 * len(NODES)
    for phase in range(4):
        pulls = grid.started_at_pull[phase * 4 : phase * 4 + 4]
        assert pulls == [phase * 4 + i for i in range(4)], grid.started_at_pull
    early = _reasons(uri)
    tampered = [r for r in early if r[0] == "train" and r[2] == "44"]
    assert len(tampered) == 2 and all(r[3] == "rejected" for r in tampered), early  # caught on the early path too
    assert sum(r[3] == "accepted" for r in early) == len(early) - 2

    clients_again = clients  # the same keys, judged only after the last reply (no arrivals seen)
    started.clear()
    late = _strategy(tmp_path, clients_again, "late.db")
    late.start(OpaqueGrid(clients_again), arrays(1), num_rounds=2)
    uri_late = late.ledger.uri
    late.close()
    assert started == []
    assert _reasons(uri_late) == early


def test_work_started_for_another_round_is_not_used(tmp_path, monkeypatch):
    clients = Clients(len(NODES))
    s = _strategy(tmp_path, clients, "stale.db")
    grid = OpaqueGrid(clients)
    msgs = list(s.configure_train(1, arrays(1), ConfigRecord({}), grid))
    replies = grid.send_and_receive(msgs)
    s._write_behind = True  # as inside start()
    s._await("train", 1)
    s._on_replies(replies)
    stale = dict(s._arrived)
    assert len(stale) == len(NODES)
    s._write_behind = False
    s.aggregate_train(1, replies)  # consumes the early work of round 1
    assert s._arrived == {}
    # the same message objects again, with early work recorded under round 1's bounds, judged as round 2
    msgs2 = list(s.configure_train(2, arrays(2), ConfigRecord({}), grid))
    replies2 = grid.send_and_receive(msgs2)
    s._arrived.update({id(m): (m, stale_entry[1], stale_entry[2]) for m, stale_entry in zip(replies2, stale.values())})
    parsed = []
    from flower_chain.strategies import ledger_strategy

    real = ledger_strategy.parse.from_message

    def spy(msg, kind, **kw):
        parsed.append(msg)
        return real(msg, kind, **kw)

    monkeypatch.setattr(ledger_strategy.parse, "from_message", spy)
    s.aggregate_train(2, replies2)
    assert parsed == list(replies2)  # every reply parsed again: round 1's work does not count for round 2
    s.close()


def test_a_grid_of_its_own_keeps_its_send_and_receive(tmp_path):
    calls = []

    class Own:
        def send_and_receive(self, messages, *, timeout=None):
            calls.append(timeout)
            return ["reply"]

        def pull_messages(self, ids):
            raise AssertionError("never pulled through the wrapper")

    seen = []
    grid = ArrivalGrid(Own(), seen.append)
    assert grid.send_and_receive([], timeout=7.0) == ["reply"]
    assert calls == [7.0] and seen == []
    assert grid.wrapped.__class__ is Own


def test_flower_loop_settings_are_the_wrapped_grids(tmp_path):
    clients = Clients(len(NODES))
    inner = PulledGrid(clients, [])
    inner.pull_interval = 0.25
    seen = []
    grid = ArrivalGrid(inner, seen.append)
    assert grid.pull_interval == 0.25  # Flower's loop sleeps what the wrapped grid says
    assert list(grid.get_node_ids()) == NODES


def test_verify_workers_1_keeps_every_check_on_the_calling_thread(tmp_path, monkeypatch):
    """Review 5 D2: ``verify_workers=1`` means no worker thread, early work included."""
    import threading

    from flower_chain.strategies import ledger_strategy

    clients = Clients(len(NODES))
    threads = set()
    real = ledger_strategy.parse.from_message

    def spy(msg, kind, **kw):
        threads.add(threading.current_thread().name)
        return real(msg, kind, **kw)

    monkeypatch.setattr(ledger_strategy.parse, "from_message", spy)
    inner = FedAvg(min_available_nodes=4, min_train_nodes=4, fraction_evaluate=0.0)
    s = LedgerStrategy(
        inner,
        ledger=f"sqlite:///{tmp_path / 'one.db'}",
        keyring=clients.keyring,
        server_key=Ed25519PrivateKey.generate(),
        verify_workers=1,
    )
    s.start(PulledGrid(clients, []), arrays(1), num_rounds=1)
    s.close()
    assert threads == {threading.current_thread().name}, threads


def test_an_evaluate_phase_without_replies_awaits_nothing_and_unused_work_is_cancelled(tmp_path):
    """Review 5 D3/D4: no round stays awaited after a phase without replies; work not taken is cancelled."""
    from concurrent.futures import Future

    clients = Clients(len(NODES))
    s = _strategy(tmp_path, clients, "empty.db")
    grid = OpaqueGrid(clients)
    list(s.configure_train(1, arrays(1), ConfigRecord({}), grid))
    s._write_behind = True  # as inside start()
    s._await("evaluate", 1)
    assert s._awaiting is not None
    pending = Future()
    s._arrived[1] = (None, s._awaiting, pending)
    s.aggregate_evaluate(1, [])
    assert s._awaiting is None and s._arrived == {} and pending.cancelled()
    s._write_behind = False
    s.close()


def test_a_failing_callback_never_loses_pulled_replies(caplog):
    """Review 5 D5: the replies go on as pulled, the failure is logged."""

    class Inner(PulledGrid):
        def __init__(self):
            self.pull_interval = 0.0

        def pull_messages(self, message_ids):
            return ["r1", "r2"]

    def broken(_msgs):
        raise RuntimeError("pool shut down")

    with caplog.at_level("WARNING"):
        assert ArrivalGrid(Inner(), broken).pull_messages(["a"]) == ["r1", "r2"]
    assert any("could not start early" in r.getMessage() for r in caplog.records)


def test_only_a_loop_that_pulls_through_self_and_assigns_nothing_on_it_is_run_with_the_wrapper():
    """Review 5: a Flower release whose loop keeps state on ``self`` is delegated to, not run on the wrapper."""
    from flwr.superlink.grid.http_grid import HttpGrid

    from flower_chain.strategies.arrivals import pulls_through_self

    assert pulls_through_self(InMemoryGrid.send_and_receive) and pulls_through_self(HttpGrid.send_and_receive)

    def keeps_state(self, messages, *, timeout=None):
        self.last = list(self.pull_messages([]))
        return self.last

    def sets_attr(self, messages, *, timeout=None):
        setattr(self, "n", 1)  # noqa: B010
        return self.pull_messages([])

    def no_pull(self, messages, *, timeout=None):
        return self.receive(messages)

    assert not pulls_through_self(keeps_state)
    assert not pulls_through_self(sets_attr)
    assert not pulls_through_self(no_pull)
    assert not pulls_through_self(len)  # no source to read

    class Changed(PulledGrid):
        send_and_receive = keeps_state

    seen = []
    grid = ArrivalGrid(Changed(Clients(1), []), seen.append)
    grid.send_and_receive([], timeout=1.0)  # delegated: the wrapped grid's own loop, on itself
    assert seen == [] and grid.wrapped.last == []

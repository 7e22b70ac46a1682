"""What the signing mod tells the person running a node, through Flower's logger (issue 22, requests-H R3/R4).

* the key a node signs with: one INFO line per key and ClientApp process, never one per message;
* a node without a usable key: one ERROR line per round naming the key it looked for, and an error reply
  (recorded ``client-error`` by the server), never an exception whose traceback Flower logs per message.
"""

from __future__ import annotations

import logging

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Context, RecordDict

from flower_chain.clients.signing import ENV_KEY, make_signing_mod
from flower_chain.ledger.keys import generate, key_id, load_private
from flower_chain.strategies import LedgerStrategy
from flower_chain.wire import SIG_RECORD
from tests.support.fl_helpers import Clients, FakeGrid, arrays, fedavg, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.fixture
def strategy():
    s = LedgerStrategy(
        fedavg(fraction_evaluate=1.0, min_evaluate_nodes=1),
        ledger="memory:",
        keyring=Clients(1).keyring,
        server_key=Ed25519PrivateKey.generate(),
        min_accepted=0,
    )
    yield s
    s.core.close()


def _instruction(strategy, rnd: int = 1):
    return list(strategy.configure_train(rnd, arrays(0), ConfigRecord({}), FakeGrid([7])))[0]


def _ctx(**node_config):
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 0, "num-partitions": 1, **node_config},
        state=RecordDict(),
        run_config={},
    )


def _flwr_lines(caplog, level):
    return [r.getMessage() for r in caplog.records if r.name == "flwr" and r.levelno == level]


def test_the_key_a_node_signs_with_is_one_info_line_through_flowers_logger(strategy, tmp_path, monkeypatch, caplog):
    monkeypatch.delenv(ENV_KEY, raising=False)
    path, _ = generate(tmp_path, "client-0")
    kid = key_id(load_private(path))
    mod = make_signing_mod(receipts_dir=tmp_path / "receipts")
    msg = _instruction(strategy)
    with caplog.at_level(logging.INFO, logger="flwr"):
        for _ in range(3):  # three messages to the same node: one line
            reply = mod(msg, _ctx(**{"signing-key": str(path)}), lambda m, c: train_reply(m, arrays(1), 5))
            assert SIG_RECORD in reply.content
    lines = [x for x in _flwr_lines(caplog, logging.INFO) if "signs with key" in x]
    assert lines == [f"flower-chain: node 7 signs with key {kid} ({path})"], caplog.text


def test_each_key_of_a_simulation_process_is_named_once(strategy, tmp_path, monkeypatch, caplog):
    """Virtual nodes of one simulation process share the mod: each key is named once, with its own path."""
    paths = [generate(tmp_path, f"client-{i}")[0] for i in range(2)]
    monkeypatch.setenv(ENV_KEY, str(tmp_path))
    mod = make_signing_mod(receipts_dir=tmp_path / "receipts")
    msg = _instruction(strategy)
    with caplog.at_level(logging.INFO, logger="flwr"):
        for _ in range(2):
            for i in range(2):
                ctx = Context(
                    run_id=1,
                    node_id=7,
                    node_config={"partition-id": i, "num-partitions": 2},
                    state=RecordDict(),
                    run_config={},
                )
                mod(msg, ctx, lambda m, c: train_reply(m, arrays(1), 5))
    lines = sorted(x for x in _flwr_lines(caplog, logging.INFO) if "signs with key" in x)
    assert lines == sorted(f"flower-chain: node 7 signs with key {key_id(load_private(p))} ({p})" for p in paths)


def _keyless_round(mod, strategy, rnd, ctx, trained):
    """Train and evaluate instructions of round ``rnd`` to a node: the replies."""
    from flwr.app import Message

    train = _instruction(strategy, rnd)
    evaluate = list(strategy.configure_evaluate(rnd, arrays(0), ConfigRecord({}), FakeGrid([7])))[0]
    assert isinstance(evaluate, Message)
    return [mod(m, ctx, lambda m, c: trained.append(1) or train_reply(m, arrays(1), 5)) for m in (train, evaluate)]


@pytest.mark.parametrize(
    "setting, reason",
    [
        ({}, "no signing key: set node config 'signing-key'"),
        ({"signing-key": "/nonexistent/keys/client-2.key"}, "/nonexistent/keys/client-2.key not found"),
    ],
)
def test_a_node_without_a_key_replies_errors_with_one_line_per_round(strategy, monkeypatch, caplog, setting, reason):
    """No traceback: nothing is raised (Flower would log each exception's traceback, once per message)."""
    monkeypatch.delenv(ENV_KEY, raising=False)
    mod, trained = make_signing_mod(), []
    with caplog.at_level(logging.INFO):
        replies = [r for rnd in (1, 2) for r in _keyless_round(mod, strategy, rnd, _ctx(**setting), trained)]
    assert trained == [], "a node that cannot sign must not train"
    for reply in replies:
        assert reply.has_error() and reply.error.code == 2  # ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        assert reply.error.reason.startswith("KeyFileError: ") and reason in reply.error.reason
    errors = _flwr_lines(caplog, logging.ERROR)
    assert len(errors) == 2, errors  # one per round, train and evaluate of a round share it
    for rnd, line in zip((1, 2), errors):
        assert (
            line.startswith(
                f"flower-chain: this node cannot sign round {rnd}, its replies are errors "
                "(the server records client-error): "
            )
            and reason in line
        ), line
    assert "Traceback" not in caplog.text and not [r for r in caplog.records if r.exc_info]


def test_the_server_records_a_keyless_reply_as_client_error(strategy, monkeypatch):
    """The error reply is judged ``client-error`` with the key problem as its detail, the run goes on."""
    from flower_chain.ledger import decode_entry

    monkeypatch.delenv(ENV_KEY, raising=False)
    msg = _instruction(strategy)
    reply = make_signing_mod()(
        msg, _ctx(**{"signing-key": "/nonexistent/client-2.key"}), lambda m, c: train_reply(m, arrays(1), 5)
    )
    strategy.aggregate_train(1, [reply])
    entries = [decode_entry(d) for d in strategy.core.ledger.entries()]
    train = [e for e in entries if getattr(e, "kind", None) == "train"]
    assert [(e.verdict, e.reason) for e in train] == [("rejected", "client-error")], train
    assert "/nonexistent/client-2.key not found" in train[0].detail


def test_a_key_that_appears_later_is_used(strategy, tmp_path, monkeypatch):
    """Nothing about the missing key is cached: once the key file exists, the node signs."""
    monkeypatch.delenv(ENV_KEY, raising=False)
    mod, key = make_signing_mod(receipts_dir=tmp_path / "r"), tmp_path / "client-0.key"
    msg = _instruction(strategy)
    ctx = _ctx(**{"signing-key": str(key)})
    assert mod(msg, ctx, lambda m, c: train_reply(m, arrays(1), 5)).has_error()
    generate(tmp_path, "client-0")
    assert SIG_RECORD in mod(msg, ctx, lambda m, c: train_reply(m, arrays(1), 5)).content


def test_copies_of_the_mod_pickled_per_message_share_the_process_state(strategy, tmp_path, monkeypatch, caplog):
    """Flower's simulation pickles the ClientApp (its mods by value) with every message it hands a Ray worker:
    the copies share the key, receipts and the log line of the process (issue 21: no cold start per message)."""
    cloudpickle = pytest.importorskip("cloudpickle")
    monkeypatch.delenv(ENV_KEY, raising=False)
    path, _ = generate(tmp_path, "client-0")
    kid = key_id(load_private(path))
    blob = cloudpickle.dumps(make_signing_mod(receipts_dir=tmp_path / "receipts"))
    with caplog.at_level(logging.INFO, logger="flwr"):
        for rnd in (1, 2, 3):  # a fresh copy per message, as a Ray worker receives it
            copy = cloudpickle.loads(blob)
            reply = copy(
                _instruction(strategy, rnd),
                _ctx(**{"signing-key": str(path)}),
                lambda m, c: train_reply(m, arrays(1), 5),
            )
            assert SIG_RECORD in reply.content
            strategy.aggregate_train(rnd, [reply])
    lines = [x for x in _flwr_lines(caplog, logging.INFO) if "signs with key" in x]
    assert lines == [f"flower-chain: node 7 signs with key {kid} ({path})"], caplog.text

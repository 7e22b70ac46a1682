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
    s = LedgerStrategy(fedavg(), ledger="memory:", keyring=Clients(1).keyring, server_key=Ed25519PrivateKey.generate())
    yield s
    s.core.close()


def _instruction(strategy, rnd: int = 1):
    return list(strategy.configure_train(rnd, arrays(0), ConfigRecord({}), FakeGrid([7])))[0]


def _ctx(**node_config):
    return Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 1, **node_config},
                   state=RecordDict(), run_config={})


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
                ctx = Context(run_id=1, node_id=7, node_config={"partition-id": i, "num-partitions": 2},
                              state=RecordDict(), run_config={})
                mod(msg, ctx, lambda m, c: train_reply(m, arrays(1), 5))
    lines = sorted(x for x in _flwr_lines(caplog, logging.INFO) if "signs with key" in x)
    assert lines == sorted(f"flower-chain: node 7 signs with key {key_id(load_private(p))} ({p})" for p in paths)

"""The signing mod on its own: key lookup and clear errors, pass-through for plain Flower servers."""

from __future__ import annotations

import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from flower_chain.clients.signing import ENV_KEY, signing_mod
from flower_chain.ledger.errors import KeyFileError
from flower_chain.ledger.keys import generate
from flower_chain.strategies import LedgerStrategy
from flower_chain.wire import SIG_RECORD
from tests.support.fl_helpers import Clients, FakeGrid, arrays, fedavg, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")


def _instruction(ledger: bool):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    inner = fedavg()
    if ledger:
        inner = LedgerStrategy(
            inner, ledger="memory:", keyring=Clients(1).keyring, server_key=Ed25519PrivateKey.generate()
        )
    return list(inner.configure_train(1, arrays(0), ConfigRecord({}), FakeGrid([7])))[0]


def _ctx(**node_config):
    return Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 0, "num-partitions": 1, **node_config},
        state=RecordDict(),
        run_config={},
    )


def test_plain_flower_server_replies_pass_through_unsigned(monkeypatch):
    monkeypatch.delenv(ENV_KEY, raising=False)
    msg = _instruction(ledger=False)
    reply = signing_mod(msg, _ctx(), lambda m, c: train_reply(m, arrays(1), 5))
    assert SIG_RECORD not in reply.content


def test_missing_key_is_a_clear_error_at_the_first_message(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_KEY, raising=False)
    msg = _instruction(ledger=True)
    trained = []

    # an error reply whose reason is the KeyFileError (the server records client-error), not an exception whose
    # traceback Flower would log once per message (issue 22; tests/integration/clients/test_signing_log.py)
    def key_error(reply):
        assert reply.has_error() and reply.error.reason.startswith(f"{KeyFileError.__name__}: "), reply
        return reply.error.reason

    assert "signing-key" in key_error(
        signing_mod(msg, _ctx(), lambda m, c: trained.append(1) or train_reply(m, arrays(1), 5))
    )
    assert "not found" in key_error(
        signing_mod(
            msg,
            _ctx(**{"signing-key": str(tmp_path / "nope.key")}),
            lambda m, c: trained.append(1) or train_reply(m, arrays(1), 5),
        )
    )
    bad = tmp_path / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n")
    assert "not a readable" in key_error(
        signing_mod(
            msg, _ctx(**{"signing-key": str(bad)}), lambda m, c: trained.append(1) or train_reply(m, arrays(1), 5)
        )
    )
    assert trained == [], "a key problem must stop the node before it trains"


def test_key_directory_means_the_partitions_key(monkeypatch, tmp_path):
    generate(tmp_path, "client-0")
    monkeypatch.setenv(ENV_KEY, str(tmp_path))
    msg = _instruction(ledger=True)
    reply = signing_mod(msg, _ctx(), lambda m, c: train_reply(m, arrays(1), 5))
    assert SIG_RECORD in reply.content
    assert (tmp_path / "receipts").is_dir()  # receipts are kept beside the key


def test_key_discovery_from_the_run_config_and_relative_paths(tmp_path, monkeypatch):
    """Simulation without environment variables: the run config names the `keys init` directory; a relative
    path that does not exist says which working directory it was resolved against."""
    from flower_chain.clients.signing import RUN_CONFIG_KEYS, key_path_for

    monkeypatch.delenv(ENV_KEY, raising=False)
    generate(tmp_path / "keys" / "clients", "client-3")
    ctx = Context(
        run_id=1,
        node_id=5,
        node_config={"partition-id": 3},
        state=RecordDict(),
        run_config={RUN_CONFIG_KEYS: str(tmp_path / "keys")},
    )
    assert key_path_for(ctx) == tmp_path / "keys" / "clients" / "client-3.key"
    monkeypatch.chdir(tmp_path / "keys")
    rel = Context(
        run_id=1, node_id=5, node_config={"partition-id": 3}, state=RecordDict(), run_config={RUN_CONFIG_KEYS: "keys"}
    )
    with pytest.raises(KeyFileError, match=f"relative path 'keys'.*{tmp_path / 'keys'}.*absolute path"):
        key_path_for(rel)
    # the run config may name the `keys init` directory or its clients/ (as FLOWER_CHAIN_SIGNING_KEY may)
    clients = Context(
        run_id=1,
        node_id=5,
        node_config={"partition-id": 3},
        state=RecordDict(),
        run_config={RUN_CONFIG_KEYS: str(tmp_path / "keys" / "clients")},
    )
    assert key_path_for(clients) == tmp_path / "keys" / "clients" / "client-3.key"
    monkeypatch.setenv("FLOWER_CHAIN_SIGNING_KEY", str(tmp_path / "keys"))
    assert key_path_for(rel) == tmp_path / "keys" / "clients" / "client-3.key"  # and the environment beats it

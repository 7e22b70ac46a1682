"""``ledger summary`` and ``ledger audit`` print the recorded strategy settings and flag those that void or invert
the clients' contributions (issue 19, item 6): a server learning rate of -1 audits bit for bit, and must be said."""

from __future__ import annotations

import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.serverapp.strategy import FedAvgM
from typer.testing import CliRunner

from flower_chain.cli import app
from flower_chain.strategies import LedgerStrategy
from tests.support.fl_helpers import Clients

pytestmark = pytest.mark.usefixtures("task_identity")


def cli(*args):
    r = CliRunner().invoke(app, list(map(str, args)))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.output


def ledger_with(tmp_path, **settings) -> str:
    uri = f"sqlite:///{tmp_path}/l.db"
    s = LedgerStrategy(
        FedAvgM(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0, **settings),
        ledger=uri,
        keyring=Clients(2).keyring,
        server_key=Ed25519PrivateKey.generate(),
        federation_id="fed-s",
    )
    s.core.close()
    return uri


def test_honest_settings_are_printed_without_finding(tmp_path):
    uri = ledger_with(tmp_path)
    code, out = cli("ledger", "summary", uri)
    assert code == 0 and "server_learning_rate=1.0" in out and "SETTING" not in out, out
    code, out = cli("ledger", "audit", uri)
    assert "settings: FedAvgM(" in out and "SETTING" not in out, out


@pytest.mark.parametrize("lr,phrase", [(-1.0, "inverts every client's contribution"), (0.0, "voids")])
def test_a_server_learning_rate_that_voids_or_inverts_is_flagged(tmp_path, lr, phrase):
    uri = ledger_with(tmp_path, server_learning_rate=lr)
    code, out = cli("ledger", "summary", uri)
    assert code == 0 and f"SETTING server_learning_rate = {lr}: {phrase}" in " ".join(out.split()), out
    code, out = cli("ledger", "audit", uri)
    assert f"SETTING server_learning_rate = {lr}: {phrase}" in " ".join(out.split()), out
    code, out = cli("ledger", "summary", uri, "--json")
    data = json.loads(out)
    assert data["settings"]["server_learning_rate"] == lr and len(data["settings_findings"]) == 1


def test_summary_prints_the_settings_digest_a_node_pins(tmp_path):
    from flower_chain.ledger import open_ledger
    from flower_chain.ledger.writer import read_genesis

    uri = ledger_with(tmp_path, server_learning_rate=1.0)
    ledger = open_ledger(uri)
    digest = read_genesis(ledger).config_digest.hex()
    ledger.close()
    code, out = cli("ledger", "summary", uri)
    assert code == 0 and f"settings digest (a node pins it: settings-digest): {digest}\n" in out
    code, out = cli("ledger", "summary", uri, "--json")
    assert code == 0 and json.loads(out)["settings_digest"] == digest

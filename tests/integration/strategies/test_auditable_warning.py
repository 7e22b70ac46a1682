"""The start-of-run warning line (issue 19 item 1): logged once for a new ledger that `ledger audit` cannot re-derive."""

import logging

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.serverapp.strategy import FedAvg

from flower_chain.strategies import LedgerStrategy
from tests.support.fl_helpers import Clients

pytestmark = pytest.mark.usefixtures("task_identity")


def warnings_of(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "will not be auditable" in r.getMessage()
    ]


def start(tmp_path, caplog, **opts) -> list[str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        s = LedgerStrategy(
            FedAvg(),
            ledger=f"sqlite:///{tmp_path / 'l.db'}",
            keyring=Clients(2).keyring,
            server_key=Ed25519PrivateKey.generate(),
            **opts,
        )
    s.close()
    return warnings_of(caplog)


def test_fedavg_storing_updates_is_auditable_no_warning(tmp_path, caplog):
    assert start(tmp_path, caplog) == []


def test_store_client_updates_false_logs_the_one_line(tmp_path, caplog):
    lines = start(tmp_path, caplog, store_client_updates=False)
    assert len(lines) == 1
    assert lines[0].startswith("flower-chain: this run will not be auditable: store_client_updates=False")
    assert "NOT AUDITED" in lines[0]


def start_legacy(tmp_path, caplog, **opts) -> list[str]:
    from flwr.server.strategy import FedAvg as LegacyFedAvg

    from flower_chain.strategies import LegacyLedgerStrategy

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        s = LegacyLedgerStrategy(
            LegacyFedAvg(),
            ledger=f"sqlite:///{tmp_path / 'legacy.db'}",
            keyring=Clients(2).keyring,
            server_key=Ed25519PrivateKey.generate(),
            **opts,
        )
    s.core.close()
    return warnings_of(caplog)


def test_legacy_fedavg_no_warning_and_store_client_updates_false_the_one_line(tmp_path, caplog):
    assert start_legacy(tmp_path / "a", caplog) == []
    lines = start_legacy(tmp_path / "b", caplog, store_client_updates=False)
    assert len(lines) == 1 and "store_client_updates=False" in lines[0]

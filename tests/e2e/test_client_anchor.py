"""Clients check the chain: the signing mod compares the head block it is sent with the anchor published on an
EVM chain for that height (eth-tester in process always; a real anvil node when installed)."""

from __future__ import annotations

import logging
import sys

import pytest

pytest.importorskip("web3")
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from flower_chain.anchor.evm import AnchorError, EvmAnchor  # noqa: E402
from flower_chain.anchor.publish import catch_up  # noqa: E402
from flower_chain.clients.receipts import AnchorReader  # noqa: E402
from flower_chain.clients.signing import make_signing_mod  # noqa: E402
from flower_chain.serve.background import free_port  # noqa: E402
from flower_chain.strategies import LedgerStrategy  # noqa: E402
from flower_chain.wire import COSIGNATURE, SIG_RECORD  # noqa: E402
from tests.e2e.test_anchor import ANVIL_KEY, TESTER_KEY, anvil  # noqa: E402,F401 - the anvil fixture
from tests.integration.witness.test_witnessing import FED, Side, counts, errors_log, fork_of  # noqa: E402
from tests.support.fl_helpers import Clients, fedavg  # noqa: E402

pytestmark = pytest.mark.usefixtures("task_identity")


def _run_split_view(tmp_path, url: str, key: str, *, owner_override: str | None = None):
    """Fork A is anchored; fork B (same genesis and server key) is served to clients that check the chain."""
    server_key = Ed25519PrivateKey.generate()
    clients = Clients(6)
    receipts = tmp_path / "receipts"
    a = LedgerStrategy(
        fedavg(),
        ledger=f"sqlite:///{tmp_path / 'a.db'}",
        keyring=clients.keyring,
        server_key=server_key,
        federation_id=FED,
    )
    b = LedgerStrategy(
        fedavg(),
        ledger=fork_of(a, tmp_path / "b.db"),
        keyring=clients.keyring,
        server_key=server_key,
        federation_id=FED,
    )
    chain = EvmAnchor(url, federation_id=FED, private_key=key)
    owner = owner_override or chain.account.address
    mods = [
        make_signing_mod(k, receipts_dir=receipts, anchor=url, anchor_contract=chain.address, anchor_owner=owner)
        for k in clients.keys
    ]
    side_a = Side(a, clients.keys[:3], mods[:3], [{}] * 3)
    side_b = Side(b, clients.keys[3:], mods[3:], [{}] * 3)
    catch_up(a.ledger, chain)  # the genesis (common to both forks)
    return a, b, chain, side_a, side_b, receipts


def _split_view_is_caught(tmp_path, url, key, caplog):
    a, b, chain, side_a, side_b, receipts = _run_split_view(tmp_path, url, key)
    try:
        with caplog.at_level(logging.DEBUG, logger="flower_chain.clients.receipts"):
            side_a.round(1)
            side_b.round(1, nodes=[301, 302, 303])  # both sent the anchored genesis: no error
            catch_up(a.ledger, chain)  # A's round-1 block is anchored
            side_b.round(2, nodes=[301, 302, 303])  # B's height-1 block is not the anchored one
            side_a.round(2)  # A's head (height 1) matches its anchor
            side_a.round(3)  # A's height 2 is not anchored yet: not an error
        assert "is not anchored yet" in caplog.text
        for k, reply in zip(side_a.keys, side_a.replies[3]):
            assert counts(receipts, k) == {"receipts": 2, "errors": 0}, errors_log(receipts, k)
            assert COSIGNATURE in reply.content[SIG_RECORD]
        for k, reply in zip(side_b.keys, side_b.replies[2]):
            assert counts(receipts, k)["errors"] == 1
            assert "differs from the one anchored on chain" in errors_log(receipts, k)
            assert COSIGNATURE not in reply.content[SIG_RECORD]  # no cosignature for a forked checkpoint
    finally:
        a.core.close()
        b.core.close()


def test_split_view_against_the_anchor_eth_tester(tmp_path, caplog):
    _split_view_is_caught(tmp_path, "evm+tester:", TESTER_KEY, caplog)


def test_split_view_against_the_anchor_anvil(tmp_path, anvil, caplog):  # noqa: F811 - the fixture
    _split_view_is_caught(tmp_path, anvil.url, ANVIL_KEY, caplog)


def test_a_contract_of_another_owner_or_federation_is_an_error(tmp_path):
    a, b, chain, side_a, side_b, receipts = _run_split_view(
        tmp_path, "evm+tester:", TESTER_KEY, owner_override="0x" + "11" * 20
    )
    try:
        side_a.round(1)
        for k in side_a.keys:
            assert counts(receipts, k)["errors"] == 1
            assert "is owned by" in errors_log(receipts, k) and "not by the configured owner" in errors_log(receipts, k)
        # a LedgerAnchor of another federation
        other = EvmAnchor("evm+tester:", federation_id="fed-other", private_key=TESTER_KEY)
        mod = make_signing_mod(
            side_b.keys[0], receipts_dir=receipts, anchor="evm+tester:", anchor_contract=other.address
        )
        side_b.mods = [mod]
        side_b.keys = side_b.keys[:1]
        side_b.node_configs = [{}]
        side_b.round(1, nodes=[301])
        assert counts(receipts, side_b.keys[0])["errors"] == 1
        assert "anchors another federation" in errors_log(receipts, side_b.keys[0])
    finally:
        a.core.close()
        b.core.close()


def test_an_unreachable_node_is_a_warning_not_an_error(tmp_path, caplog):
    clients = Clients(1)
    s = LedgerStrategy(
        fedavg(), ledger="memory:", keyring=clients.keyring, server_key=Ed25519PrivateKey.generate(), federation_id=FED
    )
    try:
        url = f"evm+http://127.0.0.1:{free_port()}"
        side = Side(
            s,
            clients.keys,
            [
                make_signing_mod(
                    clients.keys[0], receipts_dir=tmp_path / "r", anchor=url, anchor_contract="0x" + "22" * 20
                )
            ],
            [{}],
        )
        with caplog.at_level(logging.WARNING, logger="flower_chain.clients.receipts"):
            reply = side.round(1, nodes=[201])[0]
        assert "cannot reach" in caplog.text
        assert counts(tmp_path / "r", clients.keys[0])["errors"] == 0
        assert SIG_RECORD in reply.content  # signed as usual
    finally:
        s.core.close()


def test_anchor_settings_and_missing_web3(tmp_path, monkeypatch):
    with pytest.raises(AnchorError, match="anchor-contract"):
        AnchorReader("evm+tester:", "")
    with pytest.raises(AnchorError, match="evm\\+http"):
        AnchorReader("http://127.0.0.1:8545", "0x" + "22" * 20)
    monkeypatch.setitem(sys.modules, "web3", None)  # as if the evm extra were not installed
    with pytest.raises(AnchorError, match="needs web3"):
        AnchorReader("evm+tester:", "0x" + "22" * 20)

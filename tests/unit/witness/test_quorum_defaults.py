"""Issue 19 item 7: where witnesses are configured the quorum is on by default — a node given witness keys
needs one cosignature per checkpoint, the server's witnessing wants every witness, ``verify --witness`` one."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Context, RecordDict

from flower_chain.clients.settings import witness_settings
from flower_chain.ledger import open_ledger
from flower_chain.ledger.cosignature import cosigner_verifier_key
from flower_chain.strategies.witnessing import Witnessing


def _vkey(name: str) -> str:
    return cosigner_verifier_key(name, Ed25519PrivateKey.generate().public_key())


def test_witness_keys_alone_turn_the_quorum_on(monkeypatch):
    monkeypatch.delenv("FLOWER_CHAIN_WITNESS_QUORUM", raising=False)
    monkeypatch.delenv("FLOWER_CHAIN_WITNESS_KEYS", raising=False)
    keys = f"{_vkey('w.test/a')},{_vkey('w.test/b')}"
    ctx = Context(run_id=1, node_id=1, node_config={"witness-keys": keys}, state=RecordDict(), run_config={})
    parsed, quorum = witness_settings(ctx)
    assert len(parsed) == 2 and quorum == 1  # not 0: a checkpoint without a cosignature is refused
    bare = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    assert witness_settings(bare) == ([], 0)  # no witness configured: nothing to require
    ledger = open_ledger("memory:", create=True)
    ws = Witnessing(ledger, [("http://127.0.0.1:1", _vkey("w.test/a")), ("http://127.0.0.1:2", _vkey("w.test/b"))])
    assert ws.quorum == 2  # the server's default: every configured witness
    ws.close()

"""The signing mod checks what it received (model digest, receipts) while the ClientApp trains (issue 21 §2)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord

from flower_chain.clients import signing
from flower_chain.ledger.entries import UpdateStatement
from flower_chain.wire import SIG_RECORD, STATEMENT, record_digest
from tests.support.fl_helpers import FakeGrid, context, fedavg, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")


def _instruction():
    from flower_chain.strategies import LedgerStrategy

    key = Ed25519PrivateKey.generate()
    from flower_chain.ledger.keys import key_id, raw_public

    strategy = LedgerStrategy(
        fedavg(),
        ledger="memory:",
        keyring={key_id(key): raw_public(key)},
        server_key=Ed25519PrivateKey.generate(),
        federation_id="fed-bg",
    )
    msg = next(iter(strategy.configure_train(1, model(0), ConfigRecord({}), FakeGrid([101]))))
    return strategy, key, msg


def model(seed: int) -> ArrayRecord:
    """2.4 MB (three v2 chunks) and a 0-d counter."""
    return ArrayRecord(
        {
            "w": Array(np.random.default_rng(seed).standard_normal(600_000).astype(np.float32)),
            "n": Array(np.asarray(seed, np.int64)),
        }
    )


def test_the_received_model_is_hashed_and_checked_while_the_client_app_trains(tmp_path, monkeypatch):
    strategy, key, msg = _instruction()
    hashed, checked = [], threading.Event()
    real_digest, real_check = signing.array_digest, signing.ReceiptKeeper.check

    def digest_spy(named, *version):
        hashed.append((threading.current_thread().name, version))
        return real_digest(named, *version)

    def check_spy(self, *a, **kw):
        result = real_check(self, *a, **kw)
        checked.set()
        return result

    monkeypatch.setattr(signing, "array_digest", digest_spy)
    monkeypatch.setattr(signing.ReceiptKeeper, "check", check_spy)
    out = model(7)

    def train(m, c):
        # the checks finish while this app is still training (it waits for them, which a serial mod would not allow)
        assert checked.wait(60), "the receipt checks must run while the ClientApp trains"
        return train_reply(m, out, 10)

    reply = signing.make_signing_mod(key, receipts_dir=tmp_path)(msg, context(101), train)
    assert [v for _, v in hashed] == [(2,)]  # the received model, in the server's ledger's digest version
    assert hashed[0][0].startswith("flower-chain-instruction-check")
    st = UpdateStatement.from_bytes(reply.content[SIG_RECORD][STATEMENT])
    assert st.base_digest == record_digest(msg.content["arrays"]) and st.arrays_digest == record_digest(out)
    aggregated, _ = strategy.aggregate_train(1, [reply])  # accepted: the server hashes in the same version
    assert aggregated is not None


def test_the_checks_see_the_instruction_as_sent_not_as_the_client_app_changed_it(tmp_path, monkeypatch):
    _, key, msg = _instruction()
    seen = []
    real = signing.ReceiptKeeper.check
    gate = threading.Event()

    def spy(self, federation_id, config, **kw):
        assert gate.wait(60)
        seen.append(dict(config))
        return real(self, federation_id, config, **kw)

    monkeypatch.setattr(signing.ReceiptKeeper, "check", spy)
    sent = dict(msg.content["config"])

    def meddling(m, c):
        for name in list(m.content["config"].keys()):
            m.content["config"][name] = "changed by the app"
        gate.set()  # only now may the background check read its config
        return train_reply(m, model(3), 10)

    signing.make_signing_mod(key, receipts_dir=tmp_path)(msg, context(101), meddling)
    assert seen == [sent]


def test_receipt_checks_are_recorded_even_when_the_client_app_raises(tmp_path, monkeypatch):
    _, key, msg = _instruction()
    checked = []
    real = signing.ReceiptKeeper.check

    def spy(self, *a, **kw):
        checked.append(kw.get("received_digest"))
        return real(self, *a, **kw)

    monkeypatch.setattr(signing.ReceiptKeeper, "check", spy)

    def broken(m, c):
        raise RuntimeError("training failed")

    with pytest.raises(RuntimeError, match="training failed"):
        signing.make_signing_mod(key, receipts_dir=tmp_path)(msg, context(101), broken)
    assert checked == [record_digest(msg.content["arrays"])]


def test_the_anchor_is_compared_after_training(tmp_path, monkeypatch):
    """Review 5 D1: the server anchors each block off its critical path; an anchor mined while the client trained
    is still compared (it is read after training, as before the checks moved beside training)."""
    from types import SimpleNamespace

    _, key, msg = _instruction()
    published, read, reads = threading.Event(), threading.Event(), []

    class LateAnchor:
        def get(self, fid, height):
            reads.append(published.is_set())
            read.set()
            if not published.is_set():
                return None
            return SimpleNamespace(log_size=999, log_root=b"\x01" * 32, block_hash=b"\x02" * 32)

    monkeypatch.setattr(signing, "anchor_settings", lambda *a, **kw: LateAnchor())

    def train(m, c):
        read.wait(1)  # a read during training would come now (none should)
        published.set()  # the server's anchor transaction is mined while this client trains
        return train_reply(m, model(3), 10)

    signing.make_signing_mod(key, receipts_dir=tmp_path)(msg, context(101), train)
    assert reads == [True]


def test_a_forked_child_opens_its_keys_and_receipt_stores_again():
    """Review 5 D6: a fork during a check may copy a held store lock: the child starts from fresh state."""
    from flower_chain.ledger import threads

    signing._PROCESS_STATE["token"] = ({"k": object()}, {})
    signing._checks()
    assert signing._CHECKS.started
    signing._forget_checks()
    threads._forget_all()  # what the fork hooks run in the child
    assert signing._PROCESS_STATE == {} and not signing._CHECKS.started
    assert signing._checks() is not None and signing._CHECKS.started  # started again on first use

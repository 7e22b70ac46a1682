"""The wrapped strategy's own state (FedAdam moments, FedAvgM momentum, an adaptive clipping norm) is
stored beside the model after each round, its digest is in the block header, and a resume restores it:
a FedAdam run resumed from the ledger ends with the uninterrupted run's model, bit for bit."""

from __future__ import annotations

import json
import sqlite3
import subprocess

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import (
    DifferentialPrivacyServerSideAdaptiveClipping,
    FedAdam,
    FedAvg,
    FedAvgM,
)

from flower_chain.ledger import open_ledger, verify
from flower_chain.ledger.arrays import array_digest, encode_arrays
from flower_chain.ledger.errors import LedgerError
from flower_chain.strategies import LedgerCore, LedgerStrategy
from flower_chain.strategies.state import StateError, load_strategy_state, strategy_state
from tests.support.crash import env, run_args
from tests.support.fl_helpers import Clients, FakeGrid, arrays, signed_train_reply

pytestmark = pytest.mark.usefixtures("task_identity")
NODES = [11, 12, 13]


def fedadam():
    return FedAdam(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0, eta=0.05, tau=1e-3)


def run_rounds(strategy: LedgerStrategy, clients: Clients, rounds, glob):
    for rnd in rounds:
        msgs = sorted(
            strategy.configure_train(rnd, glob, ConfigRecord({}), FakeGrid(NODES)), key=lambda m: m.metadata.dst_node_id
        )
        replies = [
            signed_train_reply(m, k, arrays(100 * rnd + i), 10 + i) for i, (m, k) in enumerate(zip(msgs, clients.keys))
        ]
        glob, _ = strategy.aggregate_train(rnd, replies)
    return glob


def same(a, b) -> bool:
    return array_digest(a) == array_digest(b)


def named(record) -> list:
    return [(k, v.numpy()) for k, v in record.items()]


def test_fedadam_state_recorded_each_round_and_restored(tmp_path):
    clients, key = Clients(3), Ed25519PrivateKey.generate()
    uri = f"sqlite:///{tmp_path / 'l.db'}"
    s = LedgerStrategy(fedadam(), ledger=uri, keyring=clients.keyring, server_key=key, federation_id="fed-s")
    run_rounds(s, clients, [1, 2], arrays(0))
    saved = strategy_state(s.strategy)
    assert {n.split("/")[1] for n, _ in saved} == {"m_t", "v_t"}
    head = s.ledger.head().header
    assert head.state_after == array_digest(saved) and s.ledger.has_blob(head.state_after)
    s.close()

    with open_ledger(uri) as led:  # the digest is in the signed header: verify reports it
        assert verify(led).state_digest == array_digest(saved)
    core = LedgerCore(uri, clients.keyring, key)
    restored = fedadam()
    load_strategy_state(restored, core.resume_state())
    assert same(strategy_state(restored), saved)
    assert all(isinstance(restored.m_t[k], np.ndarray) for k in restored.m_t)
    core.close()


def test_resumed_fedadam_continues_exactly(tmp_path):
    """Rounds 1-2, stop, a new process's strategy restored from the ledger, round 3: the same model and
    moments as one strategy running rounds 1-3."""
    clients, key = Clients(3), Ed25519PrivateKey.generate()
    one = LedgerStrategy(fedadam(), ledger="memory:", keyring=clients.keyring, server_key=key)
    want = run_rounds(one, clients, [1, 2, 3], arrays(0))
    # FedAdam computes in float64 (NumPy 2 promotion); the global model stays float32, every reply accepted
    assert want["w"].dtype == "float32" and one.round_stats(3)["accepted"] == 3
    uri = f"sqlite:///{tmp_path / 'l.db'}"
    first = LedgerStrategy(fedadam(), ledger=uri, keyring=clients.keyring, server_key=key)
    run_rounds(first, clients, [1, 2], arrays(0))
    first.close()
    second = LedgerStrategy(fedadam(), ledger=uri, keyring=clients.keyring, server_key=key, resume=True)
    load_strategy_state(second.strategy, second.core.resume_state())
    got = run_rounds(second, clients, [3], second.resume_arrays())
    assert same(named(got), named(want))
    assert same(strategy_state(second.strategy), strategy_state(one.strategy))

    fresh = LedgerStrategy(
        fedadam(), ledger=f"sqlite:///{tmp_path / 'f.db'}", keyring=clients.keyring, server_key=key
    )  # what a resume without the state would compute
    run_rounds(fresh, clients, [1, 2], arrays(0))
    fresh.strategy.m_t = fresh.strategy.v_t = None
    lost = run_rounds(fresh, clients, [3], fresh.resume_arrays())
    assert not same(named(lost), named(want))


def test_stateless_strategies_record_no_state():
    clients = Clients(3)
    s = LedgerStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0),
        ledger="memory:",
        keyring=clients.keyring,
        server_key=Ed25519PrivateKey.generate(),
    )
    run_rounds(s, clients, [1], arrays(0))
    assert s.ledger.head().header.state_after == b"" and s.core.resume_state() == []


def test_fedavgm_and_nested_dp_clipping_norm_round_trip():
    def dp(norm=0.1):
        return DifferentialPrivacyServerSideAdaptiveClipping(
            FedAvgM(server_momentum=0.9), noise_multiplier=0.1, num_sampled_clients=3, initial_clipping_norm=norm
        )

    m = FedAvgM(server_momentum=0.9)
    m.momentum_vector = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float64)]
    wrapped = dp(0.7)
    wrapped.clipping_norm = 0.123456789
    wrapped.strategy.momentum_vector = [np.full(4, 2.5, np.float32)]
    for original, blank in ((m, FedAvgM(server_momentum=0.9)), (wrapped, dp())):
        saved = strategy_state(original)
        load_strategy_state(blank, saved)
        assert same(strategy_state(blank), saved)
    assert blank.clipping_norm == 0.123456789 and blank.strategy.momentum_vector[0].tolist() == [2.5] * 4


class Custom(FedAvg):
    """A user's strategy with its own state, through the state_dict protocol."""

    def __init__(self):
        super().__init__(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0)
        self.seen_rounds = 0
        self.ema = np.zeros(3)

    def state_dict(self):
        return {"seen_rounds": self.seen_rounds, "ema": self.ema}

    def load_state_dict(self, state):
        self.seen_rounds, self.ema = state["seen_rounds"], state["ema"]


def test_custom_state_dict_protocol():
    c = Custom()
    c.seen_rounds, c.ema = 4, np.array([0.5, 1.5, 2.5])
    d = Custom()
    load_strategy_state(d, strategy_state(c))
    assert d.seen_rounds == 4 and isinstance(d.seen_rounds, int) and d.ema.tolist() == [0.5, 1.5, 2.5]


def test_state_that_does_not_fit_is_refused(tmp_path):
    adam = fedadam()
    adam.m_t = {"w": np.ones(2)}
    saved = strategy_state(adam)
    with pytest.raises(StateError, match="does not fit FedAvg"):
        load_strategy_state(FedAvg(), saved)
    with pytest.raises(StateError, match="nested strategies"):
        load_strategy_state(FedAvg(), [("1/clipping_norm/scalar", np.asarray(0.1))])
    for bad in ("m_t", "0/m_t/tensor/w", "x/m_t/array", "0/momentum_vector/list/1"):
        with pytest.raises(StateError, match="unreadable"):
            load_strategy_state(fedadam(), [(bad, np.ones(1))])
    weird = FedAvgM()
    weird.momentum_vector = "not arrays"
    with pytest.raises(StateError, match="cannot store"):
        strategy_state(weird)


@pytest.mark.parametrize("what", ["global model", "strategy state"])
def test_tampered_or_missing_blob_stops_the_resume(tmp_path, what):
    clients, key = Clients(3), Ed25519PrivateKey.generate()
    uri = f"sqlite:///{tmp_path / 'l.db'}"
    s = LedgerStrategy(fedadam(), ledger=uri, keyring=clients.keyring, server_key=key)
    run_rounds(s, clients, [1], arrays(0))
    head = s.ledger.head().header
    digest = head.model_after if what == "global model" else head.state_after
    s.close()
    con = sqlite3.connect(tmp_path / "l.db")
    forged = encode_arrays([("w", np.zeros((8, 4), np.float32))])
    con.execute("UPDATE blobs SET data = ? WHERE digest = ?", (forged, digest))
    con.commit()
    core = LedgerCore(uri, clients.keyring, key)  # the ledger itself still verifies
    load = core.resume_arrays if what == "global model" else core.resume_state
    with pytest.raises(LedgerError, match=f"stored {what} does not match the digest"):
        load()
    con.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
    con.commit()
    con.close()
    with pytest.raises(LedgerError, match=f"{what} recorded in the ledger is not in its blob store"):
        load()
    core.close()


def test_run_py_fedadam_resume_matches_uninterrupted_run(tmp_path):
    """End to end through run.py: 3 rounds of FedAdam in one go, and 2 rounds + `--resume` to round 3."""
    keys, data = tmp_path / "keys", tmp_path / "data"

    def run(out, rounds, *extra):
        r = subprocess.run(
            run_args(out, keys, data, rounds, 3) + ["--strategy", "fedadam", *extra],
            capture_output=True,
            text=True,
            env=env(),
            timeout=900,
        )
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
        return r

    run(tmp_path / "whole", 3)
    uri = json.loads((tmp_path / "whole" / "metrics.json").read_text())["summary"]["ledger"]
    with open_ledger(uri) as led:
        want = verify(led, client_signatures=True)
    assert want.last_round == 3 and want.state_digest

    part = f"sqlite:///{tmp_path / 'part.db'}"
    run(tmp_path / "a", 2, "--ledger", part)
    r = run(tmp_path / "b", 3, "--ledger", part, "--resume")
    # the ServerApp's own log (Flower's, under `flwr run`) goes to OUT/flwr-run.log
    assert "with the strategy state of" in (tmp_path / "b" / "flwr-run.log").read_text()
    with open_ledger(part) as led:
        got = verify(led, client_signatures=True)
    assert got.last_round == 3
    assert got.model_digest == want.model_digest and got.state_digest == want.state_digest

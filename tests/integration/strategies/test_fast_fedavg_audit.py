"""A run whose rounds FedAvg's fast path aggregated is re-derived bit for bit by `ledger audit` (Flower's own
code); a fast path that differed by one bit would be a mismatch; strategies it does not cover use their own."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord
from flwr.serverapp.strategy import FedAvg, FedProx

from flower_chain.audit.replay import MISMATCH, OK, audit
from flower_chain.ledger import open_ledger, verify
from flower_chain.strategies import LedgerStrategy, fast_fedavg
from tests.support.fl_helpers import Clients, FakeGrid, signed_train_reply

pytestmark = pytest.mark.usefixtures("task_identity")
NODES = list(range(21, 27))


def model(rng) -> ArrayRecord:
    return ArrayRecord(
        {
            "w": Array(rng.standard_normal((6, 5)).astype(np.float32)),
            "w64": Array(rng.standard_normal(7)),
            "steps": Array(rng.integers(0, 100, size=3).astype(np.int32)),
            "s": Array(np.asarray(rng.standard_normal(), dtype=np.float32)),
        }
    )


def run(tmp_path, strategy, rounds=3):
    rng = np.random.default_rng(5)
    clients = Clients(len(NODES))
    uri = f"sqlite:///{tmp_path / 'fast.db'}"
    s = LedgerStrategy(strategy, ledger=uri, keyring=clients.keyring, server_key=Ed25519PrivateKey.generate())
    glob = model(rng)
    for rnd in range(1, rounds + 1):
        msgs = sorted(
            s.configure_train(rnd, glob, ConfigRecord({}), FakeGrid(NODES)), key=lambda m: m.metadata.dst_node_id
        )
        replies = [signed_train_reply(m, k, model(rng), int(rng.integers(1, 5000))) for m, k in zip(msgs, clients.keys)]
        glob, metrics = s.aggregate_train(rnd, replies)
        assert glob is not None and metrics is not None
    s.close()
    return uri


def audited(uri):
    with open_ledger(uri) as led:
        verify(led)
        return audit(led)


@pytest.mark.parametrize("make", [FedAvg, lambda **kw: FedProx(proximal_mu=0.5, **kw)], ids=["fedavg", "fedprox"])
def test_fast_path_rounds_are_rederived_bit_for_bit(tmp_path, monkeypatch, make):
    strategy = make(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0)
    assert fast_fedavg.applies(strategy)
    with monkeypatch.context() as m:  # the run never calls Flower's aggregate_train: the fast path does the work

        def refuse(*a, **k):
            raise AssertionError("Flower's aggregate_train was called")

        m.setattr(FedAvg, "aggregate_train", refuse)
        uri = run(tmp_path, strategy)
    rep = audited(uri)  # the replay runs Flower's own FedAvg on the stored updates
    assert [(r.round, r.status, r.accepted) for r in rep.rounds] == [(1, OK, 6), (2, OK, 6), (3, OK, 6)]


def test_a_fast_path_off_by_one_bit_is_a_mismatch(tmp_path, monkeypatch):
    real = fast_fedavg.weighted_arrays

    def off(arrays, factors):
        out = real(arrays, factors)
        w = out["w"]
        w.view(np.uint32)[0, 0] ^= 1  # the last bit of one float
        return out

    monkeypatch.setattr(fast_fedavg, "weighted_arrays", off)
    uri = run(tmp_path, FedAvg(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0), rounds=2)
    monkeypatch.undo()
    rep = audited(uri)
    assert [(r.round, r.status) for r in rep.rounds] == [(1, MISMATCH), (2, MISMATCH)]


def test_a_strategy_overriding_aggregate_train_runs_its_own(tmp_path):
    calls = []

    class Counting(FedAvg):
        def aggregate_train(self, server_round, replies):
            calls.append(server_round)
            return super().aggregate_train(server_round, replies)

    run(tmp_path, Counting(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0), rounds=2)
    assert calls == [1, 2]

"""Every bundled strategy replays bit for bit: the demo's partition-ordered FedAvg/FedAvgM/FedAdam (what
`python run.py` runs), Flower's legacy strategies behind LegacyLedgerStrategy (stateful ones included),
rounds over the former 64 MiB cap; `audit` says AUDITED (exit 0) only when every round was re-derived and
NOT AUDITED (exit 3) otherwise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ArrayRecord, ConfigRecord

from flower_chain.audit.replay import MISMATCH, NOT_REDERIVABLE, OK, audit
from flower_chain.clients.signing import make_signing_mod
from flower_chain.ledger import open_ledger, verify
from flower_chain.ledger.arrays import array_digest, encode_arrays
from flower_chain.ledger.entries import UpdateStatement, decode_entry, metrics_digest
from flower_chain.ledger.keys import key_id
from flower_chain.strategies import LedgerStrategy
from flower_chain.wire import (
    CTX_BASE,
    CTX_FEDERATION,
    CTX_PARENT,
    CTX_ROUND,
    LEGACY_LOSS,
    LEGACY_SIGNATURE,
    LEGACY_STATEMENT,
)
from tests.integration.audit.test_audit import _substitute_model, cli
from tests.support import dishonest
from tests.support.fl_helpers import Clients, FakeGrid, arrays, context, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")
NODES = [11, 12, 13, 14]


def partition_reply(msg, key, out: ArrayRecord, n: int, partition: int):
    """A bundled client's signed reply: it reports its partition, which the ordered strategies sort by."""
    return make_signing_mod(key)(msg, context(), lambda m, c: train_reply(m, out, n, {"partition-id": partition}))


def run_demo(tmp_path, name: str, rounds: int = 3, **opts):
    from flower_chain.app.server_app import build_strategy

    inner = build_strategy({"min-nodes": 1, "fraction-evaluate": 0.0, "fraction-train": 1.0, "strategy": name})
    clients, key = Clients(4), Ed25519PrivateKey.generate()
    uri = f"sqlite:///{tmp_path / f'{name}.db'}"
    s = LedgerStrategy(inner, ledger=uri, keyring=clients.keyring, server_key=key, federation_id="demo", **opts)
    glob = arrays(0)
    order = sorted(range(4), key=lambda i: key_id(clients.keys[i]))
    for rnd in range(1, rounds + 1):
        msgs = sorted(
            s.configure_train(rnd, glob, ConfigRecord({}), FakeGrid(NODES)), key=lambda m: m.metadata.dst_node_id
        )
        # partitions run against key order, so the partition sort changes the order of the float sums
        replies = [
            partition_reply(m, k, arrays(100 * rnd + i), 10 + 7 * i, 3 - order.index(i))
            for i, (m, k) in enumerate(zip(msgs, clients.keys))
        ]
        glob, _ = s.aggregate_train(rnd, replies[::-1])
    s.close()
    return uri, key, type(inner).__name__


@pytest.mark.parametrize("name", ["fedavg", "fedavgm", "fedadam"])
def test_the_demo_strategies_are_audited_bit_for_bit(tmp_path, name):
    uri, key, cls = run_demo(tmp_path, name)
    assert cls.startswith("Ordered")  # the default `python run.py` strategies, not plain Flower ones
    with open_ledger(uri) as led:
        verify(led)
        rep = audit(led)
    assert [(r.round, r.status, r.accepted) for r in rep.rounds] == [(1, OK, 4), (2, OK, 4), (3, OK, 4)], rep.rounds
    assert rep.audited and rep.updates_replayed == 12
    r = cli("ledger", "audit", uri)
    assert r.returncode == 0 and f"AUDITED {uri}: 3 of 3 train rounds re-derived bit for bit with {cls}" in r.stdout
    r = cli("ledger", "audit", uri, "--strict")
    assert r.returncode == 0, r.stdout + r.stderr
    # and a substituted model is caught in these strategies too
    model = [("w", np.full((8, 4), 0.5, np.float32)), ("b", np.zeros(4, np.float32))]
    fake = array_digest(model)
    dishonest.put_blob(uri, fake, encode_arrays(model))
    dishonest.rewrite(uri, key, _substitute_model(3, fake))
    r = cli("ledger", "audit", uri)
    assert r.returncode == 1 and "NOT RE-DERIVED round 3 (block 3)" in r.stderr and "AUDIT FAILED" in r.stderr


def test_the_partition_order_is_what_is_replayed(tmp_path, monkeypatch):
    """A server whose "OrderedFedAvg" aggregates in key order instead of partition order records other bits:
    the replay, which sorts by the recorded partitions as the bundled strategy does, names every round."""
    from flwr.serverapp.strategy import FedAvg

    import flower_chain.app.server_app as server_app

    class OrderedFedAvg(FedAvg):  # same name, no partition sort
        pass

    monkeypatch.setattr(server_app, "OrderedFedAvg", OrderedFedAvg)
    uri, _, cls = run_demo(tmp_path, "fedavg")
    assert cls == "OrderedFedAvg"
    with open_ledger(uri) as led:
        rep = audit(led)
    assert [(r.round, r.status) for r in rep.rounds] == [(1, MISMATCH), (2, MISMATCH), (3, MISMATCH)], rep.rounds


def test_a_round_over_64_mib_is_stored_and_audited(tmp_path):
    """The former default kept no update of a round over 64 MiB (4 ResNet-18-sized updates exceed it)."""
    from flwr.app import Array

    from flower_chain.ledger.arrays import array_meta  # noqa: F401 - the model template is the global model's

    clients, key = Clients(4), Ed25519PrivateKey.generate()
    uri = f"sqlite:///{tmp_path / 'big.db'}"
    from flwr.serverapp.strategy import FedAvg

    s = LedgerStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0),
        ledger=uri,
        keyring=clients.keyring,
        server_key=key,
    )
    size = 17 * 2**20 // 4  # float32 values per update: 4 x 17 MiB = 68 MiB in the round
    glob = ArrayRecord({"w": Array(np.zeros(size, np.float32))})
    msgs = sorted(s.configure_train(1, glob, ConfigRecord({}), FakeGrid(NODES)), key=lambda m: m.metadata.dst_node_id)
    replies = [
        make_signing_mod(k)(
            m,
            context(),
            lambda mm, c, i=i: train_reply(mm, ArrayRecord({"w": Array(np.full(size, i + 1, np.float32))}), 10),
        )
        for i, (m, k) in enumerate(zip(msgs, clients.keys))
    ]
    s.aggregate_train(1, replies)
    s.close()
    with open_ledger(uri) as led:
        h = led.head().header
        accepted = [decode_entry(d) for d in led.entries(h.first_index, h.log_size)]
        assert all(led.has_blob(e.arrays_digest) for e in accepted if getattr(e, "verdict", "") == "accepted")
        rep = audit(led)
    assert [(r.round, r.status, r.accepted) for r in rep.rounds] == [(1, OK, 4)]


# --- legacy (flwr.server.strategy behind LegacyLedgerStrategy) ----------------------------------------------


class _Proxy:
    def __init__(self, node_id):
        self.node_id, self.cid = node_id, str(node_id)


class _Manager:
    def __init__(self, n):
        self.proxies = [_Proxy(100 + i) for i in range(n)]

    def num_available(self):
        return len(self.proxies)

    def sample(self, num_clients, min_num_clients=None, criterion=None):
        return self.proxies[:num_clients]


def legacy_fit_res(ins, key, out, n):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    metrics = {"loss": 0.5}
    cfg = ins.config
    st = UpdateStatement(
        "train",
        str(cfg[CTX_FEDERATION]),
        int(cfg[CTX_ROUND]),
        key_id(key),
        bytes(cfg[CTX_PARENT]),
        bytes(cfg[CTX_BASE]),
        array_digest([(str(i), a) for i, a in enumerate(out)]),
        n,
        metrics_digest(metrics),
    ).to_bytes()
    return FitRes(
        Status(Code.OK, ""),
        ndarrays_to_parameters(out),
        n,
        {**metrics, LEGACY_STATEMENT: st, LEGACY_SIGNATURE: key.sign(st)},
    )


def legacy_eval_res(ins, key, loss, n):
    from flwr.common import Code, EvaluateRes, Status

    metrics = {"acc": 0.5 + loss}
    cfg = ins.config
    st = UpdateStatement(
        "evaluate",
        str(cfg[CTX_FEDERATION]),
        int(cfg[CTX_ROUND]),
        key_id(key),
        bytes(cfg[CTX_PARENT]),
        b"",
        b"",
        n,
        metrics_digest({**metrics, LEGACY_LOSS: loss}),
    ).to_bytes()
    return EvaluateRes(Status(Code.OK, ""), loss, n, {**metrics, LEGACY_STATEMENT: st, LEGACY_SIGNATURE: key.sign(st)})


def run_legacy(tmp_path, make, rounds=3, failures_in=(), evaluate=False, **opts):
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

    from flower_chain.strategies import LegacyLedgerStrategy

    clients, key = Clients(3), Ed25519PrivateKey.generate()
    uri = f"sqlite:///{tmp_path / 'legacy.db'}"
    model = [np.ones((8, 4), np.float32), np.zeros(4, np.float32)]
    s = LegacyLedgerStrategy(
        make(ndarrays_to_parameters(model)),
        ledger=uri,
        keyring=clients.keyring,
        server_key=key,
        federation_id="legacy",
        **opts,
    )
    params = s.initialize_parameters(_Manager(3)) or ndarrays_to_parameters(model)
    for rnd in range(1, rounds + 1):
        pairs = s.configure_fit(rnd, params, _Manager(3))
        rng = np.random.default_rng(rnd)
        results = [
            (
                proxy,
                legacy_fit_res(
                    ins,
                    k,
                    [rng.standard_normal((8, 4)).astype(np.float32), rng.standard_normal(4).astype(np.float32)],
                    5 + 3 * i,
                ),
            )
            for i, ((proxy, ins), k) in enumerate(zip(pairs, clients.keys))
        ]
        failures = [RuntimeError("node lost")] if rnd in failures_in else []
        new, _ = s.aggregate_fit(rnd, results, failures)
        params = new if new is not None else params
        if evaluate:
            pairs = s.configure_evaluate(rnd, params, _Manager(3))
            s.aggregate_evaluate(
                rnd,
                [
                    (proxy, legacy_eval_res(ins, k, 0.1 * (i + 1) / rnd, 4 + i))
                    for i, ((proxy, ins), k) in enumerate(zip(pairs, clients.keys))
                ],
                [],
            )
    s.close()
    return uri, key, parameters_to_ndarrays(params)


def _legacy(name, **kw):
    import flwr.server.strategy as legacy

    base = {"min_available_clients": 3, "min_fit_clients": 3, "min_evaluate_clients": 3}
    return lambda initial: getattr(legacy, name)(
        **base,
        **kw,
        **({"initial_parameters": initial} if name in ("FedAdam", "FedAvgM", "FedYogi", "FedAdagrad") else {}),
    )


@pytest.mark.parametrize(
    "name,kw",
    [
        ("FedAvg", {}),
        ("FedAvg", {"accept_failures": False}),
        ("FedAdam", {"eta": 0.05, "tau": 1e-3}),
        ("FedYogi", {"eta": 0.05}),
        ("FedAvgM", {"server_momentum": 0.9, "server_learning_rate": 0.7}),
        ("FedMedian", {}),
        ("FedTrimmedAvg", {"beta": 0.34}),
        ("Krum", {"num_malicious_clients": 0, "num_clients_to_keep": 2}),
    ],
    ids=["fedavg", "fedavg-no-failures", "fedadam", "fedyogi", "fedavgm", "fedmedian", "fedtrimmedavg", "krum"],
)
def test_legacy_ledgers_are_audited_bit_for_bit(tmp_path, name, kw):
    uri, _, _ = run_legacy(tmp_path, _legacy(name, **kw), failures_in=(2,))
    with open_ledger(uri) as led:
        verify(led)
        rep = audit(led)
    assert [(r.round, r.status) for r in rep.rounds] == [(1, OK), (2, OK), (3, OK)], rep.rounds
    r = cli("ledger", "audit", uri)
    assert r.returncode == 0 and f"3 of 3 train rounds re-derived bit for bit with {name}" in r.stdout, r.stderr


def test_legacy_federated_evaluation_is_replayed_and_a_changed_summary_fails(tmp_path):
    uri, key, _ = run_legacy(tmp_path, _legacy("FedAvg"), evaluate=True)
    with open_ledger(uri) as led:
        rep = audit(led)
    assert [(r.round, r.kind, r.status) for r in rep.rounds] == [
        (1, "train", OK),
        (1, "evaluate", OK),
        (2, "train", OK),
        (2, "evaluate", OK),
        (3, "train", OK),
        (3, "evaluate", OK),
    ], rep.rounds
    r = cli("ledger", "audit", uri)
    assert r.returncode == 0 and "3 of 3 train rounds and 3 of 3 federated evaluations re-derived" in r.stdout

    def better_loss(blocks):
        for _, entries in blocks:
            for i, e in enumerate(entries):
                if e.TYPE == "evaluation" and e.round == 2:
                    entries[i] = type(e)(
                        round=e.round, source=e.source, num_replies=e.num_replies, metrics={**e.metrics, "loss": 0.001}
                    )

    dishonest.rewrite(uri, key, better_loss)
    with open_ledger(uri) as led:
        rep = audit(led)
    assert [(r.round, r.kind) for r in rep.mismatches] == [(2, "evaluate")]
    assert "federated evaluation summary" in rep.mismatches[0].detail


def test_a_legacy_stateful_round_with_a_substituted_model_fails_and_later_rounds_are_named(tmp_path):
    uri, key, _ = run_legacy(tmp_path, _legacy("FedAdam", eta=0.05, tau=1e-3), rounds=3)
    model = [("0", np.full((8, 4), 0.5, np.float32)), ("1", np.zeros(4, np.float32))]
    fake = array_digest(model)
    dishonest.put_blob(uri, fake, encode_arrays(model))
    dishonest.rewrite(uri, key, _substitute_model(2, fake))
    with open_ledger(uri) as led:
        rep = audit(led)
    assert [(r.round, r.status) for r in rep.rounds][:2] == [(1, OK), (2, MISMATCH)]


def test_a_legacy_stateful_chain_broken_by_a_missing_update_is_not_audited(tmp_path):
    uri, _, _ = run_legacy(tmp_path, _legacy("FedAdam", eta=0.05, tau=1e-3), rounds=3)
    blocks = dishonest.train_blocks(dishonest.read_blocks(uri))
    victim = next(e for fields, entries in blocks if fields["round"] == 2 for e in entries if e.verdict == "accepted")
    dishonest.drop_blob(uri, victim.arrays_digest)
    with open_ledger(uri) as led:
        rep = audit(led)
    assert [(r.round, r.status) for r in rep.rounds] == [(1, OK), (2, NOT_REDERIVABLE), (3, NOT_REDERIVABLE)]
    assert "state of the legacy strategy after round 2 could not be re-derived" in rep.rounds[2].detail
    r = cli("ledger", "audit", uri, "--json")
    j = json.loads(r.stdout)
    assert r.returncode == 3 and j["audited"] is False and j["exit_code"] == 3
    assert [x["round"] for x in j["not_rederivable"]] == [2, 3] and j["rounds_rederived"] == [1]


def test_not_replayable_strategy_is_not_audited_with_exit_3(tmp_path):
    from tests.integration.audit.test_audit import Opaque, honest, kw

    uri, _, _ = honest(tmp_path, Opaque(**kw()))
    r = cli("ledger", "audit", uri)
    assert r.returncode == 3 and "NOT AUDITED" in r.stderr and "0 of 3 train rounds re-derived" in r.stderr
    assert "not re-derived: rounds 1, 2, 3: Opaque is neither one of Flower's strategies" in r.stderr, r.stderr
    assert cli("ledger", "audit", uri, "--strict").returncode == 1


def _saving_fedavg():
    import flwr.server.strategy as legacy

    class SavingFedAvg(legacy.FedAvg):
        """A legacy FedAvg of one's own (requests-H R5): replayable, rebuilt from its recorded settings."""

        flower_chain_replayable = True

        def __init__(self, out_file: str = "x", **kw):
            super().__init__(**kw)
            self.out_file = out_file

        @classmethod
        def from_ledger_config(cls, config):
            s = cls(out_file=config["out_file"])
            for k, v in config.items():
                setattr(s, k, v)
            return s

    return SavingFedAvg


SavingFedAvg = _saving_fedavg()


class BrokenRebuild(SavingFedAvg):
    @classmethod
    def from_ledger_config(cls, config):
        return cls(**config, out_file="twice")  # TypeError: got multiple values for keyword argument 'out_file'


def test_a_legacy_strategy_of_ones_own_replays_with_strategy_class(tmp_path):
    uri, _, _ = run_legacy(tmp_path, lambda initial: SavingFedAvg(min_available_clients=3, min_fit_clients=3))
    with open_ledger(uri) as led:
        assert {r.status for r in audit(led, strategy_classes=[SavingFedAvg]).rounds} == {OK}
        rep = audit(led)
    assert {r.status for r in rep.rounds} == {NOT_REDERIVABLE} and "SavingFedAvg" in rep.rounds[0].detail
    r = cli("ledger", "audit", uri, "--strategy-class", "tests.integration.audit.test_replay_bundled:SavingFedAvg")
    assert r.returncode == 0 and "3 of 3 train rounds re-derived bit for bit with SavingFedAvg" in r.stdout, r.stderr


def test_a_from_ledger_config_that_raises_is_not_audited_never_a_traceback(tmp_path):
    uri, _, _ = run_legacy(tmp_path, lambda initial: BrokenRebuild(min_available_clients=3, min_fit_clients=3))
    r = cli("ledger", "audit", uri, "--strategy-class", "tests.integration.audit.test_replay_bundled:BrokenRebuild")
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr
    assert "BrokenRebuild.from_ledger_config fails on the recorded settings: TypeError" in r.stderr, r.stderr


def test_counts_keep_train_rounds_and_evaluations_apart(tmp_path):
    """Issue 19 item 8: a run with 1 train round and 1 federated evaluation said "2 of 1 train rounds"."""
    from tests.adversarial.test_hostile_replies_and_records import _evaluated

    _, uri = _evaluated(tmp_path)
    with open_ledger(uri) as led:
        rep = audit(led)
    assert [(r.round, r.kind, r.status) for r in rep.rounds] == [(1, "train", OK), (1, "evaluate", OK)]
    assert len(rep.train_rounds) == 1 and len(rep.train_rederived) == 1 and len(rep.evaluations) == 1
    r = cli("ledger", "audit", uri)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 of 1 train rounds and 1 of 1 federated evaluations re-derived bit for bit" in r.stdout, r.stdout
    j = json.loads(cli("ledger", "audit", uri, "--json").stdout)
    assert j["rounds_rederived"] == [1] and j["evaluations_rederived"] == [1] and j["train_rounds"] == 1

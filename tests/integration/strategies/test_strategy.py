"""LedgerStrategy: one test per reason code where the check must fire, honest replies that must pass,
bit-for-bit equality with plain FedAvg, and wrapping of Flower's other strategies."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flwr_strategies

from flower_chain.ledger import UpdateEntry, decode_entry, open_ledger, verify
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.inspect import summary
from flower_chain.ledger.keys import key_id
from flower_chain.strategies import LedgerStrategy
from flower_chain.strategies.core import TooFewAcceptedError
from flower_chain.wire import CTX_FEDERATION, CTX_PARENT, SIG_RECORD, SIGNATURE
from tests.support.fl_helpers import (
    Clients,
    FakeGrid,
    arrays,
    copy_config,
    fedavg,
    signed_train_reply,
    with_content,
)

NODES = [101, 102, 103, 104]


pytestmark = pytest.mark.usefixtures("task_identity")


class Setup:
    def __init__(self, inner=None, uri="memory:", n=4, verify_workers=None):
        self.clients = Clients(n)
        self.server_key = Ed25519PrivateKey.generate()
        self.strategy = LedgerStrategy(
            inner or fedavg(),
            ledger=uri,
            keyring=self.clients.keyring,
            server_key=self.server_key,
            federation_id="fed-a",
            verify_workers=verify_workers,
        )
        self.global_arrays = arrays(0)

    def instructions(self, rnd):
        msgs = list(
            self.strategy.configure_train(
                rnd, self.global_arrays, ConfigRecord({"lr": 0.1}), FakeGrid(NODES[: len(self.clients.keys)])
            )
        )
        return sorted(msgs, key=lambda m: m.metadata.dst_node_id)

    def honest(self, rnd, msgs=None):
        msgs = msgs or self.instructions(rnd)
        return [
            signed_train_reply(m, k, arrays(10 * rnd + i), 10 + i)
            for i, (m, k) in enumerate(zip(msgs, self.clients.keys))
        ]

    def aggregate(self, rnd, replies):
        """aggregate_train, then send the result next round, as Flower's strategy loop does."""
        agg, metrics = self.strategy.aggregate_train(rnd, replies)
        if agg is not None:
            self.global_arrays = agg
        return agg, metrics

    def block_entries(self):
        head = self.strategy.ledger.head().header
        return [decode_entry(e) for e in self.strategy.ledger.entries(head.first_index, head.log_size)]


def by_key(replies):
    """Replies in signing-key order: the order LedgerStrategy hands accepted replies to the inner strategy."""
    from flower_chain.ledger.entries import UpdateStatement

    return sorted(replies, key=lambda r: UpdateStatement.from_bytes(r.content[SIG_RECORD]["statement"]).key_id)


def _flat(record: ArrayRecord):
    return {k: v.numpy() for k, v in record.items()}


def test_honest_round_all_accepted_and_bitwise_equal_to_fedavg():
    s = Setup()
    replies = s.honest(1)
    agg, metrics = s.strategy.aggregate_train(1, replies)
    plain, plain_metrics = fedavg().aggregate_train(1, by_key(replies))
    assert all(np.array_equal(a, b) for a, b in zip(_flat(agg).values(), _flat(plain).values()))
    assert {k: np.asarray(v).tobytes() for k, v in _flat(agg).items()} == {
        k: np.asarray(v).tobytes() for k, v in _flat(plain).items()
    }
    assert dict(metrics) == dict(plain_metrics)
    entries = s.block_entries()
    assert [e.verdict for e in entries] == ["accepted"] * 4
    assert s.strategy.round_stats(1)["accepted"] == 4
    rep = verify(s.strategy.ledger, client_signatures=True)
    assert rep.accepted == 4 and rep.client_signatures_checked == 4


def test_user_config_kept_and_context_namespaced():
    s = Setup()
    cfg = ConfigRecord({"lr": 0.1})
    msgs = list(s.strategy.configure_train(1, s.global_arrays, cfg, FakeGrid(NODES)))
    sent = msgs[0].content["config"]
    assert sent["lr"] == 0.1 and sent[CTX_FEDERATION] == "fed-a"
    assert dict(cfg.items()) == {"lr": 0.1}  # the user's record is not modified


def _attack(s: Setup, rnd: int, kind: str):
    """Return the round's replies where the first one is malicious in the way ``kind`` names."""
    if kind == "revoked-key":  # revocations are appended between rounds, never while one is open
        s.strategy.core.revoke(key_id(s.clients.keys[0]), "test")
    msgs = s.instructions(rnd)
    replies = s.honest(rnd, msgs)
    m0, k0 = msgs[0], s.clients.keys[0]
    out = arrays(999)
    if kind == "unsigned":
        replies[0] = signed_train_reply(m0, None, out, 10)
    elif kind == "bad-signature":
        rec = replies[0].content[SIG_RECORD]
        sig = bytearray(rec[SIGNATURE])
        sig[0] ^= 1
        rec[SIGNATURE] = bytes(sig)
    elif kind == "unknown-key":
        replies[0] = signed_train_reply(m0, Ed25519PrivateKey.generate(), out, 10)
    elif kind == "wrong-federation":
        m = copy_config(m0)
        m.content["config"][CTX_FEDERATION] = "fed-other"
        replies[0] = signed_train_reply(m, k0, out, 10)
    elif kind == "wrong-round":
        replies[0] = s.replayed  # signed in the previous round
    elif kind == "stale-parent":
        m = copy_config(m0)
        m.content["config"][CTX_PARENT] = b"\x07" * 32
        replies[0] = signed_train_reply(m, k0, out, 10)
    elif kind == "wrong-base-model":
        m = with_content(m0, RecordDict({"arrays": arrays(5), "config": m0.content["config"]}))
        replies[0] = signed_train_reply(m, k0, out, 10)
    elif kind == "digest-mismatch":
        replies[0].content["arrays"]["w"] = Array(np.zeros((8, 4), np.float32))
    elif kind == "num-examples-mismatch":
        replies[0].content["metrics"]["num-examples"] = 10_000
    elif kind == "duplicate":  # the same signed reply twice (replayed within the round)
        replies[1] = signed_train_reply(m0, k0, out, 10)
        replies[0] = signed_train_reply(m0, k0, out, 10)
    elif kind == "equivocation":  # one key, two different statements for the round: both rejected
        replies[1] = signed_train_reply(msgs[1], k0, out, 10)
    elif kind == "malformed-shape":
        replies[0] = signed_train_reply(m0, k0, arrays(3, (("w", (4, 8)), ("b", (4,)))), 10)
    elif kind == "malformed-nan":
        bad = arrays(3)
        w = bad["w"].numpy().copy()
        w[0, 0] = np.nan
        bad["w"] = Array(w)
        replies[0] = signed_train_reply(m0, k0, bad, 10)
    elif kind == "client-error":
        replies[0] = Message(Error(code=2, reason="boom"), reply_to=m0)
    return replies


REASONS = [
    "unsigned",
    "bad-signature",
    "unknown-key",
    "revoked-key",
    "wrong-federation",
    "wrong-round",
    "stale-parent",
    "wrong-base-model",
    "digest-mismatch",
    "num-examples-mismatch",
    "duplicate",
    "malformed-shape",
    "malformed-nan",
    "client-error",
]


@pytest.mark.parametrize("workers", [1, 3], ids=["one-thread", "three-threads"])
@pytest.mark.parametrize("kind", REASONS)
def test_each_reason_code_fires_and_aggregate_equals_fedavg_over_honest(kind, workers):
    s = Setup(verify_workers=workers)
    first = s.honest(1)
    s.replayed = first[0]
    s.aggregate(1, first)
    replies = _attack(s, 2, kind)
    agg, _ = s.strategy.aggregate_train(2, replies)
    entries = s.block_entries()
    want = kind.split("-")[0] if kind.startswith("malformed") else kind
    rejected = [e for e in entries if e.verdict == "rejected"]
    assert [e.reason for e in rejected] == [want], [(e.reason, e.detail) for e in entries]
    assert sum(e.verdict == "accepted" for e in entries) == 3
    honest = [r for r, e in zip(replies, entries) if e.verdict == "accepted"]
    plain, _ = fedavg().aggregate_train(2, by_key(honest))
    for k in ("w", "b"):
        assert agg[k].numpy().tobytes() == plain[k].numpy().tobytes()
    verify(s.strategy.ledger, client_signatures=True)


def test_threaded_checks_give_the_verdicts_of_arrival_order():
    """Hashing on worker threads must not reorder verdicts: the second reply of a key is the duplicate."""
    verdicts = []
    for workers in (1, 4):
        s = Setup(verify_workers=workers)
        msgs = s.instructions(1)
        k0 = s.clients.keys[0]
        replies = s.honest(1, msgs)
        replies[2] = signed_train_reply(msgs[2], k0, arrays(7), 10)  # key 0 again, later in arrival order
        nan = arrays(8)
        w = nan["w"].numpy().copy()
        w[1, 2] = np.inf
        nan["w"] = Array(w)
        replies[3] = signed_train_reply(msgs[3], s.clients.keys[3], nan, 10)
        s.strategy.aggregate_train(1, replies)
        verdicts.append([(e.node_id, e.verdict, e.reason) for e in s.block_entries()])
        s.strategy.close()
    assert verdicts[0] == verdicts[1]
    # key 0 signed two different statements for round 1: both of its replies are evidence, neither counts
    assert [v[2] for v in verdicts[1]] == ["equivocation", "ok", "equivocation", "malformed"]
    with pytest.raises(ValueError, match="at least 1"):
        Setup(verify_workers=0)


def test_the_global_models_dtypes_are_fixed_by_the_initial_arrays():
    """A reply in another dtype (wider, narrower, int) is malformed; the aggregate keeps the initial dtypes."""
    s = Setup()
    msgs = s.instructions(1)
    replies = s.honest(1, msgs)
    as_f64 = ArrayRecord({k: Array(v.numpy().astype(np.float64)) for k, v in arrays(1).items()})
    as_f128 = ArrayRecord({k: Array(v.numpy().astype(np.longdouble)) for k, v in arrays(2).items()})
    replies[1] = signed_train_reply(msgs[1], s.clients.keys[1], as_f64, 10)
    replies[2] = signed_train_reply(msgs[2], s.clients.keys[2], as_f128, 10)
    agg, _ = s.strategy.aggregate_train(1, replies)
    entries = s.block_entries()
    assert [e.reason for e in entries] == ["ok", "malformed", "malformed", "ok"]
    assert "dtype" in entries[1].detail
    assert {a.numpy().dtype for a in agg.values()} == {np.dtype(np.float32)}


def test_an_aggregate_in_another_dtype_is_cast_back():
    """FedAdam under NumPy 2 returns float64: the global model (and its digest) stay float32."""
    from flwr.serverapp.strategy import FedAdam

    s = Setup(
        inner=FedAdam(fraction_train=1.0, fraction_evaluate=0.0, min_available_nodes=1, min_train_nodes=1, eta=0.1)
    )
    msgs = s.instructions(1)
    agg, _ = s.strategy.aggregate_train(1, s.honest(1, msgs))
    assert {a.numpy().dtype for a in agg.values()} == {np.dtype(np.float32)}
    head = s.strategy.ledger.head().header
    from flower_chain.wire import record_digest

    assert head.model_after == record_digest(agg)


def test_equivocation_rejects_every_reply_of_the_key_and_keeps_both_statements():
    s = Setup()
    msgs = s.instructions(1)
    replies = s.honest(1, msgs)
    k0 = s.clients.keys[0]
    stolen = signed_train_reply(msgs[2], k0, arrays(99), 10)  # the thief is faster than the victim
    replies = [stolen] + replies
    agg, _ = s.strategy.aggregate_train(1, replies)
    entries = s.block_entries()
    assert [e.reason for e in entries] == ["equivocation", "equivocation", "ok", "ok", "ok"]
    assert entries[0].statement != entries[1].statement and entries[0].key_id == entries[1].key_id == key_id(k0)
    report = verify(s.strategy.ledger, client_signatures=True)
    assert report.equivocating_keys == {key_id(k0)}
    assert summary(s.strategy.ledger)["equivocating_keys"] == [key_id(k0)]  # `ledger summary` lists it too
    plain, _ = fedavg().aggregate_train(1, by_key(replies[2:]))
    for k in ("w", "b"):
        assert agg[k].numpy().tobytes() == plain[k].numpy().tobytes()


def test_a_round_below_min_accepted_is_recorded_then_stops_the_run():
    s = Setup()
    msgs = s.instructions(1)
    replies = [signed_train_reply(m, None, arrays(1), 5) for m in msgs]
    with pytest.raises(TooFewAcceptedError, match="0 of 4 replies accepted.*unsigned 4"):
        s.strategy.aggregate_train(1, replies)
    entries = s.block_entries()
    assert [e.reason for e in entries] == ["unsigned"] * 4
    head = s.strategy.ledger.head().header
    assert head.model_before == head.model_after


def test_evaluate_replies_are_verified_and_recorded():
    s = Setup(inner=flwr_strategies.FedAvg(min_available_nodes=1, min_train_nodes=1, min_evaluate_nodes=1))
    s.aggregate(1, s.honest(1))
    msgs = list(s.strategy.configure_evaluate(1, s.global_arrays, ConfigRecord({}), FakeGrid(NODES)))
    from flower_chain.clients.signing import make_signing_mod
    from tests.support.fl_helpers import context

    def ev(m, c):
        return Message(RecordDict({"metrics": MetricRecord({"num-examples": 10, "eval_acc": 0.5})}), reply_to=m)

    replies = [make_signing_mod(k)(m, context(), ev) for m, k in zip(msgs, s.clients.keys)]
    replies[0] = ev(msgs[0], None)  # unsigned
    metrics = s.strategy.aggregate_evaluate(1, replies)
    assert metrics["eval_acc"] == pytest.approx(0.5)
    entries = s.block_entries()
    assert entries[-1].TYPE == "evaluation" and entries[-1].num_replies == 3
    assert [e.reason for e in entries[:-1] if isinstance(e, UpdateEntry) and e.verdict == "rejected"] == ["unsigned"]


def test_ledger_changed_under_the_strategy_stops_the_run(tmp_path):
    uri = f"sqlite:///{tmp_path}/l.db"
    s = Setup(uri=uri)
    s.aggregate(1, s.honest(1))
    from flower_chain.ledger import LedgerWriter

    LedgerWriter(open_ledger(uri), s.server_key).append(1, [])
    with pytest.raises(LedgerError, match="changed under the server"):
        s.instructions(2)


def test_reopening_a_ledger_verifies_it_and_refuses_a_broken_one(tmp_path):
    import sqlite3

    uri = f"sqlite:///{tmp_path}/l.db"
    s = Setup(uri=uri)
    s.aggregate(1, s.honest(1))
    s.strategy.close()
    again = LedgerStrategy(fedavg(), ledger=uri, keyring=s.clients.keyring, server_key=s.server_key)
    assert again.federation_id == "fed-a" and again.core.last_round == 1
    with pytest.raises(LedgerError, match="already records round 1"):
        list(again.configure_train(1, s.global_arrays, ConfigRecord({}), FakeGrid(NODES)))
    again.close()
    db = sqlite3.connect(f"{tmp_path}/l.db")
    db.execute("UPDATE blocks SET signature = zeroblob(64) WHERE height = 1")
    db.commit()
    db.close()
    with pytest.raises(LedgerError, match="signature"):
        LedgerStrategy(fedavg(), ledger=uri, keyring=s.clients.keyring, server_key=s.server_key)


def _dp():
    return flwr_strategies.DifferentialPrivacyServerSideFixedClipping(
        fedavg(), noise_multiplier=0.0, clipping_norm=100.0, num_sampled_clients=4
    )


@pytest.mark.parametrize(
    "make",
    [
        fedavg,
        lambda: flwr_strategies.FedProx(min_available_nodes=1, min_train_nodes=1, proximal_mu=0.1),
        lambda: flwr_strategies.FedMedian(min_available_nodes=1, min_train_nodes=1),
        lambda: flwr_strategies.FedTrimmedAvg(min_available_nodes=1, min_train_nodes=1, beta=0.25),
        lambda: flwr_strategies.Krum(min_available_nodes=1, min_train_nodes=1, num_malicious_nodes=1),
        lambda: flwr_strategies.MultiKrum(
            min_available_nodes=1, min_train_nodes=1, num_malicious_nodes=1, num_nodes_to_select=2
        ),
        lambda: flwr_strategies.FedAdam(min_available_nodes=1, min_train_nodes=1),
        _dp,
    ],
    ids=["FedAvg", "FedProx", "FedMedian", "FedTrimmedAvg", "Krum", "MultiKrum", "FedAdam", "DPFixedClipping"],
)
def test_wraps_flower_strategies_and_matches_them(make):
    s = Setup(inner=make())
    msgs = s.instructions(1)
    replies = s.honest(1, msgs)
    replies[0] = signed_train_reply(msgs[0], None, arrays(77), 10)  # one unsigned, must not count
    honest_copy = s.honest(1, msgs)[1:]  # some strategies consume the replies they aggregate
    agg, _ = s.strategy.aggregate_train(1, replies)
    ref = make()
    list(ref.configure_train(1, s.global_arrays, ConfigRecord({}), FakeGrid(NODES)))
    plain, _ = ref.aggregate_train(1, by_key(honest_copy))
    assert list(agg.keys()) == list(plain.keys())
    for (name, a), b in zip(agg.items(), plain.values()):  # the same, in the global model's dtype (FedAdam: f64)
        assert a.numpy().dtype == s.global_arrays[name].numpy().dtype
        np.testing.assert_array_equal(a.numpy(), b.numpy().astype(a.numpy().dtype))
    assert s.strategy.round_stats(1)["rejected"] == 1


def test_min_accepted_zero_keeps_the_model_when_every_reply_is_rejected():
    s = Setup()
    s.strategy.min_accepted = 0
    msgs = s.instructions(1)
    agg, metrics = s.strategy.aggregate_train(1, [signed_train_reply(m, None, arrays(1), 5) for m in msgs])
    assert agg is None and metrics is None
    head = s.strategy.ledger.head().header
    assert head.model_before == head.model_after


def test_the_end_of_run_summary_counts_train_and_evaluate_verdicts_and_says_how_to_verify():
    s = Setup()
    s.aggregate(1, s.honest(1))
    lines = s.strategy.core.summary_lines()
    assert lines[0].startswith("flower-chain: federation fed-a, ledger memory:")
    assert "train replies: 4 accepted, 0 rejected" in lines[1]
    assert lines[-1].strip() == "verify it:  flower-chain ledger verify memory:"


def test_run_id_in_the_ledger_uri_gives_each_run_its_own_ledger(tmp_path):
    from flwr.supercore.task_identity import TaskIdentity

    clients = Clients(2)
    s = LedgerStrategy(
        fedavg(),
        ledger=f"sqlite:///{tmp_path}/ledger-{{run_id}}.db",
        keyring=clients.keyring,
        server_key=Ed25519PrivateKey.generate(),
    )
    assert (
        s.ledger.uri.endswith(f"ledger-{TaskIdentity.run_id}.db")
        and (tmp_path / f"ledger-{TaskIdentity.run_id}.db").exists()
    )
    s.close()


def test_bad_keys_are_an_error_before_anything_is_written(tmp_path, monkeypatch):
    """A missing server key or keyring (a relative path: named with the directory it was resolved against)
    stops the strategy before the ledger file exists."""
    from flower_chain.ledger.errors import KeyFileError

    monkeypatch.chdir(tmp_path)
    clients = Clients(2)
    db = tmp_path / "ledger.db"
    with pytest.raises(KeyFileError, match=f"relative path that does not exist in the working directory {tmp_path}"):
        LedgerStrategy(
            fedavg(), ledger=f"sqlite:///{db}", keyring="keys/keyring", server_key=Ed25519PrivateKey.generate()
        )
    with pytest.raises(KeyFileError, match="server_key 'keys/server/server.key' is a relative path"):
        LedgerStrategy(fedavg(), ledger=f"sqlite:///{db}", keyring=clients.keyring, server_key="keys/server/server.key")
    with pytest.raises(KeyFileError):
        LedgerStrategy(
            fedavg(), ledger=f"sqlite:///{db}", keyring=clients.keyring, server_key=tmp_path / "missing" / "server.key"
        )
    assert not db.exists() and not list(tmp_path.iterdir()), sorted(tmp_path.iterdir())


def test_the_cyclic_collector_is_paused_while_judging_and_recording_and_restored_after(monkeypatch):
    """bench/bench_scale10k.py: a third of a 10,000-reply round went to the collector re-walking the replies."""
    import gc

    from flower_chain.strategies.core import LedgerCore
    from flower_chain.strategies.recorder import Recorder

    seen = []
    for cls, name in ((LedgerCore, "judge_all"), (Recorder, "commit_train")):
        original = getattr(cls, name)

        def spy(self, *a, _original=original, _name=name, **k):
            seen.append((_name, gc.isenabled()))
            return _original(self, *a, **k)

        monkeypatch.setattr(cls, name, spy)
    s = Setup()
    assert gc.isenabled()
    s.aggregate(1, s.honest(1))
    assert seen == [("judge_all", False), ("commit_train", False)] and gc.isenabled()
    # a round that stops the run (too few accepted) still turns the collector back on
    with pytest.raises(TooFewAcceptedError):
        s.strategy.min_accepted = 5
        s.aggregate(2, s.honest(2))
    assert gc.isenabled()
    # an application that runs with the collector off keeps it off
    gc.disable()
    try:
        s.strategy.min_accepted = 1
        s.aggregate(3, s.honest(3))
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_a_round_never_configured_is_judged_and_recorded_against_the_current_model(tmp_path):
    """aggregate_train for a round configure_train never saw (direct API use): the block starts from the model
    the ledger holds, as the auditor re-derives it, and the ledger still verifies."""
    uri = f"sqlite:///{tmp_path}/l.db"
    s = Setup(uri=uri)
    msgs = s.instructions(1)
    s.aggregate(1, s.honest(1, msgs))
    model = s.strategy.ledger.head().header.model_after
    stale = s.honest(1, msgs)  # replies to round 1's instructions, handed in as round 2's
    with pytest.raises(TooFewAcceptedError):
        s.strategy.aggregate_train(2, stale)
    head = s.strategy.ledger.head().header
    assert (head.round, head.model_before, head.model_after) == (2, model, model)
    assert {e.reason for e in s.block_entries()} == {"wrong-round"}
    s.strategy.close()
    with open_ledger(uri) as led:
        verify(led, client_signatures=True)


def test_no_accepted_update_with_min_accepted_zero_leaves_model_and_state(tmp_path):
    uri = f"sqlite:///{tmp_path}/l.db"
    s = Setup(inner=flwr_strategies.FedAdam(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0), uri=uri)
    s.strategy.min_accepted = 0
    s.aggregate(1, s.honest(1))
    before = s.strategy.ledger.head().header
    msgs = s.instructions(2)
    agg, _ = s.strategy.aggregate_train(2, [signed_train_reply(m, None, arrays(1), 5) for m in msgs])
    head = s.strategy.ledger.head().header
    assert agg is None and head.model_before == head.model_after == before.model_after
    assert head.state_after == before.state_after and before.state_after
    s.strategy.close()
    with open_ledger(uri) as led:
        verify(led, client_signatures=True)

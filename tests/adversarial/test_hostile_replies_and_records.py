"""Defects an adversarial review found in this version, one test each (each failed before its fix)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from flower_chain.clients.signing import make_signing_mod
from flower_chain.ledger import decode_entry, verify
from flower_chain.ledger.entries import REJECTED
from flower_chain.ledger.errors import VerificationError
from flower_chain.strategies import LedgerStrategy
from flower_chain.strategies.core import TooFewAcceptedError
from flower_chain.strategies.judge import Judgement
from tests.support.fl_helpers import Clients, FakeGrid, arrays, context, fedavg

pytestmark = pytest.mark.usefixtures("task_identity")
NODES = [101, 102, 103, 104]


def reply(msg, key, out, metrics):
    return make_signing_mod(key)(
        msg, context(), lambda m, c: Message(RecordDict({"arrays": out, "metrics": MetricRecord(metrics)}), reply_to=m)
    )


class S:
    def __init__(self, n=4, uri="memory:", inner=None, **kw):
        self.clients = Clients(n)
        self.key = Ed25519PrivateKey.generate()
        self.strategy = LedgerStrategy(
            inner or fedavg(), ledger=uri, keyring=self.clients.keyring, server_key=self.key, federation_id="rf", **kw
        )

    def instructions(self, rnd, glob=None):
        return sorted(
            self.strategy.configure_train(
                rnd, glob or arrays(0), ConfigRecord({}), FakeGrid(NODES[: len(self.clients.keys)])
            ),
            key=lambda m: m.metadata.dst_node_id,
        )

    def entries(self):
        h = self.strategy.ledger.head().header
        return [
            e
            for e in (decode_entry(d) for d in self.strategy.ledger.entries(h.first_index, h.log_size))
            if e.TYPE == "update"
        ]


@pytest.mark.parametrize("variant", ["list-vs-number", "list-lengths", "weight-key-alias"])
def test_a_key_holders_metric_shape_cannot_crash_the_strategy(variant):
    s = S()
    msgs = s.instructions(1)
    reps = []
    for i, (m, k) in enumerate(zip(msgs, s.clients.keys)):
        met = {"num-examples": 10 + i, "acc": [0.5, 0.6] if variant == "list-lengths" else 0.5}
        if i == 0:
            met = {
                "list-vs-number": {"num-examples": 10, "acc": [0.5, 0.5]},
                "list-lengths": {"num-examples": 10, "acc": [0.5]},
                "weight-key-alias": {"num_examples": 10, "acc": 0.5},
            }[variant]
        reps.append(reply(m, k, arrays(10 + i), met))
    agg, _ = s.strategy.aggregate_train(1, reps)  # no exception escapes
    assert agg is not None
    assert [(e.verdict, e.reason) for e in s.entries()] == [("rejected", "malformed")] + [("accepted", "ok")] * 3


def test_a_tie_between_metric_schemas_rejects_both_sides():
    """Two clients, two schemas: neither outvotes the other (before: the one that sorted first won)."""
    s = S(n=2)
    msgs = s.instructions(1)
    reps = [
        reply(msgs[0], s.clients.keys[0], arrays(1), {"a": 0.0, "num-examples": 5}),
        reply(msgs[1], s.clients.keys[1], arrays(2), {"train_loss": 0.3, "num-examples": 5}),
    ]
    with pytest.raises(TooFewAcceptedError):
        s.strategy.aggregate_train(1, reps)
    assert [e.reason for e in s.entries()] == ["malformed", "malformed"]
    verify(s.strategy.ledger, client_signatures=True)


def test_honest_clients_under_a_custom_weight_key_are_accepted():
    from flwr.serverapp.strategy import FedAvg

    s = S(n=3, inner=FedAvg(weighted_by_key="n", min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0))
    msgs = s.instructions(1)
    reps = [reply(m, k, arrays(i), {"n": 10 + i, "loss": 0.1}) for i, (m, k) in enumerate(zip(msgs, s.clients.keys))]
    agg, _ = s.strategy.aggregate_train(1, reps)
    assert agg is not None and [e.reason for e in s.entries()] == ["ok"] * 3
    verify(s.strategy.ledger, client_signatures=True)


def test_clients_with_and_without_receipt_counters_are_all_accepted(tmp_path):
    s = S(n=2)
    msgs = s.instructions(1)
    with_receipts = make_signing_mod(s.clients.keys[1], receipts_dir=tmp_path / "r")
    reps = [
        reply(msgs[0], s.clients.keys[0], arrays(1), {"num-examples": 5}),
        with_receipts(
            msgs[1],
            context(),
            lambda m, c: Message(
                RecordDict({"arrays": arrays(2), "metrics": MetricRecord({"num-examples": 5})}), reply_to=m
            ),
        ),
    ]
    agg, _ = s.strategy.aggregate_train(1, reps)
    assert agg is not None and [e.reason for e in s.entries()] == ["ok", "ok"]


def test_an_evaluate_round_the_strategy_refuses_is_still_recorded():
    from flwr.serverapp.strategy import FedAvg

    from flower_chain.strategies.core import AggregationError

    s = S(inner=FedAvg(min_available_nodes=1, min_train_nodes=1, min_evaluate_nodes=1))
    msgs = list(s.strategy.configure_evaluate(1, arrays(0), ConfigRecord({}), FakeGrid(NODES)))
    reps = [
        make_signing_mod(k)(
            m,
            context(),
            lambda mm, c: Message(RecordDict({"metrics": MetricRecord({"num-examples": 5, "acc": 0.3})}), reply_to=mm),
        )
        for m, k in zip(msgs, s.clients.keys)
    ]
    before = s.strategy.ledger.block_count()
    boom = s.strategy.strategy.aggregate_evaluate

    def refuse(*a, **kw):
        boom(*a, **kw)
        raise ValueError("refused")

    s.strategy.strategy.aggregate_evaluate = refuse
    with pytest.raises(AggregationError, match="refused"):
        s.strategy.aggregate_evaluate(1, reps)
    assert s.strategy.ledger.block_count() == before + 1  # every judged reply is on the ledger


def test_a_lone_surrogate_in_a_metric_name_is_malformed_not_a_crash():
    s = S(n=2)
    msgs = s.instructions(1)
    reps = [reply(m, k, arrays(i), {"num-examples": 5}) for i, (m, k) in enumerate(zip(msgs, s.clients.keys))]
    reps[0].content["metrics"].__dict__["_data"]["x\ud800"] = 1.0
    s.strategy.aggregate_train(1, reps)
    assert [e.reason for e in s.entries()] == ["malformed", "ok"]


def test_a_server_that_calls_a_valid_signed_update_malformed_fails_verify(tmp_path):
    """Censorship disguised as 'non-finite values': the ledger holds no arrays to support it."""
    s = S(uri=f"sqlite:///{tmp_path / 'c.db'}")
    judge = s.strategy.core.judge.judge_all

    def censor(kind, rnd, replies, *prepared):
        out = judge(kind, rnd, replies, *prepared)
        j = out[0]
        e = dataclasses.replace(j.entry, verdict=REJECTED, reason="malformed", detail="array 'w' has non-finite values")
        out[0] = Judgement(False, "malformed", e.detail, e, j.verified)
        return out

    s.strategy.core.judge.judge_all = censor
    msgs = s.instructions(1)
    reps = [reply(m, k, arrays(i), {"num-examples": 5}) for i, (m, k) in enumerate(zip(msgs, s.clients.keys))]
    s.strategy.aggregate_train(1, reps)
    with pytest.raises(VerificationError, match="not supported by the ledger"):
        verify(s.strategy.ledger, client_signatures=True)


def nan_round(s: S) -> None:
    """Round 1 where client 0 returns, validly signed, arrays with a NaN."""
    msgs = s.instructions(1)
    bad = arrays(7)
    w = bad["w"].numpy().copy()
    w[0, 0] = np.nan
    bad["w"] = Array(w)
    reps = [reply(m, k, arrays(i), {"num-examples": 5}) for i, (m, k) in enumerate(zip(msgs, s.clients.keys))]
    reps[0] = reply(msgs[0], s.clients.keys[0], bad, {"num-examples": 5})
    s.strategy.aggregate_train(1, reps)


def test_a_signed_nan_update_rejected_by_an_honest_server_verifies():
    """The honest counterpart: the server keeps the rejected arrays, so the auditor re-derives 'malformed'."""
    s = S()
    nan_round(s)
    assert [e.reason for e in s.entries()][0] == "malformed"
    rep = verify(s.strategy.ledger, client_signatures=True)
    assert rep.verdicts_rederived == 4 and not rep.not_rederived


def test_an_accepted_nan_update_fails_verify_with_blobs(tmp_path):
    s = S(uri=f"sqlite:///{tmp_path / 'n.db'}", store_client_updates=True)
    judge = s.strategy.core.judge.judge_all

    def accept_all(kind, rnd, replies, *prepared):
        out = judge(kind, rnd, replies, *prepared)
        j = out[0]
        e = dataclasses.replace(j.entry, verdict="accepted", reason="ok", detail="")
        out[0] = Judgement(True, "ok", "", e, True, arrays=j.arrays)  # stored like any accepted update
        return out

    s.strategy.core.judge.judge_all = accept_all
    from flower_chain.strategies.core import AggregationError

    with pytest.raises(AggregationError, match="non-finite"):  # the NaN model itself is refused...
        nan_round(s)
    rep = verify(s.strategy.ledger, client_signatures=True)  # ...and the accepted NaN update is caught
    assert rep.arrays_unchecked == 4  # without blobs the array rules are not checked, and that is reported
    with pytest.raises(VerificationError, match="non-finite"):
        verify(s.strategy.ledger, client_signatures=True, blobs=True)


def test_a_legacy_evaluate_loss_changed_in_transit_is_a_digest_mismatch():
    """EvaluateRes.loss is aggregated by the server, so the client signs it with its metrics."""
    from flwr.common import Code, EvaluateRes, Status
    from flwr.server.strategy import FedAvg as LegacyFedAvg

    from flower_chain.ledger.entries import UpdateStatement, metrics_digest
    from flower_chain.ledger.keys import key_id
    from flower_chain.strategies import LegacyLedgerStrategy
    from flower_chain.wire import CTX_FEDERATION, CTX_PARENT, CTX_ROUND, LEGACY_LOSS, LEGACY_SIGNATURE, LEGACY_STATEMENT
    from tests.adversarial.test_reply_fuzz import _Manager

    clients = Clients(2)
    s = LegacyLedgerStrategy(
        LegacyFedAvg(min_available_clients=2, min_evaluate_clients=2),
        ledger="memory:",
        keyring=clients.keyring,
        server_key=Ed25519PrivateKey.generate(),
    )
    from flwr.common import ndarrays_to_parameters

    pairs = s.configure_evaluate(1, ndarrays_to_parameters([np.zeros(3, np.float32)]), _Manager(2))
    results = []
    for (proxy, ins), k in zip(pairs, clients.keys):
        metrics = {"acc": 0.5}
        cfg = ins.config
        st = UpdateStatement(
            "evaluate",
            str(cfg[CTX_FEDERATION]),
            int(cfg[CTX_ROUND]),
            key_id(k),
            bytes(cfg[CTX_PARENT]),
            b"",
            b"",
            7,
            metrics_digest({**metrics, LEGACY_LOSS: 0.25}),
        ).to_bytes()
        results.append(
            (
                proxy,
                EvaluateRes(
                    Status(Code.OK, ""), 0.25, 7, {**metrics, LEGACY_STATEMENT: st, LEGACY_SIGNATURE: k.sign(st)}
                ),
            )
        )
    results[1][1].loss = 0.0001  # a better loss, written in transit
    s.aggregate_evaluate(1, results, [])
    h = s.ledger.head().header
    reasons = [
        e.reason for e in (decode_entry(d) for d in s.ledger.entries(h.first_index, h.log_size)) if e.TYPE == "update"
    ]
    assert reasons == ["ok", "digest-mismatch"]


def test_strict_verify_and_audit_fail_where_accepted_arrays_were_not_checked(tmp_path):
    """--strict implies --blobs: an accepted update whose arrays are not stored leaves its array rules
    unchecked, which --strict reports as a failure (a NaN accepted by a dishonest server hides there)."""
    from typer.testing import CliRunner

    from flower_chain.cli import app as cli

    s = S(uri=f"sqlite:///{tmp_path / 'l.db'}", store_client_updates=False)
    msgs = s.instructions(1)
    s.strategy.aggregate_train(
        1, [reply(m, k, arrays(i), {"num-examples": 5}) for i, (m, k) in enumerate(zip(msgs, s.clients.keys))]
    )
    s.strategy.close()
    uri = f"sqlite:///{tmp_path / 'l.db'}"
    run = CliRunner().invoke
    assert run(cli, ["ledger", "verify", uri]).exit_code == 0
    strict = run(cli, ["ledger", "verify", uri, "--strict"])
    assert strict.exit_code == 1 and "arrays are not stored" in strict.output, strict.output
    assert run(cli, ["ledger", "audit", uri, "--strict"]).exit_code == 1


# -- the second review ------------------------------------------------------------------------------------------


def _evaluated(tmp_path):
    """Round 1 trained and evaluated by two honest clients (acc 0.5 each) on an SQLite ledger."""
    from flwr.serverapp.strategy import FedAvg

    s = S(
        n=2,
        uri=f"sqlite:///{tmp_path / 'e.db'}",
        inner=FedAvg(min_available_nodes=1, min_train_nodes=1, min_evaluate_nodes=1),
    )
    msgs = s.instructions(1)
    glob, _ = s.strategy.aggregate_train(
        1, [reply(m, k, arrays(5 + i), {"num-examples": 5}) for i, (m, k) in enumerate(zip(msgs, s.clients.keys))]
    )
    msgs = list(s.strategy.configure_evaluate(1, glob, ConfigRecord({}), FakeGrid(NODES[:2])))
    s.strategy.aggregate_evaluate(
        1,
        [
            make_signing_mod(k)(
                m,
                context(),
                lambda mm, c: Message(
                    RecordDict({"metrics": MetricRecord({"num-examples": 5, "acc": 0.5})}), reply_to=mm
                ),
            )
            for m, k in zip(msgs, s.clients.keys)
        ],
    )
    s.strategy.close()
    return s, f"sqlite:///{tmp_path / 'e.db'}"


@pytest.mark.parametrize("lie", ["count", "metrics"])
def test_a_made_up_federated_evaluation_summary_is_caught(tmp_path, lie):
    from typer.testing import CliRunner

    from flower_chain.cli import app as cli
    from flower_chain.ledger.entries import EvaluationEntry
    from tests.support.dishonest import rewrite

    s, uri = _evaluated(tmp_path)
    run = CliRunner().invoke
    assert run(cli, ["ledger", "verify", uri, "--strict"]).exit_code == 0
    assert run(cli, ["ledger", "audit", uri, "--strict"]).exit_code == 0

    def edit(blocks):
        for _, entries in blocks:
            for i, e in enumerate(entries):
                if isinstance(e, EvaluationEntry) and e.source == "federated":
                    entries[i] = dataclasses.replace(
                        e, **({"num_replies": 7} if lie == "count" else {"metrics": {"acc": 0.99}})
                    )

    rewrite(uri, s.key, edit)
    if lie == "count":
        assert run(cli, ["ledger", "verify", uri]).exit_code == 1
    else:  # the count is right: only replaying the strategy's evaluate aggregation shows the lie
        assert run(cli, ["ledger", "verify", uri]).exit_code == 0
        out = run(cli, ["ledger", "audit", uri])
        assert out.exit_code == 1 and "evaluation summary" in out.output, out.output


def test_a_nan_metric_is_malformed_and_cannot_poison_qfedavg():
    from flwr.serverapp.strategy import QFedAvg

    s = S(n=3, inner=QFedAvg(client_learning_rate=0.1, min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0))
    msgs = s.instructions(1)
    reps = [
        reply(m, k, arrays(i), {"num-examples": 5, "train_loss": float("nan") if i == 0 else 0.3})
        for i, (m, k) in enumerate(zip(msgs, s.clients.keys))
    ]
    agg, _ = s.strategy.aggregate_train(1, reps)
    assert [e.reason for e in s.entries()] == ["malformed", "ok", "ok"]
    assert all(np.isfinite(a.numpy()).all() for a in agg.values())


def test_a_non_finite_aggregate_keeps_the_model_and_stops_the_run():
    """Whatever the wrapped strategy computes (a server-side optimizer diverging), no NaN model is sent."""
    from flwr.serverapp.strategy import FedAvg

    from flower_chain.strategies.core import AggregationError

    class Diverging(FedAvg):
        def aggregate_train(self, server_round, replies):
            arrays, metrics = super().aggregate_train(server_round, replies)
            return ArrayRecord({k: Array(v.numpy() * np.float32(np.inf)) for k, v in arrays.items()}), metrics

    s = S(n=2, inner=Diverging(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0))
    msgs = s.instructions(1)
    with pytest.raises(AggregationError, match="non-finite"):
        s.strategy.aggregate_train(
            1, [reply(m, k, arrays(i), {"num-examples": 5}) for i, (m, k) in enumerate(zip(msgs, s.clients.keys))]
        )
    head = s.strategy.ledger.head().header
    assert head.model_after == head.model_before and [e.reason for e in s.entries()] == ["ok", "ok"]


def test_replays_of_an_old_reply_never_crowd_out_the_keys_receipt():
    s = S(n=1)
    glob = arrays(0)
    msgs = s.instructions(1, glob)
    old = reply(msgs[0], s.clients.keys[0], arrays(1), {"num-examples": 5})
    glob, _ = s.strategy.aggregate_train(1, [old])
    msgs = s.instructions(2, glob)
    own = reply(msgs[0], s.clients.keys[0], arrays(2), {"num-examples": 5})
    s.strategy.aggregate_train(2, [old] * 9 + [own])  # nine replays of round 1's reply, then the key's own
    kid = s.entries()[-1].key_id
    head = s.strategy.ledger.head().header
    assert s.strategy.core.update_index[(kid, 2)] == [head.first_index + 9]


def test_a_negative_legacy_num_examples_is_malformed():
    from flower_chain.strategies.legacy_replies import from_legacy

    class Res:
        metrics, num_examples, parameters = {}, -1, None

    assert "outside [1" in from_legacy(7, Res(), "evaluate", max_array_bytes=1 << 20).malformed


def test_metrics_are_bounded_so_every_entry_fits_an_entry_bundle():
    s = S(n=2)
    msgs = s.instructions(1)
    reps = [reply(m, k, arrays(i), {"num-examples": 5}) for i, (m, k) in enumerate(zip(msgs, s.clients.keys))]
    for i in range(255):
        reps[0].content["metrics"].__dict__["_data"][f"m{i:03d}" + "x" * 200] = [0.5] * 4000
    s.strategy.aggregate_train(1, reps)
    h = s.strategy.ledger.head().header
    sizes = [len(d) for d in s.strategy.ledger.entries(h.first_index, h.log_size)]
    assert s.entries()[0].reason == "malformed" and max(sizes) < 65535


def test_the_explorer_serves_a_ledger_holding_non_finite_metrics(tmp_path):
    """A NaN reached the ledger (an older version, a centralized evaluation): the explorer JSON still encodes."""
    import json

    from flower_chain.ledger import open_ledger
    from flower_chain.serve.app import explorer_data

    s = S(n=1, uri=f"sqlite:///{tmp_path / 'x.db'}")
    s.strategy.core.commit_evaluation(0, "centralized", 0, {"loss": float("nan"), "accuracy": float("inf")})
    s.strategy.close()
    with open_ledger(f"sqlite:///{tmp_path / 'x.db'}") as led:
        data = explorer_data(led, led.block_count() - 1)
    json.dumps(data, allow_nan=False)  # what Starlette's JSONResponse does


def test_a_legacy_round_with_nothing_accepted_never_reaches_the_wrapped_strategy():
    """min_accepted=0 and every reply unsigned: LegacyLedgerStrategy records the round with the model unchanged
    and does not ask the wrapped strategy to aggregate nothing (verify requires exactly that)."""
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
    from flwr.server.strategy import FedAvg as LegacyFedAvg

    from flower_chain.strategies import LegacyLedgerStrategy
    from tests.adversarial.test_reply_fuzz import _Manager

    class Spy(LegacyFedAvg):
        calls = 0

        def aggregate_fit(self, *a, **k):
            Spy.calls += 1
            return super().aggregate_fit(*a, **k)

    clients = Clients(2)
    s = LegacyLedgerStrategy(
        Spy(min_available_clients=2, min_fit_clients=2),
        ledger="memory:",
        min_accepted=0,
        keyring=clients.keyring,
        server_key=Ed25519PrivateKey.generate(),
    )
    model = [np.zeros(3, np.float32)]
    pairs = s.configure_fit(1, ndarrays_to_parameters(model), _Manager(2))
    results = [
        (proxy, FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.ones(3, np.float32)]), 5, {}))
        for proxy, _ in pairs
    ]  # no flower-chain signature: every reply is rejected as unsigned
    assert s.aggregate_fit(1, results, []) == (None, {})
    h = s.ledger.head().header
    assert Spy.calls == 0 and h.model_before == h.model_after and h.model_before
    verify(s.ledger, client_signatures=True)

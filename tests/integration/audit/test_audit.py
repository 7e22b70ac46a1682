"""Aggregation replay (`flower-chain ledger audit`): honest runs re-derive every round's model bit for bit; a
server that substitutes a model, drops an accepted update or lets a non-train block change the model fails,
naming the round, even when it re-signs everything; rounds whose inputs are not stored are reported as not
re-derivable (exit 0, or 1 with --strict)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord
from flwr.serverapp.strategy import FedAdam, FedAvg, FedTrimmedAvg, MultiKrum

from flower_chain.audit.replay import MISMATCH, NOT_REDERIVABLE, OK, NotReplayable, audit, strategy_factory
from flower_chain.ledger import open_ledger, verify
from flower_chain.ledger.arrays import array_digest, decode_arrays, encode_arrays
from flower_chain.ledger.entries import EvaluationEntry
from flower_chain.ledger.keys import key_id
from flower_chain.strategies import LedgerStrategy
from flower_chain.strategies.state import load_strategy_state
from tests.support import dishonest
from tests.support.fl_helpers import Clients, FakeGrid, arrays, signed_train_reply

pytestmark = pytest.mark.usefixtures("task_identity")
NODES = [11, 12, 13, 14]


def cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "flower_chain.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ, COLUMNS="200"),
        timeout=300,
    )


def kw(**extra):
    return {"min_available_nodes": 1, "min_train_nodes": 1, "fraction_evaluate": 0.0, **extra}


def run_rounds(strategy: LedgerStrategy, clients: Clients, rounds, glob):
    for rnd in rounds:
        msgs = sorted(
            strategy.configure_train(rnd, glob, ConfigRecord({}), FakeGrid(NODES)), key=lambda m: m.metadata.dst_node_id
        )
        replies = [
            signed_train_reply(m, k, arrays(100 * rnd + i), 10 + i) for i, (m, k) in enumerate(zip(msgs, clients.keys))
        ]
        replies.reverse()  # arrival order must not matter: the server sorts accepted replies by key id
        glob, _ = strategy.aggregate_train(rnd, replies)
    return glob


def honest(tmp_path, strategy, rounds=3, name="l.db", **opts):
    clients, key = Clients(4), Ed25519PrivateKey.generate()
    uri = f"sqlite:///{tmp_path / name}"
    s = LedgerStrategy(strategy, ledger=uri, keyring=clients.keyring, server_key=key, federation_id="fed-a", **opts)
    run_rounds(s, clients, range(1, rounds + 1), arrays(0))
    s.close()
    return uri, key, clients


def audited(uri, verified=True):
    """The audit of ``uri``; with ``verified`` the (rewritten) ledger must verify first.

    A rewrite of the last round verifies on its own: only the replay catches it. A rewrite of an earlier
    round may also be caught by the verdict re-derivation of ``verify`` (later statements name the old
    block hash as their parent); ``verified=False`` shows the replay catches it by itself.
    """
    with open_ledger(uri) as led:
        if verified:
            verify(led)
        return audit(led)


@pytest.mark.parametrize(
    "make",
    [
        lambda: FedAvg(**kw()),
        lambda: FedTrimmedAvg(**kw(beta=0.25)),
        lambda: MultiKrum(**kw(num_malicious_nodes=1, num_nodes_to_select=2)),
    ],
    ids=["fedavg", "fedtrimmedavg", "multikrum"],
)
def test_honest_runs_are_rederived(tmp_path, make):
    uri, _, _ = honest(tmp_path, make())
    rep = audited(uri)
    assert [(r.round, r.status, r.accepted) for r in rep.rounds] == [(1, OK, 4), (2, OK, 4), (3, OK, 4)]
    assert rep.updates_replayed == 12 and not rep.mismatches and not rep.not_rederived


def test_fedadam_with_resume_is_rederived(tmp_path):
    clients, key = Clients(4), Ed25519PrivateKey.generate()
    uri = f"sqlite:///{tmp_path / 'adam.db'}"

    def fedadam():
        return FedAdam(**kw(eta=0.05, tau=1e-3))

    first = LedgerStrategy(fedadam(), ledger=uri, keyring=clients.keyring, server_key=key)
    run_rounds(first, clients, [1, 2], arrays(0))
    first.close()
    second = LedgerStrategy(fedadam(), ledger=uri, keyring=clients.keyring, server_key=key, resume=True)
    load_strategy_state(second.strategy, second.core.resume_state())
    run_rounds(second, clients, [3, 4], second.resume_arrays())
    second.close()
    rep = audited(uri)
    assert [(r.round, r.status) for r in rep.rounds] == [(1, OK), (2, OK), (3, OK), (4, OK)], rep.rounds
    # the strategy state is re-derived too: a server that records other moments after round 2 fails there,
    # and round 3, replayed from those moments, no longer gives the recorded model
    with open_ledger(uri) as led:
        state = [(n, np.zeros_like(a)) for n, a in decode_arrays(led.get_blob(led.head().header.state_after))]
    fake = array_digest(state)
    dishonest.put_blob(uri, fake, encode_arrays(state))

    def edit(blocks):
        for fields, _ in dishonest.train_blocks(blocks):
            if fields["round"] == 2:
                fields["state_after"] = fake

    dishonest.rewrite(uri, key, edit)
    rep = audited(uri, verified=False)
    assert [(r.round, r.status) for r in rep.rounds] == [(1, OK), (2, MISMATCH), (3, MISMATCH), (4, OK)]
    assert "state_after" in rep.rounds[1].detail and "model_after" in rep.rounds[2].detail


def _substitute_model(server_round, fake):
    """Record ``fake`` as the model after ``server_round`` (and as the next round's input model)."""

    def edit(blocks):
        old = None
        for fields, entries in blocks:
            if fields["round"] == server_round and dishonest.train_blocks([[fields, entries]]):
                old, fields["model_after"] = fields["model_after"], fake
            elif old is not None:
                fields["model_before"] = fake if fields["model_before"] == old else fields["model_before"]
                fields["model_after"] = fake if fields["model_after"] == old else fields["model_after"]

    return edit


def test_substituted_model_after_fails_naming_the_round(tmp_path):
    uri, key, _ = honest(tmp_path, FedAvg(**kw()), rounds=4)
    model = [("w", np.full((8, 4), 0.5, np.float32)), ("b", np.zeros(4, np.float32))]
    fake = array_digest(model)
    dishonest.put_blob(uri, fake, encode_arrays(model))  # the server even stores the model it claims
    dishonest.rewrite(uri, key, _substitute_model(4, fake))
    rep = audited(uri)  # the rewritten ledger verifies: hashes, signatures, checkpoints are all re-made
    assert [(r.round, r.status) for r in rep.rounds] == [(1, OK), (2, OK), (3, OK), (4, MISMATCH)]
    assert f"model_after {fake.hex()[:16]} is not the aggregate of the 4 accepted updates" in rep.mismatches[0].detail
    r = cli("ledger", "audit", uri)
    assert r.returncode == 1 and "NOT RE-DERIVED round 4 (block 4)" in r.stderr, r.stdout + r.stderr
    j = json.loads(cli("ledger", "audit", uri, "--json").stdout)
    assert j["ok"] is False and [m["round"] for m in j["mismatches"]] == [4]


def test_substituted_model_in_an_earlier_round_is_named(tmp_path):
    uri, key, _ = honest(tmp_path, FedAvg(**kw()))
    model = [("w", np.full((8, 4), 0.5, np.float32)), ("b", np.zeros(4, np.float32))]
    fake = array_digest(model)
    dishonest.put_blob(uri, fake, encode_arrays(model))
    dishonest.rewrite(uri, key, _substitute_model(2, fake))
    rep = audited(uri, verified=False)
    # FedAvg's round 3 does not depend on its input model: re-derived from the recorded updates
    assert [(r.round, r.status) for r in rep.rounds] == [(1, OK), (2, MISMATCH), (3, OK)]


def test_dropped_accepted_update_fails(tmp_path):
    uri, key, clients = honest(tmp_path, FedAvg(**kw()))
    victim = key_id(clients.keys[2])

    def drop(blocks):
        for fields, entries in dishonest.train_blocks(blocks):
            if fields["round"] == 3:
                entries[:] = [e for e in entries if e.key_id != victim]

    dishonest.rewrite(uri, key, drop)
    rep = audited(uri)
    assert [(r.round, r.status, r.accepted) for r in rep.rounds] == [(1, OK, 4), (2, OK, 4), (3, MISMATCH, 3)]
    assert cli("ledger", "audit", uri).returncode == 1


def test_swapped_update_blob_is_not_used(tmp_path):
    """A server that stores other arrays under a client's digest: the blob fails its digest check, and the
    round fails (the store contradicts what the client signed), naming the entry."""
    uri, key, _ = honest(tmp_path, FedAvg(**kw()))
    entry = next(e for b in dishonest.train_blocks(dishonest.read_blocks(uri)) for e in b[1])
    dishonest.put_blob(
        uri, entry.arrays_digest, encode_arrays([("w", np.zeros((8, 4), np.float32)), ("b", np.zeros(4, np.float32))])
    )
    rep = audited(uri)
    assert rep.rounds[0].status == MISMATCH and "does not match its digest" in rep.rounds[0].detail
    assert f"client update of {entry.key_id} (entry " in rep.rounds[0].detail
    r = cli("ledger", "audit", uri)
    assert r.returncode == 1 and "does not match its digest (altered)" in r.stderr, r.stderr  # verify --blobs first


def test_evaluation_block_that_changes_the_model_fails(tmp_path):
    uri, key, _ = honest(tmp_path, FedAvg(**kw()), rounds=2)

    def sneak(blocks):
        last = blocks[-1][0]
        blocks.append(
            [
                {**last, "model_before": last["model_after"], "model_after": b"\x07" * 32},
                [EvaluationEntry(round=last["round"], source="centralized", num_replies=0, metrics={"accuracy": 0.9})],
            ]
        )

    dishonest.rewrite(uri, key, sneak)
    for cmd in ("verify", "audit"):  # verify catches it now (a block without an accepted update keeps the model)
        r = cli("ledger", cmd, uri)
        assert r.returncode == 1 and "accepts no train update but changes the model" in r.stdout + r.stderr, (
            r.stdout + r.stderr
        )
    with open_ledger(uri) as led:  # and the replay on its own still names it
        rep = audit(led)
    assert rep.rounds[-1].status == MISMATCH and "records no train update" in rep.rounds[-1].detail


def test_missing_updates_are_not_rederivable_and_strict_fails(tmp_path):
    uri, _, _ = honest(tmp_path, FedAvg(**kw()), store_client_updates=False)
    with open_ledger(uri) as led:
        rep = audit(led)
    assert {r.status for r in rep.rounds} == {NOT_REDERIVABLE}
    assert "4 of 4 accepted client updates are not in the blob store" in rep.rounds[0].detail
    r = cli("ledger", "audit", uri)  # never AUDITED when a round was not re-derived: NOT AUDITED, exit 3
    assert r.returncode == 3 and "AUDITED" not in r.stdout, r.stdout + r.stderr
    assert "NOT AUDITED" in r.stderr and "0 of 3 train rounds re-derived" in r.stderr, r.stderr
    assert "not re-derived: rounds 1, 2, 3: 4 of 4 accepted client updates are not in the blob store" in r.stderr
    r = cli("ledger", "audit", uri, "--strict")
    assert r.returncode == 1 and "FAILED (--strict)" in r.stderr and "not re-derived: rounds 1, 2, 3" in r.stderr


def test_config_not_stored_is_not_rederivable(federation_factory):
    f = federation_factory("sqlite")
    f.add_round(1)
    with open_ledger(f.uri) as led:
        rep = audit(led)
    assert rep.rounds[0].status == NOT_REDERIVABLE and "settings" in rep.rounds[0].detail


class Halving(FedAvg):
    """A user's strategy that declares itself replayable: FedAvg, then the model halved."""

    flower_chain_replayable = True

    def __init__(self, factor: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    @classmethod
    def from_ledger_config(cls, config):
        s = cls(factor=config["factor"])
        for k, v in config.items():
            setattr(s, k, v)
        return s

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None:
            from flwr.app import Array, ArrayRecord

            arrays = ArrayRecord({k: Array(v.numpy() * self.factor) for k, v in arrays.items()})
        return arrays, metrics


class Opaque(Halving):
    flower_chain_replayable = False


def test_custom_strategy_protocol(tmp_path):
    uri, _, _ = honest(tmp_path, Halving(**kw()))
    with open_ledger(uri) as led:
        assert {r.status for r in audit(led, strategy_classes=[Halving]).rounds} == {OK}
        assert {r.status for r in audit(led).rounds} == {NOT_REDERIVABLE}  # class not given
    r = cli("ledger", "audit", uri, "--strategy-class", "tests.integration.audit.test_audit:Halving")
    assert r.returncode == 0 and "3 of 3 train rounds re-derived" in r.stdout, r.stdout + r.stderr
    assert cli("ledger", "audit", uri, "--strategy-class", "tests.nope:X").returncode == 2
    uri2, _, _ = honest(tmp_path, Opaque(**kw()), name="o.db")
    with open_ledger(uri2) as led:
        rep = audit(led, strategy_classes=[Opaque])
    assert "does not declare itself replayable" in rep.rounds[0].detail


def test_noisy_dp_and_unrecorded_wrapped_strategy_are_not_replayable():
    with pytest.raises(NotReplayable, match="random noise"):
        strategy_factory("DifferentialPrivacyServerSideFixedClipping", {"noise_multiplier": 1.0})
    with pytest.raises(NotReplayable, match="does not record the strategy it wraps"):
        strategy_factory("DifferentialPrivacyServerSideFixedClipping", {"noise_multiplier": 0.0})
    dp = strategy_factory(
        "DifferentialPrivacyServerSideFixedClipping",
        {
            "noise_multiplier": 0.0,
            "clipping_norm": 2.0,
            "num_sampled_clients": 4,
            "strategy.class": "FedAvg",
            "strategy.fraction_train": 0.5,
        },
    )()
    assert dp.clipping_norm == 2.0 and dp.strategy.fraction_train == 0.5
    with pytest.raises(NotReplayable, match="neither one of Flower's strategies"):
        strategy_factory("SomethingElse", {})
    from flwr.server.strategy import FedAvg as LegacyFedAvg

    from flower_chain.strategies.ledger_strategy import strategy_config

    with pytest.raises(NotReplayable, match="legacy API"):  # LegacyLedgerStrategy's genesis: not replayed
        strategy_factory("FedAvg", strategy_config(LegacyFedAvg()))
    assert strategy_factory("FedAvg", strategy_config(FedAvg()))().fraction_train == 1.0


@pytest.mark.parametrize("noise", [0.0, 1.0])
def test_dp_fixed_clipping_is_rederived_without_noise(tmp_path, noise):
    from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping

    dp = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(**kw()), noise_multiplier=noise, clipping_norm=0.5, num_sampled_clients=4
    )
    uri, _, _ = honest(tmp_path, dp, rounds=2)
    rep = audited(uri)
    if noise:
        assert {r.status for r in rep.rounds} == {NOT_REDERIVABLE} and "random noise" in rep.rounds[0].detail
    else:
        assert [(r.round, r.status) for r in rep.rounds] == [(1, OK), (2, OK)], rep.rounds

"""The adversarial clients of run.py --attack, against LedgerStrategy: every cryptographic attack is
rejected with its reason code and no honest update is rejected; signed poisoning is accepted (the
signature cannot stop it) and attributed to the attackers' keys by the outlier analysis."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, RecordDict

from flower_chain.app.attacks import CRYPTO_ATTACKS, EXPECTED_REASON, make_client_mod
from flower_chain.app.setup import prepare_keys
from flower_chain.ledger.entries import decode_entry
from flower_chain.ledger.keys import Keyring, key_id, load_private
from flower_chain.ledger.outliers import attribute_outliers
from flower_chain.strategies import LedgerStrategy
from tests.support.fl_helpers import FakeGrid, arrays, fedavg, train_reply

pytestmark = pytest.mark.usefixtures("task_identity")
N, K = 5, 2
NODES = list(range(201, 201 + N))


def run_rounds(tmp_path, attack, rounds=2, strategy=None, fresh_mods=False):
    keyring = Keyring.from_path(prepare_keys(tmp_path / "keys", N))
    clients_dir = tmp_path / "keys" / "clients"
    s = LedgerStrategy(
        strategy or fedavg(),
        ledger="memory:",
        keyring=keyring,
        server_key=tmp_path / "keys" / "server" / "server.key",
        store_client_updates=True,
    )
    if fresh_mods:  # a new copy of the mod for every message, as a simulation's worker processes may have

        def mod(msg, ctx, nxt):
            return make_client_mod(attack, K)(msg, ctx, nxt)
    else:
        mod = make_client_mod(attack, K)
    glob = arrays(0)
    rng = np.random.default_rng(1)
    contexts = [
        Context(
            run_id=1,
            node_id=NODES[pid],
            state=RecordDict(),
            run_config={},  # one per node, kept
            node_config={"partition-id": pid, "num-partitions": N, "signing-key": str(clients_dir)},
        )
        for pid in range(N)
    ]
    for rnd in range(1, rounds + 1):
        msgs = sorted(
            s.configure_train(rnd, glob, ConfigRecord({}), FakeGrid(NODES)), key=lambda m: m.metadata.dst_node_id
        )
        replies = []
        for pid, m in enumerate(msgs):
            ctx = contexts[pid]

            def train(msg, c, pid=pid):  # an honest small step away from the global model
                step = {
                    k: v.numpy() + 0.01 * rng.standard_normal(v.numpy().shape).astype(np.float32)
                    for k, v in next(iter(msg.content.array_records.values())).items()
                }
                from flwr.app import Array, ArrayRecord

                return train_reply(msg, ArrayRecord({k: Array(v) for k, v in step.items()}), 10)

            replies.append(mod(m, ctx, train))
        glob, _ = s.aggregate_train(rnd, replies)
    attacker_keys = {key_id(load_private(clients_dir / f"client-{i}.key")) for i in range(K)}
    return s, attacker_keys


def entries_of_round(s, rnd):
    out = []
    for block in s.ledger.blocks():
        h = block.header
        if h.round == rnd and h.height:
            out += [decode_entry(d) for d in s.ledger.entries(h.first_index, h.log_size)]
    return [e for e in out if e.TYPE == "update"]


@pytest.mark.parametrize("attack", CRYPTO_ATTACKS)
def test_cryptographic_attacks_are_rejected_with_their_reason(tmp_path, attack):
    s, attacker_keys = run_rounds(tmp_path, attack)
    entries = entries_of_round(s, 2)
    rejected = [e for e in entries if e.verdict == "rejected"]
    accepted = [e for e in entries if e.verdict == "accepted"]
    want = EXPECTED_REASON[attack]
    expected_rejections = K  # a cloned key ("duplicate") signs K different statements: all are equivocation
    assert [e.reason for e in rejected] == [want] * expected_rejections, [(e.reason, e.detail) for e in entries]
    assert len(accepted) == N - expected_rejections
    honest = [e for e in accepted if e.key_id not in attacker_keys]
    assert len(honest) == N - K, "no honest update may be rejected"


@pytest.mark.parametrize("attack", ["scale", "sign-flip"])  # label-flip needs the torch client: run.py covers it
def test_signed_poisoning_is_accepted_and_attributed(tmp_path, attack):
    s, attacker_keys = run_rounds(tmp_path, attack, rounds=3)
    assert all(e.verdict == "accepted" for e in entries_of_round(s, 3))
    suspects = {row["key_id"] for row in attribute_outliers(s.ledger, K)}
    assert suspects == attacker_keys


@pytest.mark.parametrize("attack", ["replay", "stale"])
def test_stateful_attacks_survive_a_fresh_mod_instance(tmp_path, attack):
    """In a simulation another worker process (another copy of the mod) may serve the node's next
    message: the attack state must live in the node's context, not in the mod."""
    s, _ = run_rounds(tmp_path, attack, fresh_mods=True)
    assert [e.reason for e in entries_of_round(s, 2) if e.verdict == "rejected"] == [EXPECTED_REASON[attack]] * K

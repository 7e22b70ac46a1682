"""A real in-process run with federated and centralized evaluation, for the report and explorer tests.

Three named clients (their public keys in a keyring directory as ``client-N.pub``) and one node without
a key train and evaluate through :class:`~flower_chain.strategies.LedgerStrategy` around Flower's FedAvg;
clients report ``eval_acc``/``eval_loss`` (what Flower's quickstarts report), the server records a
centralized ``accuracy``/``loss`` per round. Callers set Flower's task identity (``task_identity`` fixture).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from flower_chain.clients.signing import make_signing_mod
from flower_chain.strategies import LedgerStrategy
from tests.support.fl_helpers import Clients, FakeGrid, arrays, context, signed_train_reply

NODES = [11, 12, 13, 14]  # node 14 has no key


def federated_acc(rnd: int, i: int) -> float:
    """The accuracy client ``i`` reports in round ``rnd``."""
    return 0.3 + 0.15 * rnd + 0.01 * i


def _pem_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _evaluate_reply(msg: Message, key: Ed25519PrivateKey | None, rnd: int, i: int) -> Message:
    def body(m: Message, _ctx) -> Message:
        metrics = {"num-examples": 10 + i, "eval_acc": federated_acc(rnd, i), "eval_loss": 1.5 - 0.3 * rnd}
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=m)

    return make_signing_mod(key)(msg, context(), body) if key is not None else body(msg, None)


class EvaluatedRun:
    """Start with :meth:`start`, add rounds with :meth:`round` (the ledger grows), :meth:`close` at the end."""

    def __init__(self, directory: Path, federation_id: str = "fed-eval") -> None:
        self.dir = directory
        self.clients = Clients(3)
        self.server_key = Ed25519PrivateKey.generate()
        self.uri = f"sqlite:///{directory / 'ledger.db'}"
        self.keyring = directory / "keyring"
        self.keyring.mkdir(parents=True, exist_ok=True)
        for i, k in enumerate(self.clients.keys):
            (self.keyring / f"client-{i}.pub").write_bytes(_pem_public(k))
        self.server_pub = directory / "server.pub"
        self.server_pub.write_bytes(_pem_public(self.server_key))
        self.strategy = LedgerStrategy(
            FedAvg(min_available_nodes=1, min_train_nodes=1, min_evaluate_nodes=1),
            ledger=self.uri,
            keyring=self.clients.keyring,
            server_key=self.server_key,
            federation_id=federation_id,
        )
        self.model = arrays(0)
        self.rounds = 0

    def round(self) -> None:
        s, rnd = self.strategy, self.rounds + 1
        keys = [*self.clients.keys, None]
        msgs = sorted(
            s.configure_train(rnd, self.model, ConfigRecord({}), FakeGrid(NODES)), key=lambda m: m.metadata.dst_node_id
        )
        self.model, _ = s.aggregate_train(
            rnd, [signed_train_reply(m, k, arrays(100 * rnd + i), 10 + i) for i, (m, k) in enumerate(zip(msgs, keys))]
        )
        msgs = sorted(
            s.configure_evaluate(rnd, self.model, ConfigRecord({}), FakeGrid(NODES)),
            key=lambda m: m.metadata.dst_node_id,
        )
        s.aggregate_evaluate(rnd, [_evaluate_reply(m, k, rnd, i) for i, (m, k) in enumerate(zip(msgs, keys))])
        s.core.commit_evaluation(rnd, "centralized", 0, {"accuracy": 0.35 + 0.14 * rnd, "loss": 1.4 - 0.3 * rnd})
        self.rounds = rnd

    def close(self) -> None:
        self.strategy.close()


def evaluated_run(directory: Path, rounds: int = 3) -> EvaluatedRun:
    """A finished run of ``rounds`` rounds in ``directory``."""
    run = EvaluatedRun(directory)
    for _ in range(rounds):
        run.round()
    run.close()
    return run

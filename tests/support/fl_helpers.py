"""Build Flower messages the way a running app does, and sign replies through the real mod."""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, MetricRecord, RecordDict

from flower_chain.clients.signing import make_signing_mod
from flower_chain.ledger.keys import key_id, raw_public


class FakeGrid:
    """Just enough of a Grid for strategies' configure_* (node sampling)."""

    def __init__(self, node_ids):
        self.node_ids = list(node_ids)

    def get_node_ids(self):
        return list(self.node_ids)


def arrays(seed: int, shapes=(("w", (8, 4)), ("b", (4,)))) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord({n: Array(rng.standard_normal(s).astype(np.float32)) for n, s in shapes})


def context(node_id: int = 1, partition_id: int = 0) -> Context:
    return Context(
        run_id=1,
        node_id=node_id,
        node_config={"partition-id": partition_id, "num-partitions": 10},
        state=RecordDict(),
        run_config={},
    )


def train_reply(msg: Message, out: ArrayRecord, n: int, extra_metrics=None) -> Message:
    metrics = {"num-examples": n, "train_loss": 0.25, **(extra_metrics or {})}
    return Message(RecordDict({"arrays": out, "metrics": MetricRecord(metrics)}), reply_to=msg)


def signed_train_reply(msg: Message, key: Ed25519PrivateKey | None, out: ArrayRecord, n: int) -> Message:
    """What a client with ``ClientApp(mods=[signing_mod])`` returns (``key=None``: no mod, unsigned)."""
    if key is None:
        return train_reply(msg, out, n)
    mod = make_signing_mod(key)
    return mod(msg, context(), lambda m, c: train_reply(m, out, n))


class Clients:
    def __init__(self, n: int):
        self.keys = [Ed25519PrivateKey.generate() for _ in range(n)]

    @property
    def keyring(self) -> dict[str, bytes]:
        return {key_id(k): raw_public(k) for k in self.keys}


def copy_config(msg: Message) -> Message:
    """A copy of an instruction whose config can be edited without touching the original."""
    content = RecordDict({"arrays": msg.content["arrays"], "config": ConfigRecord(dict(msg.content["config"].items()))})
    return with_content(msg, content)


def with_content(msg: Message, content: RecordDict) -> Message:
    """The same message (same metadata) with other content."""
    md = msg.metadata
    meta = Metadata(
        run_id=md.run_id,
        message_id=md.message_id,
        src_node_id=md.src_node_id,
        dst_node_id=md.dst_node_id,
        reply_to_message_id=md.reply_to_message_id,
        group_id=md.group_id,
        created_at=md.created_at,
        ttl=md.ttl,
        message_type=md.message_type,
    )
    return Message(content=content, metadata=meta)


def fedavg(**kw):
    """Flower's FedAvg sampling any one available node, without federated evaluation."""
    from flwr.serverapp.strategy import FedAvg

    return FedAvg(**{"min_available_nodes": 1, "min_train_nodes": 1, "fraction_evaluate": 0.0, **kw})

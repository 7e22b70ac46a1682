"""The bundled app's strategies: FedAvg, FedAvgM and FedAdam aggregating in partition order.

Floating-point sums depend on their order; aggregating in a fixed order makes a
run's result independent of reply arrival order: the same final model with and
without the ledger, and after a resume. The bundled clients report their
partition (metric ``partition-id``), which the ledger records with every reply,
so ``flower-chain ledger audit`` replays these strategies bit for bit (they
declare themselves replayable and the audit knows them by name).

Imports flwr (the strategies are Flower's) but not torch: the ServerApp in
``flower_chain.app`` and the auditor import the same classes.
"""

from __future__ import annotations

from typing import Any

from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM

from flower_chain.strategies.rebuild import construct

#: The metric the bundled clients report their partition in.
PARTITION_METRIC = "partition-id"


def partition_of(msg: Any) -> tuple[int, int]:
    """Sort key of a reply: ``(0, int(partition))`` for one that reports a partition, else ``(1, 0)``.

    A partition that ``int()`` refuses (a list) raises, and the round keeps its model, on the server and
    in the replay alike.
    """
    if msg.has_error():
        return (1, 0)
    for rec in msg.content.metric_records.values():
        if PARTITION_METRIC in rec:
            return (0, int(rec[PARTITION_METRIC]))
    return (1, 0)


class PartitionOrdered:
    """Aggregate the replies in partition order (a stable sort: equal partitions keep the order given).

    Mixed in before a Message-API strategy. The auditor rebuilds it from the recorded settings
    (:meth:`from_ledger_config`).
    """

    flower_chain_replayable = True

    def aggregate_train(self, server_round, replies):
        return super().aggregate_train(server_round, sorted(replies, key=partition_of))

    @classmethod
    def from_ledger_config(cls, config: dict[str, Any]) -> PartitionOrdered:
        """The strategy as recorded: constructor settings passed, derived ones (e.g. ``min_evaluate_nodes``) set."""
        return construct(cls, config)


class OrderedFedAvg(PartitionOrdered, FedAvg):
    """FedAvg over the replies in partition order."""


class OrderedFedAvgM(PartitionOrdered, FedAvgM):
    """FedAvgM (server momentum) over the replies in partition order."""


class OrderedFedAdam(PartitionOrdered, FedAdam):
    """FedAdam (server-side Adam) over the replies in partition order."""


#: Replayable by name: the genesis records the class name.
ORDERED = {c.__name__: c for c in (OrderedFedAvg, OrderedFedAvgM, OrderedFedAdam)}

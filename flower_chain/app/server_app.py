"""The bundled ServerApp (Message API): FedAvg, centralized evaluation every round, metrics on disk.

The strategy is built by :func:`build_strategy`; with the ledger on (the
default) FedAvg is wrapped in :class:`~flower_chain.strategies.LedgerStrategy`,
with ``no-ledger`` it runs as plain Flower for comparison. With
``secure-aggregation`` the run takes Flower's legacy SecAgg+ path instead
(:mod:`flower_chain.app.secagg_server`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from logging import INFO
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAdam, FedAvg, FedAvgM, FedMedian, FedTrimmedAvg, MultiKrum, Strategy

from flower_chain.app import data as data_mod
from flower_chain.app import model as model_mod
from flower_chain.app.config import resolve
from flower_chain.app.round_log import RoundLog

STRATEGIES = ("fedavg", "fedtrimmedavg", "fedmedian", "multikrum", "fedavgm", "fedadam")


def _partition_of(msg) -> tuple[int, int]:
    if msg.has_error():
        return (1, 0)
    for rec in msg.content.metric_records.values():
        if "partition-id" in rec:
            return (0, int(rec["partition-id"]))
    return (1, 0)


class PartitionOrdered:
    """Aggregate the replies in partition order (the bundled clients report their partition).

    Floating-point sums depend on their order; aggregating in a fixed order makes the result of a
    run independent of reply arrival order: the same final model with and without the ledger, and
    after a resume. Mixed in before a FedAvg-based strategy.
    """

    def aggregate_train(self, server_round, replies):
        return super().aggregate_train(server_round, sorted(replies, key=_partition_of))


class OrderedFedAvg(PartitionOrdered, FedAvg):
    """FedAvg over the replies in partition order."""


class OrderedFedAvgM(PartitionOrdered, FedAvgM):
    """FedAvgM (server momentum) over the replies in partition order."""


class OrderedFedAdam(PartitionOrdered, FedAdam):
    """FedAdam (server-side Adam) over the replies in partition order."""


def build_strategy(cfg: Mapping[str, Any]) -> Strategy:
    """The inner strategy (``strategy`` in the config), waiting for ``min-nodes`` nodes before each round."""
    min_nodes = max(1, int(cfg["min-nodes"]))
    fraction_evaluate = float(cfg["fraction-evaluate"])
    common = dict(
        fraction_train=float(cfg["fraction-train"]),
        fraction_evaluate=fraction_evaluate,
        min_train_nodes=min_nodes,
        min_evaluate_nodes=0 if fraction_evaluate == 0.0 else min_nodes,
        min_available_nodes=min_nodes,
    )
    name = str(cfg.get("strategy", "fedavg")).lower()
    if name == "fedavg":
        return OrderedFedAvg(**common)
    if name == "fedtrimmedavg":
        return FedTrimmedAvg(beta=0.3, **common)
    if name == "fedmedian":
        return FedMedian(**common)
    if name == "fedavgm":
        return OrderedFedAvgM(server_learning_rate=1.0, server_momentum=0.5, **common)
    if name == "fedadam":
        return OrderedFedAdam(eta=1e-2, eta_l=1e-2, beta_1=0.9, beta_2=0.99, tau=1e-3, **common)
    if name == "multikrum":
        f = max(1, int(cfg.get("attackers", 0)) or min_nodes // 4)
        return MultiKrum(num_malicious_nodes=f, num_nodes_to_select=max(1, min_nodes - f), **common)
    raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(STRATEGIES)}")


def make_server_app(overrides: Mapping[str, Any] | None = None) -> ServerApp:
    """Build the ServerApp; ``overrides`` win over the run config."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        cfg = resolve(context.run_config, overrides)
        if cfg.get("secure-aggregation"):  # Flower's legacy SecAgg+ path (LegacyContext + DefaultWorkflow)
            from flower_chain.app.secagg_server import run_secagg_federation  # noqa: PLC0415

            run_secagg_federation(grid, context, cfg)
        else:
            run_federation(grid, cfg)

    return app


def run_federation(grid: Grid, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Train for ``num-server-rounds`` rounds; write ``metrics.json`` and ``model.npz`` to ``out-dir``."""
    seed = int(cfg["seed"])
    model_mod.seed_everything(seed)
    ds = data_mod.load(cfg["dataset"], str(cfg["data-dir"]))
    log(INFO, "[flower-chain] %s", ds.source)
    net = model_mod.Net(ds.shape)
    out_dir = Path(str(cfg["out-dir"]))
    inner = build_strategy(cfg)

    from flower_chain.app.setup import wrap_with_ledger  # noqa: PLC0415 - keeps no-ledger runs light

    strategy, ledger_info = wrap_with_ledger(inner, cfg, out_dir, num_nodes=len(list(grid.get_node_ids())))
    rounds = RoundLog(out_dir, cfg, extra=getattr(strategy, "round_stats", None))
    eval_net = model_mod.Net(ds.shape)

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        eval_net.load_state_dict(arrays.to_torch_state_dict())
        loss, acc = model_mod.test(eval_net, ds.x_test, ds.y_test)
        rounds.record(server_round, loss, acc)
        return MetricRecord({"accuracy": acc, "loss": loss})

    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(net.state_dict()),
        num_rounds=int(cfg["num-server-rounds"]),
        train_config=ConfigRecord({"lr": float(cfg["learning-rate"])}),
        evaluate_fn=evaluate,
    )
    final = result.arrays.to_torch_state_dict() if result.arrays is not None else net.state_dict()
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / "model.npz", **{k: v.cpu().numpy() for k, v in final.items()})
    summary = {
        "final_accuracy": rounds.rounds[-1]["accuracy"] if rounds.rounds else None,
        "total_time_s": time.time() - rounds.t0,
        "dataset_source": ds.source,
        **ledger_info,
    }
    if ledger_info.get("ledger"):
        summary.update(ledger_blocks=strategy.ledger.block_count(), ledger_entries=strategy.ledger.log_size())
        strategy.close()
    rounds.save(summary=summary)
    return summary


app = make_server_app()

"""The bundled ServerApp under SecAgg+ (``secure-aggregation = true``): Flower's legacy SecAgg+ path with the ledger.

The recipe of Flower's ``examples/flower-secure-aggregation`` with flower-chain's two swaps: the legacy
``FedAvg`` wrapped in :class:`~flower_chain.strategies.LegacyLedgerStrategy`, and
:class:`~flower_chain.strategies.LedgerSecAggPlusWorkflow` as the fit workflow of Flower's
``DefaultWorkflow`` (``LegacyContext``). The server sees only masked vectors and the unmasked aggregate;
the ledger records the protocol transcript, from which ``flower-chain ledger audit`` re-derives every
round's aggregate. The model is evaluated centrally on the test split every round; ``metrics.json`` and
``model.npz`` are written as on the plain path (:func:`flower_chain.app.server_app.run_federation`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.logger import log
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD
from flwr.serverapp import Grid

from flower_chain.app import data as data_mod
from flower_chain.app import model as model_mod
from flower_chain.app.round_log import RoundLog
from flower_chain.app.setup import SERVER_KEY, anchor_from_config, ledger_location
from flower_chain.ledger.secagg_masks import neighbour_graph
from flower_chain.strategies import LedgerSecAggPlusWorkflow, LegacyLedgerStrategy


def secagg_parameters(cfg: Mapping[str, Any], num_nodes: int) -> tuple[int, int]:
    """``(num_shares, reconstruction_threshold)`` for ``num_nodes`` sampled nodes.

    ``secagg-num-shares`` and ``secagg-threshold`` from the config; the threshold is lowered to one less
    than the neighbourhood (its width by ``neighbour_graph``), so a round survives one dropout in every
    neighbourhood, and raised to a strict majority of it (the rule every node enforces).

    Raises
    ------
    ValueError
        Fewer than 3 nodes (SecAgg+ among 2 reveals each input to the other) or a setting below 2.
    """
    shares, threshold = int(cfg["secagg-num-shares"]), int(cfg["secagg-threshold"])
    if num_nodes < 3:
        raise ValueError(f"secure aggregation needs at least 3 nodes, got {num_nodes}")
    if shares < 2 or threshold < 2:
        raise ValueError(f"secagg-num-shares ({shares}) and secagg-threshold ({threshold}) must be at least 2")
    width = len(neighbour_graph([str(i) for i in range(num_nodes)], shares, b"")["0"])
    # at most one less than the neighbourhood (one dropout survives), at least a strict majority of it
    # (nodes refuse less: two disjoint groups could then reveal both secrets of a node, docs/secagg.md §7)
    return shares, max(width // 2 + 1, min(threshold, width - 1))


def build_legacy_strategy(
    cfg: Mapping[str, Any], out_dir: Path, num_nodes: int, initial: list[np.ndarray], evaluate_fn
) -> LegacyLedgerStrategy:
    """Legacy FedAvg over every node, evaluated centrally, wrapped in ``LegacyLedgerStrategy``."""
    min_nodes = max(1, int(cfg["min-nodes"]))
    lr = float(cfg["learning-rate"])
    inner = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=min_nodes,
        min_evaluate_clients=0,
        min_available_clients=min_nodes,
        initial_parameters=ndarrays_to_parameters(initial),
        evaluate_fn=evaluate_fn,
        on_fit_config_fn=lambda r: {"lr": lr, "server-round": r},
    )
    uri, fed, keys = ledger_location(cfg, out_dir, num_nodes)
    return LegacyLedgerStrategy(
        inner,
        ledger=uri,
        keyring=keys / "keyring",
        server_key=keys / "server" / f"{SERVER_KEY}.key",
        federation_id=fed,
        anchor=anchor_from_config(cfg, uri),
    )


def run_secagg_federation(grid: Grid, context: Context, cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Train ``num-server-rounds`` SecAgg+ rounds; write ``metrics.json`` and ``model.npz`` to ``out-dir``."""

    if cfg.get("no-ledger"):
        raise ValueError("secure-aggregation runs with the ledger: no-ledger is not supported")
    if str(cfg.get("strategy", "fedavg")).lower() != "fedavg":
        raise ValueError("secure-aggregation computes the weighted average (FedAvg): strategy must be fedavg")
    from flower_chain.app.secagg_client import parse_drops  # noqa: PLC0415

    parse_drops(cfg.get("secagg-drop", ""))  # a bad value fails here, once, not on every node
    model_mod.seed_everything(int(cfg["seed"]))
    ds = data_mod.load(cfg["dataset"], str(cfg["data-dir"]))
    log(INFO, "[flower-chain] %s", ds.source)
    net = model_mod.Net(ds.shape)
    names = list(net.state_dict())
    initial = [v.detach().cpu().numpy().copy() for v in net.state_dict().values()]
    out_dir = Path(str(cfg["out-dir"]))
    num_nodes = len(list(grid.get_node_ids()))
    shares, threshold = secagg_parameters(cfg, max(num_nodes, int(cfg["min-nodes"])))
    eval_net = model_mod.Net(ds.shape)
    rounds: RoundLog | None = None

    def evaluate(server_round: int, arrays: list[np.ndarray], _config) -> tuple[float, dict[str, float]]:
        model_mod.set_weights(eval_net, dict(zip(names, arrays)))
        loss, acc = model_mod.test(eval_net, ds.x_test, ds.y_test)
        if rounds is not None:
            rounds.record(server_round, loss, acc)
        return loss, {"accuracy": acc}

    strategy = build_legacy_strategy(cfg, out_dir, num_nodes, initial, evaluate)
    rounds = RoundLog(out_dir, cfg, extra=strategy.round_stats)
    log(INFO, "[flower-chain] SecAgg+ with the ledger: %d shares per secret, threshold %d", shares, threshold)
    legacy = LegacyContext(context, config=ServerConfig(num_rounds=int(cfg["num-server-rounds"])), strategy=strategy)
    workflow = DefaultWorkflow(fit_workflow=LedgerSecAggPlusWorkflow(shares, threshold))
    try:
        workflow(grid, legacy)
        params = compat.arrayrecord_to_parameters(legacy.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
        final = parameters_to_ndarrays(params)
        out_dir.mkdir(parents=True, exist_ok=True)
        np.savez(out_dir / "model.npz", **dict(zip(names, final)))
        failed = [r for r, s in sorted(strategy.core.stats.items()) if not s.get("accepted")]
        if failed:
            log(WARNING, "[flower-chain] SecAgg+ rounds %s aggregated nothing (the model stayed)", failed)
        summary = {
            "final_accuracy": rounds.rounds[-1]["accuracy"] if rounds.rounds else None,
            "total_time_s": time.time() - rounds.t0,
            "dataset_source": ds.source,
            "ledger": strategy.ledger.uri,
            "federation_id": strategy.core.federation_id,
            "secure_aggregation": {"num_shares": shares, "threshold": threshold, "failed_rounds": failed},
            "ledger_blocks": strategy.ledger.block_count(),
            "ledger_entries": strategy.ledger.log_size(),
        }
        for line in strategy.core.summary_lines():
            log(INFO, "%s", line)
    finally:
        strategy.close()
    rounds.save(summary=summary)
    return summary

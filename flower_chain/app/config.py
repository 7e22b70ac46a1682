"""Run configuration of the bundled Flower App: defaults and resolution.

The same keys live in ``[tool.flwr.app.config]`` of pyproject.toml (``flwr run``)
and are set by ``run.py`` flags; a value given later wins:
defaults < Flower run config < explicit overrides.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DEFAULTS: dict[str, Any] = {
    "dataset": "mnist",
    "num-server-rounds": 5,
    "local-epochs": 1,
    "batch-size": 32,
    "learning-rate": 0.05,
    "partition": "iid",
    "alpha": 0.5,
    "seed": 42,
    "data-dir": "data",
    "fraction-train": 1.0,
    "min-nodes": 2,
    "fraction-evaluate": 0.0,
    "out-dir": "out",
    "ledger": "",
    "federation-id": "",
    "no-ledger": False,
    "keys-dir": "",
    "strategy": "fedavg",
    "attack": "",
    "attackers": 0,
    "store-client-updates": False,
    "resume": False,
    "anchor": "",
    "anchor-contract": "",
    "anchor-key-file": "",
    "anchor-chain-id": 0,
    "anchor-confirmations": 0,
    "anchor-poa": False,
    "anchor-fee": "auto",
    "secure-aggregation": False,  # Flower's legacy SecAgg+ path (flower_chain.app.secagg_server)
    "secagg-num-shares": 5,
    "secagg-threshold": 3,
    "secagg-drop": "",  # tests/demos: "STAGE:PARTITION ..." (flower_chain.app.secagg_client)
    "secagg-plaintext-dir": "",  # tests only: where nodes save their plaintext models
}


def resolve(run_config: Mapping[str, Any] | None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults, then the Flower run config, then explicit overrides."""
    cfg = dict(DEFAULTS)
    cfg.update(run_config or {})
    cfg.update(overrides or {})
    return cfg

"""Wiring of the ledger into the bundled ServerApp: demo keys and the wrapped strategy."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.serverapp.strategy import Strategy

from flower_chain.ledger.keys import generate

SERVER_KEY = "server"


def client_key_name(partition_id: int) -> str:
    return f"client-{partition_id}"


def prepare_keys(keys_dir: str | Path, num_clients: int) -> Path:
    """Make sure ``keys_dir`` holds ``server/server.key`` and ``clients/client-<i>.key`` for every client.

    Existing keys are kept; missing ones are generated (the demo federation's
    first run). Returns the directory of client keys.
    """
    d = Path(keys_dir)
    if not (d / "server" / f"{SERVER_KEY}.key").exists():
        generate(d / "server", SERVER_KEY)
    clients = d / "clients"
    for i in range(num_clients):
        if not (clients / f"{client_key_name(i)}.key").exists():
            generate(clients, client_key_name(i))
    return clients


def wrap_with_ledger(inner: Strategy, cfg: Mapping[str, Any], out_dir: Path,
                     num_nodes: int = 0) -> tuple[Strategy, dict[str, Any]]:
    """``inner`` itself when ``no-ledger`` is set, else ``LedgerStrategy(inner)`` on the configured ledger."""
    if cfg.get("no-ledger"):
        return inner, {"ledger": None}
    from flower_chain.strategies.ledger_strategy import LedgerStrategy

    keys = Path(str(cfg.get("keys-dir") or out_dir / "keys"))
    if not (keys / "clients").is_dir() or not (keys / "server" / f"{SERVER_KEY}.key").is_file():
        if not num_nodes:
            raise FileNotFoundError(f"no keys in {keys}: create them with run.py or `flower-chain keys new`")
        prepare_keys(keys, num_nodes)  # the demo federation's first run (e.g. under `flwr run .`)
    fed = str(cfg.get("federation-id") or "") or None
    uri = str(cfg.get("ledger") or "")
    if not uri:  # a new ledger per run, named after its federation
        fed = fed or f"{cfg['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}"
        uri = f"sqlite:///{out_dir / f'ledger-{fed}.db'}"
    strategy = LedgerStrategy(inner, ledger=uri, keyring=keys / "clients",
                              server_key=keys / "server" / f"{SERVER_KEY}.key", federation_id=fed,
                              store_client_updates=bool(cfg.get("store-client-updates")),
                              resume=bool(cfg.get("resume")))
    return strategy, {"ledger": uri, "federation_id": strategy.federation_id}

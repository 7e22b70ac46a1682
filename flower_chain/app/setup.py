"""Wiring of the ledger into the bundled ServerApp: demo keys and the wrapped strategy."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flwr.serverapp.strategy import Strategy

from flower_chain.ledger.keys import generate
from flower_chain.ledger.location import anchor_status_path, file_uri

SERVER_KEY = "server"


def client_key_name(partition_id: int) -> str:
    return f"client-{partition_id}"


def prepare_keys(keys_dir: str | Path, num_clients: int) -> Path:
    """Make sure ``keys_dir`` holds the layout of ``flower-chain keys init``; return the keyring directory.

    ``server/server.key``, ``clients/client-<i>.key`` (each node's private key) and
    ``keyring/client-<i>.pub`` (the public keys the server allows). Existing keys
    are kept; missing ones are generated (the demo federation's first run).
    """
    d = Path(keys_dir)
    if not (d / "server" / f"{SERVER_KEY}.key").exists():
        generate(d / "server", SERVER_KEY)
    clients, keyring = d / "clients", d / "keyring"
    keyring.mkdir(parents=True, exist_ok=True)
    for i in range(num_clients):
        name = client_key_name(i)
        if not (clients / f"{name}.key").exists():
            generate(clients, name)
        pub = keyring / f"{name}.pub"
        if not pub.exists():
            pub.write_bytes((clients / f"{name}.pub").read_bytes())
    return keyring


def ledger_location(cfg: Mapping[str, Any], out_dir: Path, num_nodes: int = 0) -> tuple[str, str | None, Path]:
    """``(ledger URI, federation id or None, keys directory)`` of the configured ledger.

    Creates the demo keys on a federation's first run (``num_nodes`` of them) when ``keys-dir`` has none;
    with no ``ledger`` in the config, a new SQLite ledger per run in ``out_dir``, named after its federation.
    """
    keys = Path(str(cfg.get("keys-dir") or out_dir / "keys"))
    if not (keys / "keyring").is_dir() or not (keys / "server" / f"{SERVER_KEY}.key").is_file():
        if not num_nodes:
            raise FileNotFoundError(f"no keys in {keys}: create them with `flower-chain keys init {keys} --clients N`")
        prepare_keys(keys, num_nodes)  # the demo federation's first run (e.g. under `flwr run .`)
    fed = str(cfg.get("federation-id") or "") or None
    uri = str(cfg.get("ledger") or "")
    if not uri:  # a new ledger per run, named after its federation
        fed = fed or f"{cfg['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}"
        uri = file_uri("sqlite", out_dir / f"ledger-{fed}.db")
    return uri, fed, keys


def wrap_with_ledger(
    inner: Strategy, cfg: Mapping[str, Any], out_dir: Path, num_nodes: int = 0
) -> tuple[Strategy, dict[str, Any]]:
    """``inner`` itself when ``no-ledger`` is set, else ``LedgerStrategy(inner)`` on the configured ledger."""
    if cfg.get("no-ledger"):
        return inner, {"ledger": None}
    from flower_chain.strategies.ledger_strategy import LedgerStrategy

    uri, fed, keys = ledger_location(cfg, out_dir, num_nodes)
    strategy = LedgerStrategy(
        inner,
        ledger=uri,
        keyring=keys / "keyring",
        server_key=keys / "server" / f"{SERVER_KEY}.key",
        federation_id=fed,
        store_client_updates=True if cfg.get("store-client-updates") else None,
        resume=bool(cfg.get("resume")),
        anchor=anchor_from_config(cfg, uri),
    )
    return strategy, {"ledger": uri, "federation_id": strategy.federation_id}


def anchor_from_config(cfg: Mapping[str, Any], ledger_uri: str):
    """A factory (federation id -> AnchorPublisher) for ``anchor`` = ``evm+http://HOST:PORT``, else ``None``."""
    url = str(cfg.get("anchor") or "")
    if not url:
        return None
    from flower_chain.anchor.evm import EvmAnchor, read_private_key
    from flower_chain.anchor.publish import AnchorPublisher

    key = read_private_key(cfg.get("anchor-key-file") or None)  # fail at start, not in the worker
    status = anchor_status_path(ledger_uri)

    def factory(federation_id: str) -> AnchorPublisher:
        deployed: dict[str, str] = {}

        def connect() -> EvmAnchor:
            a = EvmAnchor(
                url,
                federation_id=federation_id,
                private_key=key,
                contract=str(cfg.get("anchor-contract") or "") or deployed.get("address"),
                chain_id=int(cfg["anchor-chain-id"]) if cfg.get("anchor-chain-id") else None,
                confirmations=int(cfg.get("anchor-confirmations") or 0),
                poa=bool(cfg.get("anchor-poa")),
                fee_mode=str(cfg.get("anchor-fee") or "auto"),
            )
            deployed["address"] = a.address  # deploy once, reuse after a reconnect
            return a

        return AnchorPublisher(connect, status)

    return factory

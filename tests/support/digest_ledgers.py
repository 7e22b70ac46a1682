"""Ledgers whose genesis names an array digest version, continued by today's LedgerStrategy (digest tests).

:func:`strategy_on` writes a genesis naming the version (1: as ledgers written before v2 existed) the way
the recorder writes one, then opens a :class:`~flower_chain.strategies.LedgerStrategy` on it. The model
(:func:`model`) carries a 0-d array, so its v1 and v2 digests differ. Callers set Flower's task identity.
"""

from __future__ import annotations

import time

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord
from typer.testing import CliRunner

from flower_chain.cli import app
from flower_chain.ledger import GenesisEntry, LedgerWriter, open_ledger
from flower_chain.ledger.encoding import encode
from flower_chain.ledger.keys import raw_public
from flower_chain.ledger.writer import config_digest, digest_version_of, origin_for
from flower_chain.strategies import LedgerStrategy
from flower_chain.strategies.ledger_strategy import strategy_config
from tests.support.fl_helpers import Clients, FakeGrid, fedavg

NODES = [101, 102, 103]
FID = "fed-v1"


def model(seed: int) -> ArrayRecord:
    """A small model with a 0-d counter: its v1 digest (0-d recorded as shape (1,)) is not its v2 digest."""
    rng = np.random.default_rng(seed)
    return ArrayRecord(
        {
            "w": Array(rng.standard_normal((8, 4)).astype(np.float32)),
            "bn.num_batches_tracked": Array(np.asarray(seed, np.int64)),
        }
    )


def named(record: ArrayRecord):
    return [(k, np.asarray(v.numpy())) for k, v in record.items()]


def write_genesis(uri: str, keyring, server_key, version: int, config: dict, fid: str = FID) -> None:
    """A ledger holding only a genesis naming digest ``version`` (1: as ledgers written before v2), written as
    the recorder writes one (``config`` in the blob store under the genesis' config digest)."""
    ledger = open_ledger(uri, create=True)
    try:
        ledger.put_blob(encode(config), config_digest(config))
        LedgerWriter(ledger, server_key).init(
            GenesisEntry(
                federation_id=fid,
                origin=origin_for(fid),
                server_key=raw_public(server_key),
                client_keys=dict(keyring),
                strategy="FedAvg",
                config_digest=config_digest(config),
                created_ms=int(time.time() * 1000),
                digest_version=version,
            )
        )
        assert digest_version_of(ledger) == version
    finally:
        ledger.close()


def ledger_with_genesis(uri: str, clients: Clients, server_key, version: int, strategy=None) -> None:
    """:func:`write_genesis` with ``strategy``'s config (default :func:`fedavg`'s) and ``clients``' keyring."""
    write_genesis(
        uri, clients.keyring, server_key, version, strategy_config(strategy if strategy is not None else fedavg())
    )


def strategy_on(tmp_path, version: int, **fedavg_settings) -> tuple[LedgerStrategy, Clients, str]:
    """A LedgerStrategy around :func:`fedavg` (with ``fedavg_settings``) on a new ledger whose genesis names
    ``version``: (strategy, the clients of its keyring, the ledger URI)."""
    clients, server_key = Clients(len(NODES)), Ed25519PrivateKey.generate()
    uri = f"sqlite:///{tmp_path}/v{version}.db"
    ledger_with_genesis(uri, clients, server_key, version, fedavg(**fedavg_settings))
    strategy = LedgerStrategy(fedavg(**fedavg_settings), ledger=uri, keyring=clients.keyring, server_key=server_key)
    return strategy, clients, uri


def instructions(strategy: LedgerStrategy, rnd: int, current: ArrayRecord, kind: str = "train"):
    """The round's train (or evaluate) instructions to :data:`NODES`, in node order."""
    configure = strategy.configure_train if kind == "train" else strategy.configure_evaluate
    return sorted(configure(rnd, current, ConfigRecord({}), FakeGrid(NODES)), key=lambda m: m.metadata.dst_node_id)


def cli(*args) -> tuple[int, str]:
    r = CliRunner().invoke(app, list(map(str, args)))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, " ".join(r.output.split())

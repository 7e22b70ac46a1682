"""Swap flower-chain into plain Flower apps exactly as the README shows, run them, verify the ledger."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flower_chain.clients.receipts import read_counts
from flower_chain.ledger import open_ledger, verify
from flower_chain.ledger.inspect import summary

APPS = Path(__file__).parent / "apps"

# The README's change, as (old, new) text replacements.
MESSAGE_API_CHANGE = [
    ("from flwr.serverapp.strategy import FedAvg\n",
     "from flwr.serverapp.strategy import FedAvg\n"
     "from flower_chain.clients import signing_mod\n"
     "from flower_chain.strategies import LedgerStrategy\n"),
    ("app = ClientApp()", "app = ClientApp(mods=[signing_mod])"),
    ("    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2)",
     "    strategy = LedgerStrategy(FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2),\n"
     "                              ledger=os.environ['LEDGER'], keyring='keys/keyring',\n"
     "                              server_key='keys/server/server.key')"),
]
LEGACY_CHANGE = [
    ("from flwr.server.strategy import FedAvg\n",
     "from flwr.server.strategy import FedAvg\n"
     "from flower_chain.clients import signing_mod\n"
     "from flower_chain.strategies import LegacyLedgerStrategy\n"),
    ("app = ClientApp(client_fn=client_fn)", "app = ClientApp(client_fn=client_fn, mods=[signing_mod])"),
    ("    return ServerAppComponents(strategy=strategy,",
     "    strategy = LegacyLedgerStrategy(strategy, ledger=os.environ['LEDGER'], keyring='keys/keyring',\n"
     "                                    server_key='keys/server/server.key')\n"
     "    return ServerAppComponents(strategy=strategy,"),
]


def _apply(source: str, change) -> str:
    for old, new in change:
        assert source.count(old) == 1, f"the plain app no longer has {old!r}"
        source = source.replace(old, new)
    return source


def _keys(workdir: Path, n: int) -> None:
    """The README's one key command: server key, the clients' private keys, and a keyring of public keys."""
    subprocess.run([sys.executable, "-m", "flower_chain.cli", "keys", "init", str(workdir / "keys"), "--clients",
                    str(n)], check=True, capture_output=True)


@pytest.mark.parametrize("app,change", [("quickstart_message.py", MESSAGE_API_CHANGE),
                                        ("quickstart_legacy.py", LEGACY_CHANGE)], ids=["message-api", "legacy"])
def test_swap_in_runs_and_the_ledger_verifies(tmp_path, app, change):
    n = 3
    _keys(tmp_path, n)
    (tmp_path / "app.py").write_text(_apply((APPS / app).read_text(), change))
    ledger = f"sqlite:///{tmp_path}/ledger.db"
    env = dict(os.environ, LEDGER=ledger, QUICKSTART_OUT=str(tmp_path / "w.npy"),
               FLOWER_CHAIN_SIGNING_KEY=str(tmp_path / "keys" / "clients"), RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    r = subprocess.run([sys.executable, "app.py", str(n)], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "w.npy").exists()
    led = open_ledger(ledger)
    rep = verify(led, client_signatures=True)
    s = summary(led)
    assert s["rounds"] == 3 and s["accepted"] == 3 * n and s["rejected"] == 0, s
    assert rep.client_signatures_checked == 2 * 3 * n  # train and evaluate replies
    # every client kept a verified receipt of each of its 3 updates (delivered with the evaluate instructions)
    receipts = tmp_path / "keys" / "clients" / "receipts"
    counts = [read_counts(p) for p in sorted(receipts.iterdir()) if p.is_dir()]
    assert [(c["receipts"], c["errors"]) for c in counts] == [(3, 0)] * n
    assert len(list(receipts.glob("*/*/round-*.proof"))) == 3 * n

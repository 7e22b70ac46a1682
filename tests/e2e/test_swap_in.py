"""The swap recipe's edits applied programmatically to plain Flower Apps, run the supported way: ``flwr run`` on a local
SuperLink. (The README's own text, block by block, is run by ``tests/e2e/test_readme_recipes.py``; this module keeps the
checks that need more than one run: two runs on one SuperLink, receipts per log, the keyless negative control.)

``keys init`` → the README's edits (client_app.py, server_app.py, the run-config key in pyproject.toml)
→ ``flwr run`` → ``flwr run`` again (a new ledger per run: ``{run_id}``) → ``flower-chain ledger verify``
passes and ``summary`` counts train and evaluate verdicts. Negative control: a node without a key, with
``min_accepted`` set to the number of nodes, makes the run fail loudly (Flower's run status, the error
and the strategy's summary in the log) while the ledger still verifies.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flower_chain.app.local_run import LocalSuperLink
from flower_chain.clients.receipts import read_counts
from flower_chain.ledger import open_ledger, verify
from flower_chain.ledger.inspect import summary

APPS = Path(__file__).resolve().parents[1] / "support" / "apps"

# The README's edits, as (old, new) text replacements per file of the app; PLACEHOLDERS are absolute paths.
MESSAGE_API_CHANGE = {
    "quickstart/client_app.py": [
        (
            "from flwr.clientapp import ClientApp\n",
            "from flwr.clientapp import ClientApp\nfrom flower_chain.clients import signing_mod\n",
        ),
        ("app = ClientApp()", "app = ClientApp(mods=[signing_mod])"),
    ],
    "quickstart/server_app.py": [
        (
            "from flwr.serverapp.strategy import FedAvg\n",
            "from flwr.serverapp.strategy import FedAvg\nfrom flower_chain.strategies import LedgerStrategy\n",
        ),
        (
            "    strategy = FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2)",
            "    strategy = LedgerStrategy(FedAvg(fraction_train=1.0, fraction_evaluate=1.0, min_available_nodes=2),\n"
            "                              ledger='sqlite:///@WORK@/ledger-{run_id}.db',\n"
            "                              keyring='@WORK@/keys/keyring',\n"
            "                              server_key='@WORK@/keys/server/server.key')",
        ),
    ],
}
LEGACY_CHANGE = {
    "quickstart/client_app.py": [
        (
            "from flwr.clientapp import ClientApp\n",
            "from flwr.clientapp import ClientApp\nfrom flower_chain.clients import signing_mod\n",
        ),
        ("app = ClientApp(client_fn=client_fn)", "app = ClientApp(client_fn=client_fn, mods=[signing_mod])"),
    ],
    "quickstart/server_app.py": [
        (
            "from flwr.server.strategy import FedAvg\n",
            "from flwr.server.strategy import FedAvg\nfrom flower_chain.strategies import LegacyLedgerStrategy\n",
        ),
        (
            "    return ServerAppComponents(strategy=strategy,",
            "    strategy = LegacyLedgerStrategy(strategy, ledger='sqlite:///@WORK@/ledger-{run_id}.db',\n"
            "                                    keyring='@WORK@/keys/keyring',\n"
            "                                    server_key='@WORK@/keys/server/server.key')\n"
            "    return ServerAppComponents(strategy=strategy,",
        ),
    ],
}
# README step 3: every simulated node reads keys/clients/client-<partition-id>.key
RUN_CONFIG_CHANGE = {"pyproject.toml": [('out-file = ""\n', 'out-file = ""\nflower-chain-keys = "@WORK@/keys"\n')]}


def _apply(source: str, change: list[tuple[str, str]], work: Path) -> str:
    for old, new in change:
        old = old.replace("@WORK@", str(work))
        assert source.count(old) == 1, f"the plain app no longer has {old!r}"
        source = source.replace(old, new.replace("@WORK@", str(work)))
    return source


def make_app(kind: str, work: Path, *changes: dict) -> Path:
    """A copy of the plain app ``tests/support/apps/<kind>`` in ``work/app`` with the README's edits applied."""
    app = work / "app"
    shutil.copytree(APPS / kind, app, ignore=shutil.ignore_patterns("__pycache__"))
    for change in changes:
        for rel, edits in change.items():
            (app / rel).write_text(_apply((app / rel).read_text(), edits, work))
    return app


def _keys(workdir: Path, n: int) -> None:
    """The README's one key command: server key, the clients' private keys, and a keyring of public keys."""
    subprocess.run(
        [sys.executable, "-m", "flower_chain.cli", "keys", "init", str(workdir / "keys"), "--clients", str(n)],
        check=True,
        capture_output=True,
    )


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flower_chain.cli", *args], capture_output=True, text=True)


@pytest.mark.parametrize(
    "kind,change",
    [("quickstart_message", MESSAGE_API_CHANGE), ("quickstart_legacy", LEGACY_CHANGE)],
    ids=["message-api", "legacy"],
)
def test_readme_recipe_with_flwr_run(tmp_path, kind, change):
    n = 3
    _keys(tmp_path, n)
    app = make_app(kind, tmp_path, change, RUN_CONFIG_CHANGE)
    with LocalSuperLink(log_dir=tmp_path) as link:
        first = link.run(app, num_supernodes=n, run_config={"out-file": str(tmp_path / "w.npy")}, timeout=600)
        assert first.ok, first.log.read_text()[-4000:]
        again = link.run(app, num_supernodes=n, timeout=600)  # run again: a new ledger, as documented
        assert again.ok, again.log.read_text()[-4000:]
    assert (tmp_path / "w.npy").exists()
    ledgers = sorted(tmp_path.glob("ledger-*.db"))
    assert [p.name for p in ledgers] == sorted(f"ledger-{r.run_id}.db" for r in (first, again))
    # LedgerStrategy's end-of-run summary names the ledger and the verify command (in Flower's log; the
    # legacy loop has no end-of-run hook)
    assert kind == "quickstart_legacy" or f"flower-chain ledger verify sqlite:///{ledgers[0]}" in (
        first.log.read_text() + again.log.read_text()
    )

    for db in ledgers:
        uri = f"sqlite:///{db}"
        with open_ledger(uri) as led:
            rep = verify(led, client_signatures=True)
            s = summary(led)
        assert s["rounds"] == 3 and s["accepted"] == 3 * n and s["rejected"] == 0, s
        assert s["evaluate_accepted"] == 3 * n and s["evaluate_rejected"] == 0, s
        assert rep.client_signatures_checked >= 2 * 3 * n  # train and evaluate replies
        r = _cli(
            "ledger",
            "verify",
            uri,
            "--server-key",
            str(tmp_path / "keys/server/server.pub"),
            "--keys",
            str(tmp_path / "keys"),
        )
        assert r.returncode == 0 and "VERIFIED" in r.stdout, r.stdout + r.stderr
        r = _cli("ledger", "summary", uri, "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["verdicts"] == {"train": {"ok": 3 * n}, "evaluate": {"ok": 3 * n}}

    # every client kept a verified receipt of each of its updates, per log (two runs, two logs), no error
    receipts = tmp_path / "keys" / "clients" / "receipts"
    counts = [read_counts(p) for p in sorted(receipts.iterdir()) if p.is_dir()]
    assert len(counts) == n and all(c["errors"] == 0 and c["receipts"] >= 3 for c in counts), counts


@pytest.mark.parametrize(
    "kind,change",
    [("quickstart_message", MESSAGE_API_CHANGE), ("quickstart_legacy", LEGACY_CHANGE)],
    ids=["message-api", "legacy"],
)
def test_a_node_without_a_key_fails_the_run_loudly(tmp_path, kind, change):
    """Negative control: keys for 2 of 3 nodes and ``min_accepted=3``: Flower reports the run failed."""
    _keys(tmp_path, 2)
    strict = {
        "quickstart/server_app.py": [
            (
                "server_key='@WORK@/keys/server/server.key')",
                "server_key='@WORK@/keys/server/server.key', min_accepted=3)",
            )
        ]
    }
    app = make_app(kind, tmp_path, change, RUN_CONFIG_CHANGE, strict)
    with LocalSuperLink(log_dir=tmp_path) as link:
        res = link.run(app, num_supernodes=3, timeout=600)
    text = res.log.read_text()
    assert res.status == "finished:failed" and not res.ok, (res, text[-3000:])
    assert "2 of 3 replies accepted" in text, text[-3000:]
    assert "client-error" in text and "flower-chain ledger verify" in text, text[-3000:]  # error + summary
    assert f"{tmp_path}/keys/clients/client-2.key not found" in text  # the key the node looked for, named
    (db,) = tmp_path.glob("ledger-*.db")
    with open_ledger(f"sqlite:///{db}") as led:
        verify(led, client_signatures=True)  # the failed round is recorded, and the ledger verifies
        s = summary(led)
    assert s["accepted"] == 2 and s["reasons"] == {"client-error": 1}, s

"""End to end through Flower's simulation runtime: nodes that hold no key send every malformed kind the
review found (invalid NPY, overflowing and negative shapes, zero-width and float128 dtypes, statement fields
of the wrong type, infinite num-examples, a metric beyond int64, an extra MetricRecord) in every round.

Run with ``flwr run`` on a local SuperLink of its own. The run must finish every round, every hostile reply
must be a rejection on the ledger, and the global model must be exactly the aggregate of the honest nodes' updates (``flower-chain ledger audit`` replays it).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

from flower_chain.app.local_run import LocalSuperLink
from flower_chain.ledger import decode_entry, open_ledger
from tests.e2e.test_swap_in import APPS, MESSAGE_API_CHANGE, RUN_CONFIG_CHANGE, _keys, make_app

ROOT = Path(__file__).resolve().parents[2]
HONEST, NODES, ROUNDS = 2, 7, 3


def test_keyless_nodes_cannot_crash_or_steer_the_federation(tmp_path):
    _keys(tmp_path, HONEST)  # keys for the honest partitions only
    hostile = {
        "quickstart/client_app.py": [
            (
                "app = ClientApp(mods=[signing_mod])",
                "from quickstart.keyless import keyless_attack\napp = ClientApp(mods=[keyless_attack, signing_mod])",
            )
        ],
        "quickstart/server_app.py": [("min_available_nodes=2", f"min_available_nodes={NODES}")],
    }
    app = make_app("quickstart_message", tmp_path, MESSAGE_API_CHANGE, RUN_CONFIG_CHANGE, hostile)
    shutil.copy(APPS / "keyless.py", app / "quickstart" / "keyless.py")
    with LocalSuperLink(log_dir=tmp_path) as link:
        res = link.run(app, num_supernodes=NODES, run_config={"out-file": str(tmp_path / "w.npy")}, timeout=600)
    assert res.ok, res.log.read_text()[-4000:]
    assert (tmp_path / "w.npy").exists(), "the run must finish every round"
    (db,) = tmp_path.glob("ledger-*.db")
    ledger = f"sqlite:///{db}"

    with open_ledger(ledger) as led:
        entries = [decode_entry(d) for d in led.entries()]
    train = [e for e in entries if getattr(e, "kind", None) == "train"]
    assert len(train) == NODES * ROUNDS, "every reply of every round gets exactly one verdict"
    for rnd in range(1, ROUNDS + 1):
        this = [e for e in train if e.round == rnd]
        assert sum(e.verdict == "accepted" for e in this) == HONEST, [(e.reason, e.detail) for e in this]
        assert all(e.reason in ("malformed", "unsigned") for e in this if e.verdict == "rejected")
    reasons = Counter(e.reason for e in train if e.verdict == "rejected")
    assert sum(reasons.values()) == (NODES - HONEST) * ROUNDS and reasons["malformed"] >= 8, reasons

    cli = [sys.executable, "-m", "flower_chain.cli", "ledger"]
    v = subprocess.run(cli + ["verify", ledger], capture_output=True, text=True)
    assert v.returncode == 0, v.stdout + v.stderr
    a = subprocess.run(cli + ["audit", ledger, "--strict"], capture_output=True, text=True)
    assert a.returncode == 0, a.stdout + a.stderr  # the model is exactly the honest nodes' aggregate

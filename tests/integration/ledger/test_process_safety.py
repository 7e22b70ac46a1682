"""What a process leaves behind: the ledger package's imports, and a SQLite ledger killed mid-append (these start
a Python process, so they are not unit tests)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from flower_chain.ledger import open_ledger, verify


def test_ledger_imports_neither_torch_nor_flwr():
    code = (
        "import sys, flower_chain.ledger, flower_chain.ledger.verify, flower_chain.ledger.arrays;"
        "bad=[m for m in sys.modules if m.split('.')[0] in ('torch','flwr','torchvision')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    from tests.conftest import Federation
    f = Federation(sys.argv[1])
    print("ready", flush=True)
    r = 1
    while True:
        f.add_round(r, n=200)
        r += 1
""")


def test_sqlite_survives_kill_9_mid_append(tmp_path):
    import os
    import signal
    import time

    root = str(Path(__file__).resolve().parents[3])
    for trial in range(3):
        uri = f"sqlite:///{tmp_path}/k{trial}.db"
        p = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, uri], cwd=root, stdout=subprocess.PIPE)
        assert p.stdout.readline().strip() == b"ready"
        time.sleep(0.3 + 0.2 * trial)
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        rep = verify(open_ledger(uri))
        assert rep.blocks >= 1 and rep.entries == 1 + 200 * (rep.blocks - 1)

"""A throw-away anvil node (npm's @foundry-rs/anvil, installed by .ci/run) for the EVM anchoring tests and bench."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TESTER_KEY = "0x" + "00" * 31 + "01"  # eth-tester's first funded account
ANVIL_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil's account 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _anvil_bin() -> str | None:
    cand = ROOT / "node_modules" / ".bin" / "anvil"
    return str(cand) if cand.exists() else shutil.which("anvil")


class Anvil:
    def __init__(self, state: Path):
        self.port, self.state = _free_port(), state
        self.proc = None

    def start(self) -> Anvil:
        self.proc = subprocess.Popen(
            [
                _anvil_bin(),
                "--port",
                str(self.port),
                "--host",
                "127.0.0.1",
                "--state",
                str(self.state),
                "--state-interval",
                "1",
                "--silent",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.1)
        raise RuntimeError("anvil did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    @property
    def url(self) -> str:
        return f"evm+http://127.0.0.1:{self.port}"

"""Kill -9 a real run.py federation at a chosen moment, then verify and resume (shared by tests and bench)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]


def run_args(out: Path, keys: Path, data: Path, rounds: int, clients: int, seed: int = 7) -> list[str]:
    return [
        sys.executable,
        str(ROOT / "run.py"),
        "--num-clients",
        str(clients),
        "--rounds",
        str(rounds),
        "--seed",
        str(seed),
        "--out",
        str(out),
        "--keys-dir",
        str(keys),
        "--data-dir",
        str(data),
    ]


def env() -> dict:
    return dict(os.environ, RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0")


def blocks_in(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return con.execute("SELECT COUNT(*) FROM blocks").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def kill_tree(pid: int) -> None:
    """SIGKILL a process, its process group and every descendant (Ray's raylet, workers, ...)."""
    try:
        family = [psutil.Process(pid)] + psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for p in family:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)


def crash_run(args: list[str], db: Path, after_blocks: int, extra_delay: float, timeout: float = 600) -> int:
    """Start ``args``, SIGKILL it ``extra_delay`` s after the ledger holds ``after_blocks`` blocks.

    Returns the number of blocks when killed (or -1 if the run finished first)."""
    p = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env(), start_new_session=True)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if p.poll() is not None:
                return -1
            if blocks_in(db) >= after_blocks:
                time.sleep(extra_delay)
                break
            time.sleep(0.05)
        n = blocks_in(db)
        return n
    finally:
        kill_tree(p.pid)
        p.wait()

"""run.py end to end as a user runs it: a short simulation, a real local deployment, bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flower_chain.ledger import open_ledger, verify

ROOT = Path(__file__).resolve().parents[2]


def run_py(*args, timeout=900, **kw):
    env = dict(os.environ, RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0")
    return subprocess.run(
        [sys.executable, str(ROOT / "run.py"), *args], capture_output=True, text=True, timeout=timeout, env=env, **kw
    )


def _ledger_uri(out: Path) -> str:
    doc = json.loads((out / "metrics.json").read_text())
    return doc["summary"]["ledger"]


@pytest.fixture(scope="module")
def ledger_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("sim")
    r = run_py("--num-clients", "2", "--rounds", "1", "--out", str(d / "out"), "--data-dir", str(d / "data"))
    return d, r


def _model_digest(path: Path) -> str:
    import hashlib

    import numpy as np

    with np.load(path) as z:
        return hashlib.sha256(b"".join(z[k].tobytes() for k in sorted(z.files))).hexdigest()


def test_simulation_two_clients_one_round(ledger_run):
    tmp_path, r = ledger_run
    out = tmp_path / "out"
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "final accuracy" in r.stdout and "flower-chain ledger verify" in r.stdout
    doc = json.loads((out / "metrics.json").read_text())
    assert [row["round"] for row in doc["rounds"]] == [0, 1]
    assert doc["rounds"][1]["accepted"] == 2 and doc["rounds"][1]["rejected"] == 0
    assert doc["rounds"][1]["accuracy"] > doc["rounds"][0]["accuracy"]
    assert (out / "model.npz").exists()
    rep = verify(open_ledger(_ledger_uri(out)), client_signatures=True)
    assert rep.accepted == 2
    # through `flwr run` and a local SuperLink of its own, stopped by PID at the end; Flower's log in a file
    home = re.search(r"FLWR_HOME (\S+);", r.stdout).group(1)
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", r.stdout)]
    assert pids and not [p for p in pids if _alive(p)]
    assert not _procs_mentioning(home), "a process of the run's local SuperLink is still running"
    assert "Starting local SuperLink" in (out / "flwr-run.log").read_text()
    assert "INFO" not in r.stdout and "Warning" not in r.stdout + r.stderr  # quiet: one line per round
    assert re.search(r"round +1/1 +accuracy", r.stdout) and "verdicts      train: ok 2" in r.stdout


def test_simulation_ctrl_c_stops_the_local_superlink(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0")
    p = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "--num-clients",
            "2",
            "--rounds",
            "50",
            "--out",
            str(out),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    home = None
    deadline = time.time() + 300
    for line in p.stdout:
        m = re.search(r"FLWR_HOME (\S+);", line)
        home = home or (m and m.group(1))
        if re.search(r"round +1/50", line) or time.time() > deadline:
            break
    assert home and _procs_mentioning(home), "the run's local SuperLink is not running"
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=120)
    assert p.returncode == 130
    time.sleep(1)
    assert not _procs_mentioning(home)


def test_simulation_without_ledger_gives_the_same_model(tmp_path, ledger_run):
    out = tmp_path / "out"
    r = run_py(
        "--num-clients", "2", "--rounds", "1", "--out", str(out), "--no-ledger", "--data-dir", str(tmp_path / "data")
    )
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["summary"]["ledger"] is None and "accepted" not in doc["rounds"][1]
    assert not list(out.glob("ledger*"))
    # honest clients: the ledger changes nothing about the model (aggregation in partition order)
    assert _model_digest(out / "model.npz") == _model_digest(ledger_run[0] / "out" / "model.npz")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _procs_mentioning(text: str) -> list[str]:
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd and _alive(int(d.name)):
                found.append(f"{d.name}: {cmd}")
    return found


def test_deployment_superlink_and_two_supernodes(tmp_path):
    out = tmp_path / "out"
    r = run_py(
        "--mode",
        "deployment",
        "--num-clients",
        "2",
        "--rounds",
        "1",
        "--out",
        str(out),
        "--data-dir",
        str(tmp_path / "data"),
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    pids = [int(p) for p in re.findall(r"\(pid (\d+)\)", r.stdout)]
    port = re.search(r"SuperLink on 127\.0\.0\.1:(\d+)", r.stdout).group(1)
    assert len(pids) == 3
    time.sleep(1)
    assert not [p for p in pids if _alive(p)], "a started process is still running"
    assert not _procs_mentioning(f"127.0.0.1:{port}"), "a Flower process of this run is still running"
    doc = json.loads((out / "metrics.json").read_text())
    assert doc["rounds"][-1]["accepted"] == 2
    assert verify(open_ledger(_ledger_uri(out)), client_signatures=True).accepted == 2


def test_deployment_ctrl_c_stops_everything(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0")
    p = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "run.py"),
            "--mode",
            "deployment",
            "--num-clients",
            "2",
            "--rounds",
            "50",
            "--out",
            str(out),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    pids, port = [], None
    deadline = time.time() + 180
    for line in p.stdout:
        m = re.search(r"\(pid (\d+)\)", line)
        if m:
            pids.append(int(m.group(1)))
        m = re.search(r"SuperLink on 127\.0\.0\.1:(\d+)", line)
        if m:
            port = m.group(1)
        if "flwr run" in line or time.time() > deadline:
            break
    assert len(pids) == 3 and port
    time.sleep(5)
    p.send_signal(signal.SIGINT)
    p.communicate(timeout=120)
    assert p.returncode == 130
    time.sleep(1)
    assert not [x for x in pids if _alive(x)]
    assert not _procs_mentioning(f"127.0.0.1:{port}")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--dataset", "imagenet"], "unknown dataset"),
        (["--num-clients", "0"], "at least 1"),
        (["--num-clients", "3000"], "training samples"),
        (["--rounds", "0"], "at least 1"),
        (["--partition", "pathological"], "unknown partition"),
        (["--dataset", "cifar10"], "cifar-10-python.tar.gz"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    r = run_py(*args, "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data"), timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("error:") and message in lines[-1], r.stderr


def test_unwritable_out_is_exit_2(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_py("--out", str(blocker / "sub"), "--data-dir", str(tmp_path / "data"), timeout=300)
    assert r.returncode == 2 and "not writable" in r.stderr

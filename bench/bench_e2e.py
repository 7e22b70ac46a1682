#!/usr/bin/env python3
"""End-to-end benchmarks (JSON in bench/results/e2e.json, a Markdown table printed for the README).

    python bench/bench_e2e.py paired   [--pairs 3] [--paired-rounds 5]   # ledger vs plain FedAvg, 10 clients, MNIST
    python bench/bench_e2e.py fashion                # Fashion-MNIST full (Debian), 10 clients, 5 rounds
    python bench/bench_e2e.py scale    [--clients 1000 --rounds 100]   # synthetic, no training
    python bench/bench_e2e.py all

paired: the two runs alternate (ledger, plain, plain, ledger, ...) in one invocation; reports the
wall-time ratio (target <= 1.02) and the per-round ledger time (hash, verify, append) beside the
round time, and the CPU seconds each run's processes (Ray workers, the simulation process, the rest) used
during rounds 2..N: ledger minus plain per pair is what the ledger costs the cores per round, a figure
that does not move in the simulation's 100 ms steps as the wall time does. fashion: test accuracy (target >= 85 %) with and without the ledger and whether the final
model digests are identical. scale: signed replies of a small model through aggregate_train into
SQLite, then ``flower-chain ledger verify``: throughput and peak memory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "e2e.json"


#: Which process a CPU second belongs to, by its command line (first match wins).
ROLES = (("clients", "default_worker"), ("server", "flwr-simulation"))


def _cpu_of_tree(proc, seen: dict[int, tuple[str, float]]) -> None:
    """Record the CPU time (user + system) so far of ``proc`` and every descendant, with its role."""
    import psutil

    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return
    for q in procs:
        try:
            t = q.cpu_times()
            role = seen[q.pid][0] if q.pid in seen else "other"
            if role == "other":  # read again until it names a role: a child forked before its exec still shows
                cmd = " ".join(q.cmdline())  # its parent's command line (Ray renames its workers later, not before)
                role = next((name for name, part in ROLES if part in cmd), "other")
            seen[q.pid] = (role, t.user + t.system)
        except psutil.Error:  # ended between the listing and the reading: its last sample stands
            pass


def _rounds_logged(metrics: Path) -> int:
    """How many rounds (the initial evaluation included) ``metrics.json`` holds now (0 before it exists)."""
    try:
        return len(json.loads(metrics.read_text())["rounds"])
    except (OSError, ValueError, KeyError):  # not written yet, or being replaced
        return 0


def run(args: list[str], out: Path) -> dict:
    """One ``run.py`` run: its wall time, rounds and final model, and the CPU seconds its process tree used during
    rounds 2..N (user + system, every process, by role: ``clients`` the Ray workers that run the ClientApps,
    ``server`` the simulation process that runs the ServerApp, ``other`` the rest). The tree is sampled every 50 ms;
    a snapshot is taken when ``metrics.json`` shows a round ended, so each boundary is late by at most 50 ms."""
    import psutil

    load_before = os.getloadavg()[0]
    metrics = out / "metrics.json"
    t = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), *args, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"},
    )
    seen: dict[int, tuple[str, float]] = {}
    at_round: dict[int, dict[str, float]] = {}  # rounds logged -> CPU seconds by role then
    tree = psutil.Process(p.pid)
    pipes = ThreadPoolExecutor(2)  # drain both pipes so the run never blocks on a full one
    stdout, stderr = pipes.submit(p.stdout.read), pipes.submit(p.stderr.read)
    mtime = 0.0
    while p.poll() is None:
        _cpu_of_tree(tree, seen)
        try:
            now = metrics.stat().st_mtime
        except OSError:
            now = mtime
        if now != mtime:
            mtime = now
            logged = _rounds_logged(metrics)
            if logged and logged not in at_round:
                cpu = {name: 0.0 for name, _ in ROLES} | {"other": 0.0}
                for role, seconds in seen.values():
                    cpu[role] += seconds
                at_round[logged] = cpu
        time.sleep(0.05)
    wall = time.perf_counter() - t
    err = stderr.result()
    stdout.result()
    pipes.shutdown()
    if p.returncode:
        raise RuntimeError(err[-2000:])
    doc = json.loads((out / "metrics.json").read_text())
    model = out / "model.npz"
    import numpy as np

    with np.load(model) as z:
        digest = hashlib.sha256(b"".join(z[k].tobytes() for k in sorted(z.files))).hexdigest()
    rounds = [r for r in doc["rounds"] if r["round"] > 0]
    return {
        "wall_s": wall,
        "loop_s": doc["summary"]["total_time_s"],
        "final_accuracy": doc["summary"]["final_accuracy"],
        "round_s": [r["round_time_s"] for r in rounds],
        "ledger_s": [r.get("ledger_time_s") for r in rounds],
        "model_sha256": digest,
        # rounds logged: the initial evaluation (round 0), then rounds 1..N; rounds 2..N lie between the 2nd and the last
        "cpu_rounds_2_on_s": {role: at_round[len(doc["rounds"])][role] - at_round[2][role] for role in at_round[2]}
        if 2 in at_round and len(doc["rounds"]) in at_round
        else None,
        "load_1min_before": load_before,
    }


def _spread(xs: list[float]) -> dict:
    """min, quartiles, max of a list (the spread of per-pair ratios)."""
    q = statistics.quantiles(xs, n=4) if len(xs) > 1 else [xs[0]] * 3
    return {"min": min(xs), "q1": q[0], "median": statistics.median(xs), "q3": q[2], "max": max(xs)}


def paired(pairs: int, data_dir: str, rounds: int = 5) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fc-e2e-"))
    base = ["--num-clients", "10", "--rounds", str(rounds), "--data-dir", data_dir, "--keys-dir", str(work / "keys")]
    ledger, plain = [], []
    for i in range(pairs):
        order = [("ledger", []), ("plain", ["--no-ledger"])]
        if i % 2:
            order.reverse()
        for name, extra in order:
            res = run(base + extra, work / f"{name}{i}")
            (ledger if name == "ledger" else plain).append(res)
    ratio_loop = statistics.median(r["loop_s"] for r in ledger) / statistics.median(r["loop_s"] for r in plain)
    ratio_wall = statistics.median(r["wall_s"] for r in ledger) / statistics.median(r["wall_s"] for r in plain)
    per_round_ledger = [x for r in ledger for x in r["ledger_s"] if x is not None]
    per_round = [x for r in ledger for x in r["round_s"]]
    # Per pair (the two runs of a pair ran back to back): the whole loop, and rounds 2..N only, since
    # round 1 also starts the simulation's worker processes, which varies by seconds between runs.
    pair_loop = [a["loop_s"] / b["loop_s"] for a, b in zip(ledger, plain)]
    pair_steady = [sum(a["round_s"][1:]) / sum(b["round_s"][1:]) for a, b in zip(ledger, plain)]
    # the same, each run's rounds 2..N summarized by their median (one slow round weighs less)
    pair_steady_median = [
        statistics.median(a["round_s"][1:]) / statistics.median(b["round_s"][1:]) for a, b in zip(ledger, plain)
    ]
    # CPU seconds per run (all processes) and by role, ledger minus plain per pair, divided by the rounds: what the
    # ledger costs the machine's cores per round, whatever thread or process it runs on (the wall-time ratio above
    # moves in the simulation's 100 ms steps; the CPU does not)
    cpu_per_round = {
        role: [
            (a["cpu_rounds_2_on_s"][role] - b["cpu_rounds_2_on_s"][role]) / (rounds - 1)
            for a, b in zip(ledger, plain)
            if a["cpu_rounds_2_on_s"] and b["cpu_rounds_2_on_s"]
        ]
        for role in ("clients", "server", "other")
    }
    cpu_per_round["total"] = [sum(xs) for xs in zip(*cpu_per_round.values())]
    return {
        "pairs": pairs,
        "rounds_per_run": rounds,
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "load_average_after": os.getloadavg(),
        "ratio_loop_median": ratio_loop,
        "ratio_wall_median": ratio_wall,
        "target_ratio_le_1_02": ratio_loop <= 1.02,
        "ratio_loop_per_pair": pair_loop,
        "ratio_loop_per_pair_median": statistics.median(pair_loop),
        "ratio_rounds_2_on_per_pair": pair_steady,
        "ratio_rounds_2_on_per_pair_median": statistics.median(pair_steady),
        "ratio_rounds_2_on_per_pair_spread": _spread(pair_steady),
        "target_rounds_2_on_le_1_02": statistics.median(pair_steady) <= 1.02,
        "ratio_median_round_2_on_per_pair": pair_steady_median,
        "ratio_median_round_2_on_per_pair_spread": _spread(pair_steady_median),
        "first_round_s_median": {
            "ledger": statistics.median(r["round_s"][0] for r in ledger),
            "plain": statistics.median(r["round_s"][0] for r in plain),
        },
        "ledger_time_per_round_ms_median": 1000 * statistics.median(per_round_ledger),
        "extra_cpu_ms_per_round_2_on_spread": {
            k: _spread([1000 * x for x in v]) for k, v in cpu_per_round.items() if v
        },
        "cpu_ms_per_round_2_on_median": {
            name: {
                role: 1000 * statistics.median(r["cpu_rounds_2_on_s"][role] / (rounds - 1) for r in runs)
                for role in ("clients", "server", "other")
            }
            for name, runs in (("ledger", ledger), ("plain", plain))
            if all(r["cpu_rounds_2_on_s"] for r in runs)
        },
        "load_1min_before_runs": _spread([r["load_1min_before"] for r in ledger + plain]),
        "round_time_s_median": statistics.median(per_round),
        "ledger": ledger,
        "plain": plain,
    }


def fashion(data_dir: str) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fc-fashion-"))
    base = [
        "--dataset",
        "fashion-mnist",
        "--num-clients",
        "10",
        "--rounds",
        "5",
        "--data-dir",
        data_dir,
        "--keys-dir",
        str(work / "keys"),
    ]
    with_ledger = run(base, work / "ledger")
    without = run(base + ["--no-ledger"], work / "plain")
    return {
        "ledger": with_ledger,
        "plain": without,
        "target_accuracy_ge_85": with_ledger["final_accuracy"] >= 0.85,
        "identical_final_model": with_ledger["model_sha256"] == without["model_sha256"],
    }


def scale(clients: int, rounds: int) -> dict:
    import numpy as np
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from flwr.app import Array, ArrayRecord, ConfigRecord
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from flower_chain.strategies import LedgerStrategy
    from tests.support.fl_helpers import Clients, FakeGrid, signed_train_reply

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    work = Path(tempfile.mkdtemp(prefix="fc-scale-"))
    uri = f"sqlite:///{work}/scale.db"
    cl = Clients(clients)
    strat = LedgerStrategy(
        FedAvg(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0),
        ledger=uri,
        keyring=cl.keyring,
        server_key=Ed25519PrivateKey.generate(),
    )
    rng = np.random.default_rng(0)
    glob = ArrayRecord(
        {"w": Array(rng.standard_normal((32, 10)).astype(np.float32)), "b": Array(np.zeros(10, np.float32))}
    )
    nodes = list(range(1, clients + 1))
    t_sign = t_agg = 0.0
    for rnd in range(1, rounds + 1):
        msgs = sorted(
            strat.configure_train(rnd, glob, ConfigRecord({}), FakeGrid(nodes)), key=lambda m: m.metadata.dst_node_id
        )
        t = time.perf_counter()
        replies = [
            signed_train_reply(
                m,
                k,
                ArrayRecord(
                    {
                        "w": Array((glob["w"].numpy() + 0.01 * i).astype(np.float32)),
                        "b": Array(glob["b"].numpy() + 0.01),
                    }
                ),
                10,
            )
            for i, (m, k) in enumerate(zip(msgs, cl.keys))
        ]
        t_sign += time.perf_counter() - t
        t = time.perf_counter()
        agg, _ = strat.aggregate_train(rnd, replies)
        t_agg += time.perf_counter() - t
        glob = agg
    strat.close()
    n = clients * rounds
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "flower_chain.cli", "ledger", "verify", uri, "--json"], capture_output=True, text=True
    )
    verify_s = time.perf_counter() - t
    ver = json.loads(r.stdout)
    return {
        "clients": clients,
        "rounds": rounds,
        "replies": n,
        "client_signing_s": t_sign,
        "aggregate_train_s": t_agg,
        "replies_per_s_through_aggregate_train": n / t_agg,
        "verify_cli_s": verify_s,
        "verify_entries_per_s": ver["entries"] / verify_s,
        "verified": ver["verified"],
        "verify_client_signatures_checked": ver["client_signatures_checked"],
        "peak_rss_mb_server_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ledger_file_mb": (work / "scale.db").stat().st_size / 1e6,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["paired", "fashion", "scale", "all"])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--paired-rounds", type=int, default=5, help="rounds per run of the paired bench")
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--data-dir", default=str(ROOT / "data"))
    args = ap.parse_args()
    res = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    if args.what in ("paired", "all"):
        res["paired"] = paired(args.pairs, args.data_dir, args.paired_rounds)
    if args.what in ("fashion", "all"):
        res["fashion"] = fashion(args.data_dir)
    if args.what in ("scale", "all"):
        res["scale"] = scale(args.clients, args.rounds)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2))
    short = {k: {kk: vv for kk, vv in v.items() if kk not in ("ledger", "plain")} for k, v in res.items()}
    print(json.dumps(short, indent=2))


if __name__ == "__main__":
    main()

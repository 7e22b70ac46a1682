#!/usr/bin/env python3
"""Aggregation replay benchmark (issue 11 item 2): ``flower-chain ledger audit`` vs the original aggregation.

A LedgerStrategy(FedAvg) run of 10 signed clients x 100 rounds on an MNIST-size CNN (~93k float32
parameters; synthetic updates: the global model plus noise) writes a durable SQLite ledger with the
accepted updates in the blob store (the default). Measured in the same run:

* original: the server's ``aggregate_train`` per round (verify every reply, FedAvg, record the block
  and the blobs), and, for context, the wrapped FedAvg's own share of it;
* replay: :func:`flower_chain.audit.audit` on the finished ledger (read and digest-check every update,
  input model and state blob, rebuild the strategy, FedAvg, cast, compare digests), and the full
  ``verify`` the CLI runs before it.

Target: replay time <= original aggregation time.

    python bench/bench_audit.py [--clients 10] [--rounds 100] [--strategy fedavg|fedadam]

Writes bench/results/audit.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord  # noqa: E402
from flwr.serverapp.strategy import FedAdam, FedAvg  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from flower_chain.audit.replay import OK, audit  # noqa: E402
from flower_chain.ledger import open_ledger, verify  # noqa: E402
from flower_chain.strategies import LedgerStrategy  # noqa: E402
from tests.support.fl_helpers import Clients, FakeGrid, signed_train_reply  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHAPES = [
    ("conv1.weight", (32, 1, 5, 5)),
    ("conv1.bias", (32,)),
    ("conv2.weight", (64, 32, 5, 5)),
    ("conv2.bias", (64,)),
    ("fc.weight", (10, 4096)),
    ("fc.bias", (10,)),
]


def make_strategy(name: str):
    kw = {"min_available_nodes": 1, "min_train_nodes": 1, "fraction_evaluate": 0.0}
    return FedAdam(**kw, eta=0.01) if name == "fedadam" else FedAvg(**kw)


def run(n_clients: int, rounds: int, strategy: str, path: Path) -> dict:
    """The original run; returns per-round timings."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    clients = Clients(n_clients)
    nodes = list(range(1, n_clients + 1))
    rng = np.random.default_rng(0)
    glob = ArrayRecord({n: Array(rng.standard_normal(s).astype(np.float32) * 0.1) for n, s in SHAPES})
    s = LedgerStrategy(
        make_strategy(strategy),
        ledger=f"sqlite:///{path}",
        keyring=clients.keyring,
        server_key=Ed25519PrivateKey.generate(),
        federation_id="fed-bench-audit",
    )
    inner = s.strategy
    agg, inner_t = [], []
    original_aggregate = inner.aggregate_train

    def timed(server_round, replies):  # the wrapped strategy's own share of the server's aggregate_train
        t = time.perf_counter()
        try:
            return original_aggregate(server_round, replies)
        finally:
            inner_t.append(time.perf_counter() - t)

    inner.aggregate_train = timed
    for rnd in range(1, rounds + 1):
        msgs = sorted(
            s.configure_train(rnd, glob, ConfigRecord({}), FakeGrid(nodes)), key=lambda m: m.metadata.dst_node_id
        )
        replies = []
        for i, (m, k) in enumerate(zip(msgs, clients.keys)):
            out = ArrayRecord(
                {
                    n: Array((a.numpy() + rng.standard_normal(a.shape).astype(np.float32) * 0.01).astype(np.float32))
                    for n, a in glob.items()
                }
            )
            replies.append(signed_train_reply(m, k, out, 50 + i))
        t = time.perf_counter()
        glob, _ = s.aggregate_train(rnd, replies)
        agg.append(time.perf_counter() - t)
        assert s.round_stats(rnd)["accepted"] == n_clients
    s.close()
    return {"aggregate_train_s": agg, "wrapped_strategy_s": inner_t}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--strategy", choices=("fedavg", "fedadam"), default="fedavg")
    ap.add_argument("--out", default=str(RESULTS / "audit.json"))
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="fc-audit-"))
    path = tmp / "ledger.db"
    t0 = time.perf_counter()
    original = run(args.clients, args.rounds, args.strategy, path)
    run_s = time.perf_counter() - t0
    with open_ledger(f"sqlite:///{path}") as led:
        t = time.perf_counter()
        verify(led, client_signatures=True)
        verify_s = time.perf_counter() - t
        report = audit(led)
    assert all(r.status == OK for r in report.rounds) and len(report.rounds) == args.rounds, report.to_dict()
    original_s = sum(original["aggregate_train_s"])
    res = {
        "machine": {"python": platform.python_version(), "cpu": platform.processor() or platform.machine()},
        "clients": args.clients,
        "rounds": args.rounds,
        "strategy": args.strategy,
        "parameters": sum(int(np.prod(s)) for _, s in SHAPES),
        "updates_replayed": report.updates_replayed,
        "ledger_MB": path.stat().st_size / 1e6,
        "original_aggregate_train_s": original_s,
        "original_wrapped_strategy_s": sum(original["wrapped_strategy_s"]),
        "replay_s": report.seconds,
        "replay_per_round_ms": 1000 * report.seconds / args.rounds,
        "replay_over_original": report.seconds / original_s,
        "target_replay_le_original": report.seconds <= original_s,
        "verify_with_client_signatures_s": verify_s,
        "whole_original_run_s": run_s,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

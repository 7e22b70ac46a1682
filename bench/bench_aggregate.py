#!/usr/bin/env python3
"""Verified aggregation benchmarks (issue: verified aggregation), baselines measured in the same run.

1. Array digest vs raw ``hashlib.sha256`` over the same bytes: target >= 0.8x throughput.
2. ``aggregate_train`` of LedgerStrategy(FedAvg) vs plain FedAvg on 100 signed replies of a
   ~1M-parameter model (durable SQLite ledger): the added time must stay <= 1.2 x
   (one SHA-256 pass over the reply bytes + one Ed25519 verify per reply, on one thread).
   Measured twice: with the default ``verify_workers`` (replies hashed on one thread per CPU)
   and with ``verify_workers=1`` (everything on the calling thread, like the baseline).

    python bench/bench_aggregate.py [--replies 100] [--repeats 5]

Writes bench/results/aggregate.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord  # noqa: E402
from flwr.serverapp.strategy import FedAvg  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from flower_chain.ledger.arrays import array_digest  # noqa: E402
from flower_chain.strategies import LedgerStrategy  # noqa: E402
from tests.support.fl_helpers import Clients, FakeGrid, signed_train_reply  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STORE_MODELS = True
SHAPES = [
    ("conv1.weight", (64, 3, 5, 5)),
    ("conv1.bias", (64,)),
    ("conv2.weight", (128, 64, 5, 5)),
    ("conv2.bias", (128,)),
    ("fc.weight", (10, 80000)),
    ("fc.bias", (10,)),
]


def model(seed: int) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord({n: Array(rng.standard_normal(s).astype(np.float32)) for n, s in SHAPES})


def bench_digest(repeats: int) -> dict:
    rng = np.random.default_rng(0)
    named = [(n, rng.standard_normal(s).astype(np.float32)) for n, s in SHAPES]
    raw = b"".join(a.tobytes() for _, a in named)
    t_raw, t_dig = [], []
    for _ in range(repeats * 4):
        t = time.perf_counter()
        hashlib.sha256(raw).digest()
        t_raw.append(time.perf_counter() - t)
        t = time.perf_counter()
        array_digest(named)
        t_dig.append(time.perf_counter() - t)
    mb = len(raw) / 1e6
    raw_s, dig_s = statistics.median(t_raw), statistics.median(t_dig)
    return {
        "bytes": len(raw),
        "raw_sha256_MBps": mb / raw_s,
        "array_digest_MBps": mb / dig_s,
        "throughput_ratio": raw_s / dig_s,
    }


def bench_aggregate(n_replies: int, repeats: int) -> dict:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    clients = Clients(n_replies)
    nodes = list(range(1, n_replies + 1))
    params = sum(int(np.prod(s)) for _, s in SHAPES)
    tmp = Path(tempfile.mkdtemp(prefix="fc-agg-"))
    times: dict[str, list[float]] = {"plain": [], "ledger": [], "ledger_1_thread": []}
    base_t: list[float] = []
    server_key = Ed25519PrivateKey.generate()
    glob = model(0)
    outs = [model(100 + i) for i in range(n_replies)]
    for rep in range(repeats):
        inner = FedAvg(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0)
        fed = f"fed-agg-{rep}"
        strategies = {
            name: LedgerStrategy(
                FedAvg(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0),
                ledger=f"sqlite:///{tmp}/agg{rep}-{name}.db",
                keyring=clients.keyring,
                server_key=server_key,
                federation_id=fed,
                store_models=STORE_MODELS,
                verify_workers=workers,
            )
            for name, workers in (("ledger", None), ("ledger_1_thread", 1))
        }
        msgs = {
            name: sorted(
                s.configure_train(1, glob, ConfigRecord({}), FakeGrid(nodes)), key=lambda m: m.metadata.dst_node_id
            )
            for name, s in strategies.items()
        }
        replies = {
            name: [signed_train_reply(m, k, o, 100) for m, k, o in zip(msgs[name], clients.keys, outs)]
            for name in strategies
        }
        replies["plain"] = [signed_train_reply(m, k, o, 100) for m, k, o in zip(msgs["ledger"], clients.keys, outs)]
        # baseline: one SHA-256 pass over every reply's array bytes + one Ed25519 verify per reply
        payloads = [[a.data for a in r.content["arrays"].values()] for r in replies["plain"]]
        sigs = [
            (r.content["flower-chain"]["statement"], r.content["flower-chain"]["signature"]) for r in replies["plain"]
        ]
        pubs = [k.public_key() for k in clients.keys]
        t = time.perf_counter()
        for chunks, (st, sig), pub in zip(payloads, sigs, pubs):
            h = hashlib.sha256()
            for c in chunks:
                h.update(c)
            h.digest()
            pub.verify(sig, st)
        base_t.append(time.perf_counter() - t)
        order = [("plain", inner), *strategies.items()]
        shift = rep % len(order)
        order = order[shift:] + order[:shift]  # rotate, so no side always runs on a warm cache
        for name, strat in order:
            t = time.perf_counter()
            strat.aggregate_train(1, replies[name])
            times[name].append(time.perf_counter() - t)
        for name, s in strategies.items():
            assert s.round_stats(1)["accepted"] == n_replies
            s.close()
    med = {name: statistics.median(t) for name, t in times.items()}
    base = statistics.median(base_t)
    out = {
        "replies": n_replies,
        "parameters": params,
        "reply_MB": params * 4 / 1e6,
        "verify_workers_default": min(8, os.cpu_count() or 1),
        "plain_fedavg_s": med["plain"],
        "baseline_sha256_plus_ed25519_s": base,
    }
    for name in strategies:
        added = med[name] - med["plain"]
        out[name] = {
            "ledger_fedavg_s": med[name],
            "added_s": added,
            "added_over_baseline": added / base,
            "target_added_le_1_2x_baseline": added <= 1.2 * base,
        }
    out["raw"] = {**times, "baseline": base_t}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--replies", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(RESULTS / "aggregate.json"))
    args = ap.parse_args()
    res = {"array_digest": bench_digest(args.repeats)}
    res["array_digest"]["target_ge_0_8x"] = res["array_digest"]["throughput_ratio"] >= 0.8
    res["aggregate_train"] = bench_aggregate(args.replies, args.repeats)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "raw"} for k, v in res.items()}, indent=2))


if __name__ == "__main__":
    main()

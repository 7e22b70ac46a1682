#!/usr/bin/env python3
"""Verified aggregation benchmarks (issue: verified aggregation), baselines measured in the same run.

1. Array digest vs raw ``hashlib.sha256`` over the same bytes: target >= 0.8x throughput.
2. ``aggregate_train`` of LedgerStrategy(FedAvg) vs plain FedAvg on 100 signed replies of a
   ~1M-parameter model (durable SQLite ledger): the added time must stay <= 1.2 x
   (one SHA-256 pass over the reply bytes + one Ed25519 verify per reply).

    python bench/bench_aggregate.py [--replies 100] [--repeats 5]

Writes bench/results/aggregate.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
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
from tests.fl_helpers import Clients, FakeGrid, signed_train_reply  # noqa: E402

RESULTS = Path(__file__).parent / "results"
STORE_MODELS = True
SHAPES = [("conv1.weight", (64, 3, 5, 5)), ("conv1.bias", (64,)), ("conv2.weight", (128, 64, 5, 5)),
          ("conv2.bias", (128,)), ("fc.weight", (10, 80000)), ("fc.bias", (10,))]


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
    return {"bytes": len(raw), "raw_sha256_MBps": mb / raw_s, "array_digest_MBps": mb / dig_s,
            "throughput_ratio": raw_s / dig_s}


def bench_aggregate(n_replies: int, repeats: int) -> dict:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    clients = Clients(n_replies)
    nodes = list(range(1, n_replies + 1))
    params = sum(int(np.prod(s)) for _, s in SHAPES)
    tmp = Path(tempfile.mkdtemp(prefix="fc-agg-"))
    plain_t, ledger_t, base_t = [], [], []
    for rep in range(repeats):
        inner = FedAvg(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0)
        strategy = LedgerStrategy(FedAvg(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0),
                                  ledger=f"sqlite:///{tmp}/agg{rep}.db", keyring=clients.keyring,
                                  server_key=Ed25519PrivateKey.generate(), store_models=STORE_MODELS)
        glob = model(0)
        msgs = sorted(strategy.configure_train(1, glob, ConfigRecord({}), FakeGrid(nodes)),
                      key=lambda m: m.metadata.dst_node_id)
        outs = [model(100 + i) for i in range(n_replies)]
        replies = [signed_train_reply(m, k, o, 100) for m, k, o in zip(msgs, clients.keys, outs)]
        replies2 = [signed_train_reply(m, k, o, 100) for m, k, o in zip(msgs, clients.keys, outs)]
        # baseline: one SHA-256 pass over every reply's array bytes + one Ed25519 verify per reply
        payloads = [[a.data for a in r.content["arrays"].values()] for r in replies]
        sigs = [(r.content["flower-chain"]["statement"], r.content["flower-chain"]["signature"]) for r in replies]
        pubs = [k.public_key() for k in clients.keys]
        t = time.perf_counter()
        for chunks, (st, sig), pub in zip(payloads, sigs, pubs):
            h = hashlib.sha256()
            for c in chunks:
                h.update(c)
            h.digest()
            pub.verify(sig, st)
        base_t.append(time.perf_counter() - t)
        order = [("plain", inner, replies2), ("ledger", strategy, replies)]
        if rep % 2:
            order.reverse()  # interleave, so neither side always runs on a warm cache
        for name, strat, rs in order:
            t = time.perf_counter()
            agg, _ = strat.aggregate_train(1, rs)
            (plain_t if name == "plain" else ledger_t).append(time.perf_counter() - t)
        assert strategy.round_stats(1)["accepted"] == n_replies
        strategy.close()
    plain, ledger, base = (statistics.median(x) for x in (plain_t, ledger_t, base_t))
    added = ledger - plain
    return {"replies": n_replies, "parameters": params, "reply_MB": params * 4 / 1e6,
            "plain_fedavg_s": plain, "ledger_fedavg_s": ledger, "added_s": added,
            "baseline_sha256_plus_ed25519_s": base, "added_over_baseline": added / base,
            "target_added_le_1_2x_baseline": added <= 1.2 * base,
            "raw": {"plain": plain_t, "ledger": ledger_t, "baseline": base_t}}


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

#!/usr/bin/env python3
"""Reply fuzzer in bulk (issue 10): mutated replies through LedgerStrategy, no hypothesis overhead.

Every round carries ``--batch`` replies from distinct keys, each a valid signed reply mutated by a random
kind of ``tests/test_reply_fuzz.py`` (NPY bytes and headers, records, metadata, metric types and values,
statement and signature bytes), in random order. Properties checked on every round: the server does not
raise, every reply gets exactly one verdict entry, the aggregate keeps float32; at the end the ledger
verifies with every verdict re-derived. Reports replies/s and the verdict counts.

    python bench/bench_fuzz.py --replies 1000000      # the 10**6 run (bench/results/fuzz.json)
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import platform
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from flwr.app import ConfigRecord  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402

from flower_chain.ledger import decode_entry, verify  # noqa: E402
from flower_chain.strategies import LedgerStrategy  # noqa: E402
from tests.support.fl_helpers import Clients, FakeGrid, arrays, fedavg, signed_train_reply  # noqa: E402
from tests.support.reply_mutations import mutate  # noqa: E402

DETAILS = {
    "npy-truncate": lambda r: r.randrange(256),
    "npy-extend": lambda r: r.randbytes(r.randint(1, 16)),
    "npy-header": lambda r: r.choice(
        [
            "negative-dim",
            "overflow",
            "zero-width",
            "object",
            "float128",
            "big-endian",
            "fortran",
            "not-a-dict",
            "call",
            "float-dim",
            "structured",
        ]
    ),
    "npy-random": lambda r: r.randbytes(r.randint(0, 300)),
    "npy-version": lambda r: r.randrange(256),
    "npy-hlen": lambda r: r.randrange(65536),
    "stype": lambda r: r.choice(["", "torch.Tensor", "numpy.ndarray ", "pickle"]),
    "num-examples": lambda r: r.choice([float("inf"), float("nan"), -5, 0, 2**63, 2**64 - 1, 1.5, "10", None, [1]]),
    "metric-value": lambda r: r.choice(
        [
            2**63,
            2**64 - 1,
            -(2**63) - 1,
            float("inf"),
            "text",
            b"bytes",
            None,
            [2**70],
            list(range(5000)),
            {"a": 1},
            True,
        ]
    ),
    "metric-name": lambda r: r.choice(["x" * 300, "", "\n$x^2$\u202e", 7]),
    "statement": lambda r: (r.randrange(400), r.randbytes(r.randint(0, 8))),
    "signature": lambda r: r.randbytes(r.randint(0, 80)),
    "sig-extra": lambda r: r.choice(["extra", "checkpoint-size"]),
    "seen-size": lambda r: r.choice([-7, 2**63, "1", 1.5, b"x"]),
    "array-name": lambda r: r.choice(["w2", "x" * 300, ""]),
    "node-id": lambda r: r.choice([0, 2**64 - 1]),
    "array-count": lambda r: r.randrange(4),
}
KINDS = list(DETAILS) + [
    "extra-metric-record",
    "extra-config-record",
    "extra-array-record",
    "drop-arrays",
    "drop-metrics",
    "drop-sig",
    "metric-count",
    "nan",
    "wrong-dtype-signed",
    "legit",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replies", type=int, default=100_000)
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "fuzz.json"))
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = 1, 1, 0
    rng = random.Random(args.seed)
    clients = Clients(args.batch)
    s = LedgerStrategy(
        fedavg(),
        ledger="memory:",
        keyring=clients.keyring,
        server_key=Ed25519PrivateKey.generate(),
        federation_id="fuzz-bench",
        store_client_updates=False,
    )
    nodes = list(range(1, args.batch + 1))
    glob, done, rnd = arrays(0), 0, 0
    kinds, reasons = collections.Counter(), collections.Counter()
    t_server = 0.0
    raised: list[str] = []
    t0 = time.perf_counter()
    while done < args.replies:
        rnd += 1
        msgs = sorted(
            s.configure_train(rnd, glob, ConfigRecord({}), FakeGrid(nodes)), key=lambda m: m.metadata.dst_node_id
        )
        replies = []
        for i, (m, k) in enumerate(zip(msgs, clients.keys)):
            if i < 2:  # two honest replies keep every round aggregating
                replies.append(signed_train_reply(m, k, arrays(rnd * 7 + i), 10))
                continue
            kind = rng.choice(KINDS)
            kinds[kind] += 1
            replies.append(mutate(m, k, kind, DETAILS[kind](rng) if kind in DETAILS else None))
        rng.shuffle(replies)
        t = time.perf_counter()
        try:
            new, _ = s.aggregate_train(rnd, replies)  # must not raise: counted, not assumed
        except Exception as e:  # noqa: BLE001 - the figure this bench exists to measure
            raised.append(f"round {rnd}: {type(e).__name__}: {e}"[:300])
            t_server += time.perf_counter() - t
            done += len(replies)
            continue
        t_server += time.perf_counter() - t
        glob = new
        head = s.ledger.head().header
        entries = [decode_entry(d) for d in s.ledger.entries(head.first_index, head.log_size)]
        updates = [e for e in entries if e.TYPE == "update"]
        assert len(updates) == len(replies), "one verdict per reply"
        reasons.update(e.reason for e in updates)
        assert glob is not None and all(a.numpy().dtype.str == "<f4" for a in glob.values())
        done += len(replies)
        if rnd % 50 == 0:
            print(f"{done:,} replies, {done / (time.perf_counter() - t0):,.0f}/s end to end", flush=True)
    wall = time.perf_counter() - t0
    t = time.perf_counter()
    report = verify(s.ledger, client_signatures=True)
    t_verify = time.perf_counter() - t
    assert raised or report.verdicts_rederived + sum(report.not_rederived.values()) == done
    res = {
        "replies": done,
        "rounds": rnd,
        "batch": args.batch,
        "seed": args.seed,
        "server_replies_per_s": done / t_server,
        "end_to_end_replies_per_s": done / wall,
        "note": "end to end includes building, signing and mutating each reply",
        "server_raised": len(raised),
        "raised_examples": raised[:10],
        "verify_s": t_verify,
        "verdicts_rederived": report.verdicts_rederived,
        "not_rederived": dict(report.not_rederived),
        "kinds": dict(kinds),
        "reasons": dict(reasons),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k not in ("kinds",)}, indent=2))


if __name__ == "__main__":
    main()

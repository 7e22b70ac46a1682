#!/usr/bin/env python3
"""PostgreSQL vs SQLite in the same run: durable append and verify throughput (issue 14).

    python bench/bench_postgres.py                       # 200,000 entries in blocks of 1,000
    python bench/bench_postgres.py --entries 50000 --block 500

Starts a throw-away PostgreSQL server (tests/pgserver.py: Debian's postgresql, loopback TCP, fsync on,
synchronous_commit on) and builds the same ledger in SQLite (WAL, synchronous=FULL) and in PostgreSQL.
Append: seconds inside ``LedgerWriter.append`` (header signing + one durable transaction per block).
Verify: ``verify(ledger)`` (hashes, chain, signatures of headers and checkpoints) on a fresh read-only
handle. Targets: PostgreSQL append >= 10,000 entries/s; PostgreSQL verify within 2x of SQLite.
Writes bench/results/postgres.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from bench.bench_ledger import make_entries  # noqa: E402
from flower_chain.ledger import GenesisEntry, LedgerWriter, open_ledger, verify  # noqa: E402
from flower_chain.ledger.keys import key_id, raw_public  # noqa: E402
from tests.support.pgserver import PostgresServer, why_unavailable  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "postgres.json"


def build(uri: str, batches: list[list[bytes]], server_key, client_keys) -> dict:
    ledger = open_ledger(uri, create=True)
    w = LedgerWriter(ledger, server_key)
    w.init(
        GenesisEntry(
            federation_id="bench",
            origin="flower-chain/bench",
            server_key=raw_public(server_key),
            client_keys={key_id(k): raw_public(k) for k in client_keys},
            strategy="FedAvg",
            config_digest=b"\x00" * 32,
            created_ms=int(time.time() * 1000),
        )
    )
    t_append = 0.0
    for rnd, batch in enumerate(batches, start=1):
        t = time.perf_counter()
        w.append(rnd, batch)
        t_append += time.perf_counter() - t
    ledger.close()
    n = sum(len(b) for b in batches)
    return {"entries": n, "blocks": len(batches), "append_s": t_append, "append_entries_per_s": n / t_append}


def check(uri: str) -> dict:
    ledger = open_ledger(uri)  # read-only, as `flower-chain ledger verify` opens it
    t = time.perf_counter()
    rep = verify(ledger)
    s = time.perf_counter() - t
    ledger.close()
    return {"verify_s": s, "verify_entries_per_s": rep.entries / s, "verified_entries": rep.entries}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=200_000)
    ap.add_argument("--block", type=int, default=1000)
    args = ap.parse_args()
    reason = why_unavailable()
    if reason:
        sys.exit(f"cannot run: {reason}")
    rng = random.Random(0)
    server_key = Ed25519PrivateKey.generate()
    client_keys = [Ed25519PrivateKey.generate() for _ in range(100)]
    n_blocks = max(1, args.entries // args.block)
    batches = [[e for e, _ in make_entries(args.block, r + 1, client_keys, rng)] for r in range(n_blocks)]
    work = Path(tempfile.mkdtemp(prefix="fc-bpg-"))
    server = PostgresServer(fsync=True)
    try:
        res: dict = {
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
            "entries": n_blocks * args.block,
            "block_size": args.block,
            "durability": {
                "sqlite": "WAL, synchronous=FULL",
                "postgresql": "fsync=on, synchronous_commit=on, TCP loopback",
            },
        }
        uris = {"sqlite": f"sqlite:///{work}/bench.db", "postgresql": server.create_database("bench")}
        for name, uri in uris.items():
            res[name] = build(uri, batches, server_key, client_keys)
            res[name].update(check(uri))
            print(name, json.dumps(res[name]), flush=True)
        with server.admin() as c:
            res["postgresql"]["database_mb"] = c.execute("SELECT pg_database_size('bench')").fetchone()[0] / 1e6
        res["sqlite"]["file_mb"] = (work / "bench.db").stat().st_size / 1e6
        pg, sq = res["postgresql"], res["sqlite"]
        res["targets"] = {
            "postgresql_append_ge_10000_per_s": pg["append_entries_per_s"] >= 10_000,
            "postgresql_verify_within_2x_of_sqlite": pg["verify_s"] <= 2 * sq["verify_s"],
            "verify_time_ratio_postgresql_to_sqlite": pg["verify_s"] / sq["verify_s"],
        }
    finally:
        server.close()
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res["targets"], indent=2))


if __name__ == "__main__":
    main()

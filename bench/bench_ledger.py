#!/usr/bin/env python3
"""Ledger benchmarks (issue: the round ledger), each figure beside raw hashlib/Ed25519 in the same run.

    python bench/bench_ledger.py                 # 1,000,000 entries (a few minutes)
    python bench/bench_ledger.py --entries 100000

Targets: durable SQLite append >= 10,000 entries/s (blocks of 100-1,000);
verify (hashes + chain) >= 300,000 entries/s; verify with signatures of a
1,000,000-entry ledger < 60 s and < 300 MB peak RSS; inclusion and consistency
proof generation + verification at 1,000,000 entries < 5 ms each.
Writes bench/results/ledger.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from flower_chain.ledger import GenesisEntry, LedgerWriter, UpdateEntry, UpdateStatement, merkle, open_ledger, proofs  # noqa: E402  # noqa: E402
from flower_chain.ledger.keys import key_id, raw_public  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def make_entries(n: int, rnd: int, client_keys, rng: random.Random) -> list[tuple[bytes, bytes]]:
    """Realistic signed update entries (about 900 bytes each), with the digest that makes each distinct."""
    out = []
    for i in range(n):
        k = client_keys[i % len(client_keys)]
        digest = rng.randbytes(32)
        st = UpdateStatement(
            "train", "bench", rnd, key_id(k), b"\x01" * 32, b"\x02" * 32, digest, 100 + i, b"\x03" * 32
        ).to_bytes()
        sig = k.sign(st) if i < len(client_keys) else rng.randbytes(64)  # signing 1M times is not what we measure
        out.append(
            (
                UpdateEntry(
                    kind="train",
                    round=rnd,
                    node_id=str(i),
                    key_id=key_id(k),
                    verdict="accepted",
                    reason="ok",
                    detail="",
                    num_examples=100 + i,
                    arrays_digest=digest,
                    metrics={"train_loss": 0.5, "num-examples": 100 + i},
                    statement=st,
                    signature=sig,
                ).to_bytes(),
                digest,
            )
        )
    return out


def raw_baselines(entries: list[bytes]) -> dict:
    t = time.perf_counter()
    for e in entries:
        hashlib.sha256(b"\x00" + e).digest()
    sha = len(entries) / (time.perf_counter() - t)
    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    msg = entries[0]
    t = time.perf_counter()
    sigs = [key.sign(msg) for _ in range(2000)]
    sign = 2000 / (time.perf_counter() - t)
    t = time.perf_counter()
    for s in sigs:
        pub.verify(s, msg)
    ver = 2000 / (time.perf_counter() - t)
    return {"sha256_leaf_hashes_per_s": sha, "ed25519_sign_per_s": sign, "ed25519_verify_per_s": ver}


def build(uri: str, total: int, block_size: int, rng: random.Random) -> tuple[float, Ed25519PrivateKey]:
    """Append ``total`` entries in blocks of ``block_size``; return append entries/s (encoding excluded)."""
    server = Ed25519PrivateKey.generate()
    clients = [Ed25519PrivateKey.generate() for _ in range(10)]
    ledger = open_ledger(uri, create=True)
    w = LedgerWriter(ledger, server)
    w.init(
        GenesisEntry(
            federation_id="bench",
            origin="flower-chain/bench",
            server_key=raw_public(server),
            client_keys={key_id(k): raw_public(k) for k in clients},
            strategy="FedAvg",
            config_digest=b"\x00" * 32,
            created_ms=0,
        )
    )
    template = [make_entries(block_size, r, clients, rng) for r in range(1, 6)]
    spent, done, rnd = 0.0, 0, 1
    while done < total:
        k = rnd % len(template)  # template k holds entries of round k + 1
        batch = template[k][: min(block_size, total - done)]
        # distinct, well-formed entries without re-encoding: swap in a fresh arrays digest
        batch = [e.replace(d, hashlib.sha256((done + j).to_bytes(8, "big")).digest()) for j, (e, d) in enumerate(batch)]
        t = time.perf_counter()
        w.append(k + 1, batch, model_before=b"\x05" * 32, model_after=b"\x05" * 32)
        spent += time.perf_counter() - t
        done += len(batch)
        rnd += 1
    ledger.close()
    return done / spent, server


VERIFY_CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[3])
from flower_chain.ledger import open_ledger, verify
ledger = open_ledger(sys.argv[1])
t = time.perf_counter()
rep = verify(ledger, full=sys.argv[2] == "full")
dt = time.perf_counter() - t
print(json.dumps({"seconds": dt, "entries": rep.entries, "blocks": rep.blocks,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def verify_in_child(uri: str, mode: str) -> dict:
    root = str(Path(__file__).resolve().parents[1])
    r = subprocess.run(
        [sys.executable, "-c", VERIFY_CHILD, uri, mode, root], capture_output=True, text=True, check=True
    )
    return json.loads(r.stdout)


def proof_timings(uri: str, rng: random.Random, trials: int = 200) -> dict:
    ledger = open_ledger(uri)
    head = ledger.head().header
    size, root = head.log_size, head.log_root
    blocks = [b.header for b in ledger.blocks()]
    inc, con = [], []
    for _ in range(trials):
        i = rng.randrange(size)
        t = time.perf_counter()
        p = proofs.inclusion_proof(ledger, i, size)
        leaf = merkle.leaf_hash(proofs.entry_at(ledger, i))
        merkle.verify_inclusion(leaf, i, size, p, root)
        inc.append(time.perf_counter() - t)
        old = rng.choice(blocks[1:-1])
        t = time.perf_counter()
        p = proofs.consistency_proof(ledger, old.log_size, size)
        merkle.verify_consistency(old.log_size, size, p, old.log_root, root)
        con.append(time.perf_counter() - t)
    ledger.close()
    ms = lambda xs: {"median_ms": statistics.median(xs) * 1000, "p95_ms": sorted(xs)[int(0.95 * len(xs))] * 1000}
    return {"inclusion": ms(inc), "consistency": ms(con), "log_size": size}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--out", default=str(RESULTS / "ledger.json"))
    args = ap.parse_args()
    rng = random.Random(1)
    tmp = Path(tempfile.mkdtemp(prefix="fc-bench-"))
    res: dict = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()}
    }
    sample = [e for e, _ in make_entries(2000, 1, [Ed25519PrivateKey.generate()], rng)]
    res["raw"] = raw_baselines(sample)
    res["entry_bytes_mean"] = statistics.mean(len(e) for e in sample)

    appends = {}
    for bs in (100, 1000):
        rate, _ = build(f"sqlite:///{tmp}/append-{bs}.db", 50_000, bs, rng)
        appends[f"block_{bs}"] = {
            "entries_per_s": rate,
            "ratio_to_raw_sha256": rate / res["raw"]["sha256_leaf_hashes_per_s"],
        }
    res["sqlite_durable_append"] = appends

    big = f"sqlite:///{tmp}/big.db"
    t = time.perf_counter()
    build_rate, _ = build(big, args.entries, 1000, rng)
    res["build"] = {"entries": args.entries, "append_entries_per_s": build_rate, "wall_s": time.perf_counter() - t}
    chain = verify_in_child(big, "chain")
    full = verify_in_child(big, "full")
    res["verify_hashes_and_chain"] = {
        **chain,
        "entries_per_s": chain["entries"] / chain["seconds"],
        "ratio_to_raw_sha256": chain["entries"] / chain["seconds"] / res["raw"]["sha256_leaf_hashes_per_s"],
    }
    res["verify_full_with_signatures"] = {
        **full,
        "entries_per_s": full["entries"] / full["seconds"],
        "header_signatures": full["blocks"],
    }
    res["proofs"] = proof_timings(big, rng)
    res["targets"] = {
        "append_ge_10k_per_s": min(a["entries_per_s"] for a in appends.values()) >= 10_000,
        "verify_chain_ge_300k_per_s": res["verify_hashes_and_chain"]["entries_per_s"] >= 300_000,
        "verify_full_1M_lt_60s": full["seconds"] * 1_000_000 / max(full["entries"], 1) < 60,
        "verify_peak_rss_lt_300MB": full["peak_rss_mb"] < 300,
        "proofs_lt_5ms": max(res["proofs"]["inclusion"]["median_ms"], res["proofs"]["consistency"]["median_ms"]) < 5,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

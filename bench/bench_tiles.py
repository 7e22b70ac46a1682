#!/usr/bin/env python3
"""Issue 12 benchmarks: witness cosigning latency, tiles served per second, tiles-client verification time.

    python bench/bench_tiles.py                       # 1,000,000-entry log
    python bench/bench_tiles.py --entries 100000

Everything runs on 127.0.0.1 (uvicorn in a thread); the load generator is
bounded by a request count and a time limit. Writes bench/results/tiles.json.

* cosign: a witness (SQLite state, uvicorn) cosigns 100 successive checkpoints
  of a growing ledger, each sent with its consistency proof by
  ``witness_client.submit``; median and p90 of the round trip, beside the
  in-process ``Witness.add_checkpoint`` time.
* tiles/s: ``--clients`` threads, each with one keep-alive connection, fetch
  random full level-0 tiles of the large log (first pass from SQLite, then
  from the server's full-tile cache), at most ``--requests`` requests or
  ``--seconds`` seconds per pass.
* client: a :class:`TilesClient` with an empty cache fetches the newest
  checkpoint, verifies it against an older one (half the log) from tiles
  alone, and also proves one entry's inclusion; wall time and fetch counts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import platform
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from flower_chain.ledger import GenesisEntry, LedgerWriter, open_ledger  # noqa: E402
from flower_chain.ledger.checkpoint import parse_verifier_key, verifier_key  # noqa: E402
from flower_chain.ledger.cosignature import parse_cosigner_key, verify_cosignature  # noqa: E402
from flower_chain.ledger.keys import key_id, raw_public  # noqa: E402
from flower_chain.ledger.proofs import consistency_proof  # noqa: E402
from flower_chain.ledger.tiles import TilesClient, tile_path  # noqa: E402
from flower_chain.serve.app import LogView, build_app  # noqa: E402
from flower_chain.serve.background import free_port  # noqa: E402
from flower_chain.witness.client import request_body, submit  # noqa: E402
from flower_chain.witness.server import Witness, WitnessStore  # noqa: E402
from flower_chain.witness.server import build_app as witness_app  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def _run_log_server(uri: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        build_app(LogView(open_ledger(uri), refresh_s=0.5)),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )


def _run_witness(db: str, vkey: str, origin: str, seed: bytes, port: int) -> None:
    import uvicorn

    w = Witness(
        "bench.witness/w1",
        Ed25519PrivateKey.from_private_bytes(seed),
        {origin: [parse_verifier_key(vkey)]},
        WitnessStore(db),
    )
    uvicorn.run(witness_app(w), host="127.0.0.1", port=port, log_level="warning", access_log=False)


class ChildServer:
    """A server in a child process (so the load generator does not share its GIL), stopped by its PID."""

    def __init__(self, target, *args) -> None:
        self.port = free_port()
        self.proc = multiprocessing.get_context("spawn").Process(target=target, args=(*args, self.port), daemon=True)

    def __enter__(self) -> str:
        self.proc.start()
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return f"http://127.0.0.1:{self.port}"
            except OSError:
                if not self.proc.is_alive() or time.monotonic() > deadline:
                    raise RuntimeError("the child server did not start") from None
                time.sleep(0.05)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.join(timeout=10)


def new_ledger(uri: str, fed: str = "bench"):
    key = Ed25519PrivateKey.generate()
    client = Ed25519PrivateKey.generate()
    ledger = open_ledger(uri, create=True)
    w = LedgerWriter(ledger, key)
    w.init(
        GenesisEntry(
            federation_id=fed,
            origin=f"flower-chain/{fed}",
            server_key=raw_public(key),
            client_keys={key_id(client): raw_public(client)},
            strategy="FedAvg",
            config_digest=bytes(32),
            created_ms=int(time.time() * 1000),
        )
    )
    return ledger, w, key


def bench_cosign(tmp: Path, n: int) -> dict:
    ledger, w, key = new_ledger("memory:")
    origin = w.origin
    seed = os.urandom(32)
    vkey = verifier_key(origin, key.public_key())
    witness = Witness(
        "bench.witness/w1",
        Ed25519PrivateKey.from_private_bytes(seed),
        {origin: [parse_verifier_key(vkey)]},
        WitnessStore(tmp / "witness-unused.db"),
    )
    ck = parse_cosigner_key(witness.verifier_key)
    rng = random.Random(1)
    http_ms, inproc_ms = [], []
    with ChildServer(_run_witness, str(tmp / "witness.db"), vkey, origin, seed) as url:
        size = 0
        for i in range(n):
            w.append(i + 1, [rng.randbytes(200) for _ in range(10)])
            note, new = w.checkpoint(), w.log_size
            proof = consistency_proof(ledger, size, new) if size else []
            t0 = time.perf_counter()
            line = submit(url, note, size, proof, timeout=5, headers=[w.head.header_bytes])
            http_ms.append((time.perf_counter() - t0) * 1000)
            verify_cosignature(note, line, ck)
            size = new
    # the same protocol work without HTTP
    store2 = WitnessStore(tmp / "witness2.db")
    w2 = Witness("bench.witness/w2", Ed25519PrivateKey.generate(), witness.logs, store2)
    size = 0
    for h in range(1, ledger.block_count()):
        b = ledger.block(h)
        proof = consistency_proof(ledger, size, b.header.log_size) if size else []
        body = request_body(b.checkpoint, size, proof, [b.header_bytes])  # the chain since the head cosigned last
        t0 = time.perf_counter()
        assert w2.add_checkpoint(body).status == 200
        inproc_ms.append((time.perf_counter() - t0) * 1000)
        size = b.header.log_size
    return {
        "submissions": n,
        "http_median_ms": statistics.median(http_ms),
        "http_p90_ms": sorted(http_ms)[int(0.9 * n) - 1],
        "http_max_ms": max(http_ms),
        "in_process_median_ms": statistics.median(inproc_ms),
        "entries_per_checkpoint": 10,
        "witness_state": "SQLite WAL, synchronous=FULL, one BEGIN IMMEDIATE transaction per submission",
    }


def build_large(tmp: Path, entries: int, block: int) -> tuple:
    ledger, w, key = new_ledger(f"sqlite:///{tmp / 'large.db'}")
    rng = random.Random(2)
    payload = [rng.randbytes(120) for _ in range(1024)]
    t0 = time.perf_counter()
    old_note = None
    done = 0
    while done < entries:
        n = min(block, entries - done)
        w.append(1 + done // block, [payload[(done + i) % 1024] + (done + i).to_bytes(8, "big") for i in range(n)])
        done += n
        if old_note is None and w.log_size >= entries // 2:
            old_note = w.checkpoint()
    return ledger, w, key, old_note, time.perf_counter() - t0


def load(url: str, paths: list[str], clients: int, max_requests: int, max_seconds: float) -> dict:
    host, port = url[len("http://") :].split(":")
    count = [0] * clients
    errors = [0] * clients
    stop = time.monotonic() + max_seconds
    per = max_requests // clients

    def worker(k: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        rng = random.Random(k)
        for _ in range(per):
            if time.monotonic() > stop:
                break
            conn.request("GET", "/" + rng.choice(paths))
            r = conn.getresponse()
            body = r.read()
            if r.status != 200 or len(body) != 8192:
                errors[k] += 1
            count[k] += 1
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.perf_counter() - t0
    return {"requests": sum(count), "errors": sum(errors), "seconds": dt, "tiles_per_s": sum(count) / dt}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--block", type=int, default=100_000, help="entries per block of the large log")
    ap.add_argument("--cosign", type=int, default=100)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--out", default=str(RESULTS / "tiles.json"))
    args = ap.parse_args()
    res = {
        "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(), "platform": platform.platform()}
    }
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        res["cosign"] = bench_cosign(tmp, args.cosign) | {"witness_db": f"on the disk of {tempfile.gettempdir()}"}
        print(json.dumps(res["cosign"]), flush=True)
        if Path("/dev/shm").is_dir():  # the same with the witness database in memory: HTTP + protocol without fsync
            with tempfile.TemporaryDirectory(dir="/dev/shm") as shm:
                res["cosign_tmpfs"] = bench_cosign(Path(shm), args.cosign) | {"witness_db": "tmpfs (/dev/shm)"}
            print(json.dumps(res["cosign_tmpfs"]), flush=True)
        ledger, w, key, old_note, build_s = build_large(tmp, args.entries, args.block)
        res["large_log"] = {
            "entries": w.log_size,
            "blocks": ledger.block_count(),
            "backend": "sqlite",
            "entries_per_block": args.block,
            "build_seconds": build_s,
        }
        print(json.dumps(res["large_log"]), flush=True)
        full = [tile_path(0, n) for n in range(w.log_size // 256)]
        with ChildServer(_run_log_server, ledger.uri) as url:
            rng = random.Random(3)
            cold = rng.sample(full, min(len(full), 4096))  # distinct tiles: each read from SQLite once
            res["tiles_cold"] = load(url, cold, 1, len(cold), args.seconds) | {
                "note": "distinct full level-0 tiles, one client, from SQLite"
            }
            res["tiles_warm"] = load(url, cold, args.clients, args.requests, args.seconds) | {
                "clients": args.clients,
                "note": "random full level-0 tiles (the server caches 4096 full tiles)",
            }
            print(json.dumps({"cold": res["tiles_cold"], "warm": res["tiles_warm"]}), flush=True)
            client = TilesClient(url, raw_public(key), origin=w.origin)
            t0 = time.perf_counter()
            new_cp, _ = client.checkpoint()
            old_cp = client.verify_note(old_note)
            client.verify_consistency(old_cp, new_cp)
            t_cons = time.perf_counter() - t0
            fetched = client.fetches
            t1 = time.perf_counter()
            idx = w.log_size - 12345
            entry = next(client.entries(idx, idx + 1, new_cp.size))
            client.verify_inclusion(entry, idx, new_cp)
            t_incl = time.perf_counter() - t1
            res["client"] = {
                "old_size": old_cp.size,
                "new_size": new_cp.size,
                "consistency_seconds": t_cons,
                "consistency_fetches": fetched,
                "inclusion_seconds_warm_client": t_incl,
                "inclusion_fetches": client.fetches - fetched,
            }
            print(json.dumps(res["client"]), flush=True)
        ledger.close()
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

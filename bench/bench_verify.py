#!/usr/bin/env python3
"""``verify`` with every verdict re-derived (issue 11) vs the verify of an earlier version, same ledger, same run.

Builds a ledger an honest server could have written — ``--entries`` signed train updates in blocks of
``--block`` (one update per key per block, statements naming the block's parent and base model) — then
times, each in a fresh process:

* this version's ``verify(client_signatures=True)``: chain, signatures, Merkle nodes, and every verdict
  re-derived by the policy (what ``flower-chain ledger verify`` runs);
* the verify of ``--baseline REV`` (default: the version before issue 11) with the same options (it
  re-checked the signatures of accepted updates only), from a git worktree of that revision;
* both with ``full=True`` only (no client signatures).

    python bench/bench_verify.py --entries 1000000        # writes bench/results/verify.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CHILD = """
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
from flower_chain.ledger import open_ledger, verify
ledger = open_ledger(sys.argv[2])
t = time.perf_counter()
rep = verify(ledger, full=True, client_signatures=sys.argv[3] == "1")
print(json.dumps({"seconds": time.perf_counter() - t, "entries": rep.entries,
                  "signatures": rep.client_signatures_checked,
                  "rederived": getattr(rep, "verdicts_rederived", None),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def build(uri: str, entries: int, block: int) -> float:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from flower_chain.ledger import GenesisEntry, LedgerWriter, UpdateEntry, UpdateStatement, open_ledger
    from flower_chain.ledger.entries import metrics_digest
    from flower_chain.ledger.keys import key_id, raw_public

    server = Ed25519PrivateKey.generate()
    keys = [Ed25519PrivateKey.generate() for _ in range(block)]
    kids = [key_id(k) for k in keys]
    ledger = open_ledger(uri, create=True)
    w = LedgerWriter(ledger, server)
    w.init(
        GenesisEntry(
            federation_id="bench",
            origin="flower-chain/bench",
            server_key=raw_public(server),
            client_keys={kid: raw_public(k) for kid, k in zip(kids, keys)},
            strategy="FedAvg",
            config_digest=b"\x00" * 32,
            created_ms=0,
        )
    )
    metrics = {"train_loss": 0.5, "num-examples": 100}
    md = metrics_digest(metrics)
    t0, done, rnd, model = time.perf_counter(), 0, 0, b"\x05" * 32
    while done < entries:
        rnd += 1
        n = min(block, entries - done)
        out = []
        for i in range(n):
            digest = (done + i).to_bytes(32, "big")
            st = UpdateStatement("train", "bench", rnd, kids[i], w.head_hash, model, digest, 100, md).to_bytes()
            out.append(
                UpdateEntry(
                    kind="train",
                    round=rnd,
                    node_id=str(i),
                    key_id=kids[i],
                    verdict="accepted",
                    reason="ok",
                    detail="",
                    num_examples=100,
                    arrays_digest=digest,
                    metrics=metrics,
                    statement=st,
                    signature=keys[i].sign(st),
                )
            )
        after = rnd.to_bytes(32, "big")
        w.append(rnd, out, model_before=model, model_after=after)
        model, done = after, done + n
    ledger.close()
    return time.perf_counter() - t0


def run(src: str, uri: str, sigs: bool) -> dict:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, src, uri, "1" if sigs else "0"],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=src),
    )
    if r.returncode:
        raise SystemExit(f"verify from {src} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--block", type=int, default=1000)
    ap.add_argument("--baseline", default="47b3abd", help="the revision to compare with (a git worktree is made)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "verify.json"))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        old = Path(d) / "baseline"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(old), args.baseline],
            check=True,
            capture_output=True,
        )
        try:
            uri = f"sqlite:///{Path(d) / 'ledger.db'}"
            build_s = build(uri, args.entries, args.block)
            res = {
                "entries": args.entries,
                "block": args.block,
                "baseline": args.baseline,
                "build_s": build_s,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
            }
            for name, src in (("this", str(ROOT)), ("baseline", str(old))):
                res[name] = {"full": run(src, uri, False), "client_signatures": run(src, uri, True)}
            res["ratio_rederived_to_baseline_signature_verify"] = (
                res["this"]["client_signatures"]["seconds"] / res["baseline"]["client_signatures"]["seconds"]
            )
            res["ratio_rederived_to_baseline_full"] = (
                res["this"]["client_signatures"]["seconds"] / res["baseline"]["full"]["seconds"]
            )
            res["target_within_1_5x"] = res["ratio_rederived_to_baseline_signature_verify"] <= 1.5
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""A 10,000-client round through LedgerStrategy into SQLite and PostgreSQL (issue 14).

    python bench/bench_scale10k.py                       # 10,000 clients x 10 rounds, both backends
    python bench/bench_scale10k.py --clients 10000 --rounds 1 --backends postgresql
    python bench/bench_scale10k.py --repeats 3                 # interleaved: flower, sqlite, postgresql, again

Synthetic signed replies of a small model (as bench/bench_e2e.py ``scale``), no training. Each backend runs
in its own server process so its peak RSS is its own; the same replies through Flower's FedAvg alone (no
ledger) run first, in the same run, as the baseline. Reports verified replies/s — replies parsed, their
signatures verified, judged and recorded per second of the ledger's own time in ``aggregate_train``
(target >= 5,000/s on 2 cores) — and the whole round's replies/s with its ratio to FedAvg alone,
``configure_train`` time per round (every node's receipt), server peak RSS, ledger size (SQLite file /
``pg_database_size``) and ``flower-chain ledger verify --client-signatures`` time for all recorded
client signatures (100,000 with the defaults). Issue 21: the whole round's target is >= 5,000 replies/s with
the wrapped FedAvg's aggregation (its fast path over the judge's parsed arrays, ``fast_fedavg``), and
``receipts_s`` — the server's work for every node's receipt in ``configure_train`` (receipts and per-node
records, the wrapped strategy's own configure excluded) — <= 0.3 s per round; ``flower-chain ledger audit``
re-derives every round of the first repeat with Flower's own FedAvg (bit for bit). ``--repeats`` runs the
backends interleaved (the machine is shared: medians and spreads). Writes bench/results/scale10k.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "scale10k.json"


def _replies(cl, msgs, glob):
    """One signed train reply per instruction: the global model plus a small client-specific step."""
    import numpy as np
    from flwr.app import Array, ArrayRecord

    from tests.support.fl_helpers import signed_train_reply

    w, b = glob["w"].numpy(), glob["b"].numpy()
    return [
        signed_train_reply(m, k, ArrayRecord({"w": Array((w + 0.01 * i).astype(np.float32)), "b": Array(b + 0.01)}), 10)
        for i, (m, k) in enumerate(zip(msgs, cl.keys))
    ]


def _proof_hashes(msg) -> int:
    """Hashes in the receipts an instruction carries: the consistency proof and every inclusion proof."""
    from flower_chain.ledger.tlog_proof import InclusionProof
    from flower_chain.wire import CTX_CONSISTENCY, CTX_RECEIPT, RECEIPT_SEPARATOR

    cfg = msg.content["config"]
    n = len(cfg.get(CTX_CONSISTENCY, b"")) // 32
    for text in filter(None, str(cfg.get(CTX_RECEIPT, "")).split(RECEIPT_SEPARATOR)):
        n += len(InclusionProof.from_text(text).hashes)
    return n


def _ed25519_floor(replies, cl) -> float:
    """Seconds to verify every reply's Ed25519 signature alone, one thread per CPU: the physical floor of judging."""
    from concurrent.futures import ThreadPoolExecutor

    from flower_chain.wire import SIG_RECORD, SIGNATURE, STATEMENT

    jobs = [
        (k.public_key(), r.content[SIG_RECORD][SIGNATURE], r.content[SIG_RECORD][STATEMENT])
        for r, k in zip(replies, cl.keys)
    ]
    workers = os.cpu_count() or 1
    chunks = [jobs[i::workers] for i in range(workers)]

    def run(chunk):
        for pub, sig, st in chunk:
            pub.verify(sig, st)

    with ThreadPoolExecutor(workers) as pool:
        t = time.perf_counter()
        list(pool.map(run, chunks))
        return time.perf_counter() - t


def _timed(fn, into: list):
    """``fn``, appending each call's seconds to ``into``."""

    def timed(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            into.append(time.perf_counter() - t0)

    return timed


def _instrument(strat, reads: dict, timings: dict):
    """Count the storage reads that build receipts (block and entry reads, Merkle nodes read from storage: the
    node cache's misses, returned), time the verdicts alone (signatures and digests on the worker threads, the
    policy) and every node's receipt and instruction record (``_personalize``, after the strategy's own)."""
    led = strat.core.ledger
    for name in ("block", "entries"):

        def counted(*a, _read=getattr(led, name), **k):
            reads["n"] += 1
            return _read(*a, **k)

        setattr(led, name, counted)
    strat.core.judge_all = _timed(strat.core.judge_all, timings["judge"])
    strat._personalize = _timed(strat._personalize, timings["receipts"])
    return strat.core.receipts._node


def server_run(uri: str, clients: int, rounds: int) -> dict:
    """``rounds`` rounds of ``clients`` signed replies through LedgerStrategy into ``uri`` (``flower``: through
    Flower's FedAvg alone, the baseline). Per round: ``round_s`` (the whole ``aggregate_train``), ``ledger_s`` (its
    ledger part: parse, verify, judge, record), ``configure_s`` and ``receipts_s`` (every node's receipt)."""
    import numpy as np
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from flwr.app import Array, ArrayRecord, ConfigRecord
    from flwr.serverapp.strategy import FedAvg
    from flwr.supercore.task_identity import TaskIdentity

    from flower_chain.ledger.keys import key_id
    from flower_chain.strategies import LedgerStrategy, fast_fedavg
    from tests.support.fl_helpers import Clients, FakeGrid

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    cl = Clients(clients)
    fedavg = FedAvg(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0)
    strat = (
        fedavg
        if uri == "flower"
        else LedgerStrategy(fedavg, ledger=uri, keyring=cl.keyring, server_key=Ed25519PrivateKey.generate())
    )
    rng = np.random.default_rng(0)
    glob = ArrayRecord(
        {"w": Array(rng.standard_normal((32, 10)).astype(np.float32)), "b": Array(np.zeros(10, np.float32))}
    )
    nodes = list(range(1, clients + 1))
    kids = [key_id(k) for k in cl.keys]
    reads, timings, floor_s = {"n": 0}, {"judge": [], "receipts": []}, 0.0
    node_cache = _instrument(strat, reads, timings) if uri != "flower" else None
    per_round, ledger_s, configure_s, receipt_reads, log_size, proof_hashes = [], [], [], [], [], []
    for rnd in range(1, rounds + 1):
        reads["n"], misses = 0, node_cache.cache_info().misses if uri != "flower" else 0
        t = time.perf_counter()
        msgs = sorted(
            strat.configure_train(rnd, glob, ConfigRecord({}), FakeGrid(nodes)), key=lambda m: m.metadata.dst_node_id
        )
        configure_s.append(time.perf_counter() - t)
        if uri != "flower":
            reads["n"] += node_cache.cache_info().misses - misses
            proof_hashes.append(sum(_proof_hashes(m) for m in msgs) / clients)
        receipt_reads.append(reads["n"] / clients)
        log_size.append(0 if uri == "flower" else strat.core.writer.log_size)
        replies = _replies(cl, msgs, glob)
        if uri != "flower" and rnd == 1:
            floor_s = _ed25519_floor(replies, cl)
        t = time.perf_counter()
        glob, _ = strat.aggregate_train(rnd, replies)
        per_round.append(time.perf_counter() - t)
        if uri != "flower":
            ledger_s.append(strat.round_stats(rnd)["ledger_time_s"])
            # what clients with a receipt keeper report (the synthetic replies carry no keeper state): each node
            # verified the checkpoint it was sent and wants the inclusion proof of this round's update
            for node, kid in zip(nodes, kids):
                strat.core.receipts.observe(node, kid, True, log_size[-1], rnd)
        del replies, msgs
    out = {
        "round_s": per_round,
        "round_replies_per_s": clients * rounds / sum(per_round),
        "configure_s": configure_s,
        "log_size_at_configure": log_size,
        "ledger_reads_per_instruction": receipt_reads,
        "proof_hashes_per_instruction": proof_hashes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if uri != "flower":
        out.update(
            judge_s=timings["judge"],
            ed25519_floor_s=floor_s,
            judge_over_floor=min(timings["judge"]) / floor_s,
            receipts_s=timings["receipts"],
            fedavg_fast_path=fast_fedavg.applies(fedavg),
            ledger_s=ledger_s,
            verified_replies_per_s=clients * rounds / sum(ledger_s),
            accepted_last_round=strat.round_stats(rounds).get("accepted"),
        )
        strat.close()
    return out


def _cli(*args: str) -> tuple[float, dict]:
    """(seconds, JSON document) of ``flower-chain ledger ARGS --json``."""
    t = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "flower_chain.cli", "ledger", *args, "--json"], capture_output=True, text=True, cwd=ROOT
    )
    s = time.perf_counter() - t
    return s, json.loads(r.stdout) if r.stdout.strip().startswith("{") else {"error": r.stderr[-500:]}


def _checks(out: dict, uri: str, size_mb: float) -> None:
    """verify --client-signatures and the audit's bit-for-bit replay of every round, into ``out``."""
    verify_s, doc = _cli("verify", uri, "--client-signatures")
    out.update(
        verify_cli_s=verify_s,
        verified=doc.get("verified"),
        verify_error=doc.get("error"),
        client_signatures_checked=doc.get("client_signatures_checked"),
        ledger_mb=size_mb,
    )
    audit_s, doc = _cli("audit", uri)
    out.update(
        audit_cli_s=audit_s,
        audited=doc.get("audited"),
        audit_rounds_rederived=len(doc.get("rounds_rederived") or []),
        audit_updates_replayed=doc.get("updates_replayed"),
        audit_error=doc.get("error"),
    )


def _spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def _summary(res: dict, backends: list[str]) -> dict:
    """Medians and spreads over the repeats; each repeat's ratio to Flower's FedAvg alone of the same repeat."""
    flower = res["flower_fedavg_alone"]["runs"]
    out = {"flower_fedavg_alone_replies_per_s": _spread([r["round_replies_per_s"] for r in flower])}
    for b in backends:
        runs = res[b].get("runs", [])
        if not runs:
            continue
        out[b] = {
            "round_replies_per_s": _spread([r["round_replies_per_s"] for r in runs]),
            "verified_replies_per_s": _spread([r["verified_replies_per_s"] for r in runs]),
            "round_s_vs_flower_alone": _spread([sum(r["round_s"]) / sum(f["round_s"]) for r, f in zip(runs, flower)]),
            "receipts_s_rounds_2_plus": _spread([x for r in runs for x in r["receipts_s"][1:]]),
            "configure_s_rounds_2_plus": _spread([x for r in runs for x in r["configure_s"][1:]]),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--repeats", type=int, default=1, help="runs of every backend, interleaved")
    ap.add_argument("--server", nargs=3, metavar=("URI", "CLIENTS", "ROUNDS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.server:
        print(json.dumps(server_run(args.server[0], int(args.server[1]), int(args.server[2]))))
        return
    from tests.support.pgserver import PostgresServer, why_unavailable

    backends = args.backends.split(",")
    work = Path(tempfile.mkdtemp(prefix="fc-s10k-"))
    res: dict = {
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "clients": args.clients,
        "rounds": args.rounds,
        "repeats": args.repeats,
        "model": "w 32x10 + b 10, float32",
        "flower_fedavg_alone": {"runs": []},
        **{b: {"runs": []} for b in backends},
    }
    server = None
    try:
        for rep in range(args.repeats):
            for backend in ["flower", *backends]:
                if backend == "flower":
                    uri = "flower"
                elif backend == "sqlite":
                    uri = f"sqlite:///{work}/scale{rep}.db"
                else:
                    reason = why_unavailable()
                    if reason:
                        res[backend] = {"skipped": reason}
                        continue
                    server = server or PostgresServer(fsync=True)
                    uri = server.create_database(f"scale{rep}")
                r = subprocess.run(
                    [sys.executable, __file__, "--server", uri, str(args.clients), str(args.rounds)],
                    capture_output=True,
                    text=True,
                    cwd=ROOT,
                )
                if r.returncode:
                    raise RuntimeError(r.stderr[-3000:])
                out = json.loads(r.stdout.strip().splitlines()[-1])
                key = "flower_fedavg_alone" if backend == "flower" else backend
                if backend != "flower":
                    flower = res["flower_fedavg_alone"]["runs"][-1]
                    out["round_s_vs_flower_alone"] = sum(out["round_s"]) / sum(flower["round_s"])
                    if rep == 0:  # verify and audit the first repeat's ledger
                        if backend == "sqlite":
                            size = (work / f"scale{rep}.db").stat().st_size / 1e6
                        else:
                            with server.admin() as c:
                                size = c.execute(f"SELECT pg_database_size('scale{rep}')").fetchone()[0] / 1e6
                        _checks(out, uri, size)
                res[key]["runs"].append(out)
                print(rep, backend, json.dumps({k: v for k, v in out.items() if not isinstance(v, list)}), flush=True)
    finally:
        if server:
            server.close()
    res["summary"] = _summary(res, backends)
    res["targets"] = {
        b: {
            "whole_round_ge_5000_replies_per_s": s["round_replies_per_s"]["median"] >= 5000,
            "receipts_le_0_3_s_per_round": s["receipts_s_rounds_2_plus"]["median"] <= 0.3,
        }
        for b, s in res["summary"].items()
        if b in backends
    }
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()

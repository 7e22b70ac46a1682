#!/usr/bin/env python3
"""Round-time overhead of witnessing, beside a round without it in the same run.

    python bench/bench_witnessing.py                      # 10 clients, 30 rounds per mode, 100 cosignings
    python bench/bench_witnessing.py --rounds 50 --params 1000000

A synthetic in-process round (as in tests/test_strategy.py): a LedgerStrategy
server on a memory ledger and 10 clients whose signing mods keep receipts;
configure_train, every client's mod (receipt checks, signing) around a
prepared reply, aggregate_train (verification, block append). Modes, timed
interleaved (one round of each mode in turn, so drift hits all alike):

* ``none``: no witness, clients do not cosign;
* ``witness``: one C2SP tlog-witness (``flower-chain witness`` app on
  127.0.0.1 in a thread, SQLite state), quorum 1: each block waits for its cosignature;
* ``client-witnesses``: no witness; the 10 clients return their cosignature of the
  checkpoint they verified, and the server checks each (``check_client_cosignature``).

Also: the cosigning latency per block (``Witnessing.on_block`` with one
witness: consistency proof, HTTP round trip, witness SQLite commit, verification;
median of 100) and one client's cosignature (median of 100). Writes
bench/results/witnessing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402

from flower_chain.clients.signing import cosign_checkpoint, make_signing_mod  # noqa: E402
from flower_chain.ledger.checkpoint import parse_verifier_key, verifier_key  # noqa: E402
from flower_chain.ledger.cosignature import check_client_cosignature  # noqa: E402
from flower_chain.ledger.keys import key_id, raw_public  # noqa: E402
from flower_chain.serve.background import ServerThread  # noqa: E402
from flower_chain.strategies import LedgerStrategy  # noqa: E402
from flower_chain.wire import COSIGNATURE, CTX_CHECKPOINT, SIG_RECORD  # noqa: E402
from flower_chain.witness.server import Witness, WitnessStore, build_app  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FED = "fed-bench"
ORIGIN = f"flower-chain/{FED}"


def _task_identity() -> None:
    """What a running Flower app sets, so a strategy can build Messages outside a run."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = 1, 1, 0


class _Grid:
    def __init__(self, nodes):
        self.nodes = list(nodes)

    def get_node_ids(self):
        return list(self.nodes)


def _arrays(seed: int, params: int) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord({"w": Array(rng.standard_normal(params).astype(np.float32))})


class Federation:
    """One server and its clients in one mode."""

    def __init__(
        self,
        mode: str,
        n: int,
        params: int,
        tmp: Path,
        witness_url: str | None,
        witness_vkey: str | None,
        server_key: Ed25519PrivateKey,
    ) -> None:
        from flwr.serverapp.strategy import FedAvg

        self.mode, self.params = mode, params
        self.keys = [Ed25519PrivateKey.generate() for _ in range(n)]
        self.nodes = list(range(1001, 1001 + n))
        witnesses = [(witness_url, witness_vkey)] if mode == "witness" else None
        self.strategy = LedgerStrategy(
            FedAvg(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0),
            ledger="memory:",
            keyring={key_id(k): raw_public(k) for k in self.keys},
            server_key=server_key,
            federation_id=FED,
            verify_workers=1,
            witnesses=witnesses,
            witness_quorum=1,
            witness_timeout=2.0,
        )
        self.mods = [
            make_signing_mod(k, receipts_dir=tmp / mode, cosign=(mode == "client-witnesses")) for k in self.keys
        ]
        self.global_arrays = _arrays(0, params)
        self.replies_out = [_arrays(1000 + i, params) for i in range(n)]
        self.rnd = 0
        self.cosignatures_checked = 0

    def round(self) -> float:
        self.rnd += 1
        t0 = time.perf_counter()
        msgs = sorted(
            self.strategy.configure_train(self.rnd, self.global_arrays, ConfigRecord({}), _Grid(self.nodes)),
            key=lambda m: m.metadata.dst_node_id,
        )
        ctx = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={})
        replies = []
        for i, (m, mod) in enumerate(zip(msgs, self.mods)):
            reply = mod(
                m,
                ctx,
                lambda msg, c, i=i: Message(
                    RecordDict({"arrays": self.replies_out[i], "metrics": MetricRecord({"num-examples": 10})}),
                    reply_to=msg,
                ),
            )
            replies.append(reply)
        if self.mode == "client-witnesses":  # what the server does with them: check each against the key
            for m, reply, k in zip(msgs, replies, self.keys):
                line = reply.content[SIG_RECORD][COSIGNATURE]
                assert check_client_cosignature(line, str(m.content["config"][CTX_CHECKPOINT]), raw_public(k))
                self.cosignatures_checked += 1
        agg, _ = self.strategy.aggregate_train(self.rnd, replies)
        self.global_arrays = agg
        return time.perf_counter() - t0


def _stats(xs: list[float]) -> dict:
    return {
        "median_ms": round(statistics.median(xs) * 1000, 3),
        "mean_ms": round(statistics.fmean(xs) * 1000, 3),
        "p90_ms": round(sorted(xs)[int(0.9 * (len(xs) - 1))] * 1000, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--params", type=int, default=100_000, help="float32 parameters of the model")
    ap.add_argument("--cosignings", type=int, default=100)
    args = ap.parse_args()
    _task_identity()
    import logging

    logging.getLogger("flwr").setLevel(logging.WARNING)
    server_key = Ed25519PrivateKey.generate()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        witness = Witness(
            "bench.witness/w1",
            Ed25519PrivateKey.generate(),
            {ORIGIN: [parse_verifier_key(verifier_key(ORIGIN, server_key.public_key()))]},
            WitnessStore(tmp / "witness.db"),
        )
        with ServerThread(build_app(witness)) as url:
            modes = ["none", "witness", "client-witnesses"]
            feds = {
                m: Federation(m, args.clients, args.params, tmp, url, witness.verifier_key, server_key) for m in modes
            }
            times: dict[str, list[float]] = {m: [] for m in modes}
            for r in range(args.warmup + args.rounds):
                for m in modes:
                    t = feds[m].round()
                    if r >= args.warmup:
                        times[m].append(t)
            w = feds["witness"].strategy.core.witnessing
            shortfall = len(w.shortfall)
            round_cosign = list(w.cosign_seconds)
            checked = feds["client-witnesses"].cosignatures_checked
            for f in feds.values():
                f.strategy.core.close()

            # cosigning latency per block: a fresh federation whose blocks are appended directly
            fed = Federation("none", 1, 10, tmp, url, witness.verifier_key, server_key)
            fed_w = Witness(
                "bench.witness/w2",
                Ed25519PrivateKey.generate(),
                {ORIGIN: [parse_verifier_key(verifier_key(ORIGIN, server_key.public_key()))]},
                WitnessStore(tmp / "witness2.db"),
            )
        with ServerThread(build_app(fed_w)) as url2:
            from flower_chain.strategies.witnessing import Witnessing

            ws = Witnessing(fed.strategy.ledger, [(url2, fed_w.verifier_key)], quorum=1, timeout=2.0)
            writer = fed.strategy.core.writer
            ws.on_block(writer.head)
            ws.cosign_seconds.clear()
            for i in range(args.cosignings):
                writer.append(1, [os.urandom(64)])
                ws.on_block(writer.head)
            per_block = list(ws.cosign_seconds)
            assert not ws.shortfall
            ws.close()
        client_key = Ed25519PrivateKey.generate()
        note = fed.strategy.ledger.head().checkpoint
        client_times = []
        for _ in range(args.cosignings):
            t = time.perf_counter()
            cosign_checkpoint(note, client_key)
            client_times.append(time.perf_counter() - t)
        fed.strategy.core.close()

    base = statistics.median(times["none"])
    out = {
        "command": "bench_witnessing.py " + " ".join(sys.argv[1:]),
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip(),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_average": list(os.getloadavg()),
        },
        "setup": {
            "clients": args.clients,
            "rounds_timed": args.rounds,
            "warmup": args.warmup,
            "parameters": args.params,
            "ledger": "memory:",
            "witness": "in-process HTTP on 127.0.0.1",
        },
        "round_time": {m: _stats(times[m]) for m in times},
        "ratio_vs_none": {m: round(statistics.median(times[m]) / base, 3) for m in times},
        "witness_shortfall_blocks": shortfall,
        "witness_wait_in_rounds": _stats(round_cosign),
        "client_cosignatures_checked": checked,
        "cosigning_latency_per_block": {"samples": len(per_block), **_stats(per_block)},
        "client_cosignature": {
            "samples": len(client_times),
            "median_us": round(statistics.median(client_times) * 1e6, 1),
        },
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "witnessing.json").write_text(json.dumps(out, indent=1) + "\n")
    print(
        json.dumps(
            {k: out[k] for k in ("round_time", "ratio_vs_none", "cosigning_latency_per_block", "client_cosignature")},
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

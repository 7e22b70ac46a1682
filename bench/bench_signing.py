#!/usr/bin/env python3
"""Cost of the client signing mod per message, beside its raw cryptographic work in the same run.

    python bench/bench_signing.py                       # sizes 1k, 100k, 1M float32 parameters
    python bench/bench_signing.py --rounds 40 --sizes 1000 1000000
    python bench/bench_signing.py --before 01b6f61       # also the mod of that commit (receipts as files)
    python bench/bench_signing.py --sizes 1000000 10000000 100000000   # issue 21: 1M, 10M, 100M parameters

Sizes over 1M parameters run fewer rounds (``--rounds`` x 1M / size, at least ``--min-rounds``): a 100M-parameter
round moves 400 MB through the server, the mod and the aggregation.

A LedgerStrategy server (memory ledger) and one client run train rounds; only
the client's mod is timed (the server's work is not). Per message:

* ``baseline``: what signing needs at the least — the array digest of the
  global arrays received, the array digest of the arrays returned, and one
  Ed25519 signature;
* ``mod``: the whole mod (``make_signing_mod`` with a receipts directory):
  receipt checks (checkpoint and head signatures, consistency and inclusion
  proofs, the model check), its state in ``state.sqlite``, signing; the
  inner app returns a prepared reply, whose construction is measured as
  ``reply`` and subtracted;
* ``overhead = mod - reply - baseline``.

With ``--before COMMIT`` the mod of that commit (receipt state as JSON files,
rewritten per message) is timed the same way. Writes
bench/results/signing.json.
"""

from __future__ import annotations

import argparse
import importlib.util
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

from flower_chain.clients.signing import make_signing_mod  # noqa: E402
from flower_chain.ledger.keys import key_id, raw_public  # noqa: E402
from flower_chain.wire import record_digest  # noqa: E402

RESULTS = ROOT / "bench" / "results"
NODE = 101


def _task_identity() -> None:
    """What a running Flower app sets, so a strategy can build Messages outside a run."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = 1, 1, 0


class _Grid:
    def get_node_ids(self):
        return [NODE]


def _arrays(n: int, seed: int) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord(
        {
            "w": Array(rng.standard_normal(n - n // 10).astype(np.float32)),
            "b": Array(rng.standard_normal(n // 10).astype(np.float32)),
        }
    )


def _old_mod_factory(commit: str):
    """``make_signing_mod`` of an earlier commit, loaded from git beside the current package."""
    tmp = Path(tempfile.mkdtemp(prefix="fc-old-mod-"))
    receipts = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{commit}:flower_chain/clients/receipts.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    signing = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{commit}:flower_chain/clients/signing.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    (tmp / "fc_old_receipts.py").write_text(receipts)
    (tmp / "fc_old_signing.py").write_text(
        signing.replace("from flower_chain.clients.receipts import", "from fc_old_receipts import")
    )
    sys.path.insert(0, str(tmp))
    spec = importlib.util.spec_from_file_location("fc_old_signing", tmp / "fc_old_signing.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_signing_mod


def _stats(xs: list[float]) -> dict[str, float]:
    return {"median_us": round(statistics.median(xs) * 1e6, 1), "mean_us": round(statistics.fmean(xs) * 1e6, 1)}


class Lane:
    """One server (memory ledger) and one client whose mod comes from ``factory``."""

    def __init__(self, size: int, factory, workdir: Path) -> None:
        from flwr.serverapp.strategy import FedAvg

        from flower_chain.strategies import LedgerStrategy

        self.client = Ed25519PrivateKey.generate()
        self.strategy = LedgerStrategy(
            FedAvg(min_available_nodes=1, min_train_nodes=1, fraction_evaluate=0.0),
            ledger="memory:",
            keyring={key_id(self.client): raw_public(self.client)},
            server_key=Ed25519PrivateKey.generate(),
            federation_id=f"bench-{size}",
        )
        self.mod = factory(self.client, receipts_dir=workdir)
        self.context = Context(
            run_id=1,
            node_id=NODE,
            node_config={"partition-id": 0, "num-partitions": 1},
            state=RecordDict(),
            run_config={},
        )
        self.global_arrays = _arrays(size, 0)
        self.size = size
        self.t_mod: list[float] = []
        self.t_reply: list[float] = []
        self.t_base: list[float] = []
        self.errors = None

    def step(self, rnd: int) -> None:
        """One train round; only the client side is timed."""
        msg = next(iter(self.strategy.configure_train(rnd, self.global_arrays, ConfigRecord({}), _Grid())))
        out = _arrays(self.size, rnd)

        def trained(m, c):
            return Message(
                RecordDict({"arrays": out, "metrics": MetricRecord({"num-examples": 10, "train_loss": 0.25})}),
                reply_to=m,
            )

        t0 = time.perf_counter()
        trained(msg, self.context)
        t1 = time.perf_counter()
        d_in = record_digest(msg.content["arrays"])
        d_out = record_digest(out)
        self.client.sign(d_in + d_out + b"\x00" * 240)  # a statement is about 300 bytes
        t2 = time.perf_counter()
        reply = self.mod(msg, self.context, trained)
        t3 = time.perf_counter()
        self.t_reply.append(t1 - t0)
        self.t_base.append(t2 - t1)
        self.t_mod.append(t3 - t2)
        self.global_arrays, _ = self.strategy.aggregate_train(rnd, [reply])
        self.errors = reply.content["metrics"].get("flower-chain-receipt-errors")

    def result(self, skip: int) -> dict:
        mod_s, reply_s, base_s = self.t_mod[skip:], self.t_reply[skip:], self.t_base[skip:]
        overhead = [m - r - b for m, r, b in zip(mod_s, reply_s, base_s)]
        return {
            "parameters": self.size,
            "rounds_timed": len(mod_s),
            "mod": _stats(mod_s),
            "reply": _stats(reply_s),
            "baseline": _stats(base_s),
            "overhead": _stats(overhead),
            "overhead_over_baseline": round(statistics.median(overhead) / statistics.median(base_s), 3),
            "receipt_errors_reported": self.errors,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1_000, 100_000, 1_000_000])
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--min-rounds", type=int, default=6, help="fewest rounds of a size over 1M parameters")
    p.add_argument("--before", default="", help="also time the signing mod of this git commit")
    p.add_argument("--out", type=Path, default=RESULTS / "signing.json")
    p.add_argument(
        "--dirs",
        nargs="+",
        default=[None],
        help="where the receipts directories go, one run each (default: the system temp dir); "
        "e.g. --dirs /tmp /dev/shm separates the disk's latency from the CPU cost",
    )
    args = p.parse_args()
    _task_identity()
    factories = {"current": make_signing_mod}
    if args.before:
        factories[f"before ({args.before})"] = _old_mod_factory(args.before)
    rows = []
    for where in args.dirs:
        with tempfile.TemporaryDirectory(prefix="fc-bench-signing-", dir=where) as tmp:
            for size in args.sizes:
                # the mods run in lockstep (alternating order each round), so load on the machine hits both alike
                lanes = {
                    name: Lane(size, factory, Path(tmp) / f"{i}-{size}")
                    for i, (name, factory) in enumerate(factories.items())
                }
                rounds = args.rounds if size <= 1_000_000 else max(args.min_rounds, args.rounds * 1_000_000 // size)
                for rnd in range(1, rounds + 1):
                    order = list(lanes.values())
                    for lane in order if rnd % 2 else order[::-1]:
                        lane.step(rnd)
                for name, lane in lanes.items():
                    r = lane.result(skip=max(1, min(3, rounds // 4)))  # first rounds: key loading, first-use pinning
                    r["mod_version"] = name
                    r["receipts_dir"] = str(Path(tmp).parent)
                    rows.append(r)
                    print(
                        f"{name:>20} {size:>9} params in {r['receipts_dir']}: mod {r['mod']['median_us']:>9.1f} us"
                        f"  baseline {r['baseline']['median_us']:>9.1f} us  overhead {r['overhead']['median_us']:>8.1f}"
                        f" us ({r['overhead_over_baseline']:.2f}x baseline)  receipt errors "
                        f"{r['receipt_errors_reported']}",
                        flush=True,
                    )
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    doc = {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "commit": commit,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "processor": platform.processor(),
            "load_average": os.getloadavg(),
        },
        "results": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""What the ledger adds to a round's critical path, without the simulation's 100 ms polls (issue 21 §4).

    python bench/bench_round_path.py                      # 10 clients, 20 rounds per mode, demo CNN shapes
    python bench/bench_round_path.py --rounds 40 --clients 10

The paired MNIST bench (``bench_e2e.py paired``) runs Flower's simulation, whose engine hands instructions
to the Ray workers and the grid pulls replies on 100 ms ticks: a round's time moves in 100 ms steps, and
a few ms of work can cost a whole step or nothing. This bench runs the same round shape in one process,
twice per round pair — ``ledger`` (``LedgerStrategy`` around the demo's ``OrderedFedAvg``, SQLite ledger,
clients with the real signing mod and receipts) and ``plain`` (``OrderedFedAvg`` alone, clients without
the mod) — over Flower's own ``InMemoryGrid.send_and_receive`` loop (pull interval 0) on a grid whose
replies come in waves of two, each after a CPU-bound stand-in for local training (``--train-ms``), as two
Ray workers deliver them; the centralized evaluation is a CPU-bound stand-in too (``--eval-ms``). Only
what runs on the round's critical path is summed:

* server: the main thread's time in ``configure_train``, ``aggregate_train``, ``configure_evaluate`` and
  the centralized evaluation step (the ledger's ``recording_fn``: its evaluation block, and the wait for a
  train block written behind) — not the grid's waiting;
* client: per message, the mod's time before and after the ClientApp's call (the checks it runs
  beside the call are not on the path unless the call ends first);
* per round: server + waves x the slowest client's mod time of each wave.

The extra per round (ledger - plain) is reported beside the paired bench's plain round (``--round-s``,
default: the median plain round of ``bench/results/e2e.json``). Writes bench/results/round_path.json.
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
import uuid
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "round_path.json"

import numpy as np  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict  # noqa: E402
from flwr.supercore.task_identity import TaskIdentity  # noqa: E402
from flwr.superlink.grid.inmemory_grid import InMemoryGrid  # noqa: E402

from flower_chain.app.server_app import OrderedFedAvg  # noqa: E402
from flower_chain.clients.signing import make_signing_mod  # noqa: E402
from flower_chain.ledger.keys import key_id, raw_public  # noqa: E402
from flower_chain.strategies import LedgerStrategy  # noqa: E402

#: The demo CNN on 28x28x1 (flower_chain.app.model.Net): 184,586 float32 parameters.
SHAPES = [
    ("conv1.weight", (32, 1, 5, 5)),
    ("conv1.bias", (32,)),
    ("conv2.weight", (64, 32, 5, 5)),
    ("conv2.bias", (64,)),
    ("fc1.weight", (128, 1024)),
    ("fc1.bias", (128,)),
    ("fc2.weight", (10, 128)),
    ("fc2.bias", (10,)),
]
_WORK = np.random.default_rng(0).standard_normal((192, 192)).astype(np.float32)


def busy(ms: float) -> None:
    """CPU-bound work for about ``ms`` milliseconds (a stand-in for training or evaluating; numpy drops the GIL)."""
    end = time.perf_counter() + ms / 1000
    while time.perf_counter() < end:
        _WORK @ _WORK


def model(seed: int) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    return ArrayRecord({n: Array(rng.standard_normal(s).astype(np.float32)) for n, s in SHAPES})


class WaveGrid(InMemoryGrid):
    """Flower's own ``send_and_receive`` loop (not overridden, pull interval 0) over in-process nodes that answer
    in waves of ``workers``: a reply is pulled once its wave's stand-in training ran."""

    def __init__(self, nodes: list[int], answer, workers: int, train_ms: float) -> None:  # no LinkState
        self.pull_interval = 0.0
        self.nodes, self.answer, self.workers, self.train_ms = nodes, answer, workers, train_ms
        self.queue: list[tuple[str, Message]] = []

    def get_node_ids(self):
        return list(self.nodes)

    def push_messages(self, messages):
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            self.queue.append((msg.metadata.message_id, msg))
            ids.append(msg.metadata.message_id)
        return ids

    def pull_messages(self, message_ids):
        wave, self.queue = self.queue[: self.workers], self.queue[self.workers :]
        return [self.answer(msg) for _, msg in wave]


class Lane:
    """One mode: its strategy, its clients, and the critical-path times it collects."""

    def __init__(self, mode: str, clients: int, workers: int, train_ms: float, eval_ms: float, tmp: Path) -> None:
        self.mode, self.eval_ms, self.train_ms = mode, eval_ms, train_ms
        self.nodes = list(range(100, 100 + clients))
        keys = [Ed25519PrivateKey.generate() for _ in self.nodes]
        self.times: dict[str, list[float]] = defaultdict(list)
        inner = OrderedFedAvg(min_available_nodes=clients, min_train_nodes=clients, fraction_evaluate=0.0)
        if mode == "ledger":
            self.strategy = LedgerStrategy(
                inner,
                ledger=f"sqlite:///{tmp / 'round_path.db'}",
                keyring={key_id(k): raw_public(k) for k in keys},
                server_key=Ed25519PrivateKey.generate(),
                federation_id="round-path",
            )
            self.mods = {n: make_signing_mod(k, receipts_dir=tmp / f"receipts-{n}") for n, k in zip(self.nodes, keys)}
        else:
            self.strategy = inner
            self.mods = {n: None for n in self.nodes}
        self.grid = WaveGrid(self.nodes, self.answer, workers, train_ms)
        self.wave: list[float] = []
        for name in ("configure_train", "aggregate_train", "configure_evaluate"):
            self._time(name)

    def _time(self, name: str) -> None:
        real = getattr(self.strategy, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self.times[f"server_{name}"].append(time.perf_counter() - t)

        setattr(self.strategy, name, timed)

    def answer(self, msg: Message) -> Message:
        node = msg.metadata.dst_node_id
        ctx = Context(
            run_id=1, node_id=node, node_config={"partition-id": node - 100}, state=RecordDict(), run_config={}
        )
        inside = {}

        def train(m, c):
            t = time.perf_counter()
            busy(self.train_ms)
            out = Message(
                RecordDict(
                    {
                        "arrays": model(node),
                        "metrics": MetricRecord({"num-examples": 400, "partition-id": node - 100}),
                    }
                ),
                reply_to=m,
            )
            inside["s"] = time.perf_counter() - t
            return out

        t = time.perf_counter()
        mod = self.mods[node]
        reply = mod(msg, ctx, train) if mod is not None else train(msg, ctx)
        critical = time.perf_counter() - t - inside["s"]
        self.times["client_mod"].append(critical)
        self.wave.append(critical)
        if len(self.wave) == self.grid.workers:  # a wave ends when its slowest node's mod is done
            self.times["client_wave"].append(max(self.wave))
            self.wave = []
        return reply

    def run(self, rounds: int) -> None:
        def evaluate_fn(server_round, arrays):
            t = time.perf_counter()
            busy(self.eval_ms)
            self.times["eval_stand_in"].append(time.perf_counter() - t)
            return MetricRecord({"accuracy": 0.5})

        kw = {"evaluate_fn": evaluate_fn}
        if self.mode == "ledger":
            real_commit = self.strategy.core.commit_evaluation

            def commit(*args, **kwargs):
                t = time.perf_counter()
                try:
                    return real_commit(*args, **kwargs)
                finally:
                    self.times["server_commit_evaluation"].append(time.perf_counter() - t)

            self.strategy.core.commit_evaluation = commit
        self.strategy.start(self.grid, model(0), num_rounds=rounds, train_config=ConfigRecord({"lr": 0.05}), **kw)
        if self.mode == "ledger":
            self.strategy.close()

    def per_round_ms(self, skip: int) -> dict[str, float]:
        def med(name: str, per_round: int = 1) -> float:
            xs = self.times.get(name, [])[skip * per_round :]
            return 1000 * statistics.median(xs) if xs else 0.0

        waves = -(-len(self.nodes) // self.grid.workers)
        server = {k: med(k) for k in self.times if k.startswith("server_")}
        return {
            **{f"{k}_ms": v for k, v in server.items()},
            "server_ms": sum(server.values()),
            "client_mod_ms_per_message": med("client_mod", len(self.nodes)),
            "client_waves_ms": waves * med("client_wave", waves),
            "critical_path_ms": sum(server.values()) + waves * med("client_wave", waves),
        }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--workers", type=int, default=2, help="replies per wave (the simulation's Ray workers)")
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--train-ms", type=float, default=100.0, help="stand-in local training per message")
    ap.add_argument("--eval-ms", type=float, default=100.0, help="stand-in centralized evaluation per round")
    ap.add_argument("--round-s", type=float, default=None, help="the plain round to compare with")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    TaskIdentity._run_id, TaskIdentity._task_id, TaskIdentity._node_id = 1, 1, 0  # as a running ServerApp sets
    results = {}
    for mode in ("plain", "ledger", "plain", "ledger"):  # twice each, interleaved; the second of each is kept
        with tempfile.TemporaryDirectory(prefix="fc-round-path-") as tmp:
            lane = Lane(mode, args.clients, args.workers, args.train_ms, args.eval_ms, Path(tmp))
            lane.run(args.rounds)
            results[mode] = lane.per_round_ms(skip=2)  # round 1 opens files and starts threads
    round_s = args.round_s
    if round_s is None:
        e2e = ROOT / "bench" / "results" / "e2e.json"
        paired = json.loads(e2e.read_text()).get("paired", {}) if e2e.exists() else {}
        plain = [x for r in paired.get("plain", []) for x in r["round_s"][1:]]
        round_s = statistics.median(plain) if plain else None
    extra = results["ledger"]["critical_path_ms"] - results["plain"]["critical_path_ms"]

    def here(text: str) -> str:  # paths inside the repository as the repository names them
        return text.replace(f"{ROOT}{os.sep}", "")

    doc = {
        "command": here(" ".join(sys.argv[1:])) or "(defaults)",
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_average": os.getloadavg()},
        "settings": vars(args) | {"out": here(str(args.out))},
        "per_round_medians": results,
        "ledger_extra_critical_ms_per_round": extra,
        "plain_round_s_compared": round_s,
        "ledger_extra_fraction_of_round": (extra / 1000 / round_s) if round_s else None,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()

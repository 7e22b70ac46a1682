#!/usr/bin/env python3
"""Run a flower-chain federation: a simulation (default) or a real local deployment.

    python run.py                                   # 10 clients, MNIST, 5 rounds, ledger on
    python run.py --dataset fashion-mnist --partition dirichlet --alpha 0.3
    python run.py --mode deployment --num-clients 2 --rounds 1
    python run.py --secure-aggregation              # SecAgg+: the server never sees an update

Writes ``metrics.json``, ``model.npz`` and (unless ``--no-ledger``) the round
ledger into ``--out``. Bad input ends with one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
EXIT_USAGE = 2
ATTACKS = (
    "unsigned",
    "forged",
    "tamper",
    "replay",
    "cross-run",
    "stale",
    "duplicate",
    "malformed",
    "num-examples-lie",
    "scale",
    "sign-flip",
    "label-flip",
)


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="mnist", help="mnist | fashion-mnist | cifar10 (default: mnist)")
    p.add_argument("--num-clients", type=int, default=10, help="number of clients (default: 10)")
    p.add_argument("--rounds", type=int, default=5, help="server rounds (default: 5)")
    p.add_argument("--local-epochs", type=int, default=1, help="local epochs per round (default: 1)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--learning-rate", type=float, default=0.05)
    p.add_argument("--partition", default="iid", help="iid | dirichlet (default: iid)")
    p.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration (default: 0.5)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data-dir", default="data", help="where datasets are read or downloaded (default: ./data)")
    p.add_argument("--out", default="out", help="output directory (default: ./out)")
    p.add_argument("--mode", default="simulation", choices=["simulation", "deployment"])
    p.add_argument("--ledger", default="", help="ledger URI (default: sqlite:///OUT/ledger.db)")
    p.add_argument("--no-ledger", action="store_true", help="plain Flower FedAvg, no signing and no ledger")
    p.add_argument("--keys-dir", default="", help="client keys (default: OUT/keys, generated on first run)")
    p.add_argument(
        "--strategy",
        default="fedavg",
        help="inner strategy: fedavg | fedtrimmedavg | fedmedian | multikrum | fedavgm | fedadam",
    )
    p.add_argument("--attack", default="", help="make --attackers clients malicious: " + ", ".join(ATTACKS))
    p.add_argument("--attackers", type=int, default=0, help="number of malicious clients (partitions 0..K-1)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the federation of --ledger from its last verified block (after a crash)",
    )
    p.add_argument("--anchor", default="", help="publish every block to an EVM chain: evm+http://HOST:PORT")
    p.add_argument("--anchor-contract", default="", help="LedgerAnchor address (default: deploy one)")
    p.add_argument(
        "--anchor-key-file",
        default="",
        help="hex private key of the anchoring account (default: env FLOWER_CHAIN_EVM_KEY)",
    )
    p.add_argument("--anchor-chain-id", type=int, default=0, help="expected chain id")
    p.add_argument("--anchor-confirmations", type=int, default=0)
    p.add_argument("--anchor-poa", action="store_true", help="proof-of-authority chain (Clique/QBFT)")
    p.add_argument("--anchor-fee", default="auto", help="auto | eip1559 | legacy | zero")
    p.add_argument(
        "--verbose",
        action="store_true",
        help="print Flower's own log (default: one line per round; the log goes to OUT/flwr-run.log)",
    )
    p.add_argument(
        "--secure-aggregation",
        action="store_true",
        help="SecAgg+ (Flower's legacy path, every stage signed and on the ledger): the server sees\n"
        "only masked updates and their sum; needs the ledger, fedavg and at least 3 clients",
    )
    p.add_argument(
        "--scenario",
        default="",
        choices=["", "attacks"],
        help="attacks: run every attack with the ledger and with plain FedAvg; JSON + Markdown in --out",
    )
    return p.parse_args(argv)


def validate(args: argparse.Namespace) -> dict:
    """Check the arguments, prepare data, keys and output; return the run config overrides."""
    from flower_chain.app import data as data_mod

    if args.dataset not in data_mod.DATASETS:
        raise UsageError(f"unknown dataset {args.dataset!r}; choose one of {', '.join(data_mod.DATASETS)}")
    if args.num_clients < 1:
        raise UsageError(f"--num-clients must be at least 1, got {args.num_clients}")
    if args.rounds < 1:
        raise UsageError(f"--rounds must be at least 1, got {args.rounds}")
    if args.local_epochs < 1:
        raise UsageError(f"--local-epochs must be at least 1, got {args.local_epochs}")
    if args.partition not in ("iid", "dirichlet"):
        raise UsageError(f"unknown partition {args.partition!r}; choose iid or dirichlet")
    if args.partition == "dirichlet" and args.alpha <= 0:
        raise UsageError("--alpha must be positive")
    from flower_chain.app.server_app import STRATEGIES

    if args.strategy not in STRATEGIES:
        raise UsageError(f"unknown strategy {args.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if args.attack and args.attack not in ATTACKS:
        raise UsageError(f"unknown attack {args.attack!r}; choose one of {', '.join(ATTACKS)}")
    if args.attack and not 0 < args.attackers < args.num_clients:
        raise UsageError(f"--attackers must be between 1 and {args.num_clients - 1} with --attack")
    if args.secure_aggregation:
        secagg_usage(args)
    out = Path(args.out).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UsageError(f"--out {args.out} is not writable: {e.strerror or e}") from e
    data_dir = Path(args.data_dir).resolve()
    try:
        print(f"[flower-chain] {data_mod.prepare(args.dataset, data_dir)}", flush=True)
        n_train = len(data_mod.load(args.dataset, str(data_dir)).y_train)
    except data_mod.DatasetError as e:
        raise UsageError(str(e)) from e
    if args.num_clients * 2 > n_train:
        raise UsageError(
            f"{args.num_clients} clients but only {n_train} training samples "
            "(each client needs at least 2); use fewer clients"
        )
    overrides = {
        "dataset": args.dataset,
        "num-server-rounds": args.rounds,
        "min-nodes": args.num_clients,
        "local-epochs": args.local_epochs,
        "batch-size": args.batch_size,
        "learning-rate": args.learning_rate,
        "partition": args.partition,
        "alpha": args.alpha,
        "seed": args.seed,
        "data-dir": str(data_dir),
        "out-dir": str(out),
        "no-ledger": bool(args.no_ledger),
        "ledger": "",
        "keys-dir": "",
        "federation-id": "",
        "strategy": args.strategy,
        "attack": args.attack,
        "attackers": args.attackers if args.attack else 0,
        "store-client-updates": bool(args.attack),  # lets the ledger attribute outlier updates to keys
        "resume": bool(args.resume),
        "anchor": args.anchor,
        "anchor-contract": args.anchor_contract,
        "anchor-key-file": str(Path(args.anchor_key_file).resolve()) if args.anchor_key_file else "",
        "anchor-chain-id": args.anchor_chain_id,
        "anchor-confirmations": args.anchor_confirmations,
        "anchor-poa": bool(args.anchor_poa),
        "anchor-fee": args.anchor_fee,
        "secure-aggregation": bool(args.secure_aggregation),
    }
    if args.anchor:
        try:
            from flower_chain.anchor.evm import AnchorError, read_private_key
        except ImportError as e:
            raise UsageError("--anchor needs web3: pip install 'flower-chain[evm]'") from e
        if not args.anchor.startswith(("evm+http://", "evm+https://")):
            raise UsageError(f"--anchor {args.anchor!r}: write evm+http://HOST:PORT")
        try:
            read_private_key(args.anchor_key_file or None)
        except AnchorError as e:
            raise UsageError(str(e)) from e
    if args.resume:
        if args.no_ledger or not args.ledger:
            raise UsageError("--resume needs --ledger URI of the federation to continue")
        from flower_chain.ledger import open_ledger, verify
        from flower_chain.ledger.errors import LedgerError

        try:
            with open_ledger(args.ledger, create=True) as led:  # a writer drops a torn JSONL tail
                rep = verify(led)
        except LedgerError as e:
            raise UsageError(f"cannot resume from {args.ledger}: {e}") from e
        print(
            f"[flower-chain] resuming {rep.federation_id}: {rep.blocks} verified blocks, last round {rep.last_round}",
            flush=True,
        )
    if not args.no_ledger:
        from flower_chain.app.setup import prepare_keys
        from flower_chain.ledger.location import file_uri

        federation = f"{args.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
        ledger = args.ledger or file_uri("sqlite", out / f"ledger-{federation}.db")
        keys = Path(args.keys_dir).resolve() if args.keys_dir else out / "keys"
        try:
            prepare_keys(keys, args.num_clients)
        except Exception as e:  # noqa: BLE001 - any key problem is bad input here
            raise UsageError(str(e)) from e
        overrides.update({"ledger": ledger, "keys-dir": str(keys), "federation-id": "" if args.ledger else federation})
    return overrides


def secagg_usage(args: argparse.Namespace) -> None:
    """What ``--secure-aggregation`` cannot be combined with (a UsageError naming it)."""
    clash = [
        flag
        for flag, on in (
            ("--no-ledger", args.no_ledger),
            ("--attack", args.attack),
            ("--resume", args.resume),
            ("--scenario", args.scenario),
        )
        if on
    ]
    if clash:
        raise UsageError(f"--secure-aggregation cannot be combined with {', '.join(clash)}")
    if args.strategy != "fedavg":
        raise UsageError("--secure-aggregation aggregates by the protocol's weighted average: use --strategy fedavg")
    if args.num_clients < 3:
        raise UsageError(f"--secure-aggregation needs at least 3 clients, got {args.num_clients}")


# --- simulation ------------------------------------------------------------------------------------------


class RoundProgress:
    """One line per finished round and a rich progress bar, read from the ``metrics.json`` the ServerApp writes.

    The ServerApp runs in a process of Flower's; it rewrites ``metrics.json`` after every round, so
    the progress is polled from there (a file older than this run is ignored: ``--resume`` reuses
    ``--out``).
    """

    def __init__(self, metrics: Path, total: int, enabled: bool = True) -> None:
        import threading

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.metrics, self.total, self.enabled = metrics, total, enabled
        self.t0 = time.time()
        self.seen: set[int] = set()
        self.console = Console(highlight=False)
        self.progress = Progress(
            TextColumn("[flower-chain] rounds"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.progress.add_task("rounds", total=total)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _rows(self) -> list[dict]:
        try:
            if self.metrics.stat().st_mtime < self.t0:
                return []
            return json.loads(self.metrics.read_text()).get("rounds", [])
        except (OSError, ValueError):
            return []  # not written yet, or being replaced

    def _poll(self) -> None:
        while not self._stop.wait(0.3):
            self.update()
        self.update()

    def update(self) -> None:
        for row in self._rows():
            r = row.get("round", 0)
            if r < 1 or r in self.seen:
                continue
            self.seen.add(r)
            counts = f"  accepted {row['accepted']:>3}  rejected {row['rejected']:>3}" if "accepted" in row else ""
            self.progress.console.print(
                f"[flower-chain] round {r:>3}/{self.total}  accuracy {row['accuracy']:.4f}  "
                f"loss {row['loss']:.4f}  time {row['round_time_s']:.1f}s{counts}",
                markup=False,
                soft_wrap=True,
            )
            self.progress.update(self.task, completed=len(self.seen))

    def __enter__(self) -> RoundProgress:
        if self.enabled:
            self.progress.start()
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._stop.set()
            self._thread.join()
            self.progress.stop()


def run_simulation(overrides: dict, num_clients: int, verbose: bool = False) -> int:
    """``flwr run`` on this Flower App with a local SuperLink of its own (Flower's supported way to simulate).

    Flower's own log goes to ``OUT/flwr-run.log`` (``--verbose`` also prints it); the terminal shows one
    line per round. The SuperLink and everything it started are stopped by PID at the end.
    """
    from flower_chain.app.local_run import LocalSuperLink

    out = Path(overrides["out-dir"])
    log = out / "flwr-run.log"
    # The demo's keys win over a FLOWER_CHAIN_SIGNING_KEY left exported in this shell (it outranks the run config).
    keys = overrides.get("keys-dir")
    env = {"FLOWER_CHAIN_SIGNING_KEY": str(Path(keys) / "clients")} if keys else {}
    with (
        LocalSuperLink(env=env, cwd=ROOT, log_dir=out) as link,
        RoundProgress(out / "metrics.json", int(overrides["num-server-rounds"]), enabled=not verbose),
    ):
        print(
            f"[flower-chain] flwr run . with {num_clients} simulated nodes on a local SuperLink of its own "
            f"(FLWR_HOME {link.home}; Flower's log: {log})",
            flush=True,
        )
        result = link.run(
            ROOT, num_supernodes=num_clients, run_config=overrides, log=log, tee=sys.stdout if verbose else None
        )
        pids = link.pids()
    print(f"[flower-chain] stopped the local SuperLink {' '.join(f'(pid {p})' for p in pids)}", flush=True)
    if not result.ok:
        tail = [ln for ln in log.read_text(errors="replace").splitlines() if "ERROR" in ln][-3:]
        print(
            f"[flower-chain] the Flower run {result.run_id or '(not started)'} ended {result.status} "
            f"(flwr run exit code {result.returncode}); Flower's log: {log}",
            file=sys.stderr,
        )
        for ln in tail:
            print(f"  {ln.strip()}", file=sys.stderr)
        return 1
    return 0


# --- deployment ------------------------------------------------------------------------------------------


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"flower-superlink exited with code {proc.returncode} before it listened")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"flower-superlink did not listen on port {port} within {timeout:.0f}s")


def wait_interruptibly(proc: subprocess.Popen) -> int:
    """``proc.wait()`` in 0.5 s steps: a signal the kernel hands to another thread (the progress bar's) is
    then still acted on by this one within 0.5 s, instead of after ``proc`` exits."""
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            continue


def stop_processes(procs: list[subprocess.Popen]) -> None:
    """Stop every started process and everything it started (process groups and descendants)."""
    from flower_chain.app.local_run import stop_process_trees

    stop_process_trees([p.pid for p in procs])
    for p in procs:
        p.wait()


def run_deployment(overrides: dict, num_clients: int, verbose: bool = False) -> int:
    """A SuperLink and ``num_clients`` SuperNodes on 127.0.0.1, then ``flwr run`` against them."""
    importlib.import_module("psutil")  # needed to stop what we start: fail before starting anything
    t_start = time.time()
    from flower_chain.app.local_run import config_arg, free_port

    out = Path(overrides["out-dir"])
    flwr_home = Path(tempfile.mkdtemp(prefix="flwr-home-", dir=out))
    env = dict(
        os.environ, FLWR_HOME=str(flwr_home), FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", PYTHONUNBUFFERED="1"
    )
    link_port = free_port()
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "flower-chain"\n\n[superlink.flower-chain]\n'
        f'address = "127.0.0.1:{link_port}"\ninsecure = true\n'
    )
    logs = out / "deployment-logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []

    def start(cmd: list[str], log_name: str, extra_env: dict | None = None) -> subprocess.Popen:
        f = open(logs / log_name, "wb")  # noqa: SIM115 - closed with the process
        p = subprocess.Popen(
            cmd, stdout=f, stderr=subprocess.STDOUT, env={**env, **(extra_env or {})}, cwd=ROOT, start_new_session=True
        )
        procs.append(p)
        return p

    try:
        link = start(
            [
                "flower-superlink",
                "--insecure",
                "--host",
                "127.0.0.1",
                "--port",
                str(link_port),
                "--database",
                str(flwr_home / "state.db"),
                "--disable-runtime-dependency-installation",
            ],
            "superlink.log",
        )
        wait_for_port(link_port, link)
        print(f"[flower-chain] SuperLink on 127.0.0.1:{link_port} (pid {link.pid})", flush=True)
        for i in range(num_clients):
            node_env = {}
            if overrides.get("keys-dir"):
                node_env["FLOWER_CHAIN_SIGNING_KEY"] = str(Path(overrides["keys-dir"]) / "clients")
            node = start(
                [
                    "flower-supernode",
                    "--insecure",
                    "--superlink",
                    f"127.0.0.1:{link_port}",
                    "--port",
                    str(free_port()),
                    "--node-config",
                    f"partition-id={i} num-partitions={num_clients}",
                ],
                f"supernode-{i}.log",
                node_env,
            )
            print(f"[flower-chain] SuperNode {i} (pid {node.pid})", flush=True)
        run_config = config_arg(overrides)
        cmd = ["flwr", "run", str(ROOT), "flower-chain", "--stream", "--run-config", run_config]
        print(
            f"[flower-chain] {' '.join(cmd[:4])} --stream --run-config ... (Flower's log: {logs / 'flwr-run.log'})",
            flush=True,
        )
        with (
            open(logs / "flwr-run.log", "wb") as flog,
            RoundProgress(out / "metrics.json", int(overrides["num-server-rounds"]), enabled=not verbose),
        ):
            runner = subprocess.Popen(
                cmd,
                env=env,
                cwd=ROOT,
                start_new_session=True,
                **({} if verbose else {"stdout": flog, "stderr": subprocess.STDOUT}),
            )
            procs.append(runner)
            rc = wait_interruptibly(runner)
        if rc != 0:
            print(f"[flower-chain] flwr run exited with code {rc}; logs in {logs}", file=sys.stderr)
            return rc
        metrics = out / "metrics.json"
        # flwr run --stream returns when the run finishes (exit 0 even if the ServerApp failed): wait for this
        # run's final write; a metrics.json older than this run (an earlier run in --out) does not count.
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if metrics.stat().st_mtime >= t_start and "summary" in json.loads(metrics.read_text()):
                    return 0
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        print(
            f"[flower-chain] the run ended without its summary (the ServerApp failed?); Flower's log: "
            f"{logs / 'flwr-run.log'}",
            file=sys.stderr,
        )
        return 1
    finally:
        stop_processes(procs)
        print(f"[flower-chain] stopped {len(procs)} processes", flush=True)


def print_summary(overrides: dict) -> int:
    metrics = Path(overrides["out-dir"]) / "metrics.json"
    if not metrics.exists():
        print(f"[flower-chain] no metrics were written to {metrics}: the run failed", file=sys.stderr)
        return 1
    doc = json.loads(metrics.read_text())
    summary = doc.get("summary")
    if not summary:
        print("[flower-chain] the run did not finish", file=sys.stderr)
        return 1
    print("\n=== flower-chain summary ===")
    print(f"dataset       {overrides['dataset']} ({summary.get('dataset_source')})")
    if summary.get("final_accuracy") is None:
        print(f"no round left to run: the federation already reached round {overrides['num-server-rounds']}")
    else:
        print(f"final accuracy {summary['final_accuracy']:.4f} in {summary['total_time_s']:.1f}s")
    print(f"metrics       {metrics}")
    print(f"model         {Path(overrides['out-dir']) / 'model.npz'}")
    if summary.get("ledger"):
        uri = summary["ledger"]
        print(f"ledger        {uri}  ({summary.get('ledger_blocks')} blocks, {summary.get('ledger_entries')} entries)")
        print(f"verdicts      {verdict_line(uri)}")
        if summary.get("secure_aggregation"):
            print(f"SecAgg+       {secagg_line(uri)}")
        print("inspect it:")
        keys = Path(overrides.get("keys-dir") or Path(overrides["out-dir"]) / "keys")
        pinned = f" --server-key {keys / 'server' / 'server.pub'} --keys {keys / 'keyring'}"  # not the genesis' key
        for cmd, tail in (
            ("summary", ""),
            ("blocks", ""),
            ("verify", pinned),
            ("audit --strict" if summary.get("secure_aggregation") else "audit", ""),
        ):
            print(f"  flower-chain ledger {cmd} {uri}{tail}")
        print(f"  flower-chain ledger show {uri} 1")
        print(f"  flower-chain report {uri} -o {Path(overrides['out-dir']) / 'report.html'}")
    return 0


def verdict_line(uri: str) -> str:
    """Every verdict of the ledger, train and evaluate, by reason (``ok`` counts the accepted replies)."""
    from flower_chain.ledger import open_ledger
    from flower_chain.ledger.errors import LedgerError
    from flower_chain.ledger.inspect import summary as ledger_summary

    try:
        with open_ledger(uri) as led:
            verdicts = ledger_summary(led)["verdicts"]
    except LedgerError as e:
        return f"(unreadable: {e})"
    return "; ".join(
        f"{kind}: " + (", ".join(f"{k} {v}" for k, v in counts.items()) or "none") for kind, counts in verdicts.items()
    )


def secagg_line(uri: str) -> str:
    """The SecAgg+ stage replies of the ledger by stage and verdict reason, and the rounds that unmasked."""
    from collections import Counter

    from flower_chain.audit.secagg_transcript import read_rounds
    from flower_chain.ledger import open_ledger
    from flower_chain.ledger.errors import LedgerError

    try:
        with open_ledger(uri) as led:
            rounds = read_rounds(led, [])
    except LedgerError as e:
        return f"(unreadable: {e})"
    stages: dict[str, Counter] = {}
    done = 0
    for t in rounds.values():
        done += bool(t.result and not t.result.get("failure"))
        for stage, records in t.records.items():
            stages.setdefault(stage, Counter()).update(r.entry.reason for r in records)
    per_stage = "; ".join(
        f"{stage}: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items())) for stage, c in stages.items() if c
    )
    return f"{done} of {len(rounds)} rounds unmasked; {per_stage}"


def run_once(overrides: dict, args: argparse.Namespace) -> int:
    if args.mode == "simulation":
        return run_simulation(overrides, args.num_clients, verbose=args.verbose)
    return run_deployment(overrides, args.num_clients, verbose=args.verbose)


def outcome(overrides: dict, label: str) -> dict:
    """Updates received, accepted, rejected by reason and final accuracy of a finished run."""
    doc = json.loads((Path(overrides["out-dir"]) / "metrics.json").read_text())
    summary = doc["summary"]
    row = {"run": label, "strategy": overrides["strategy"], "final_accuracy": summary["final_accuracy"]}
    if summary.get("ledger"):
        from flower_chain.ledger import open_ledger
        from flower_chain.ledger.inspect import summary as ledger_summary
        from flower_chain.ledger.outliers import attribute_outliers

        with open_ledger(summary["ledger"]) as led:
            s = ledger_summary(led)
            row.update(
                received=s["accepted"] + s["rejected"],
                accepted=s["accepted"],
                rejected=s["rejected"],
                reasons=s["reasons"],
                ledger=summary["ledger"],
            )
            if overrides.get("attackers"):
                row["outliers"] = attribute_outliers(led, int(overrides["attackers"]))
    else:
        n = int(overrides["num-server-rounds"]) * int(overrides["min-nodes"])
        row.update(received=n, accepted=n, rejected=0, reasons={})
    return row


def attack_table(rows: list[dict]) -> str:
    lines = [
        "| attack | run | strategy | received | accepted | rejected (by reason) | final accuracy |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(r["reasons"].items())) or "-"
        lines.append(
            f"| {r.get('attack') or 'none'} | {r['run']} | {r['strategy']} | {r['received']} | "
            f"{r['accepted']} | {r['rejected']} ({reasons}) | {100 * r['final_accuracy']:.2f} % |"
        )
    return "\n".join(lines)


def _subrun(args: argparse.Namespace, out: Path, **flags) -> dict:
    """Run run.py again in a fresh process (Ray starts clean) and return its outcome."""
    argv = [
        sys.executable,
        str(ROOT / "run.py"),
        "--dataset",
        args.dataset,
        "--num-clients",
        str(args.num_clients),
        "--rounds",
        str(args.rounds),
        "--local-epochs",
        str(args.local_epochs),
        "--seed",
        str(args.seed),
        "--partition",
        args.partition,
        "--alpha",
        str(args.alpha),
        "--data-dir",
        args.data_dir,
        "--out",
        str(out),
        "--keys-dir",
        str(Path(args.keys_dir or Path(args.out) / "keys").resolve()),
        "--batch-size",
        str(args.batch_size),
        "--learning-rate",
        str(args.learning_rate),
        "--mode",
        args.mode,
    ]
    for k, v in flags.items():
        if v is True:
            argv.append(f"--{k}")
        elif v not in (None, False, ""):
            argv += [f"--{k}", str(v)]
    child = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _stdout, stderr = child.communicate()
    except KeyboardInterrupt:  # let the child stop what it started (its SuperLink) before it goes
        child.send_signal(signal.SIGTERM)
        try:
            child.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            child.kill()
        raise
    if child.returncode != 0:
        raise RuntimeError(f"run {flags} failed: {stderr.strip().splitlines()[-1:]}")
    ov = {
        "out-dir": str(out),
        "strategy": flags.get("strategy", "fedavg"),
        "attackers": flags.get("attackers", 0),
        "num-server-rounds": args.rounds,
        "min-nodes": args.num_clients,
    }
    return {**outcome(ov, "plain" if flags.get("no-ledger") else "ledger"), "attack": flags.get("attack", "")}


def attack_matrix(args: argparse.Namespace) -> int:
    """Every attack with LedgerStrategy and with plain FedAvg (and a robust inner strategy for poisoning)."""
    out = Path(args.out).resolve() / "attacks"
    k = args.attackers or max(1, args.num_clients * 3 // 10)
    rows = [_subrun(args, out / "clean-ledger"), _subrun(args, out / "clean-plain", **{"no-ledger": True})]
    clean = rows[0]["final_accuracy"]
    for attack in ATTACKS:
        print(f"[flower-chain] attack {attack} ...", flush=True)
        common = {"attack": attack, "attackers": k}
        rows.append(_subrun(args, out / f"{attack}-ledger", **common))
        rows.append(_subrun(args, out / f"{attack}-plain", **common, **{"no-ledger": True}))
        if attack in ("scale", "sign-flip", "label-flip"):
            rows.append(_subrun(args, out / f"{attack}-ledger-trimmed", **common, strategy="fedtrimmedavg"))
    for r in rows:
        r["accuracy_drop_points"] = 100 * (clean - r["final_accuracy"])
    doc = {
        "num_clients": args.num_clients,
        "attackers": k,
        "rounds": args.rounds,
        "dataset": args.dataset,
        "clean_accuracy": clean,
        "rows": rows,
    }
    (out / "attacks.json").write_text(json.dumps(doc, indent=2))
    table = attack_table(rows)
    (out / "attacks.md").write_text(table + "\n")
    print(table)
    print(f"\n[flower-chain] wrote {out / 'attacks.json'} and {out / 'attacks.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        overrides = validate(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    def on_sigterm(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)  # stop what was started, as on Ctrl-C
    # Ctrl-C even where it was ignored when this process started (a shell's background job inherits
    # SIG_IGN, and Python then installs no KeyboardInterrupt handler): what run.py starts must be stopped.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if args.scenario == "attacks":
            return attack_matrix(args)
        rc = run_once(overrides, args)
        if rc:
            return rc
        rc = print_summary(overrides)
        if rc or not args.attack or args.no_ledger:
            return rc
        print(
            f"\n[flower-chain] the same run with plain FedAvg (seed {args.seed}, {args.attackers} attackers) ...",
            flush=True,
        )
        rows = [
            {**outcome(overrides, "ledger"), "attack": args.attack},
            _subrun(
                args,
                Path(overrides["out-dir"]) / "plain",
                attack=args.attack,
                attackers=args.attackers,
                **{"no-ledger": True},
            ),
        ]
        print(attack_table(rows))
        return 0
    except KeyboardInterrupt:
        print("\n[flower-chain] interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Crash suite at full count: kill -9 a real run.py federation at random moments (>= 20 trials).

After each kill: the ledger verifies (no half-written block), ``run.py --resume`` reaches the final
round, and the final model digest equals an uninterrupted run's with the same seed and keys.

    python bench/bench_crash.py [--trials 20] [--rounds 3] [--clients 3] [--strategy fedadam]

Writes bench/results/crash.json (crash-<strategy>.json for another inner strategy). With a
strategy that keeps server state (fedadam, fedavgm), the resumed run must also end with the
uninterrupted run's strategy state digest.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flower_chain.ledger import LedgerError, open_ledger, verify  # noqa: E402
from tests.support.crash import crash_run, env, run_args  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--strategy", default="fedavg")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    name = "crash.json" if args.strategy == "fedavg" else f"crash-{args.strategy}.json"
    args.out = args.out or str(Path(__file__).parent / "results" / name)
    strategy = ["--strategy", args.strategy]
    work = Path(tempfile.mkdtemp(prefix="fc-crash-"))
    keys, data = work / "keys", work / "data"
    ref_uri = f"sqlite:///{work}/ref.db"
    t = time.time()
    subprocess.run(
        run_args(work / "ref", keys, data, args.rounds, args.clients) + ["--ledger", ref_uri] + strategy,
        check=True,
        capture_output=True,
        env=env(),
    )
    with open_ledger(ref_uri) as led:
        ref = verify(led)
    ref_time = time.time() - t
    rng = random.Random(2026)
    trials = []
    total_blocks = 2 * args.rounds + 2
    for i in range(args.trials):
        db = work / f"t{i}.db"
        uri = f"sqlite:///{db}"
        run = run_args(work / f"o{i}", keys, data, args.rounds, args.clients) + ["--ledger", uri] + strategy
        at, delay = rng.randint(1, total_blocks - 1), rng.uniform(0, 2.0)
        killed = crash_run(run, db, at, delay)
        row = {"trial": i, "kill_after_blocks": at, "extra_delay_s": round(delay, 2), "blocks_at_kill": killed}
        try:
            with open_ledger(uri) as led:
                rep = verify(led, client_signatures=True)
            row.update(verified_after_kill=True, last_round_at_kill=rep.last_round)
        except LedgerError as e:
            row.update(verified_after_kill=False, error=str(e))
        r = subprocess.run(run + ["--resume"], capture_output=True, text=True, env=env())
        row["resume_rc"] = r.returncode
        try:
            with open_ledger(uri) as led:
                rep = verify(led, client_signatures=True)
            row.update(
                final_round=rep.last_round,
                same_final_digest=rep.model_digest == ref.model_digest,
                same_final_state=rep.state_digest == ref.state_digest,
            )
        except LedgerError as e:
            row.update(final_round=None, same_final_digest=False, same_final_state=False, error=str(e))
        trials.append(row)
        print(json.dumps(row), flush=True)
    res = {
        "trials": len(trials),
        "rounds": args.rounds,
        "clients": args.clients,
        "strategy": args.strategy,
        "strategy_keeps_state": bool(ref.state_digest),
        "uninterrupted_run_s": ref_time,
        "verified_after_every_kill": all(t["verified_after_kill"] for t in trials),
        "resumed_to_final_round": sum(t["final_round"] == args.rounds for t in trials),
        "same_final_digest": sum(bool(t["same_final_digest"]) for t in trials),
        "same_final_state": sum(bool(t["same_final_state"]) for t in trials),
        "killed_before_finishing": sum(t["blocks_at_kill"] != -1 for t in trials),
        "rows": trials,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=2))


if __name__ == "__main__":
    main()

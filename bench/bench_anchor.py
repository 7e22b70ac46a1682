#!/usr/bin/env python3
"""Anchoring benchmark against a local anvil node (instant mining).

Per-anchor latency and gas (median of 100 anchors), and the federation's wall time with anchoring on
vs off (paired runs of run.py in this invocation; anchoring runs off the round's critical path).

    python bench/bench_anchor.py [--anchors 100] [--pairs 2]

Writes bench/results/anchor.json. Needs web3 and anvil (npm install in the repository root).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flower_chain.anchor.evm import EvmAnchor  # noqa: E402
from tests.support.anvil import ANVIL_KEY, Anvil  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--anchors", type=int, default=100)
    ap.add_argument("--pairs", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fc-anchor-"))
    node = Anvil(work / "state.json").start()
    try:
        a = EvmAnchor(node.url, federation_id="bench", private_key=ANVIL_KEY, chain_id=31337)
        lat, gas = [], []
        for h in range(args.anchors):
            t = time.perf_counter()
            r = a.anchor(h, 10 * h + 1, h.to_bytes(32, "big"), (h + 1).to_bytes(32, "big"))
            lat.append(time.perf_counter() - t)
            gas.append(r["gas_used"])
        key = work / "evm.key"
        key.write_text(ANVIL_KEY)
        walls = {"on": [], "off": []}
        for i in range(args.pairs):
            for mode in ("on", "off") if i % 2 == 0 else ("off", "on"):
                extra = ["--anchor", node.url, "--anchor-key-file", str(key)] if mode == "on" else []
                out = work / f"{mode}{i}"
                t = time.perf_counter()
                subprocess.run(
                    [
                        sys.executable,
                        str(ROOT / "run.py"),
                        "--num-clients",
                        "3",
                        "--rounds",
                        "3",
                        "--out",
                        str(out),
                        "--data-dir",
                        str(ROOT / "data"),
                        *extra,
                    ],
                    check=True,
                    capture_output=True,
                )
                walls[mode].append(json.loads((out / "metrics.json").read_text())["summary"]["total_time_s"])
    finally:
        node.stop()
    res = {
        "anchors": args.anchors,
        "latency_ms_median": 1000 * statistics.median(lat),
        "latency_ms_p95": 1000 * sorted(lat)[int(0.95 * len(lat))],
        "gas_median": statistics.median(gas),
        "gas_first": gas[0],
        "run_time_s_on": walls["on"],
        "run_time_s_off": walls["off"],
        "ratio_on_off": statistics.median(walls["on"]) / statistics.median(walls["off"]),
    }
    out = ROOT / "bench" / "results" / "anchor.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()

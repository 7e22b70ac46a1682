#!/usr/bin/env python3
"""Wall time of the default ``python run.py`` through ``flwr run`` vs the previous in-process simulation.

    python bench/bench_runpy.py [--pairs 2] [--clients 10] [--rounds 5]
    python bench/bench_runpy.py --deployment [--clients 2] [--rounds 4]

``flwr run``: ``run.py`` as it is (a local SuperLink of its own, the ServerApp and ClientApps in
Flower's processes, everything stopped by PID). Baseline, in the same invocation: the same run config
through ``flwr.simulation.run_simulation`` in one process, as ``run.py`` did before (deprecated in
flwr 1.42). The two alternate (A B, B A, ...); reported: wall times, their ratio (medians), final
accuracy and whether both end with the same model. JSON in ``bench/results/runpy.json``.

``--deployment``: the per-message ClientApp process cost of the deployment mode (a SuperNode starts a
``flwr-clientapp`` process for every message it is sent; flwr 1.42 has no long-lived ClientApp
process: ``--isolation process`` still runs one ``flwr-clientapp`` per message token). Measured as the
median round time from round 2 on (the demo sends each node one train message per round) of
``--mode deployment`` minus that of the simulation, same config, same invocation,
next to the time one ``flwr-clientapp`` process needs to import the ClientApp's modules.
JSON in ``bench/results/deployment.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "bench" / "results" / "runpy.json"


def _digest(model: Path) -> str:
    import numpy as np

    with np.load(model) as z:
        return hashlib.sha256(b"".join(z[k].tobytes() for k in sorted(z.files))).hexdigest()


def baseline_child(argv: list[str]) -> int:
    """The previous run.py's simulation: run_simulation in this process, same overrides as run.py makes."""
    import run as runpy_mod

    args = runpy_mod.parse_args(argv)
    overrides = runpy_mod.validate(args)
    from flower_chain.app.client_app import make_client_app
    from flower_chain.app.server_app import make_server_app

    if overrides.get("keys-dir"):  # as the previous run.py did
        os.environ["FLOWER_CHAIN_SIGNING_KEY"] = str(Path(overrides["keys-dir"]) / "clients")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from flwr.simulation import run_simulation

        run_simulation(
            server_app=make_server_app(overrides),
            client_app=make_client_app(overrides),
            num_supernodes=args.num_clients,
            backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
        )
    return 0


def one(kind: str, common: list[str], out: Path) -> dict:
    env = {**os.environ, "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    if kind == "flwr-run":
        cmd = [sys.executable, str(ROOT / "run.py"), *common, "--out", str(out)]
    else:
        ray_tmp = tempfile.mkdtemp(prefix="fc-ray-", dir="/tmp")
        env["RAY_TMPDIR"] = ray_tmp
        cmd = [sys.executable, __file__, "--baseline-child", *common, "--out", str(out)]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t
    if r.returncode:
        raise RuntimeError(f"{kind}: {r.stdout[-1500:]}{r.stderr[-1500:]}")
    doc = json.loads((out / "metrics.json").read_text())
    return {
        "kind": kind,
        "wall_s": round(wall, 2),
        "loop_s": round(doc["summary"]["total_time_s"], 2),
        "final_accuracy": doc["summary"]["final_accuracy"],
        "model_sha256": _digest(out / "model.npz"),
    }


def deployment(clients: int, rounds: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix="fc-deploy-"))
    common = [
        "--num-clients",
        str(clients),
        "--rounds",
        str(rounds),
        "--data-dir",
        str(work / "data"),
        "--keys-dir",
        str(work / "keys"),
    ]
    out = {}
    for mode in ("simulation", "deployment"):
        d = work / mode
        t = time.perf_counter()
        r = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), *common, "--mode", mode, "--out", str(d)],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        if r.returncode:
            raise RuntimeError(f"{mode}: {r.stdout[-1500:]}{r.stderr[-1500:]}")
        rows = [x for x in json.loads((d / "metrics.json").read_text())["rounds"] if x["round"] >= 2]
        out[mode] = {
            "wall_s": round(time.perf_counter() - t, 2),
            "round_s": [round(x["round_time_s"], 3) for x in rows],
            "median_round_s": round(statistics.median(x["round_time_s"] for x in rows), 3),
        }
        print(json.dumps({mode: out[mode]}), flush=True)
    imports = []
    for _ in range(5):  # what every per-message ClientApp process pays before it can run: interpreter + imports
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import flwr.clientapp, torch, flower_chain.app.client_app"], check=True, cwd=ROOT
        )
        imports.append(time.perf_counter() - t)
    doc = {
        "what": f"run.py --num-clients {clients} --rounds {rounds}: deployment (one flwr-clientapp process per "
        "message) vs simulation (long-lived Ray actors), median round time from round 2 on",
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
        **out,
        "added_per_round_s": round(out["deployment"]["median_round_s"] - out["simulation"]["median_round_s"], 3),
        "clientapp_process_import_s_median": round(statistics.median(imports), 3),
    }
    (RESULTS.parent / "deployment.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return doc


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--baseline-child":
        return baseline_child(sys.argv[2:])
    if "--deployment" in sys.argv:
        args = sys.argv[1:]
        val = lambda flag, d: int(args[args.index(flag) + 1]) if flag in args else d  # noqa: E731
        deployment(val("--clients", 2), val("--rounds", 4))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=2)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="fc-runpy-"))
    common = [
        "--num-clients",
        str(a.clients),
        "--rounds",
        str(a.rounds),
        "--data-dir",
        str(work / "data"),
        "--keys-dir",
        str(work / "keys"),
    ]
    runs = []
    for i in range(a.pairs):
        order = ["flwr-run", "run_simulation"] if i % 2 == 0 else ["run_simulation", "flwr-run"]
        for kind in order:
            runs.append(one(kind, common, work / f"{kind}-{i}"))
            print(json.dumps(runs[-1]), flush=True)
    new = [r["wall_s"] for r in runs if r["kind"] == "flwr-run"]
    old = [r["wall_s"] for r in runs if r["kind"] == "run_simulation"]
    doc = {
        "what": f"python run.py --num-clients {a.clients} --rounds {a.rounds} (the default run, ledger on), "
        "wall time, flwr run + local SuperLink vs in-process run_simulation, alternating",
        "machine": {"cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
        "runs": runs,
        "flwr_run_wall_s_median": statistics.median(new),
        "run_simulation_wall_s_median": statistics.median(old),
        "ratio": round(statistics.median(new) / statistics.median(old), 3),
        "same_final_model": len({r["model_sha256"] for r in runs}) == 1,
    }
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k != "runs"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

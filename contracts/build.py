#!/usr/bin/env python3
"""Recompile LedgerAnchor.sol with solc-js (``npm install solc@0.8.37``) into LedgerAnchor.json.

    python contracts/build.py [--solcjs PATH] [--check]

The artifact is checked in so nothing is compiled or downloaded at run time. ``--check`` compiles
and exits 1 if the checked-in artifact differs from what the source compiles to.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "LedgerAnchor.sol"
ARTIFACT = HERE.parent / "flower_chain" / "anchor" / "LedgerAnchor.json"
EVM_VERSION = "paris"


def find_solcjs(explicit: str | None = None) -> str | None:
    for cand in (explicit, HERE.parent / "node_modules" / ".bin" / "solcjs", shutil.which("solcjs")):
        if cand and Path(cand).exists():
            return str(cand)
    return None


def compile_artifact(solcjs: str) -> dict:
    """Compile through solc's standard JSON interface (the solcjs CLI has no --evm-version)."""
    request = {
        "language": "Solidity",
        "sources": {SOURCE.name: {"content": SOURCE.read_text()}},
        "settings": {
            "optimizer": {"enabled": True, "runs": 200},
            "evmVersion": EVM_VERSION,
            "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}},
        },
    }
    r = subprocess.run(
        [solcjs, "--standard-json"], input=json.dumps(request), check=True, capture_output=True, text=True
    )
    out = json.loads(r.stdout[r.stdout.index("{") :])
    errors = [e for e in out.get("errors", []) if e.get("severity") == "error"]
    if errors:
        raise SystemExit("solc: " + "; ".join(e["formattedMessage"] for e in errors))
    contract = out["contracts"][SOURCE.name]["LedgerAnchor"]
    version = subprocess.run([solcjs, "--version"], check=True, capture_output=True, text=True).stdout.strip()
    return {
        "contractName": "LedgerAnchor",
        "compiler": f"solc-js {version}",
        "evmVersion": EVM_VERSION,
        "optimizer": {"enabled": True, "runs": 200},
        "sourceSha256": hashlib.sha256(SOURCE.read_bytes()).hexdigest(),
        "abi": contract["abi"],
        "bytecode": "0x" + contract["evm"]["bytecode"]["object"],
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--solcjs")
    ap.add_argument("--check", action="store_true")
    args = ap.parse_args()
    solcjs = find_solcjs(args.solcjs)
    if solcjs is None:
        print("solcjs not found: npm install solc@0.8.37", file=sys.stderr)
        return 2
    art = compile_artifact(solcjs)
    if args.check:
        current = json.loads(ARTIFACT.read_text())
        same = all(current.get(k) == art[k] for k in ("abi", "bytecode", "sourceSha256", "evmVersion"))
        print("artifact matches the source" if same else "artifact differs from the source: run contracts/build.py")
        return 0 if same else 1
    ARTIFACT.write_text(json.dumps(art, indent=1) + "\n")
    print(f"wrote {ARTIFACT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

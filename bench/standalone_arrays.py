"""``flower_chain/ledger/arrays.py`` loaded by file path, for benches that run where only numpy is installed.

Its only project import is ``flower_chain.ledger.errors`` (which imports nothing): registered under its
own name first, it is found without running the ``flower_chain.ledger`` package (whose ``__init__``
needs cryptography), so neither cryptography nor flwr is imported (checked).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str, path: Path):
    """Execute the module at ``path`` as ``name`` (registered in ``sys.modules``)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


if "flower_chain.ledger.errors" not in sys.modules:
    load("flower_chain.ledger.errors", ROOT / "flower_chain" / "ledger" / "errors.py")
arrays = load("flower_chain_bench_arrays", ROOT / "flower_chain" / "ledger" / "arrays.py")
if "flower_chain.ledger" not in sys.modules:  # not already imported by the process for other reasons
    assert "cryptography" not in sys.modules and "flwr" not in sys.modules

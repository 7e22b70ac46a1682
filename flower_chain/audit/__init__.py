"""The inspect stage: what an auditor runs on ledger content alone.

* :mod:`~flower_chain.audit.replay` re-derives every round's aggregation bit for bit;
* :mod:`~flower_chain.audit.witnessed` checks the cosigned checkpoints against trusted witness keys;
* :mod:`~flower_chain.audit.report` renders the HTML report.

Signature, chain, tree and verdict checks live in :mod:`flower_chain.ledger.verify` (no flwr needed).
"""

from flower_chain.audit.replay import audit, load_class
from flower_chain.audit.witnessed import WitnessReport, verify_witnessed

__all__ = ["WitnessReport", "audit", "load_class", "verify_witnessed"]

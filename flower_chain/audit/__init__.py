"""The inspect stage: what an auditor runs on ledger content alone.

* :mod:`~flower_chain.audit.replay` (with :mod:`.rounds`, :mod:`.inputs`, :mod:`.strategies`, :mod:`.legacy`)
  re-derives every round's aggregation bit for bit; :mod:`.auditable` says before a run whether it will be;
* :mod:`~flower_chain.audit.secagg` (with :mod:`.secagg_transcript`; the unmasking in :mod:`flower_chain.strategies.secagg_unmask`) replays SecAgg+
  rounds from their signed transcript alone and checks the protocol;
* :mod:`~flower_chain.audit.witnessed` checks the cosigned checkpoints against trusted witness keys;
* :mod:`~flower_chain.audit.status` decides the verdict's wording (VERIFIED / NOT VERIFIED, AUDITED / NOT
  AUDITED, what was not checked) for the report and the explorer; :mod:`~flower_chain.audit.report` renders it;
* :mod:`~flower_chain.audit.provenance` (with :mod:`.provenance_check`, :mod:`.model_files`,
  :mod:`.model_signing`) exports the final model with a signed in-toto statement and checks it.

Signature, chain, tree and verdict checks live in :mod:`flower_chain.ledger.verify` (no flwr needed).
"""

from flower_chain.audit.replay import audit, load_class
from flower_chain.audit.secagg import audit_secagg
from flower_chain.audit.witnessed import WitnessReport, verify_witnessed

__all__ = ["WitnessReport", "audit", "audit_secagg", "load_class", "verify_witnessed"]

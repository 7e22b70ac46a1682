"""Server side: verify, decide, delegate.

* :class:`LedgerStrategy` wraps any Message-API strategy (``flwr.serverapp.strategy``).
* :class:`LegacyLedgerStrategy` wraps any legacy strategy (``flwr.server.strategy``).

Both share :class:`~flower_chain.strategies.core.LedgerCore`. Neither needs torch.
"""

from flower_chain.strategies.core import LedgerCore
from flower_chain.strategies.judge import Judgement, Reply
from flower_chain.strategies.ledger_strategy import LedgerStrategy
from flower_chain.strategies.legacy_ledger_strategy import LegacyLedgerStrategy
from flower_chain.strategies.secagg_workflow import LedgerSecAggPlusWorkflow

__all__ = ["Judgement", "LedgerCore", "LedgerSecAggPlusWorkflow", "LedgerStrategy", "LegacyLedgerStrategy", "Reply"]

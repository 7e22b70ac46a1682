"""Anchoring the ledger on an Ethereum-compatible chain (optional extra ``flower-chain[evm]``).

Nothing in the core imports this package; it needs ``web3`` only when used.
"""

from flower_chain.anchor.publish import AnchorPublisher, catch_up, verify_against_chain

__all__ = ["AnchorPublisher", "catch_up", "verify_against_chain"]

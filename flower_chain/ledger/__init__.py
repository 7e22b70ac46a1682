"""The round ledger: RFC 9162 Merkle log of entries, hash-chained signed blocks, C2SP checkpoints.

This package imports neither torch nor flwr, so an auditor can verify a
ledger with only ``cryptography`` and ``numpy`` installed.
"""

from flower_chain.ledger.backends import Ledger, open_ledger
from flower_chain.ledger.block import BlockHeader, StoredBlock
from flower_chain.ledger.checkpoint import Checkpoint, sign_checkpoint, verify_checkpoint
from flower_chain.ledger.entries import (
    EvaluationEntry,
    GenesisEntry,
    RevocationEntry,
    UpdateEntry,
    UpdateStatement,
    decode_entry,
)
from flower_chain.ledger.errors import (
    AppendError,
    CheckpointError,
    EncodingError,
    KeyFileError,
    LedgerCorruptError,
    LedgerError,
    LedgerOpenError,
    ProofError,
    VerificationError,
)
from flower_chain.ledger.verify import VerifyReport, verify
from flower_chain.ledger.writer import LedgerWriter, read_genesis

__all__ = [
    "AppendError",
    "BlockHeader",
    "Checkpoint",
    "CheckpointError",
    "EncodingError",
    "EvaluationEntry",
    "GenesisEntry",
    "KeyFileError",
    "Ledger",
    "LedgerCorruptError",
    "LedgerError",
    "LedgerOpenError",
    "LedgerWriter",
    "ProofError",
    "RevocationEntry",
    "StoredBlock",
    "UpdateEntry",
    "UpdateStatement",
    "VerificationError",
    "VerifyReport",
    "decode_entry",
    "open_ledger",
    "read_genesis",
    "sign_checkpoint",
    "verify",
    "verify_checkpoint",
]

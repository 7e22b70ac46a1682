"""The state :func:`flower_chain.ledger.verify.verify` carries from block to block (:class:`Walk`).

Its own module, so that the entry rules verify calls (:mod:`flower_chain.ledger.entry_checks`) read it
without importing verify.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from flower_chain.ledger import merkle
from flower_chain.ledger.arrays import ArrayMeta
from flower_chain.ledger.block import ZERO_HASH, StoredBlock
from flower_chain.ledger.entries import Entry, GenesisEntry
from flower_chain.ledger.verify_report import VerifyReport


@dataclass
class Walk:
    """What the checks of one block need from the blocks before it, and how much to check."""

    report: VerifyReport
    server_key: bytes | None = None
    full: bool = True
    client_signatures: bool = False
    nodes: bool = False
    blobs: bool = False
    visit: Callable[[int, Entry], object] | None = None
    log: merkle.CompactRange = field(default_factory=merkle.CompactRange)
    prev_hash: bytes = ZERO_HASH
    prev_ts: int = 0
    last_model: bytes = b""
    prev_block: StoredBlock | None = None
    genesis: GenesisEntry | None = None
    pub: bytes = b""
    revoked: set[str] = field(default_factory=set)
    rounds: set[int] = field(default_factory=set)
    secagg_result: bool = False  # the block being checked holds a successful SecAgg+ result
    evaluated_rounds: set[int] = field(default_factory=set)  # rounds whose federated evaluation summary was seen
    head_bound: bool = False  # a checkpoint so far named its head block: every later one must (check_head)
    last_layout: tuple[bytes, ArrayMeta] | None = None  # (digest, layout) of the last model blob decoded

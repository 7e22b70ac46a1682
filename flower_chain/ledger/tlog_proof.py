"""Offline-verifiable proofs: C2SP tlog-proof (inclusion) and a JSON consistency proof.

Inclusion (https://c2sp.org/tlog-proof)::

    c2sp.org/tlog-proof@v1
    extra <base64 of the entry bytes>
    index <log index>
    <base64 hash>            (one line per inclusion proof hash, leaf side first)
                             (empty line)
    <signed checkpoint note>

The ``extra`` line carries the entry itself (opaque application data in the
spec), so the proof holds everything a verifier needs but the server's
public key. Consistency proofs have no C2SP format; they are JSON::

    {"format": "flower-chain/consistency-proof@v1", "old_checkpoint": NOTE,
     "new_checkpoint": NOTE, "proof": [BASE64, ...]}
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from flower_chain.ledger import json_input, merkle
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.checkpoint import Checkpoint, verify_checkpoint
from flower_chain.ledger.entries import UpdateEntry, decode_entry
from flower_chain.ledger.errors import CheckpointError, LedgerError, ProofError
from flower_chain.ledger.proofs import NodeReader, block_with_size, consistency_proof, entry_at, inclusion_proof
from flower_chain.ledger.text import is_decimal

TLOG_PROOF_HEADER = "c2sp.org/tlog-proof@v1"
CONSISTENCY_FORMAT = "flower-chain/consistency-proof@v1"


@dataclass(frozen=True)
class InclusionProof:
    index: int
    entry: bytes
    hashes: tuple[bytes, ...]
    checkpoint: str  # signed note

    def to_text(self) -> str:
        lines = [TLOG_PROOF_HEADER, f"extra {base64.b64encode(self.entry).decode()}", f"index {self.index}"]
        lines += [base64.b64encode(h).decode() for h in self.hashes]
        return "\n".join(lines) + "\n\n" + self.checkpoint

    @classmethod
    def from_text(cls, text: str) -> InclusionProof:
        head, sep, note = text.partition("\n\n")
        if not sep:
            raise ProofError("not a tlog-proof: no empty line before the checkpoint")
        lines = head.split("\n")
        if lines[0] != TLOG_PROOF_HEADER:
            raise ProofError(f"not a tlog-proof: first line is not {TLOG_PROOF_HEADER}")
        rest = lines[1:]
        entry = b""
        try:
            if rest and rest[0].startswith("extra "):
                entry = base64.b64decode(rest.pop(0)[6:], validate=True)
            if not rest or not rest[0].startswith("index ") or not is_decimal(rest[0][6:]):
                raise ProofError("tlog-proof has no 'index N' line")
            index = int(rest.pop(0)[6:])
            hashes = tuple(base64.b64decode(h, validate=True) for h in rest)
        except (binascii.Error, ValueError) as e:  # ValueError: non-ASCII input
            raise ProofError("tlog-proof has a line that is not base64") from e
        if not entry:
            raise ProofError("tlog-proof carries no entry (extra line)")
        return cls(index, entry, hashes, note)

    def verify(self, server_key: bytes) -> Checkpoint:
        """Check the checkpoint signature and the inclusion of the entry; return the checkpoint."""
        try:
            cp = verify_checkpoint(self.checkpoint, server_key)
        except (CheckpointError, LedgerError) as e:
            raise ProofError(f"checkpoint: {e}") from e
        merkle.verify_inclusion(merkle.leaf_hash(self.entry), self.index, cp.size, list(self.hashes), cp.root_hash)
        return cp


@dataclass(frozen=True)
class ConsistencyProof:
    old_checkpoint: str
    new_checkpoint: str
    hashes: tuple[bytes, ...]

    def to_text(self) -> str:
        return (
            json.dumps(
                {
                    "format": CONSISTENCY_FORMAT,
                    "old_checkpoint": self.old_checkpoint,
                    "new_checkpoint": self.new_checkpoint,
                    "proof": [base64.b64encode(h).decode() for h in self.hashes],
                },
                indent=2,
            )
            + "\n"
        )

    @classmethod
    def from_text(cls, text: str) -> ConsistencyProof:
        try:
            d = json_input.loads(text)
            if d.get("format") != CONSISTENCY_FORMAT:
                raise ProofError(f"not a {CONSISTENCY_FORMAT} document")
            return cls(
                d["old_checkpoint"], d["new_checkpoint"], tuple(base64.b64decode(h, validate=True) for h in d["proof"])
            )
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
            raise ProofError(f"malformed consistency proof: {e}") from e

    def verify(self, server_key: bytes) -> tuple[Checkpoint, Checkpoint]:
        try:
            old = verify_checkpoint(self.old_checkpoint, server_key)
            new = verify_checkpoint(self.new_checkpoint, server_key, origin=old.origin)
        except (CheckpointError, LedgerError) as e:
            raise ProofError(f"checkpoint: {e}") from e
        merkle.verify_consistency(old.size, new.size, list(self.hashes), old.root_hash, new.root_hash)
        return old, new


def parse_proof(text: str) -> InclusionProof | ConsistencyProof:
    """Read either proof document."""
    if text.startswith(TLOG_PROOF_HEADER):
        return InclusionProof.from_text(text)
    if text.lstrip().startswith("{"):
        return ConsistencyProof.from_text(text)
    raise ProofError(f"not a proof: expected a {TLOG_PROOF_HEADER} or {CONSISTENCY_FORMAT} document")


def prove_inclusion(
    ledger: Ledger,
    index: int,
    *,
    head: StoredBlock | None = None,
    node: NodeReader | None = None,
    entry: bytes | None = None,
) -> InclusionProof:
    """Inclusion proof of log entry ``index`` against the latest signed checkpoint (or ``head``'s).

    ``head`` (a block of this ledger), ``node`` (where the stored subtree hashes are read,
    :func:`flower_chain.ledger.proofs.inclusion_proof`) and ``entry`` (the entry's bytes) spare a caller that
    has them the reads; the proof is the same.
    """
    head = ledger.head() if head is None else head
    if head is None:
        raise LedgerError("the ledger is empty")
    size = head.header.log_size
    hashes = inclusion_proof(ledger, index, size, node=node, stored=size)
    return InclusionProof(index, entry_at(ledger, index) if entry is None else entry, tuple(hashes), head.checkpoint)


def prove_consistency(ledger: Ledger, old_size: int) -> ConsistencyProof:
    """Consistency proof from the checkpoint at ``old_size`` entries to the latest one."""
    head = ledger.head()
    if head is None:
        raise LedgerError("the ledger is empty")
    old = block_with_size(ledger, old_size)
    return ConsistencyProof(
        old.checkpoint, head.checkpoint, tuple(consistency_proof(ledger, old_size, head.header.log_size))
    )


def find_update(ledger: Ledger, server_round: int, key_id: str) -> int:
    """Log index of the train update of ``key_id`` in ``server_round``."""
    for block in ledger.blocks():
        h = block.header
        if h.round != server_round or h.height == 0:
            continue
        for i, data in enumerate(ledger.entries(h.first_index, h.log_size)):
            e = decode_entry(data)
            if isinstance(e, UpdateEntry) and e.kind == "train" and e.key_id == key_id:
                return h.first_index + i
    raise LedgerError(f"no update from client {key_id} in round {server_round}")

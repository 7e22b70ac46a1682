"""What a client's receipt check finds wrong, as typed findings that carry their evidence.

Each finding is one problem the server is answerable for (or, for
:class:`AnchorUntrusted`, the configured anchor). It keeps what proves it —
both checkpoint notes and the consistency proof of a :class:`Fork`, the head
header bytes and signature of a :class:`HeadSignatureInvalid`, the receipt
text of a :class:`ReceiptInvalid` — so a caller can keep or forward the
evidence, not only a sentence. :attr:`Finding.message` is the sentence the
client logs, appends to ``errors.log`` and counts.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

from flower_chain.ledger.block import BlockHeader
from flower_chain.ledger.checkpoint import Checkpoint
from flower_chain.ledger.entries import UpdateEntry


@dataclass(frozen=True)
class Finding(ABC):
    """One problem found by a receipt check; subclasses carry their evidence.

    Attributes
    ----------
    message : str
        What the client logs and appends to ``errors.log`` (text sent by the server included, escaped later).
    """

    @property
    @abstractmethod
    def message(self) -> str:
        """The sentence logged, appended to ``errors.log`` and counted."""


@dataclass(frozen=True)
class NoCheckpoint(Finding):
    """The instruction carried no checkpoint."""

    @property
    def message(self) -> str:
        return "the server sent no checkpoint"


@dataclass(frozen=True)
class ServerKeyUnusable(Finding):
    """Nothing pinned yet and the key the server offered is not a usable Ed25519 key."""

    offered: bytes
    problem: str

    @property
    def message(self) -> str:
        return f"the server sent no usable server key ({self.problem})"


@dataclass(frozen=True)
class ServerKeyChanged(Finding):
    """The server presents another key than the pinned one (checks go on under the pinned key)."""

    pinned: bytes
    offered: bytes

    @property
    def message(self) -> str:
        return "the server now presents another server key than the one pinned"


@dataclass(frozen=True)
class CheckpointInvalid(Finding):
    """The checkpoint note does not verify under the server key (or names another origin)."""

    note: str
    reason: str

    @property
    def message(self) -> str:
        return f"checkpoint does not verify: {self.reason}"


@dataclass(frozen=True)
class Unwitnessed(Finding):
    """The checkpoint lacks the quorum of trusted witnesses' cosignatures."""

    note: str
    checkpoint: Checkpoint
    reason: str

    @property
    def message(self) -> str:
        return (
            f"UNWITNESSED: the checkpoint at size {self.checkpoint.size} lacks the quorum of trusted witnesses "
            f"({self.reason}); this client does not sign updates for it (a split view?)"
        )


@dataclass(frozen=True)
class HeadMissing(Finding):
    """A checkpoint came without the head block header."""

    @property
    def message(self) -> str:
        return (
            "the server sent a checkpoint but no head block header (flower-chain.head); a server this old "
            "cannot prove which model its log records"
        )


@dataclass(frozen=True)
class HeadSignatureInvalid(Finding):
    """The head block header's signature does not verify under the server key."""

    header: bytes
    signature: bytes

    @property
    def message(self) -> str:
        return "the head block header's signature does not verify under the server key"


@dataclass(frozen=True)
class HeadUndecodable(Finding):
    """The signed head block header does not decode."""

    header: bytes
    reason: str

    @property
    def message(self) -> str:
        return f"the head block header does not decode: {self.reason}"


@dataclass(frozen=True)
class HeadNotOfCheckpoint(Finding):
    """The signed head block is not the head of the checkpointed log."""

    header: BlockHeader
    checkpoint: Checkpoint

    @property
    def message(self) -> str:
        return (
            f"the head block header (height {self.header.height}, log size {self.header.log_size}) is not "
            f"the head of the checkpointed log (size {self.checkpoint.size})"
        )


@dataclass(frozen=True)
class HeadWrongFederation(Finding):
    """The signed head block belongs to another federation."""

    header: BlockHeader

    @property
    def message(self) -> str:
        return f"the head block header is for federation {self.header.federation_id!r}"


@dataclass(frozen=True)
class HeadNotNamed(Finding):
    """The checkpoint's head line names another block than the signed head header sent with it (or names none,
    on a log whose checkpoints named their head before): what a cosignature would vouch for is not this head.

    Attributes
    ----------
    header : BlockHeader
        The head header sent (server-signed).
    head_hash : bytes
        Its block hash.
    named_height : int or None
        The height the checkpoint names (``None``: no head line).
    named_hash : bytes
        The block hash the checkpoint names (empty: no head line).
    """

    header: BlockHeader
    head_hash: bytes
    named_height: int | None
    named_hash: bytes

    @property
    def message(self) -> str:
        if self.named_height is None:
            return (
                f"the checkpoint names no head block (flower-chain/head) though this log's checkpoints did "
                f"before; the head sent is block {self.header.height} with hash {self.head_hash.hex()}"
            )
        return (
            f"the checkpoint names head block {self.named_height} with hash {self.named_hash.hex()}, the head "
            f"header sent is block {self.header.height} with hash {self.head_hash.hex()}"
        )


@dataclass(frozen=True)
class HeadFork(Finding):
    """Two server-signed head headers that cannot both be in one chain: the same height with another hash,
    or the next height not linking to the one this client verified (the server rewrote a block).

    Attributes
    ----------
    kept_header, kept_signature : bytes
        The header this client verified before, as sent, and its signature.
    header, signature : bytes
        The header received now, as sent, and its signature.
    """

    kept_header: bytes
    kept_signature: bytes
    header: bytes
    signature: bytes

    @property
    def message(self) -> str:
        kept, now = BlockHeader.from_bytes(self.kept_header), BlockHeader.from_bytes(self.header)
        kept_hash, now_hash = hashlib.sha256(self.kept_header).hexdigest(), hashlib.sha256(self.header).hexdigest()
        if kept.height == now.height:
            why = (
                f"block {now.height} now has hash {now_hash} (model_after {now.model_after.hex()[:16]}), this "
                f"client verified it with hash {kept_hash} (model_after {kept.model_after.hex()[:16]})"
            )
        else:
            why = (
                f"block {now.height} (hash {now_hash}) links to prev_hash {now.prev_hash.hex()}, this client "
                f"verified block {kept.height} with hash {kept_hash}"
            )
        return f"FORK: {why}: the server rewrote its history (both headers are signed by it)"


@dataclass(frozen=True)
class ModelMismatch(Finding):
    """A train or evaluate instruction's global arrays are not the model the head block records."""

    header: BlockHeader
    received_digest: bytes

    @property
    def message(self) -> str:
        h = self.header
        return (
            f"the server sent this client another global model than its log records: received arrays with "
            f"digest {self.received_digest.hex()[:16]}, the head block (height {h.height}, round {h.round}) "
            f"records model_after {h.model_after.hex()[:16]}"
        )


@dataclass(frozen=True)
class ForkSuspected(Finding):
    """The server twice in a row sent no consistency proof from the checkpoint this client saw."""

    previous_note: str
    note: str

    @property
    def message(self) -> str:
        return "FORK?: the server again sent no consistency proof from the checkpoint this client saw"


@dataclass(frozen=True)
class Fork(Finding):
    """The log is not an extension of the one this client saw: both signed notes and the proof that failed.

    Attributes
    ----------
    previous_note, note : str
        The checkpoint this client verified before and the one it received now (both server-signed).
    proof_from : int
        The size the server claims to prove consistency from.
    proof : tuple of bytes
        The consistency proof hashes sent.
    reason : str
        Why the proof fails.
    """

    previous_note: str
    note: str
    size: int
    proof_from: int
    proof: tuple[bytes, ...] = field(default=())
    reason: str = ""

    @property
    def message(self) -> str:
        return (
            f"FORK: the server's log at size {self.size} is not an extension of the log this client saw "
            f"before ({self.reason}); the server rewrote or forked its history"
        )


@dataclass(frozen=True)
class ReceiptInvalid(Finding):
    """A receipt (tlog-proof) the server sent does not verify."""

    text: str
    reason: str

    @property
    def message(self) -> str:
        return f"a receipt does not verify: {self.reason}"


@dataclass(frozen=True)
class UpdateMissing(Finding):
    """No valid receipt for an update this client sent: dropped by the server."""

    round: int
    statement: bytes

    @property
    def message(self) -> str:
        return (
            f"no valid receipt for this client's update of round {self.round}: the update is missing from "
            "the ledger (dropped by the server)"
        )


@dataclass(frozen=True)
class UpdateRejected(Finding):
    """The server recorded this client's valid update as rejected (the receipt proves it)."""

    round: int
    entry: UpdateEntry
    receipt: str

    @property
    def message(self) -> str:
        return (
            f"the server recorded this client's valid update of round {self.round} as rejected: "
            f"{self.entry.reason} ({self.entry.detail})"
        )


@dataclass(frozen=True)
class AnchorMismatch(Finding):
    """The verified head differs from the anchor published on chain for its height."""

    header: BlockHeader
    checkpoint: Checkpoint
    head_hash: bytes
    anchored: Any  # the ChainAnchor read from the contract (flower_chain.anchor.evm)

    @property
    def message(self) -> str:
        a = self.anchored
        return (
            f"the checkpoint at height {self.header.height} (log size {self.checkpoint.size}, block "
            f"{self.head_hash.hex()[:16]}) differs from the one anchored on chain (log size {a.log_size}, "
            f"block {a.block_hash.hex()[:16]}): the server forked or rewrote its history"
        )


@dataclass(frozen=True)
class AnchorUntrusted(Finding):
    """The configured anchor contract cannot be trusted (foreign contract, another owner or federation)."""

    reason: str

    @property
    def message(self) -> str:
        return f"the anchor cannot be trusted: {self.reason}"


@dataclass(frozen=True)
class ParentNotHead(Finding):
    """The context names another parent than the head block this client verified: it does not sign (its
    signature would bind a history it was not shown)."""

    parent: bytes
    header: BlockHeader
    head_hash: bytes

    @property
    def message(self) -> str:
        return (
            f"the server names ledger head {self.parent.hex()[:16] or '(empty)'} for this instruction, but the "
            f"head block it sent (height {self.header.height}) is {self.head_hash.hex()[:16]}: not signed"
        )


@dataclass(frozen=True)
class SettingsNotPinned(Finding):
    """The server announces other strategy settings (or none) than the digest this node pins, or none on a log
    that announced one before (``pinned`` None: a downgrade to v1 statements, whose receipt fields are unsigned)."""

    announced: bytes | None
    pinned: bytes | None

    @property
    def message(self) -> str:
        said = "no settings digest" if self.announced is None else f"settings digest {self.announced.hex()[:16]}"
        why = "this log announced one before" if self.pinned is None else f"this node pins {self.pinned.hex()[:16]}"
        return f"the server announces {said}, {why}: not signed"

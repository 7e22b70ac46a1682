"""What a successful verification of a ledger saw: :class:`VerifyReport`, filled by :func:`flower_chain.ledger.verify.verify`."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


@dataclass
class VerifyReport:
    """What a successful verification saw."""

    uri: str
    federation_id: str = ""
    blocks: int = 0
    entries: int = 0
    rounds: int = 0
    log_root: bytes = b""
    head_hash: bytes = b""
    checkpoint: str = ""
    server_key_id: str = ""
    accepted: int = 0  # replies to train instructions
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    entry_types: Counter[str] = field(default_factory=Counter)
    client_signatures_checked: int = 0
    revoked: set[str] = field(default_factory=set)
    last_round: int = 0
    model_digest: bytes = b""
    state_digest: bytes = b""  # the strategy state recorded last (state_after of the head)
    #: every update verdict by (kind, reason): ("train", "ok"), ("evaluate", "duplicate"), ...
    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)
    #: keys that signed two different statements for one round (evidence of a stolen key)
    equivocating_keys: set[str] = field(default_factory=set)
    #: recorded verdicts the ledger's content alone cannot re-derive, by reason (e.g. "client-error")
    not_rederived: Counter[str] = field(default_factory=Counter)
    #: verdicts re-derived from ledger content and found equal to the recorded ones
    verdicts_rederived: int = 0
    #: of those, the verdicts a client's valid signature proves (the client signed what the ledger shows):
    #: accepted updates, and rejections that follow from its signed statement (``policy.PROVEN_REJECTIONS``)
    accepted_proven: int = 0
    rejected_proven: int = 0
    #: of those, rejections that rest on evidence only the server recorded, by reason (no valid client
    #: signature; the digest or count the server says it received; an old statement filed under this round):
    #: consistent with the ledger, not proven by it (each node's receipts check its own replies)
    rejected_on_server_evidence: Counter[str] = field(default_factory=Counter)
    #: clients' cosignatures of the checkpoints they were sent, each verified under its genesis key (one per
    #: key and checkpoint, however often it is recorded)
    client_cosignatures: int = 0
    #: key id -> heights of the blocks whose checkpoint the key cosigned (clients as witnesses)
    cosigned: dict[str, set[int]] = field(default_factory=dict)
    #: the genesis keyring's key ids
    keyring: list[str] = field(default_factory=list)
    #: accepted train updates whose array rules (names, shapes, dtypes, finite values) were not re-derived:
    #: ``blobs=False``, or the update's arrays or the round's model not in the blob store
    arrays_unchecked: int = 0
    #: (with ``blobs=True``) problems with stored model, state and update blobs, one line each
    blob_problems: list[str] = field(default_factory=list)
    #: centralized evaluation summaries: the server's own claim about the model (no client signed them), not
    #: checked by verify; by round
    centralized_evaluations: list[int] = field(default_factory=list)
    #: SecAgg+ rounds whose aggregate changed the model with no plaintext update: not checked by verify,
    #: replayed by ``flower-chain ledger audit`` (:func:`flower_chain.audit.secagg.audit_secagg`)
    secagg_rounds: int = 0

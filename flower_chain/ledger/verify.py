"""Streaming verification of a whole ledger in bounded memory.

:func:`verify` reads blocks in height order and each block's entries by
log range, and checks, block by block:

* the header decodes, heights run 0, 1, 2, ..., each ``prev_hash`` is the
  hash of the block before, the federation id is the genesis', timestamps
  do not go back;
* every entry's leaf hash: the block's ``entries_root`` and ``entry_count``,
  and the running RFC 9162 log (``log_size``, ``log_root``) after the block;
* the server's Ed25519 signature on every header, and the signed C2SP
  checkpoint stored with each block (same size and root);
* genesis rules: block 0 is round 0, has zero ``prev_hash`` and exactly one
  entry, a genesis entry; no other block has one;
* (``full``) every entry decodes; update entries belong to the block's round
  and carry a known verdict and reason; the model digest chain
  (``model_before`` of a block is the ``model_after`` of the last block that
  had one);
* (``client_signatures``) every *accepted* update carries a valid statement
  signed by a key of the genesis keyring, not revoked before it, for this
  federation and round, matching the recorded digest and example count.

Memory stays O(log n) plus one block's entries at a time (the backend's
iterators stream). The first failure raises :class:`VerificationError`
naming the block height, the entry index and what mismatched.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from flower_chain.ledger import merkle
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.block import BlockHeader, ZERO_HASH
from flower_chain.ledger.checkpoint import verify_checkpoint
from flower_chain.ledger.entries import (
    ACCEPTED,
    REASONS,
    REJECTED,
    GenesisEntry,
    RevocationEntry,
    UpdateEntry,
    UpdateStatement,
    decode_entry,
)
from flower_chain.ledger.errors import LedgerError, VerificationError
from flower_chain.ledger.keys import key_id, verify_signature
from flower_chain.ledger.writer import origin_for


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
    reasons: Counter = field(default_factory=Counter)
    entry_types: Counter = field(default_factory=Counter)
    client_signatures_checked: int = 0
    revoked: set = field(default_factory=set)
    last_round: int = 0
    model_digest: bytes = b""
    state_digest: bytes = b""  # the strategy state recorded last (state_after of the head)
    #: every update verdict by (kind, reason): ("train", "ok"), ("evaluate", "duplicate"), ...
    verdicts: Counter = field(default_factory=Counter)
    #: keys that signed two different statements for one round (evidence of a stolen key)
    equivocating_keys: set = field(default_factory=set)
    #: recorded verdicts the ledger's content alone cannot re-derive, by reason (e.g. "client-error")
    not_rederived: Counter = field(default_factory=Counter)
    #: verdicts re-derived from ledger content and found equal to the recorded ones
    verdicts_rederived: int = 0
    #: (with ``blobs=True``) problems with stored model, state and update blobs, one line each
    blob_problems: list = field(default_factory=list)


def verify(
    ledger: Ledger,
    *,
    server_key: bytes | None = None,
    full: bool = True,
    client_signatures: bool = False,
) -> VerifyReport:
    """Verify ``ledger``; return a :class:`VerifyReport` or raise :class:`VerificationError`.

    Parameters
    ----------
    ledger : Ledger
        An open backend.
    server_key : bytes, optional
        The raw Ed25519 public key the auditor expects the server to use. The
        genesis names the server key; pinning it here also catches a ledger
        re-created from scratch under another key.
    full : bool
        Decode every entry and check entry semantics (else hashes, chain and
        signatures only).
    client_signatures : bool
        Re-check the client signature of every accepted update.
    """
    report = VerifyReport(uri=ledger.uri)
    try:
        n_blocks = ledger.block_count()
    except LedgerError as e:
        raise VerificationError(str(e)) from e
    if n_blocks == 0:
        raise VerificationError("the ledger is empty: it has no genesis block")
    log = merkle.CompactRange()
    prev_hash, prev_ts, last_model = ZERO_HASH, 0, b""
    genesis: GenesisEntry | None = None
    pub: bytes = b""
    revoked: set[str] = set()
    rounds = set()
    height, at = -1, 0  # ``at``: the block being read when a storage error interrupts
    try:
        for height, block in enumerate(ledger.blocks(0, n_blocks)):
            at = height
            try:
                h = BlockHeader.from_bytes(block.header_bytes)
            except LedgerError as e:
                raise VerificationError(f"header does not decode: {e}", height=height) from e
            if h.height != height:
                raise VerificationError(f"header says height {h.height}", height=height)
            if h.version != 1:
                raise VerificationError(f"unknown block version {h.version}", height=height)
            if h.prev_hash != prev_hash:
                raise VerificationError("prev_hash is not the hash of the previous block", height=height)
            if h.timestamp_ms < prev_ts:
                raise VerificationError("timestamp goes back in time", height=height)
            if h.log_size != log.size + h.entry_count:
                raise VerificationError(
                    f"log_size {h.log_size} is not the previous size {log.size} + {h.entry_count} entries",
                    height=height)
            datas = list(ledger.entries(log.size, h.log_size))  # one block's entries in memory at a time
            leaves = merkle.leaf_hashes(datas)
            log.extend(leaves)
            count = len(datas)
            if height == 0 or full:
                for i, data in enumerate(datas):
                    try:
                        entry = decode_entry(data)
                    except LedgerError as e:
                        raise VerificationError(f"entry does not decode: {e}", height=height, entry=i) from e
                    if height == 0:
                        genesis = _check_genesis(entry, h, server_key, i)
                        pub = genesis.server_key
                        report.federation_id = genesis.federation_id
                        report.server_key_id = key_id(pub)
                    else:
                        _check_entry(entry, h, i, genesis, revoked, report, client_signatures)
            if count != h.entry_count:
                raise VerificationError(f"header counts {h.entry_count} entries, the ledger holds {count}",
                                        height=height)
            if merkle.root(leaves) != h.entries_root:
                raise VerificationError("entries_root does not match the block's entries", height=height)
            if log.root() != h.log_root:
                raise VerificationError("log_root does not match the log after this block", height=height)
            if genesis is None:
                raise VerificationError("block 0 has no genesis entry", height=0)
            if h.federation_id != genesis.federation_id:
                raise VerificationError(f"block belongs to federation {h.federation_id!r}, "
                                        f"not {genesis.federation_id!r}", height=height)
            if not verify_signature(pub, block.signature, block.header_bytes):
                raise VerificationError("the server signature on the header does not verify", height=height)
            try:
                cp = verify_checkpoint(block.checkpoint, pub, origin_for(genesis.federation_id))
            except LedgerError as e:
                raise VerificationError(f"checkpoint: {e}", height=height) from e
            if (cp.size, cp.root_hash) != (h.log_size, h.log_root):
                raise VerificationError("the signed checkpoint does not match the header", height=height)
            if full and h.model_before and last_model and h.model_before != last_model:
                raise VerificationError("model_before is not the model_after of the previous round",
                                        height=height)
            last_model = h.model_after or last_model
            report.state_digest = h.state_after
            report.last_round = max(report.last_round, h.round)
            prev_hash, prev_ts = block.hash, h.timestamp_ms
            if height:
                rounds.add(h.round)
            report.checkpoint = block.checkpoint
            at = height + 1
    except VerificationError:
        raise
    except LedgerError as e:
        raise VerificationError(str(e), height=at) from e
    if height + 1 != n_blocks:
        raise VerificationError(f"the ledger reports {n_blocks} blocks but holds {height + 1}", height=height + 1)
    report.blocks, report.entries, report.rounds = n_blocks, log.size, len(rounds)
    report.log_root, report.head_hash = log.root(), prev_hash
    report.revoked, report.model_digest = revoked, last_model
    return report


def _check_genesis(entry, h: BlockHeader, server_key: bytes | None, i: int) -> GenesisEntry:
    if not isinstance(entry, GenesisEntry) or i != 0 or h.entry_count != 1:
        raise VerificationError("block 0 must hold exactly one entry, a genesis entry", height=0, entry=i)
    if h.round != 0:
        raise VerificationError("the genesis block must be round 0", height=0)
    if server_key is not None and entry.server_key != server_key:
        raise VerificationError(
            f"the genesis names server key {key_id(entry.server_key)}, not the expected {key_id(server_key)}",
            height=0, entry=0)
    if len(entry.server_key) != 32:
        raise VerificationError("the genesis server key is not a 32-byte Ed25519 key", height=0, entry=0)
    for kid, raw in entry.client_keys.items():
        if not isinstance(raw, bytes) or key_id(raw) != kid:
            raise VerificationError(f"client key {kid} does not match its key id", height=0, entry=0)
    return entry


def _check_entry(entry, h: BlockHeader, i: int, genesis: GenesisEntry, revoked: set[str], report: VerifyReport,
                 client_signatures: bool) -> None:
    report.entry_types[entry.TYPE] += 1
    if isinstance(entry, GenesisEntry):
        raise VerificationError("a second genesis entry", height=h.height, entry=i)
    if isinstance(entry, RevocationEntry):
        revoked.add(entry.key_id)
        return
    if not isinstance(entry, UpdateEntry):
        return
    if entry.round != h.round:
        raise VerificationError(f"update of round {entry.round} in a block of round {h.round}",
                                height=h.height, entry=i)
    if entry.kind not in ("train", "evaluate"):
        raise VerificationError(f"update of unknown kind {entry.kind!r}", height=h.height, entry=i)
    if entry.verdict == REJECTED:
        if entry.reason not in REASONS:
            raise VerificationError(f"unknown rejection reason {entry.reason!r}", height=h.height, entry=i)
        if entry.kind == "train":
            report.rejected += 1
            report.reasons[entry.reason] += 1
        return
    if entry.verdict != ACCEPTED:
        raise VerificationError(f"unknown verdict {entry.verdict!r}", height=h.height, entry=i)
    report.accepted += entry.kind == "train"
    if not client_signatures:
        return
    problem = _accepted_update_problem(entry, genesis, revoked)
    if problem:
        raise VerificationError(f"accepted update {problem}", height=h.height, entry=i)
    report.client_signatures_checked += 1


def _accepted_update_problem(entry: UpdateEntry, genesis: GenesisEntry, revoked: set[str]) -> str | None:
    raw = genesis.client_keys.get(entry.key_id)
    if raw is None:
        return f"is signed by {entry.key_id!r}, which is not in the genesis keyring"
    if entry.key_id in revoked:
        return f"is signed by the revoked key {entry.key_id}"
    if not verify_signature(raw, entry.signature, entry.statement):
        return "carries a client signature that does not verify"
    try:
        st = UpdateStatement.from_bytes(entry.statement)
    except LedgerError as e:
        return f"carries a statement that does not decode: {e}"
    if (st.federation_id, st.round, st.key_id, st.kind) != (genesis.federation_id, entry.round, entry.key_id,
                                                             entry.kind):
        return "carries a statement for another federation, round, key or kind"
    if st.arrays_digest != entry.arrays_digest or st.num_examples != entry.num_examples:
        return "carries a statement whose digest or example count differs from the entry"
    return None


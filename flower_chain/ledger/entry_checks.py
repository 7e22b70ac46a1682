"""The entry rules :func:`flower_chain.ledger.verify.verify` checks (``full``): each entry decodes and is one
the ledger format allows where it stands.

Block 0 holds the genesis entry, then only ``keys`` entries continuing its keyring
(:mod:`flower_chain.ledger.genesis`: round 0, a 32-byte server key, client keys matching their ids, no key id
twice); no other block holds either. A block holding a successful SecAgg+ result (:mod:`flower_chain.ledger.secagg`)
is marked: its model changes without a plaintext update, which only the audit can replay. Updates belong to their block's round, have a known kind, verdict and
reason; revocations name genesis keys; a client's cosignature verifies, under its genesis key, over the
checkpoint of the block before.
"""

from __future__ import annotations

from flower_chain.ledger import policy
from flower_chain.ledger.block import BlockHeader, StoredBlock
from flower_chain.ledger.entries import (
    ACCEPTED,
    REASONS,
    REJECTED,
    CosignatureEntry,
    Entry,
    EvaluationEntry,
    GenesisEntry,
    KeysEntry,
    RevocationEntry,
    SecAggEntry,
    UpdateEntry,
    decode_entry,
)
from flower_chain.ledger.errors import LedgerError, VerificationError
from flower_chain.ledger.genesis import GenesisError, join_genesis
from flower_chain.ledger.keys import key_id
from flower_chain.ledger.verify_report import VerifyReport
from flower_chain.ledger.walk import Walk


def check_entries(
    h: BlockHeader, datas: list[bytes], first_index: int, w: Walk
) -> tuple[list[tuple[int, UpdateEntry]], list[tuple[int, EvaluationEntry]]]:
    """(genesis and ``full``) every entry decodes and follows the entry rules; the block's updates and summaries."""
    updates: list[tuple[int, UpdateEntry]] = []
    summaries: list[tuple[int, EvaluationEntry]] = []
    if h.height == 0:
        w.genesis = _check_genesis(h, datas, w.server_key)
        w.pub = w.genesis.server_key
        w.report.federation_id = w.genesis.federation_id
        w.report.server_key_id = key_id(w.pub)
        w.report.keyring = sorted(w.genesis.client_keys)
        return updates, summaries
    if not w.full:
        return updates, summaries
    for i, data in enumerate(datas):
        try:
            entry = decode_entry(data)
        except LedgerError as e:
            raise VerificationError(f"entry does not decode: {e}", height=h.height, entry=i) from e
        if w.genesis is None:  # blocks are walked from height 0, whose genesis entry sets it
            raise VerificationError("an entry before the genesis entry", height=h.height, entry=i)
        elif isinstance(entry, CosignatureEntry):
            _check_cosignature(entry, h, i, w.genesis, w.prev_block, w.report)
        else:
            _check_entry(entry, h, i, w.genesis, w.revoked, w.report)
            if isinstance(entry, UpdateEntry):
                updates.append((i, entry))
            elif isinstance(entry, EvaluationEntry):
                summaries.append((i, entry))
            elif isinstance(entry, SecAggEntry) and entry.stage == "result" and not entry.data.get("failure"):
                w.secagg_result = True  # a SecAgg+ aggregate: its model change is the audit's to replay
            if w.visit is not None:
                w.visit(first_index + i, entry)
    return updates, summaries


def _check_genesis(h: BlockHeader, datas: list[bytes], server_key: bytes | None) -> GenesisEntry:
    """Block 0: the genesis entry, then only ``keys`` entries continuing its keyring (no key id twice, each
    matching its key); round 0; the server key expected. Returns the genesis with the whole keyring."""
    entries = []
    for i, data in enumerate(datas):
        try:
            entries.append(decode_entry(data))
        except LedgerError as e:
            raise VerificationError(f"entry does not decode: {e}", height=0, entry=i) from e
    try:
        entry = join_genesis(entries)
    except GenesisError as e:
        raise VerificationError(str(e), height=0, entry=e.entry) from e
    if h.round != 0:
        raise VerificationError("the genesis block must be round 0", height=0)
    if server_key is not None and entry.server_key != server_key:
        raise VerificationError(
            f"the genesis names server key {key_id(entry.server_key)}, not the expected {key_id(server_key)}",
            height=0,
            entry=0,
        )
    if len(entry.server_key) != 32:
        raise VerificationError("the genesis server key is not a 32-byte Ed25519 key", height=0, entry=0)
    return entry


def _check_entry(
    entry: Entry, h: BlockHeader, i: int, genesis: GenesisEntry, revoked: set[str], report: VerifyReport
) -> None:
    report.entry_types[entry.TYPE] += 1
    if isinstance(entry, GenesisEntry):
        raise VerificationError("a second genesis entry", height=h.height, entry=i)
    if isinstance(entry, KeysEntry):  # a key added to the keyring after the federation started
        raise VerificationError(
            "a keys entry outside block 0: the genesis keyring continues only in the genesis block",
            height=h.height,
            entry=i,
        )
    if isinstance(entry, RevocationEntry):
        if entry.key_id not in genesis.client_keys:
            raise VerificationError(
                f"revocation of key {entry.key_id!r}, which is not in the genesis keyring", height=h.height, entry=i
            )
        revoked.add(entry.key_id)
        return
    if not isinstance(entry, UpdateEntry):
        return
    if entry.round != h.round:
        raise VerificationError(
            f"update of round {entry.round} in a block of round {h.round}", height=h.height, entry=i
        )
    if entry.kind not in ("train", "evaluate"):
        raise VerificationError(f"update of unknown kind {entry.kind!r}", height=h.height, entry=i)
    if entry.verdict == REJECTED:
        if entry.reason not in REASONS:
            raise VerificationError(f"unknown rejection reason {entry.reason!r}", height=h.height, entry=i)
        if entry.kind == "train":
            report.rejected += 1
            report.reasons[entry.reason] += 1
        if entry.reason == "equivocation" and entry.key_id:
            report.equivocating_keys.add(entry.key_id)
    elif entry.verdict == ACCEPTED:
        if entry.reason != policy.OK:
            raise VerificationError(f"an accepted update with reason {entry.reason!r}", height=h.height, entry=i)
        report.accepted += entry.kind == "train"
    else:
        raise VerificationError(f"unknown verdict {entry.verdict!r}", height=h.height, entry=i)
    report.verdicts[(entry.kind, policy.recorded_reason(entry))] += 1


def _check_cosignature(
    entry: CosignatureEntry,
    h: BlockHeader,
    i: int,
    genesis: GenesisEntry,
    prev_block: StoredBlock | None,
    report: VerifyReport,
) -> None:
    """A client's cosignature must verify, under its genesis key, over the checkpoint of the block before."""
    from flower_chain.ledger.cosignature import check_client_cosignature

    report.entry_types[entry.TYPE] += 1
    raw = genesis.client_keys.get(entry.key_id)
    if entry.round != h.round or prev_block is None or entry.size != prev_block.header.log_size:
        raise VerificationError(
            "a client cosignature of another round or checkpoint than the one the round was built on",
            height=h.height,
            entry=i,
        )
    if raw is None or not check_client_cosignature(entry.line, prev_block.checkpoint, raw, max_future_s=None):
        raise VerificationError(
            f"the cosignature recorded for client {entry.key_id} does not verify over the "
            f"checkpoint of size {entry.size}",
            height=h.height,
            entry=i,
        )
    heights = report.cosigned.setdefault(entry.key_id, set())
    if prev_block.header.height not in heights:  # a repeated cosignature of one checkpoint counts once
        heights.add(prev_block.header.height)
        report.client_cosignatures += 1

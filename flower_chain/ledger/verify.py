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
  and carry a known verdict and reason; the model digest chain (once a
  block records a ``model_after``, every later block's ``model_before`` is
  the ``model_after`` of the block before it, and none leaves it empty; a
  block that accepts no train update keeps model and strategy state; the
  genesis names neither); revocations name genesis keys;
* (``client_signatures``) every *accepted* update carries a valid statement
  signed by a key of the genesis keyring, not revoked before it, for this
  federation and round, matching the recorded digest and example count.

Memory stays O(log n) plus one block's entries at a time (the backend's
iterators stream). The first failure raises :class:`VerificationError`
naming the block height, the entry index and what mismatched.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


from flower_chain.ledger import merkle, policy
from flower_chain.ledger.arrays import array_digest, array_meta, decode_arrays, first_nonfinite
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.block import BlockHeader, ZERO_HASH
from flower_chain.ledger.checkpoint import verify_checkpoint
from flower_chain.ledger.entries import (
    ACCEPTED,
    REASONS,
    REJECTED,
    GenesisEntry,
    CosignatureEntry,
    EvaluationEntry,
    RevocationEntry,
    UpdateEntry,
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
    #: clients' cosignatures of the checkpoints they were sent, each verified under its genesis key
    client_cosignatures: int = 0
    #: accepted train updates whose array rules (names, shapes, dtypes, finite values) were not re-derived:
    #: ``blobs=False``, or the update's arrays or the round's model not in the blob store
    arrays_unchecked: int = 0
    #: (with ``blobs=True``) problems with stored model, state and update blobs, one line each
    blob_problems: list = field(default_factory=list)


def verify(
    ledger: Ledger,
    *,
    server_key: bytes | None = None,
    full: bool = True,
    client_signatures: bool = False,
    nodes: bool | None = None,
    blobs: bool = False,
    visit=None,
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
        Re-derive the verdict of every update entry with :mod:`flower_chain.ledger.policy`
        (client signatures, keys, revocations, federation, round, parent, base model,
        digests, counts, duplicates, equivocation) and fail on the first entry whose
        recorded verdict differs. Verdicts the ledger cannot re-derive (``client-error``,
        most ``malformed``) are counted in ``not_rederived``.
    nodes : bool, optional
        Check every stored Merkle subtree hash (the ``nodes`` that proofs are built
        from) against the recomputed tree. Default: as ``client_signatures``.
    blobs : bool
        Check the blob store: every model, state and stored update blob must hash to
        its address (an altered one fails); missing ones are listed in ``blob_problems``.
        Stored updates also let the array-shape and finiteness rules be re-derived.
    visit : callable, optional
        ``visit(index, entry)`` for every decoded entry after block 0 (the server builds
        its receipt index from it while it verifies).
    """
    nodes = client_signatures if nodes is None else nodes
    report = VerifyReport(uri=ledger.uri)
    try:
        n_blocks = ledger.block_count()
    except LedgerError as e:
        raise VerificationError(str(e)) from e
    if n_blocks == 0:
        raise VerificationError("the ledger is empty: it has no genesis block")
    log = merkle.CompactRange()
    prev_hash, prev_ts, last_model = ZERO_HASH, 0, b""
    prev_block = None
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
            first_index = log.size
            datas = list(ledger.entries(log.size, h.log_size))  # one block's entries in memory at a time
            leaves = merkle.leaf_hashes(datas)
            if nodes:
                for lh in leaves:
                    for level, index, node in log.append(lh):
                        try:
                            stored = ledger.node(level, index)
                        except LedgerError:
                            stored = None
                        if stored != node:
                            raise VerificationError(f"the stored Merkle node (level {level}, index {index}) "
                                                    "differs from the tree of the entries: proofs served from it "
                                                    "would not verify", height=height)
            else:
                log.extend(leaves)
            count = len(datas)
            revoked_before = frozenset(revoked)
            updates: list[tuple[int, UpdateEntry]] = []
            summaries: list[tuple[int, EvaluationEntry]] = []
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
                    elif isinstance(entry, CosignatureEntry):
                        _check_cosignature(entry, h, i, genesis, prev_block, report)
                    else:
                        _check_entry(entry, h, i, genesis, revoked, report)
                        if isinstance(entry, UpdateEntry):
                            updates.append((i, entry))
                        elif isinstance(entry, EvaluationEntry):
                            summaries.append((i, entry))
                        if visit is not None:
                            visit(first_index + i, entry)
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
            if full and last_model:  # once a model exists, every block starts from it and ends with one
                if h.model_before != last_model:
                    raise VerificationError("model_before is not the model_after of the previous round"
                                            + ("" if h.model_before else " (the block names no base model)"),
                                            height=height)
                if not h.model_after:
                    raise VerificationError("the block names no model_after: a model exists since an earlier "
                                            "block, and every later block says which model it leaves",
                                            height=height)
            if full and height and not any(e.kind == "train" and e.verdict == ACCEPTED for _, e in updates):
                # no accepted update, nothing to aggregate: the block leaves the model and the strategy state as
                # they were (evaluation, revocation, a round where every reply was rejected)
                if h.model_after != h.model_before:
                    raise VerificationError("the block accepts no train update but changes the model "
                                            f"({h.model_before.hex()[:16] or 'none'} -> "
                                            f"{h.model_after.hex()[:16] or 'none'})", height=height)
                if h.state_after != report.state_digest:
                    raise VerificationError("the block accepts no train update but changes the strategy state",
                                            height=height)
            if height == 0 and (h.model_before or h.model_after or h.state_after):
                raise VerificationError("the genesis block names a model or a strategy state", height=0)
            if updates and client_signatures:  # the block is authentic: now, did the server follow its rules?
                _rederive(ledger, h, updates, genesis, revoked_before, report, blobs)
            if summaries and updates:  # a federated evaluation summary counts exactly the accepted evaluate replies
                accepted_eval = sum(e.kind == "evaluate" and e.verdict == ACCEPTED for _, e in updates)
                for i, ev in summaries:
                    if ev.source == "federated" and ev.num_replies != accepted_eval:
                        raise VerificationError(f"the federated evaluation summary counts {ev.num_replies} replies, "
                                                f"the block accepted {accepted_eval}", height=height, entry=i)
            if blobs and height:
                _check_blobs(ledger, h, report)
            last_model = h.model_after or last_model
            report.state_digest = h.state_after
            report.last_round = max(report.last_round, h.round)
            prev_hash, prev_ts, prev_block = block.hash, h.timestamp_ms, block
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


def _check_entry(entry, h: BlockHeader, i: int, genesis: GenesisEntry, revoked: set[str],
                 report: VerifyReport) -> None:
    report.entry_types[entry.TYPE] += 1
    if isinstance(entry, GenesisEntry):
        raise VerificationError("a second genesis entry", height=h.height, entry=i)
    if isinstance(entry, RevocationEntry):
        if entry.key_id not in genesis.client_keys:
            raise VerificationError(f"revocation of key {entry.key_id!r}, which is not in the genesis keyring",
                                    height=h.height, entry=i)
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
        if entry.reason == "equivocation" and entry.key_id:
            report.equivocating_keys.add(entry.key_id)
    elif entry.verdict == ACCEPTED:
        if entry.reason != policy.OK:
            raise VerificationError(f"an accepted update with reason {entry.reason!r}", height=h.height, entry=i)
        report.accepted += entry.kind == "train"
    else:
        raise VerificationError(f"unknown verdict {entry.verdict!r}", height=h.height, entry=i)
    report.verdicts[(entry.kind, policy.recorded_reason(entry))] += 1


def _check_cosignature(entry: CosignatureEntry, h: BlockHeader, i: int, genesis: GenesisEntry, prev_block,
                       report: VerifyReport) -> None:
    """A client's cosignature must verify, under its genesis key, over the checkpoint of the block before."""
    from flower_chain.ledger.cosignature import check_client_cosignature

    report.entry_types[entry.TYPE] += 1
    raw = genesis.client_keys.get(entry.key_id)
    if entry.round != h.round or prev_block is None or entry.size != prev_block.header.log_size:
        raise VerificationError("a client cosignature of another round or checkpoint than the one the round was "
                                "built on", height=h.height, entry=i)
    if raw is None or not check_client_cosignature(entry.line, prev_block.checkpoint, raw, max_future_s=None):
        raise VerificationError(f"the cosignature recorded for client {entry.key_id} does not verify over the "
                                f"checkpoint of size {entry.size}", height=h.height, entry=i)
    report.client_cosignatures += 1


def _stored_arrays(ledger: Ledger, digest: bytes):
    """The arrays stored under ``digest`` (``None`` when not stored); an altered blob fails verification."""
    try:
        if not digest or not ledger.has_blob(digest):
            return None
        data = ledger.get_blob(digest)
    except LedgerError:
        return None
    if hashlib.sha256(data).digest() != digest:  # a blob's address is the SHA-256 of its array stream
        raise VerificationError(f"the blob {digest.hex()[:16]} in the blob store does not match its digest (altered)")
    try:
        return decode_arrays(data)
    except LedgerError as e:
        raise VerificationError(f"the blob {digest.hex()[:16]} does not decode: {e}") from e


def _update_arrays(ledger: Ledger, entry: UpdateEntry):
    """(array meta, first non-finite array) of an update whose arrays are in the blob store, else (None, None)."""
    arrays = _stored_arrays(ledger, entry.arrays_digest)
    return (None, None) if arrays is None else (array_meta(arrays), first_nonfinite(arrays))


def _template(ledger: Ledger, digest: bytes, wanted: bool):
    """The round's global model template (names, shapes, dtypes) when wanted and stored."""
    arrays = _stored_arrays(ledger, digest) if wanted else None
    return None if arrays is None else array_meta(arrays)


def _rederive(ledger: Ledger, h: BlockHeader, updates: list[tuple[int, UpdateEntry]],
              genesis: GenesisEntry, revoked: frozenset, report: VerifyReport, blobs: bool) -> None:
    """Re-derive the verdicts of one block's update entries with the policy the server used."""
    for kind in ("train", "evaluate"):
        group = [(i, e) for i, e in updates if e.kind == kind]
        if not group:
            continue
        # A signed update recorded as malformed must be provable: its arrays are in the blob store (the
        # server keeps them as evidence) and the policy must reach the same verdict from them.
        signed_malformed = [e.verdict == REJECTED and e.reason == "malformed" and bool(e.statement) for _, e in group]
        with_arrays = blobs or any(signed_malformed)
        rules = policy.RoundRules(
            federation_id=genesis.federation_id, kind=kind, round=h.round, parent=h.prev_hash,
            base_digest=h.model_before if kind == "train" else b"", keys=genesis.client_keys, revoked=revoked,
            template=_template(ledger, h.model_before, with_arrays) if kind == "train" else None)
        evidence = []
        for (_, e), evidence_needed in zip(group, signed_malformed):
            load = kind == "train" and ((blobs and e.verdict == ACCEPTED) or evidence_needed)
            meta, bad = _update_arrays(ledger, e) if load else (None, None)
            evidence.append(policy.evidence_of(e, arrays_meta=meta, nonfinite=bad))
            if kind == "train" and e.verdict == ACCEPTED and (meta is None or rules.template is None):
                report.arrays_unchecked += 1  # the array rules (names, shapes, dtypes, finite) not re-derived
        cache = _signature_checks(evidence, genesis.client_keys)

        def check(raw: bytes, sig: bytes, st: bytes) -> bool:
            k = (raw, sig, st)
            if k not in cache:
                cache[k] = verify_signature(raw, sig, st)
            return cache[k]

        derived = policy.judge_round(rules, evidence, check)
        # What only the server saw (a Flower error reply, bytes that did not parse) cannot be re-derived:
        # take the recorded verdict as a precheck for those and derive the rest of the round around them.
        opaque = set()
        for j, ((i, e), d) in enumerate(zip(group, derived)):
            rec = policy.recorded_reason(e)
            if rec == "client-error" and (e.statement or e.signature):
                raise VerificationError("a client-error entry carries a signed statement: a reply with content "
                                        "was recorded as a Flower error", height=h.height, entry=i)
            if rec in policy.PRECHECK_REASONS and d.reason != rec:
                if e.statement:  # the server read a signed statement: the verdict must follow from the ledger
                    missing = " (its arrays are not in the blob store)" if evidence[j].arrays_meta is None else ""
                    raise VerificationError(f"a signed {kind} update is recorded as {rec!r}, but the verdict policy "
                                            f"derives {d.reason!r}{missing}: the rejection is not supported by the "
                                            "ledger", height=h.height, entry=i)
                opaque.add(j)  # bytes the server could not read at all: nothing on the ledger to check them with
                evidence[j] = policy.evidence_of(e, precheck=(rec, e.detail))
        if opaque:
            derived = policy.judge_round(rules, evidence, check)
        for j, ((i, e), d) in enumerate(zip(group, derived)):
            rec = policy.recorded_reason(e)
            if j in opaque:
                report.not_rederived[rec] += 1
                continue
            if d.reason != rec:
                raise VerificationError(f"{kind} update recorded as {rec!r}, but the verdict policy derives "
                                        f"{d.reason!r} from the ledger ({d.detail or 'all rules pass'})",
                                        height=h.height, entry=i)
            if e.key_id != d.key_id:
                raise VerificationError(f"{kind} update recorded under key {e.key_id!r}, but its statement names "
                                        f"{d.key_id!r}", height=h.height, entry=i)
            report.verdicts_rederived += 1
            report.client_signatures_checked += d.accepted


_POOL: ThreadPoolExecutor | None = None


def _signature_checks(evidence: list, keys: dict) -> dict:
    """Ed25519 checks of a block's statements, on worker threads (``cryptography`` releases the GIL)."""
    todo = []
    for ev in evidence:
        try:
            raw = keys.get(policy.decode_statement(ev.statement).key_id) if ev.statement else None
        except (LedgerError, TypeError, ValueError):
            raw = None
        if raw is not None and len(ev.signature) == policy.MAX_SIGNATURE:
            todo.append((raw, ev.signature, ev.statement))
    if len(todo) < 64 or (os.cpu_count() or 1) < 2:
        return {}
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="flower-chain-verify")
    size = -(-len(todo) // (4 * _POOL._max_workers))
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
    out: dict = {}
    for chunk, results in zip(chunks, _POOL.map(lambda c: [verify_signature(*t) for t in c], chunks)):
        out.update(zip(chunk, results))
    return out


def _check_blobs(ledger: Ledger, h: BlockHeader, report: VerifyReport) -> None:
    """Every model/state blob a block names must hash to its address; missing ones are listed."""
    for what, digest in (("model_after", h.model_after), ("state_after", h.state_after)):
        if not digest:
            continue
        try:
            if not ledger.has_blob(digest):
                problem = f"block {h.height}: {what} {digest.hex()[:16]} is not in the blob store"
                if problem not in report.blob_problems:
                    report.blob_problems.append(problem)
                continue
            arrays = decode_arrays(ledger.get_blob(digest))
        except LedgerError as e:
            raise VerificationError(f"the {what} blob does not decode: {e}", height=h.height) from e
        if array_digest(arrays) != digest:
            raise VerificationError(f"the {what} blob in the blob store does not match its digest (altered)",
                                    height=h.height)

"""Streaming verification of a whole ledger in bounded memory.

:func:`verify` reads blocks in height order and each block's entries by
log range, and checks, block by block:

* the header decodes, heights run 0, 1, 2, ..., each ``prev_hash`` is the
  hash of the block before, the federation id is the genesis', timestamps
  do not go back;
* every entry's leaf hash: the block's ``entries_root`` and ``entry_count``,
  and the running RFC 9162 log (``log_size``, ``log_root``) after the block;
* the server's Ed25519 signature on every header, and the signed C2SP
  checkpoint stored with each block (same size and root; its head line names
  the block, required once a checkpoint had one: ledger-format §5.1);
* genesis rules: block 0 is round 0, has zero ``prev_hash``, a genesis entry,
  then only ``keys`` entries continuing its keyring; no other block has either;
* (``full``) every entry decodes; update entries belong to the block's round
  and carry a known verdict and reason; the model digest chain (once a
  block records a ``model_after``, every later block's ``model_before`` is
  the ``model_after`` of the block before it, and none leaves it empty; a
  block that accepts no train update keeps model and strategy state; the
  genesis names neither); revocations name genesis keys;
* (``client_signatures``) every *accepted* update carries a valid statement
  signed by a key of the genesis keyring, not revoked before it, for this
  federation and round, matching the recorded digest and example count.

Each of these is a named check (:func:`check_chain`, :func:`check_tree`,
:func:`~flower_chain.ledger.entry_checks.check_entries`, :func:`check_signatures`, :func:`check_model_chain`;
the verdicts in :mod:`flower_chain.ledger.rederive`, the blob store in
:func:`check_blobs`) over one block and a :class:`Walk` carrying what the
blocks before established; :func:`verify` drives them in height order.

Memory stays O(log n) plus one block's entries at a time (the backend's
iterators stream). The first failure raises :class:`VerificationError`
naming the block height, the entry index and what mismatched.
"""

from __future__ import annotations

from collections.abc import Callable

from flower_chain.ledger import merkle
from flower_chain.ledger.arrays import ArrayMeta, array_digest, array_meta, decode_arrays
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.block import BlockHeader, StoredBlock
from flower_chain.ledger.checkpoint import check_head, verify_checkpoint
from flower_chain.ledger.entries import ACCEPTED, Entry, EvaluationEntry, GenesisEntry, UpdateEntry
from flower_chain.ledger.entry_checks import check_entries
from flower_chain.ledger.errors import LedgerError, VerificationError
from flower_chain.ledger.keys import verify_signature
from flower_chain.ledger.rederive import rederive_block
from flower_chain.ledger.text import safe_text
from flower_chain.ledger.verify_report import VerifyReport as VerifyReport  # re-exported
from flower_chain.ledger.walk import Walk as Walk  # re-exported
from flower_chain.ledger.writer import digest_version_of, origin_for


def verify(
    ledger: Ledger,
    *,
    server_key: bytes | None = None,
    full: bool = True,
    client_signatures: bool = False,
    nodes: bool | None = None,
    blobs: bool = False,
    visit: Callable[[int, Entry], object] | None = None,
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
    walk = Walk(
        VerifyReport(uri=ledger.uri),
        server_key,
        full,
        client_signatures,
        client_signatures if nodes is None else nodes,
        blobs,
        visit,
    )
    try:
        n_blocks = ledger.block_count()
    except LedgerError as e:
        raise VerificationError(str(e), height=getattr(e, "height", None)) from e
    if n_blocks == 0:
        raise VerificationError("the ledger is empty: it has no genesis block")
    height, at = -1, 0  # ``at``: the block being read when a storage error interrupts
    try:
        for height, block in enumerate(ledger.blocks(0, n_blocks)):
            at = height
            check_block(ledger, height, block, walk)
            at = height + 1
    except VerificationError:
        raise
    except LedgerError as e:
        raise VerificationError(str(e), height=at) from e
    if height + 1 != n_blocks:
        raise VerificationError(f"the ledger reports {n_blocks} blocks but holds {height + 1}", height=height + 1)
    report = walk.report
    report.blocks, report.entries, report.rounds = n_blocks, walk.log.size, len(walk.rounds)
    report.log_root, report.head_hash = walk.log.root(), walk.prev_hash
    report.revoked, report.model_digest = walk.revoked, walk.last_model
    return report


def check_block(ledger: Ledger, height: int, block: StoredBlock, w: Walk) -> None:
    """Every check of one block, in order; then the walk moves past it."""
    h = check_chain(height, block, w)
    first_index = w.log.size
    datas = list(ledger.entries(w.log.size, h.log_size))  # one block's entries in memory at a time
    leaves = check_tree(ledger, h, datas, w)
    revoked_before = frozenset(w.revoked)
    w.secagg_result = False
    updates, summaries = check_entries(h, datas, first_index, w)
    check_roots(h, datas, leaves, w)
    genesis = check_signatures(h, block, w)
    check_model_chain(h, updates, w)
    if updates and w.client_signatures:  # the block is authentic: now, did the server follow its rules?
        rederive_block(ledger, h, updates, genesis, revoked_before, w.report, w.blobs)
    check_evaluation_summaries(h, updates, summaries, w)
    if w.blobs and height:
        check_model_layout(ledger, h, check_blobs(ledger, h, w.report), w)
    w.last_model = h.model_after or w.last_model
    w.report.state_digest = h.state_after
    w.report.last_round = max(w.report.last_round, h.round)
    w.prev_hash, w.prev_ts, w.prev_block = block.hash, h.timestamp_ms, block
    if height:
        w.rounds.add(h.round)
    w.report.checkpoint = block.checkpoint


def check_chain(height: int, block: StoredBlock, w: Walk) -> BlockHeader:
    """The chain: the header decodes, its height, version, ``prev_hash``, timestamp and log size follow on."""
    try:
        h = BlockHeader.from_bytes(block.header_bytes)
    except LedgerError as e:
        raise VerificationError(f"header does not decode: {e}", height=height) from e
    if h.height != height:
        raise VerificationError(f"header says height {h.height}", height=height)
    if h.version != 1:
        raise VerificationError(f"unknown block version {h.version}", height=height)
    if h.prev_hash != w.prev_hash:
        raise VerificationError("prev_hash is not the hash of the previous block", height=height)
    if h.timestamp_ms < w.prev_ts:
        raise VerificationError("timestamp goes back in time", height=height)
    if h.log_size != w.log.size + h.entry_count:
        raise VerificationError(
            f"log_size {h.log_size} is not the previous size {w.log.size} + {h.entry_count} entries", height=height
        )
    return h


def check_tree(ledger: Ledger, h: BlockHeader, datas: list[bytes], w: Walk) -> list[bytes]:
    """The block's leaves join the running log; (``nodes``) every stored subtree hash is the recomputed one."""
    leaves = merkle.leaf_hashes(datas)
    if not w.nodes:
        w.log.extend(leaves)
        return leaves
    for lh in leaves:
        for level, index, node in w.log.append(lh):
            try:
                stored = ledger.node(level, index)
            except LedgerError:
                stored = None
            if stored != node:
                raise VerificationError(
                    f"the stored Merkle node (level {level}, index {index}) differs from the "
                    "tree of the entries: proofs served from it would not verify",
                    height=h.height,
                )
    return leaves


def check_roots(h: BlockHeader, datas: list[bytes], leaves: list[bytes], w: Walk) -> None:
    """The header's entry count, ``entries_root`` and ``log_root`` are those of the entries stored."""
    if len(datas) != h.entry_count:
        raise VerificationError(
            f"header counts {h.entry_count} entries, the ledger holds {len(datas)}", height=h.height
        )
    if merkle.root(leaves) != h.entries_root:
        raise VerificationError("entries_root does not match the block's entries", height=h.height)
    if w.log.root() != h.log_root:
        raise VerificationError("log_root does not match the log after this block", height=h.height)


def check_signatures(h: BlockHeader, block: StoredBlock, w: Walk) -> GenesisEntry:
    """The block is the genesis' federation's, signed by its server key, with a matching signed checkpoint."""
    genesis = w.genesis
    if genesis is None:
        raise VerificationError("block 0 has no genesis entry", height=0)
    if h.federation_id != genesis.federation_id:
        raise VerificationError(
            f"block belongs to federation {h.federation_id!r}, not {genesis.federation_id!r}", height=h.height
        )
    if not verify_signature(w.pub, block.signature, block.header_bytes):
        raise VerificationError("the server signature on the header does not verify", height=h.height)
    try:
        cp = verify_checkpoint(block.checkpoint, w.pub, origin_for(genesis.federation_id))
    except LedgerError as e:
        raise VerificationError(f"checkpoint: {e}", height=h.height) from e
    if (cp.size, cp.root_hash) != (h.log_size, h.log_root):
        raise VerificationError("the signed checkpoint does not match the header", height=h.height)
    try:  # the head line (ledger-format §5.1): the checkpoint names this block
        w.head_bound = check_head(cp, h.height, block.hash, required=w.head_bound)
    except LedgerError as e:
        raise VerificationError(f"checkpoint: {e}", height=h.height) from e
    return genesis


def check_model_chain(h: BlockHeader, updates: list[tuple[int, UpdateEntry]], w: Walk) -> None:
    """(``full``) once a model exists every block starts from it and names the one it leaves; a block that
    accepts no train update keeps model and strategy state (but a SecAgg+ result, counted in ``secagg_rounds``
    for the audit); the genesis names neither."""
    if w.full and w.last_model:  # once a model exists, every block starts from it and ends with one
        if h.model_before != w.last_model:
            raise VerificationError(
                "model_before is not the model_after of the previous round"
                + ("" if h.model_before else " (the block names no base model)"),
                height=h.height,
            )
        if not h.model_after:
            raise VerificationError(
                "the block names no model_after: a model exists since an earlier block, and "
                "every later block says which model it leaves",
                height=h.height,
            )
    if w.secagg_result:  # the aggregate of masked updates: the audit replays it (said in the report)
        w.report.secagg_rounds += 1
    elif w.full and h.height and not any(e.kind == "train" and e.verdict == ACCEPTED for _, e in updates):
        # no accepted update, nothing to aggregate: the block leaves the model and the strategy state as
        # they were (evaluation, revocation, a round where every reply was rejected)
        if h.model_after != h.model_before:
            raise VerificationError(
                "the block accepts no train update but changes the model "
                f"({h.model_before.hex()[:16] or 'none'} -> {h.model_after.hex()[:16] or 'none'})",
                height=h.height,
            )
        if h.state_after != w.report.state_digest:
            raise VerificationError("the block accepts no train update but changes the strategy state", height=h.height)
    if h.height == 0 and (h.model_before or h.model_after or h.state_after):
        raise VerificationError("the genesis block names a model or a strategy state", height=0)


def check_evaluation_summaries(
    h: BlockHeader, updates: list[tuple[int, UpdateEntry]], summaries: list[tuple[int, EvaluationEntry]], w: Walk
) -> None:
    """(``full``) evaluation summaries are bound to their block: each names the block's round and a known
    source; a block with evaluate replies holds exactly one ``federated`` summary, counting exactly its
    accepted evaluate replies, and a round has at most one; a federated summary stands beside its evaluate
    replies, a ``centralized`` one (the server's own claim, listed in ``centralized_evaluations``) beside none."""
    evaluate = [e for _, e in updates if e.kind == "evaluate"]
    federated = [(i, ev) for i, ev in summaries if ev.source == "federated"]
    for i, ev in summaries:
        if ev.round != h.round:
            raise VerificationError(
                f"an evaluation summary of round {ev.round} in a block of round {h.round}", height=h.height, entry=i
            )
        if ev.source not in ("federated", "centralized"):
            raise VerificationError(
                f"an evaluation summary of unknown source {safe_text(ev.source, 40)!r}", height=h.height, entry=i
            )
        if ev.source == "centralized":
            if evaluate or ev.num_replies:
                raise VerificationError(
                    "a centralized evaluation summary beside evaluate replies or counting "
                    f"{ev.num_replies} of them: a federated result labelled as the server's",
                    height=h.height,
                    entry=i,
                )
            w.report.centralized_evaluations.append(h.round)
    if len(federated) > 1:
        raise VerificationError(
            f"{len(federated)} federated evaluation summaries in one block (one per round)",
            height=h.height,
            entry=federated[1][0],
        )
    if evaluate and not federated:
        raise VerificationError(
            f"the block records {len(evaluate)} evaluate replies but no federated evaluation summary of them",
            height=h.height,
        )
    if not federated:
        return
    i, ev = federated[0]
    if not evaluate:
        raise VerificationError(
            "a federated evaluation summary in a block without evaluate replies: nothing the clients sent supports it",
            height=h.height,
            entry=i,
        )
    if h.round in w.evaluated_rounds:
        raise VerificationError(f"a second federated evaluation summary for round {h.round}", height=h.height, entry=i)
    w.evaluated_rounds.add(h.round)
    accepted_eval = sum(e.verdict == ACCEPTED for e in evaluate)
    if ev.num_replies != accepted_eval:
        raise VerificationError(
            f"the federated evaluation summary counts {ev.num_replies} replies, the block accepted {accepted_eval}",
            height=h.height,
            entry=i,
        )


def check_blobs(ledger: Ledger, h: BlockHeader, report: VerifyReport) -> ArrayMeta | None:
    """Every model/state blob a block names must hash to its address; missing ones are listed. Returns the
    layout of the ``model_after`` blob (``None`` when the block names none or it is missing)."""
    layout = None
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
        if array_digest(arrays, digest_version_of(ledger)) != digest:
            raise VerificationError(
                f"the {what} blob in the blob store does not match its digest (altered)", height=h.height
            )
        if what == "model_after":
            layout = array_meta(arrays)
    return layout


def check_model_layout(ledger: Ledger, h: BlockHeader, after: ArrayMeta | None, w: Walk) -> None:
    """A round (train or SecAgg+) that moves the model keeps its layout: ``model_after``'s names, shapes and
    dtypes are ``model_before``'s (the server casts every aggregate back to the model's dtypes), so no block
    drops, renames, reshapes or recasts an array of the global model. Missing blobs are listed by
    :func:`check_blobs`."""
    if after is None:
        return
    before = w.last_layout[1] if w.last_layout and w.last_layout[0] == h.model_before else None
    if before is None and h.model_before and h.model_before != h.model_after:
        try:
            if ledger.has_blob(h.model_before):
                arrays = decode_arrays(ledger.get_blob(h.model_before))
                if array_digest(arrays, digest_version_of(ledger)) == h.model_before:
                    before = array_meta(arrays)
        except LedgerError as e:
            raise VerificationError(f"the model_before blob does not decode: {e}", height=h.height) from e
    w.last_layout = (h.model_after, after)
    if before is not None and before != after:
        what = next((f"{a} -> {b}" for a, b in zip(before, after, strict=False) if a != b), f"{len(after)} arrays")
        raise VerificationError(f"model_after does not keep model_before's layout: {what}", height=h.height)

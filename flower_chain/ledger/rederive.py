"""Re-deriving a block's verdicts from the ledger alone, with the policy the server used.

:func:`rederive_block` rebuilds each update's evidence from its ledger entry
(and, where stored, its arrays from the blob store), runs
:func:`flower_chain.ledger.policy.judge_round` on it exactly as the server's
judge did, and fails on the first recorded verdict the policy does not
derive. What only the server saw (a Flower error reply, bytes that did not
parse) cannot be re-derived: it is counted in ``not_rederived``, never passed
over silently. Called by :func:`flower_chain.ledger.verify.verify`
(``client_signatures=True``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from flower_chain.ledger import policy
from flower_chain.ledger.arrays import ArrayMeta, array_meta, first_nonfinite
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.blobs import MISSING, UNDECODABLE, BlobError, read_arrays
from flower_chain.ledger.block import BlockHeader
from flower_chain.ledger.entries import ACCEPTED, REJECTED, GenesisEntry, UpdateEntry
from flower_chain.ledger.errors import LedgerError, VerificationError
from flower_chain.ledger.keys import verify_signature
from flower_chain.ledger.verify_report import VerifyReport

if TYPE_CHECKING:
    import numpy as np


def stored_arrays(ledger: Ledger, digest: bytes) -> list[tuple[str, np.ndarray]] | None:
    """The arrays stored under ``digest`` (``None`` when not stored); an altered blob fails verification."""
    if not digest:
        return None
    try:
        return read_arrays(ledger, digest)
    except BlobError as e:
        if e.kind == MISSING:
            return None
        short = digest.hex()[:16]
        if e.kind == UNDECODABLE:
            raise VerificationError(f"the blob {short} does not decode: {e.reason}") from e
        raise VerificationError(f"the blob {short} in the blob store does not match its digest (altered)") from e


def _update_arrays(ledger: Ledger, entry: UpdateEntry) -> tuple[ArrayMeta | None, str | None]:
    """(array meta, first non-finite array) of an update whose arrays are in the blob store, else (None, None)."""
    arrays = stored_arrays(ledger, entry.arrays_digest)
    return (None, None) if arrays is None else (array_meta(arrays), first_nonfinite(arrays))


def _template(ledger: Ledger, digest: bytes, wanted: bool) -> ArrayMeta | None:
    """The round's global model template (names, shapes, dtypes) when wanted and stored."""
    arrays = stored_arrays(ledger, digest) if wanted else None
    return None if arrays is None else array_meta(arrays)


def rederive_block(
    ledger: Ledger,
    h: BlockHeader,
    updates: list[tuple[int, UpdateEntry]],
    genesis: GenesisEntry,
    revoked: frozenset[str],
    report: VerifyReport,
    blobs: bool,
) -> None:
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
            federation_id=genesis.federation_id,
            kind=kind,
            round=h.round,
            parent=h.prev_hash,
            base_digest=h.model_before,
            keys=genesis.client_keys,
            revoked=revoked,
            template=_template(ledger, h.model_before, with_arrays) if kind == "train" else None,
            settings_digest=genesis.config_digest,
        )
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
        opaque = _take_opaque_prechecks(h, kind, group, derived, evidence)
        if opaque:
            derived = policy.judge_round(rules, evidence, check)
        _compare_verdicts(h, kind, group, derived, opaque, report)


def _take_opaque_prechecks(
    h: BlockHeader,
    kind: str,
    group: list[tuple[int, UpdateEntry]],
    derived: list[policy.Verdict],
    evidence: list[policy.Evidence],
) -> set[int]:
    """What only the server saw (a Flower error reply, bytes that did not parse) cannot be re-derived: take
    the recorded verdict as a precheck for those (``evidence`` is updated in place) and return their indices,
    so the rest of the round is derived around them. A signed statement recorded so is an error."""
    opaque = set()
    for j, ((i, e), d) in enumerate(zip(group, derived)):
        rec = policy.recorded_reason(e)
        if rec == "client-error" and (e.statement or e.signature):
            raise VerificationError(
                "a client-error entry carries a signed statement: a reply with content was recorded as a Flower error",
                height=h.height,
                entry=i,
            )
        if rec in policy.PRECHECK_REASONS and d.reason != rec:
            if e.statement:  # the server read a signed statement: the verdict must follow from the ledger
                missing = " (its arrays are not in the blob store)" if evidence[j].arrays_meta is None else ""
                raise VerificationError(
                    f"a signed {kind} update is recorded as {rec!r}, but the verdict policy "
                    f"derives {d.reason!r}{missing}: the rejection is not supported by the "
                    "ledger",
                    height=h.height,
                    entry=i,
                )
            opaque.add(j)  # bytes the server could not read at all: nothing on the ledger to check them with
            evidence[j] = policy.evidence_of(e, precheck=(rec, e.detail))
    return opaque


def _compare_verdicts(
    h: BlockHeader,
    kind: str,
    group: list[tuple[int, UpdateEntry]],
    derived: list[policy.Verdict],
    opaque: set[int],
    report: VerifyReport,
) -> None:
    """Each recorded verdict must be the derived one (opaque entries are counted as not re-derived)."""
    for j, ((i, e), d) in enumerate(zip(group, derived)):
        rec = policy.recorded_reason(e)
        if j in opaque:
            report.not_rederived[rec] += 1
            continue
        if d.reason != rec:
            raise VerificationError(
                f"{kind} update recorded as {rec!r}, but the verdict policy derives "
                f"{d.reason!r} from the ledger ({d.detail or 'all rules pass'})",
                height=h.height,
                entry=i,
            )
        if e.key_id != d.key_id:
            raise VerificationError(
                f"{kind} update recorded under key {e.key_id!r}, but its statement names {d.key_id!r}",
                height=h.height,
                entry=i,
            )
        report.verdicts_rederived += 1
        report.client_signatures_checked += d.accepted
        if d.accepted:
            report.accepted_proven += 1
        elif d.verified and d.reason in policy.PROVEN_REJECTIONS:
            report.rejected_proven += 1
        else:
            report.rejected_on_server_evidence[d.reason] += 1


_POOL: ThreadPoolExecutor | None = None


def _signature_checks(
    evidence: list[policy.Evidence], keys: Mapping[str, bytes]
) -> dict[tuple[bytes, bytes, bytes], bool]:
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
    chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
    out: dict[tuple[bytes, bytes, bytes], bool] = {}
    for chunk, results in zip(chunks, _POOL.map(lambda c: [verify_signature(*t) for t in c], chunks)):
        out.update(zip(chunk, results))
    return out

"""The judge: the verdict on every reply of a round, by :mod:`flower_chain.ledger.policy` and nothing else.

It keeps what each round was configured with (ledger head, global model,
its array names, shapes and dtypes) and turns parsed replies into policy
evidence, every digest under the ledger's digest version (its genesis').
The per-reply work that does not depend on other replies — the
array digest, the finiteness scan and the Ed25519 verification — runs on
``verify_workers`` threads (hashlib, NumPy and ``cryptography`` release the
GIL), started as each reply arrives where the strategy sees arrivals
(:meth:`Judge.prepare_soon`); the verdicts themselves are decided by :func:`~flower_chain.ledger.policy.judge_round`
in arrival order, as the auditor re-derives them. Imports neither torch nor flwr.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidSignature

from flower_chain.ledger import policy
from flower_chain.ledger.arrays import ArrayMeta, array_digest, array_meta, check_version, first_nonfinite
from flower_chain.ledger.entries import ACCEPTED, REJECTED, UpdateEntry
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.keys import _key_object, verify_signature
from flower_chain.ledger.text import safe_text

NamedArrays = Sequence[tuple[str, np.ndarray]]
#: A reply's evidence and its signature check (statement, signature, valid), or None when it carries none.
Prepared = tuple[policy.Evidence, tuple[bytes, bytes, bool] | None]


@dataclass
class Reply:
    """One client reply as the judge sees it, whatever API it came through.

    Built by :mod:`flower_chain.strategies.replies` (which never raises):
    ``error`` for a Flower error reply, ``malformed`` for one that does not
    parse, else the parsed parts. ``records`` keeps the Message-API records
    the arrays were read from, to hand the very same data to the wrapped strategy.
    """

    node_id: int
    error: str | None = None
    malformed: str | None = None
    statement: bytes | None = None
    signature: bytes | None = None
    arrays: NamedArrays | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    num_examples: int | None = None
    seen_size: int = -1  # log size of the last checkpoint the client verified (v1: unsigned; v2: not read)
    pending_round: int = -1  # round of the client's update it has no receipt for yet (v1: unsigned; v2: not read)
    cosignature: str | None = None  # the client's C2SP cosignature of the checkpoint it was sent
    records: Any = None


@dataclass(frozen=True)
class Judgement:
    """The server's verdict on one reply, and the ledger entry that records it."""

    accepted: bool
    reason: str
    detail: str
    entry: UpdateEntry
    verified: bool = False  # the signature verified under the genesis key the entry names
    cosignature: str | None = None  # the client's cosignature of the checkpoint it was sent (verified replies)
    #: the reply's parsed arrays when they go to the blob store under ``entry.arrays_digest``: an accepted
    #: train update (replayed by ``ledger audit``), or a signed reply rejected as malformed (the evidence why)
    arrays: NamedArrays | None = None
    current: bool = False  # verified, and its statement is for this federation, round and kind (not a replay)
    #: what the verified reply says about its node (receipts): a v2 statement's signed fields; a v1 reply's
    #: unsigned ``checkpoint-size``/``pending-round`` fields (-1 for a reply that did not verify)
    seen_size: int = -1
    pending_round: int = -1


def all_finite(arrays: NamedArrays) -> bool:
    """True when no array holds a NaN or an infinity."""
    return first_nonfinite(arrays) is None


def scan(arrays: NamedArrays | None, version: int) -> tuple[bytes, str | None, ArrayMeta | None]:
    """(array digest under digest ``version``, first array with a non-finite value, template) of parsed arrays. Pure."""
    if arrays is None:
        return b"", None, None
    return array_digest(arrays, version), first_nonfinite(arrays), array_meta(arrays)


def node_fields(reply: Reply, statement: bytes) -> tuple[int, int]:
    """(checkpoint size seen, pending round) of a verified reply: what the server acts on for its node.

    A v2 statement signs them: the unsigned fields beside it are not read (an edit in transit changes
    nothing). A v1 statement (an older client) signs neither: its unsigned fields are taken as before.
    """
    try:
        st = policy.decode_statement(statement)
    except (LedgerError, TypeError, ValueError):
        return -1, -1
    if st.seen_size is not None and st.pending_round is not None:
        return st.seen_size, st.pending_round
    return reply.seen_size, reply.pending_round


class Judge:
    """Judges replies against the rounds it configured.

    Parameters
    ----------
    keys : Mapping[str, bytes]
        The genesis keyring.
    revoked : set of str
        Revoked key ids (kept current by the owner).
    verify_workers : int, optional
        Threads for the per-reply digest, scan and signature work (default: CPUs, at most 8).
    digest_version : int
        The array digest version of the ledger the verdicts are recorded in (its genesis'
        ``digest_version``): every digest the judge computes — the global model's, each reply's — uses
        it, as the recorder and the auditor do. No default: a judge on a v1 ledger digesting under v2
        would reject every honest reply as ``digest-mismatch``.
    settings_digest : bytes
        The genesis' ``config_digest``: the settings digest a v2 statement must name (``wrong-settings``;
        ``None`` or empty: no v2 statement is accepted).
    """

    def __init__(
        self,
        keys: Mapping[str, bytes],
        revoked: set[str],
        verify_workers: int | None = None,
        *,
        digest_version: int,
        settings_digest: bytes | None = b"",
    ) -> None:
        self.digest_version = check_version(digest_version)
        self.settings_digest = bytes(settings_digest or b"")
        if verify_workers is None:
            verify_workers = min(8, os.cpu_count() or 1)
        if int(verify_workers) < 1:
            raise ValueError(f"verify_workers must be at least 1, not {verify_workers}")
        self.verify_workers = int(verify_workers)
        self.keys = dict(keys)
        # Key objects built (and checked: small-order, non-canonical) once, when the server starts, not in a round.
        self._objects = {kid: _key_object(bytes(raw)) for kid, raw in self.keys.items()}
        self.revoked = revoked
        self._pool: ThreadPoolExecutor | None = None
        self._rounds: dict[tuple[str, int], policy.RoundRules] = {}

    def begin(
        self,
        federation_id: str,
        kind: str,
        server_round: int,
        parent: bytes,
        arrays: NamedArrays | None,
        base_digest: bytes = b"",
    ) -> policy.RoundRules:
        """Remember a round's rules: the head it was configured on and (train) the global model.

        ``base_digest``: the global model's digest when its arrays are not at hand (no template then);
        for an evaluate round, the recorded model's digest, which the rules keep whatever arrays are given.
        """
        if kind == "evaluate" or arrays is None:
            base = base_digest
        else:
            base = array_digest(arrays, self.digest_version)
        rules = policy.RoundRules(
            federation_id=federation_id,
            kind=kind,
            round=int(server_round),
            parent=parent,
            base_digest=base,
            keys=self.keys,
            revoked=frozenset(self.revoked),
            template=array_meta(arrays) if arrays is not None else None,
            settings_digest=self.settings_digest,
        )
        self._rounds[(kind, int(server_round))] = rules
        return rules

    def rules(self, kind: str, server_round: int) -> policy.RoundRules | None:
        return self._rounds.get((kind, int(server_round)))

    def max_array_bytes(self, kind: str, server_round: int) -> int:
        """Most array bytes a reply of the round may carry: the global model's payload plus NPY headers."""
        rules = self.rules(kind, server_round)
        if rules is None or rules.template is None:
            return 1 << 20
        payload = sum(int(np.prod(shape, dtype=np.float64)) * np.dtype(dt).itemsize for _, shape, dt in rules.template)
        return int(payload) + 4096 * (len(rules.template) + 1)

    def _prepare(self, reply: Reply) -> Prepared:
        """A reply's evidence and its signature check (statement, signature, valid). Pure: runs on workers."""
        precheck = None
        if reply.error is not None:  # the parser made these texts safe already (escaping twice doubles them)
            precheck = ("client-error", reply.error[:400])
        elif reply.malformed is not None:
            precheck = ("malformed", reply.malformed[:400])
        digest, bad, meta = b"", None, None
        if precheck is None and reply.arrays is not None:
            try:
                digest, bad, meta = scan(reply.arrays, self.digest_version)
            except (LedgerError, TypeError, ValueError) as e:
                precheck = ("malformed", f"arrays do not hash: {safe_text(e, 200)}")
        ev = policy.Evidence(
            statement=bytes(reply.statement or b""),
            signature=bytes(reply.signature or b""),
            num_examples=int(reply.num_examples) if reply.num_examples is not None else -1,
            arrays_digest=digest,
            metrics=dict(reply.metrics) if precheck is None else {},
            arrays_meta=meta,
            nonfinite=bad,
            precheck=precheck,
        )
        sig = None
        if precheck is None and ev.statement and len(ev.signature) == policy.MAX_SIGNATURE:
            try:
                key = self._objects.get(policy.decode_statement(ev.statement).key_id)
            except (LedgerError, TypeError, ValueError):
                key = None
            if key is not None:
                try:
                    key.verify(ev.signature, ev.statement)
                    ok = True
                except (InvalidSignature, ValueError):
                    ok = False
                sig = (ev.statement, ev.signature, ok)
        return ev, sig

    def _prepare_all(self, replies: Sequence[Reply]) -> list[Prepared]:
        return [self._prepare(r) for r in replies]

    def _workers(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.verify_workers, thread_name_prefix="flower-chain-verify")
        return self._pool

    def prepare_soon(self, parse_reply: Callable[[], Reply]) -> Future[tuple[Reply, Prepared]]:
        """Parse a reply and prepare its evidence (digest, finite scan, signature check) on the worker threads.

        For a reply that arrived before its round is judged: ``judge_all(..., prepared=...)`` takes the
        result. The work is pure (it reads only the keys and digest version fixed when the judge was made).
        """

        def work() -> tuple[Reply, Prepared]:
            reply = parse_reply()
            return reply, self._prepare(reply)

        return self._workers().submit(work)

    def judge_all(
        self,
        kind: str,
        server_round: int,
        replies: Sequence[Reply],
        prepared: Sequence[Prepared | None] | None = None,
    ) -> list[Judgement]:
        """The judgement on every reply of a round, in the order given (= the order recorded).

        ``prepared``: for each reply, its evidence from :meth:`prepare_soon` when it was started as the reply
        arrived, or ``None``; the others are prepared here.
        """
        replies = list(replies)
        rules = self.rules(kind, server_round)
        if rules is None:
            raise ValueError(f"round {server_round} ({kind}) was never configured: call begin() first")
        done: list[Prepared | None] = list(prepared) if prepared is not None else [None] * len(replies)
        if len(done) != len(replies):
            raise ValueError(f"{len(done)} prepared evidences for {len(replies)} replies")
        todo = [r for r, p in zip(replies, done) if p is None]
        if self.verify_workers > 1 and len(todo) > 1:
            # a few chunks per worker: large replies spread evenly, small ones cost no per-task overhead
            size = max(1, -(-len(todo) // (4 * self.verify_workers)))
            chunks = [todo[i : i + size] for i in range(0, len(todo), size)]
            fresh = iter([p for chunk in self._workers().map(self._prepare_all, chunks) for p in chunk])
        else:
            fresh = iter(self._prepare_all(todo))
        ready: list[Prepared] = [p if p is not None else next(fresh) for p in done]
        checked = {(s, g): ok for _, sig in ready if sig is not None for s, g, ok in [sig]}

        def check(raw: bytes, signature: bytes, statement: bytes) -> bool:
            got = checked.get((statement, signature))
            return got if got is not None else verify_signature(raw, signature, statement)

        evidence = [ev for ev, _ in ready]
        verdicts = policy.judge_round(rules, evidence, check)
        out = []
        for reply, ev, vd in zip(replies, evidence, verdicts):
            entry = UpdateEntry(
                kind=kind,
                round=int(server_round),
                node_id=str(reply.node_id),
                key_id=vd.key_id,
                verdict=ACCEPTED if vd.accepted else REJECTED,
                reason=vd.reason,
                detail=vd.detail[:500],
                num_examples=ev.num_examples,
                arrays_digest=ev.arrays_digest,
                metrics=dict(ev.metrics),
                statement=ev.statement,
                signature=ev.signature,
            )
            keep = ev.arrays_digest and (vd.accepted or (vd.reason == "malformed" and ev.statement))
            proof = reply.arrays if keep else None
            seen, pending = node_fields(reply, ev.statement) if vd.verified else (-1, -1)
            out.append(
                Judgement(
                    vd.accepted,
                    vd.reason,
                    entry.detail,
                    entry,
                    vd.verified,
                    reply.cosignature if vd.verified else None,
                    proof,
                    vd.statement_ok,
                    seen,
                    pending,
                )
            )
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

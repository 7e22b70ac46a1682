"""The server asks C2SP tlog-witnesses to cosign every block's checkpoint (no torch, no flwr).

After each durable block :class:`Witnessing` submits the block's signed
checkpoint to every configured witness, with a consistency proof from the
size that witness last cosigned and the block headers from the head it
cosigned last (:class:`~flower_chain.witness.client.WitnessPool` keeps those
sizes and heights and learns them from a 409; docs/ledger-format.md §5.2: a
witness cosigns a later head only over a header chain linked to the one it
cosigned, so a re-signed earlier header gathers no cosignature), verifies the
returned ``cosignature/v1`` lines, and stores the cosigned note with the block.

Storage
    The cosigned checkpoint note (the server's note with the witnesses'
    cosignature lines appended, UTF-8) is kept in the ledger's blob store under
    the derived address::

        SHA-256(b"flower-chain:cosigned:v1\\x00" || block hash)

    (:func:`cosigned_address`; block hash = SHA-256 of the header bytes). It is
    written once per block, when the witnesses answered (blob stores never
    overwrite); a block without any cosignature has no such blob. The address is
    not the SHA-256 of the data, so ``verify --blobs`` (which checks model, state
    and update blobs only) ignores it, and :func:`verify_witnessed` checks it.

Time
    A block waits at most ``timeout`` seconds for its witnesses: requests run
    on one worker thread (submissions stay in order, as the witnesses' sizes
    require); what arrives later is still stored, on the next block or
    :meth:`Witnessing.close`. Every block that gathered fewer than ``quorum``
    cosignatures is appended to :attr:`Witnessing.shortfall` and logged as a
    warning naming each witness that did not cosign and why.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.cosignature import (
    CosignerKey,
    add_cosignatures,
    cosigned_address,
    note_body,
    parse_cosigner_key,
    stored_cosigned_note,
    verify_cosigned_checkpoint,
)
from flower_chain.ledger.errors import CheckpointError, KeyFileError, LedgerError
from flower_chain.ledger.text import safe_text
from flower_chain.ledger.writer import read_genesis
from flower_chain.witness.client import WitnessEndpoint, WitnessPool, submit

log = logging.getLogger(__name__)
#: One endpoint's answer in flight: (cosigned note, errors by witness URL), as WitnessPool.cosign returns.
_Cosigned = concurrent.futures.Future[tuple[str, dict[str, str]]]

__all__ = ["Shortfall", "Witnessing"]

#: Most blocks whose cosigned notes are kept in memory (the head's is what clients are sent).
_CACHE_BLOCKS = 8


@dataclass(frozen=True)
class Shortfall:
    """A block whose checkpoint gathered fewer cosignatures than the quorum.

    Attributes
    ----------
    height, log_size : int
        The block and the checkpoint size.
    cosignatures : int
        Valid cosignatures gathered within the timeout.
    quorum : int
        Cosignatures wanted.
    errors : dict
        Witness URL -> why it did not cosign (refused, unreachable, no answer in time).
    """

    height: int
    log_size: int
    cosignatures: int
    quorum: int
    errors: dict[str, str]


class Witnessing:
    """Cosignatures from C2SP tlog-witnesses for every block of one ledger.

    Parameters
    ----------
    ledger : Ledger
        The ledger whose blocks are witnessed (consistency proofs are built from it,
        cosigned notes stored in its blob store).
    witnesses : sequence of (str, str)
        ``(submission URL, cosigner verifier key NAME+KEYID+BASE64)`` per witness.
    quorum : int
        Cosignatures each checkpoint should gather; ``0`` (or less) means every witness.
    timeout : float
        Seconds a block waits for its witnesses at most (and the per-request timeout).
    submit_fn : callable, optional
        :func:`~flower_chain.witness.client.submit`-compatible function (tests, benchmarks).

    Raises
    ------
    KeyFileError
        A verifier key does not parse.
    ValueError
        No witness, a quorum above the number of witnesses, or a non-positive timeout.
    """

    def __init__(
        self,
        ledger: Ledger,
        witnesses: Sequence[tuple[str, str]],
        *,
        quorum: int = 0,
        timeout: float = 2.0,
        submit_fn: Callable[..., str] | None = None,
    ) -> None:
        if not witnesses:
            raise ValueError("witnessing needs at least one witness (url, verifier key)")
        if timeout <= 0:
            raise ValueError("the witness timeout must be positive")
        endpoints = []
        for url, vkey in witnesses:
            key = vkey if isinstance(vkey, CosignerKey) else parse_cosigner_key(str(vkey))
            endpoints.append(WitnessEndpoint(str(url), key))
        self.quorum = len(endpoints) if int(quorum) <= 0 else int(quorum)
        if self.quorum > len(endpoints):
            raise ValueError(
                f"a quorum of {self.quorum} needs at least {self.quorum} witnesses, {len(endpoints)} configured"
            )
        self.ledger = ledger
        self.timeout = float(timeout)
        fn = submit_fn or submit
        #: One pool (and one worker thread) per witness: its submissions stay in order (its size), and a
        #: slow witness never delays another.
        self.pools = [WitnessPool([e], timeout=self.timeout, submit_fn=fn) for e in endpoints]
        self.keys = [e.key for e in endpoints]
        self.shortfall: list[Shortfall] = []
        self.cosign_seconds: list[float] = []  # wall time each block waited for its witnesses
        self._notes: dict[bytes, str] = {}  # block hash -> best cosigned note (the last few blocks)
        self._late: list[tuple[StoredBlock, _Cosigned]] = []  # answers after the deadline
        self._inflight: list[_Cosigned | None] = [None] * len(endpoints)
        self._lock = threading.Lock()
        self._executors = [
            concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"witness-{i}")
            for i in range(len(endpoints))
        ]
        self._closed = False
        self._server_key: bytes | None = None

    @property
    def witnesses(self) -> list[WitnessEndpoint]:
        """The witnesses, with the size each last cosigned and its last error."""
        return [p.witnesses[0] for p in self.pools]

    # -- after each block --------------------------------------------------------------------------
    def on_block(self, block: StoredBlock | None) -> None:
        """Submit ``block``'s checkpoint to every witness; wait for them at most ``timeout`` seconds.

        Witnesses answer in parallel; what arrived by the deadline is stored with the block
        (:func:`cosigned_address`) and a shortfall below the quorum is recorded and logged. A
        witness still busy with an earlier checkpoint is skipped for this one (a later cosigned
        checkpoint covers the earlier blocks).
        """
        if block is None or self._closed:
            return
        t0 = time.perf_counter()
        self._drain()
        note = block.checkpoint
        futs: dict[int, _Cosigned] = {}
        errors: dict[str, str] = {}
        for i, pool in enumerate(self.pools):
            busy = self._inflight[i]
            if busy is not None and not busy.done():
                errors[pool.witnesses[0].url] = "still busy with an earlier checkpoint (no answer yet)"
                continue
            futs[i] = self._inflight[i] = self._executors[i].submit(pool.cosign, self.ledger, note)
        concurrent.futures.wait(list(futs.values()), timeout=self.timeout)
        lines: list[str] = []
        for i, fut in futs.items():
            url = self.pools[i].witnesses[0].url
            if not fut.done():
                errors[url] = f"no answer within {self.timeout:.2f} s"
                with self._lock:
                    self._late.append((block, fut))
                continue
            self._collect(fut, note, lines, errors, url)
        self.cosign_seconds.append(time.perf_counter() - t0)
        cosigned = add_cosignatures(note, lines) if lines else note
        got = self._count(cosigned) if lines else 0
        if got:
            self._store(block, cosigned)
        if got < self.quorum:
            self._record_shortfall(block, got, errors)
        for url, why in errors.items() if got >= self.quorum else ():
            log.info(
                "flower-chain witnessing: block %d: witness %s did not cosign (%s); quorum met",
                block.header.height,
                url,
                safe_text(why, 300),
            )

    @staticmethod
    def _collect(fut: _Cosigned, note: str, lines: list[str], errors: dict[str, str], url: str) -> None:
        try:
            got, errs = fut.result()
        except Exception as e:  # noqa: BLE001 - a witness problem must never fail the round
            errors[url] = f"{type(e).__name__}: {e}"
            return
        if errs:
            errors.update(errs)
        elif len(got) > len(note):
            lines.append(got[len(note) :])

    def _drain(self) -> None:
        """Add the cosignatures that arrived after their block's deadline."""
        with self._lock:
            late, self._late = self._late, []
        keep = []
        for block, fut in late:
            if not fut.done():
                keep.append((block, fut))
                continue
            lines: list[str] = []
            self._collect(fut, block.checkpoint, lines, {}, "")
            if lines:
                self._store(block, add_cosignatures(self._notes.get(block.hash, block.checkpoint), lines))
        if keep:
            with self._lock:
                self._late = keep + self._late

    def _count(self, note: str) -> int:
        """Distinct trusted witnesses whose cosignature on ``note`` verifies (0 if the note does not)."""
        if self._server_key is None:
            self._server_key = read_genesis(self.ledger).server_key
        try:
            return len(verify_cosigned_checkpoint(note, self._server_key, self.keys, 0)[1])
        except (CheckpointError, KeyFileError, LedgerError):
            return 0

    def _store(self, block: StoredBlock, note: str) -> None:
        best = self._notes.get(block.hash)
        merged = add_cosignatures(best, [note[len(block.checkpoint) :]]) if best and note != best else note
        self._notes[block.hash] = merged
        while len(self._notes) > _CACHE_BLOCKS:
            self._notes.pop(next(iter(self._notes)))
        addr = cosigned_address(block.hash)
        try:
            if not self.ledger.has_blob(addr):
                self.ledger.put_blob(merged.encode(), addr)
        except LedgerError as e:
            log.warning(
                "flower-chain witnessing: cannot store the cosigned checkpoint of block %d: %s", block.header.height, e
            )

    def _record_shortfall(self, block: StoredBlock, got: int, errors: dict[str, str]) -> None:
        h = block.header
        self.shortfall.append(Shortfall(h.height, h.log_size, got, self.quorum, dict(errors)))
        for url, why in (errors or {"-": "cosignature did not verify"}).items():
            log.warning(
                "flower-chain witnessing: block %d (log size %d) has %d of %d cosignatures: witness %s "
                "did not cosign: %s",
                h.height,
                h.log_size,
                got,
                self.quorum,
                url,
                safe_text(why, 300),
            )

    # -- what clients are sent ---------------------------------------------------------------------
    def note(self, head: StoredBlock) -> str:
        """The best cosigned checkpoint of ``head`` known so far (its plain signed checkpoint if none)."""
        self._drain()
        got = self._notes.get(head.hash)
        if got is not None:
            return got
        stored = stored_cosigned_note(self.ledger, head)
        if stored is not None and note_body(stored) == note_body(head.checkpoint):
            self._notes[head.hash] = stored
            return stored
        return head.checkpoint

    def close(self) -> None:
        """Wait (at most ``timeout`` seconds) for late answers, store them, stop the workers."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            futs = [f for _, f in self._late]
        concurrent.futures.wait(futs, timeout=self.timeout)
        self._drain()
        for ex in self._executors:
            ex.shutdown(wait=False, cancel_futures=True)

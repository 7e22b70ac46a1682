"""What a log server calls to get its checkpoints cosigned by C2SP tlog-witnesses (standard library only).

* :func:`submit` posts one ``add-checkpoint`` request and returns the
  cosignature line, or raises :class:`WitnessConflict` (409, with the
  witness's size) or :class:`WitnessError`.
* :class:`WitnessPool` keeps, per witness, the size and head height it last
  cosigned, builds the consistency proof from that size with
  :func:`flower_chain.ledger.proofs.consistency_proof` and the header lines from
  the block after that head up to the new one (:mod:`flower_chain.witness.chain`;
  a longer chain than one request may carry goes in steps: earlier blocks'
  checkpoints first), retries once from the size a 409 names, verifies every
  returned line with the witness key, and returns the checkpoint note with the
  cosignatures appended.
* :func:`fetch_latest` reads a witness's latest cosigned checkpoint of a log
  (``GET /latest-checkpoint?origin=``).
"""

from __future__ import annotations

import base64
import concurrent.futures
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.checkpoint import Checkpoint, HeadLine, head_of
from flower_chain.ledger.cosignature import CosignerKey, add_cosignatures, note_body, verify_cosignature
from flower_chain.ledger.errors import CheckpointError, LedgerError
from flower_chain.ledger.proofs import consistency_proof
from flower_chain.ledger.text import is_decimal
from flower_chain.witness.chain import MAX_HEADERS, MAX_HEADERS_TOTAL, header_line


class WitnessError(Exception):
    """A witness refused a checkpoint (``status``) or could not be reached (``status`` 0)."""

    def __init__(self, message: str, status: int = 0, body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class WitnessConflict(WitnessError):
    """409: the witness's latest cosigned size is not the old size given (``size``)."""

    def __init__(self, message: str, size: int | None, body: str = "") -> None:
        super().__init__(message, 409, body)
        self.size = size


def request_body(checkpoint_note: str, old_size: int, proof: Sequence[bytes], headers: Sequence[bytes] = ()) -> bytes:
    """The add-checkpoint body: ``old N``, proof lines, header lines (block header bytes, in height order), an
    empty line, the checkpoint note."""
    if old_size < 0:
        raise ValueError("old size must not be negative")
    lines = [f"old {old_size}"] + [base64.b64encode(h).decode() for h in proof] + [header_line(h) for h in headers]
    return ("\n".join(lines) + "\n\n" + checkpoint_note).encode()


def chain_headers(ledger: Ledger, start: int, end: int) -> list[bytes]:
    """Header bytes of blocks ``start..end`` (inclusive) of ``ledger``, for :func:`request_body`."""
    return [b.header_bytes for b in ledger.blocks(max(0, start), end + 1)] if end >= start else []


def submit(
    witness_url: str,
    checkpoint_note: str,
    old_size: int,
    proof: Sequence[bytes],
    *,
    timeout: float = 5.0,
    headers: Sequence[bytes] = (),
) -> str:
    """POST ``<witness_url>/add-checkpoint``; return the witness's signature line(s).

    Parameters
    ----------
    witness_url : str
        The witness's submission prefix, e.g. ``http://127.0.0.1:7380``.
    checkpoint_note : str
        The log's signed checkpoint.
    old_size : int
        The size of the checkpoint the witness last cosigned (0 if none).
    proof : sequence of bytes
        RFC 9162 consistency proof from ``old_size`` to the checkpoint size.
    timeout : float
        Seconds for the whole request.
    headers : sequence of bytes
        Block header bytes from the block after the head the witness cosigned last up to the checkpoint's.

    Returns
    -------
    str
        One or more ``— NAME BASE64`` lines, each ending in a newline.

    Raises
    ------
    WitnessConflict
        409: ``.size`` is the witness's size (``None`` if its body did not say).
    WitnessError
        Any other status, a malformed answer, or a network error / timeout.
    """
    req = urllib.request.Request(
        witness_url.rstrip("/") + "/add-checkpoint",
        data=request_body(checkpoint_note, old_size, proof, headers),
        method="POST",
        headers={"Content-Type": "text/plain; charset=utf-8"},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:  # noqa: S310 - configured witness URL
            text: str = r.read(65536).decode("utf-8", errors="replace")
    except urllib.error.HTTPError as e:
        body = e.read(4096).decode("utf-8", errors="replace")
        if e.code == 409:
            s = body.strip()
            raise WitnessConflict(
                f"{witness_url}: 409 conflict, witness is at size {s}", int(s) if is_decimal(s) else None, body
            ) from None
        raise WitnessError(f"{witness_url}: HTTP {e.code}: {body.strip()[:200]}", e.code, body) from None
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise WitnessError(f"{witness_url}: {getattr(e, 'reason', e)}") from None
    lines = [ln for ln in text.split("\n") if ln]
    if not lines or not text.endswith("\n") or not all(ln.startswith("\u2014 ") for ln in lines):
        raise WitnessError(f"{witness_url}: the answer is not signature lines", 200, text)
    return text


@dataclass
class WitnessEndpoint:
    """One configured witness: URL, trusted key, and the size and head height it last cosigned for this log
    (``height`` ``None``: not known, e.g. after a 409 taught the size)."""

    url: str
    key: CosignerKey
    size: int = 0
    last_error: str = ""
    height: int | None = None


@dataclass
class WitnessPool:
    """Collects cosignatures for a ledger's checkpoints from several witnesses.

    Parameters
    ----------
    witnesses : list of WitnessEndpoint
        The witnesses, each with its vkey (``parse_cosigner_key``) and the
        size it last cosigned (0 at first: a 409 teaches the real size).
    timeout : float
        Per-request timeout in seconds; all witnesses are asked in parallel.
    submit_fn : callable
        ``submit``-compatible function (tests inject failures through it); ``headers=`` is passed only
        when there are header lines to send.
    """

    witnesses: list[WitnessEndpoint]
    timeout: float = 5.0
    submit_fn: Callable[..., str] = field(default=submit)

    def _one(self, w: WitnessEndpoint, ledger: Ledger, note: str, cp: Checkpoint) -> str:
        try:
            head = head_of(cp)
        except CheckpointError as e:
            raise WitnessError(f"{w.url}: {e}") from None
        conflicts = 0
        while True:
            if w.size > cp.size or (head and w.height is not None and w.height > head.height):
                raise WitnessError(f"{w.url} already cosigned size {w.size} > {cp.size}: the log went back", 0)
            headers, last = self._headers(w, ledger, head)
            if head is not None and headers and last != head.height:  # more than one request may carry: the
                step = ledger.block(last)  # checkpoint of the last block that fits first, then on from there
                self._one(w, ledger, step.checkpoint, Checkpoint.from_text(note_body(step.checkpoint)))
                continue
            try:
                proof = consistency_proof(ledger, w.size, cp.size) if w.size else []
            except LedgerError as e:
                raise WitnessError(f"{w.url}: cannot prove {w.size} -> {cp.size}: {e}") from None
            extra = {"headers": headers} if headers else {}
            try:
                text = self.submit_fn(w.url, note, w.size, proof, timeout=self.timeout, **extra)
            except WitnessConflict as e:  # retry once from the size a 409 names
                if e.size is None or e.size == w.size or conflicts:
                    raise
                conflicts += 1
                w.size, w.height = e.size, None
                continue
            valid = []
            for line in text.splitlines():
                try:
                    verify_cosignature(note, line, w.key)
                    valid.append(line)
                except CheckpointError:
                    continue  # lines from other keys are ignored
            if not valid:
                raise WitnessError(f"{w.url}: no valid cosignature by {w.key.name}", 200, text)
            w.size, w.height = cp.size, head.height if head is not None else None
            return valid[0] + "\n"

    @staticmethod
    def _headers(w: WitnessEndpoint, ledger: Ledger, head: HeadLine | None) -> tuple[list[bytes], int]:
        """The header lines for ``w`` up to ``head`` (as many as one request carries) and the last one's height.

        From the block after the head ``w`` cosigned last; not knowing it (a 409 taught the size), from the
        first block of the size it cosigned (the witness finds its head among them); at first contact
        (size 0), the head's header alone (a witness with a state answers 409 to ``old 0``)."""
        if head is None:
            return [], -1
        if w.height is not None:
            start = w.height + 1
        elif w.size == 0:
            start = head.height
        else:
            start = _first_of_size(ledger, w.size, head.height)
        out: list[bytes] = []
        total = 0
        try:
            for b in ledger.blocks(start, head.height + 1):
                if len(out) == MAX_HEADERS or total + len(b.header_bytes) > MAX_HEADERS_TOTAL:
                    break
                out.append(b.header_bytes)
                total += len(b.header_bytes)
        except LedgerError as e:
            raise WitnessError(f"{w.url}: cannot read the headers from height {start}: {e}") from None
        return out, start + len(out) - 1

    def cosign(self, ledger: Ledger, note: str) -> tuple[str, dict[str, str]]:
        """Ask every witness to cosign ``note`` (the ledger's signed checkpoint) in parallel.

        Returns
        -------
        (str, dict)
            The note with every valid cosignature appended, and ``{witness URL:
            error}`` for the witnesses that did not cosign (time-outs, refusals).
        """
        cp = Checkpoint.from_text(note_body(note))
        errors: dict[str, str] = {}
        lines: list[str] = []
        ex = concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(self.witnesses)))
        try:
            futs = {ex.submit(self._one, w, ledger, note, cp): w for w in self.witnesses}
            concurrent.futures.wait(futs, timeout=self.timeout * 2 + 1)  # one overall deadline for all witnesses
            for fut, w in futs.items():
                if not fut.done():
                    w.last_error = errors[w.url] = f"{w.url}: no answer within {self.timeout * 2 + 1:.1f} s"
                    continue
                try:
                    lines.append(fut.result())
                    w.last_error = ""
                except WitnessError as e:
                    w.last_error = errors[w.url] = str(e)
        finally:
            ex.shutdown(wait=False, cancel_futures=True)  # a witness that trickles bytes cannot hold the round
        return add_cosignatures(note, lines), errors


def _first_of_size(ledger: Ledger, size: int, hi: int) -> int:
    """The lowest height ``<= hi`` whose block's log size is at least ``size`` (binary search; ``hi`` if none)."""
    lo = 0
    while lo < hi:
        mid = (lo + hi) // 2
        if ledger.block(mid).header.log_size >= size:
            hi = mid
        else:
            lo = mid + 1
    return lo


def fetch_latest(witness_url: str, origin: str, *, timeout: float = 10.0) -> str:
    """``GET <witness_url>/latest-checkpoint?origin=ORIGIN``: the latest checkpoint the witness cosigned for
    the log, with its cosignature (checking it is the caller's: :func:`verify_cosigned_checkpoint`).

    Raises
    ------
    WitnessError
        Unreachable, a status other than 200 (404: nothing cosigned for this origin), a body over 64 KiB or
        not UTF-8.
    """
    url = witness_url.rstrip("/") + "/latest-checkpoint?origin=" + urllib.parse.quote(origin, safe="")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - a witness URL the user named
            data: bytes = r.read(65537)
    except urllib.error.HTTPError as e:
        body = e.read(4096).decode("utf-8", errors="replace")
        raise WitnessError(f"{witness_url}: HTTP {e.code}: {body.strip()[:200]}", e.code, body) from None
    except (urllib.error.URLError, OSError, TimeoutError, ValueError) as e:
        raise WitnessError(f"{witness_url}: {getattr(e, 'reason', e)}") from None
    if len(data) > 65536:
        raise WitnessError(f"{witness_url}: the latest checkpoint is over 64 KiB", 200)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise WitnessError(f"{witness_url}: the latest checkpoint is not UTF-8", 200) from None

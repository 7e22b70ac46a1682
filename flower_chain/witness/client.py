"""What a log server calls to get its checkpoints cosigned by C2SP tlog-witnesses (standard library only).

* :func:`submit` posts one ``add-checkpoint`` request and returns the
  cosignature line, or raises :class:`WitnessConflict` (409, with the
  witness's size) or :class:`WitnessError`.
* :class:`WitnessPool` keeps, per witness, the size it last cosigned, builds
  the consistency proof from that size with
  :func:`flower_chain.ledger.proofs.consistency_proof`, retries once from the
  size a 409 names, verifies every returned line with the witness key, and
  returns the checkpoint note with the cosignatures appended.
"""

from __future__ import annotations

import base64
import concurrent.futures
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.checkpoint import Checkpoint
from flower_chain.ledger.cosignature import CosignerKey, add_cosignatures, note_body, verify_cosignature
from flower_chain.ledger.errors import CheckpointError, LedgerError
from flower_chain.ledger.proofs import consistency_proof
from flower_chain.ledger.text import is_decimal


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


def request_body(checkpoint_note: str, old_size: int, proof: Sequence[bytes]) -> bytes:
    """The add-checkpoint body: ``old N``, proof lines, an empty line, the checkpoint note."""
    if old_size < 0:
        raise ValueError("old size must not be negative")
    lines = [f"old {old_size}"] + [base64.b64encode(h).decode() for h in proof]
    return ("\n".join(lines) + "\n\n" + checkpoint_note).encode()


def submit(
    witness_url: str, checkpoint_note: str, old_size: int, proof: Sequence[bytes], *, timeout: float = 5.0
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
        data=request_body(checkpoint_note, old_size, proof),
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
    """One configured witness: URL, trusted key, and the size it last cosigned for this log."""

    url: str
    key: CosignerKey
    size: int = 0
    last_error: str = ""


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
        ``submit``-compatible function (tests inject failures through it).
    """

    witnesses: list[WitnessEndpoint]
    timeout: float = 5.0
    submit_fn: Callable[..., str] = field(default=submit)

    def _one(self, w: WitnessEndpoint, ledger: Ledger, note: str, cp: Checkpoint) -> str:
        for _attempt in range(2):  # the second attempt starts from the size a 409 reported
            if w.size > cp.size:
                raise WitnessError(f"{w.url} already cosigned size {w.size} > {cp.size}: the log went back", 0)
            try:
                proof = consistency_proof(ledger, w.size, cp.size) if w.size else []
            except LedgerError as e:
                raise WitnessError(f"{w.url}: cannot prove {w.size} -> {cp.size}: {e}") from None
            try:
                text = self.submit_fn(w.url, note, w.size, proof, timeout=self.timeout)
            except WitnessConflict as e:
                if e.size is None or e.size == w.size:
                    raise
                w.size = e.size
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
            w.size = cp.size
            return valid[0] + "\n"
        raise WitnessError(f"{w.url}: still in conflict after retrying from size {w.size}", 409)

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

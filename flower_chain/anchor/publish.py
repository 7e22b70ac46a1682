"""Publishing block checkpoints to an anchor off the round's critical path; catch-up; verification.

:class:`AnchorPublisher` takes each appended block from the ledger writer, anchors it from a
background thread with retries, and appends the outcome (transaction or error) to a status file
beside the ledger (``<ledger>.anchors.jsonl``). A failure never stops the federation; ``flower-chain
ledger anchor URI --catch-up`` publishes the backlog later, and ``flower-chain ledger verify URI
--anchor ...`` compares every anchored height with the local ledger.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.errors import VerificationError
from flower_chain.ledger.location import anchor_status_path

if TYPE_CHECKING:
    from flower_chain.anchor.evm import EvmAnchor

log = logging.getLogger(__name__)


def status_path(ledger: Ledger) -> Path | None:
    """The status file ``<ledger>.anchors.jsonl`` beside a file-backed ledger, else ``None``."""
    return anchor_status_path(ledger.uri)


class AnchorPublisher:
    """Anchors blocks from a background thread: ``submit`` returns at once.

    Parameters
    ----------
    connect : callable
        Returns an :class:`~flower_chain.anchor.evm.EvmAnchor` (called in the worker, so a slow or
        unreachable node never blocks a round).
    status : Path, optional
        Status file (JSON lines) of every anchoring attempt.
    retries, backoff : int, float
        Attempts per block and the first delay between them (doubling).
    """

    def __init__(
        self, connect: Callable[[], EvmAnchor], status: Path | None = None, retries: int = 3, backoff: float = 0.5
    ) -> None:
        self.connect, self.status, self.retries, self.backoff = connect, status, retries, backoff
        self._anchor: EvmAnchor | None = None
        self._queue: queue.Queue[StoredBlock | None] = queue.Queue()
        self.results: list[dict[str, Any]] = []
        self._thread = threading.Thread(target=self._run, name="flower-chain-anchor", daemon=True)
        self._thread.start()

    def submit(self, block: StoredBlock) -> None:
        self._queue.put(block)

    def _record(self, row: dict[str, Any]) -> None:
        self.results.append(row)
        if self.status is not None:
            with open(self.status, "a") as f:
                f.write(json.dumps(row) + "\n")

    def _run(self) -> None:
        while True:
            block = self._queue.get()
            if block is None:
                return
            h = block.header
            row: dict[str, Any] = {"height": h.height, "log_size": h.log_size, "time": time.time()}
            delay, error = self.backoff, None
            for _ in range(self.retries):
                t0 = time.perf_counter()
                try:
                    if self._anchor is None:
                        self._anchor = self.connect()
                    row.update(
                        self._anchor.anchor(h.height, h.log_size, h.log_root, block.hash),
                        ok=True,
                        latency_s=time.perf_counter() - t0,
                        contract=self._anchor.address,
                    )
                    error = None
                    break
                except Exception as e:  # noqa: BLE001 - record any failure; the ledger keeps going
                    error = f"{type(e).__name__}: {e}"
                    self._anchor = None if "reach" in error or "Connection" in error else self._anchor
                    time.sleep(delay)
                    delay *= 2
            if error is not None:
                row.update(ok=False, error=error)
                log.error(
                    "anchoring block %d failed (%s); run `flower-chain ledger anchor --catch-up` later", h.height, error
                )
            self._record(row)

    def close(self, timeout: float = 60.0) -> None:
        """Wait for the queued blocks (at most ``timeout`` s), then stop the worker."""
        self._queue.put(None)
        self._thread.join(timeout)


def catch_up(ledger: Ledger, anchor: EvmAnchor) -> dict[str, Any]:
    """Anchor every block the chain does not have yet; returns counts."""
    done, already = 0, 0
    for block in ledger.blocks():
        h = block.header
        if anchor.get(h.height) is not None:
            already += 1
            continue
        anchor.anchor(h.height, h.log_size, h.log_root, block.hash)
        done += 1
    return {"anchored": done, "already_anchored": already, "contract": anchor.address}


def verify_against_chain(ledger: Ledger, anchor: EvmAnchor, owner: str | None = None) -> dict[str, Any]:
    """Compare the local ledger with what the chain says; raise :class:`VerificationError` on any difference.

    Only the chain's answers count (the status file ``<ledger>.anchors.jsonl`` is a log of attempts, never
    evidence). Fails when

    * the contract's owner is not ``owner`` (when given): anchors by another account prove nothing;
    * a local block differs from its anchor (the ledger was rewritten after anchoring);
    * the chain anchors a height beyond the local head (the ledger was truncated or rolled back).

    Parameters
    ----------
    ledger : Ledger
        The local ledger.
    anchor : EvmAnchor
        The contract to compare with.
    owner : str, optional
        The account the auditor expects to own the contract (the server's anchoring account).

    Returns
    -------
    dict
        ``anchored`` and ``not_anchored`` heights, ``contract``, ``owner``, ``chain_id``, ``latest_height``.
    """
    actual_owner = getattr(anchor, "owner", None)
    if owner is not None and (actual_owner is None or str(actual_owner).lower() != owner.lower()):
        raise VerificationError(
            f"the anchor contract {anchor.address} on chain {anchor.chain_id} is owned by "
            f"{actual_owner}, not by the pinned owner {owner}: its anchors do not come from "
            "this server"
        )
    count, latest = anchor.latest()
    anchored, missing = [], []
    head = -1
    for block in ledger.blocks():
        h = block.header
        head = h.height
        on_chain = anchor.get(h.height)
        if on_chain is None:
            missing.append(h.height)
            continue
        if (on_chain.log_size, on_chain.log_root, on_chain.block_hash) != (h.log_size, h.log_root, block.hash):
            raise VerificationError(
                f"the local block differs from the anchor on chain {anchor.chain_id} "
                f"(contract {anchor.address}): the ledger was rewritten after anchoring",
                height=h.height,
            )
        anchored.append(h.height)
    if count and latest > head:
        raise VerificationError(
            f"contract {anchor.address} on chain {anchor.chain_id} anchors height {latest}, "
            f"beyond the local head (height {head}): the ledger was truncated or rolled back "
            "after anchoring",
            height=head + 1,
        )
    return {
        "anchored": anchored,
        "not_anchored": missing,
        "contract": anchor.address,
        "owner": actual_owner,
        "chain_id": anchor.chain_id,
        "latest_height": latest if count else None,
    }

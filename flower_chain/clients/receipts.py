"""Client-side receipts and fork detection (no torch, no flwr).

With each instruction the server sends the signed checkpoint of its ledger,
a consistency proof from the checkpoint it sent this node last time, and
an inclusion proof (C2SP tlog-proof) of this node's previous update. The
client keeps, in its own directory:

* ``server-key`` — the server's Ed25519 key, pinned on first use unless
  given (``FLOWER_CHAIN_SERVER_KEY`` / node config ``server-key``);
* ``checkpoint.txt`` — the last checkpoint it verified;
* ``pending.json`` — the statements it signed and has no receipt for yet (it
  names the oldest one's round in its signed reply; the server answers with
  that receipt at the next instruction);
* ``round-<R>.proof`` — the receipt of its update of round R (a tlog-proof
  anyone can check with ``flower-chain proof verify``);
* ``errors.log`` — every problem found.

A checkpoint whose signature fails, a log that is not an extension of the
last one seen (a rewritten or forked history), an update that is missing
from the ledger (silently dropped) or a receipt that does not verify is
logged as an error and counted; the counts travel in the client's metrics.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flower_chain.ledger import merkle
from flower_chain.ledger.checkpoint import verify_checkpoint
from flower_chain.ledger.entries import UpdateEntry, decode_entry
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.tlog_proof import InclusionProof
from flower_chain.wire import (
    CTX_CHECKPOINT,
    CTX_CONSISTENCY,
    CTX_CONSISTENCY_FROM,
    CTX_RECEIPT,
    CTX_SERVER_KEY,
    RECEIPT_SEPARATOR,
)

log = logging.getLogger(__name__)

METRIC_RECEIPTS = "flower-chain-receipts"
METRIC_ERRORS = "flower-chain-receipt-errors"


class ReceiptKeeper:
    """The receipts directory of one client key."""

    def __init__(self, directory: str | Path, server_key: bytes | None = None) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pinned = server_key
        state = self._load_json("counts.json") or {}
        self.receipts = int(state.get("receipts", 0))
        self.errors = int(state.get("errors", 0))
        self.deferred = bool(state.get("deferred", False))

    # -- files -------------------------------------------------------------------------------------
    def _load_json(self, name: str):
        p = self.dir / name
        return json.loads(p.read_text()) if p.is_file() else None

    def _write(self, name: str, text: str) -> None:
        tmp = self.dir / (name + ".tmp")
        tmp.write_text(text)
        tmp.replace(self.dir / name)

    def _error(self, message: str) -> None:
        self.errors += 1
        log.error("flower-chain receipt check: %s", message)
        with open(self.dir / "errors.log", "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {message}\n")

    def _save_counts(self) -> None:
        self._write("counts.json", json.dumps({"receipts": self.receipts, "errors": self.errors,
                                               "deferred": self.deferred}))

    @property
    def seen_size(self) -> int:
        """Size of the last checkpoint this client verified (-1: none yet)."""
        p = self.dir / "checkpoint.txt"
        if not p.is_file():
            return -1
        lines = p.read_text().split("\n")
        return int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else -1

    @property
    def metrics(self) -> dict[str, int]:
        return {METRIC_RECEIPTS: self.receipts, METRIC_ERRORS: self.errors}

    def _server_key(self, offered: bytes) -> bytes | None:
        stored = self.dir / "server-key"
        known = self.pinned or (base64.b64decode(stored.read_text()) if stored.is_file() else None)
        if known is None:
            if len(offered) != 32:
                self._error("the server sent no usable server key")
                return None
            self._write("server-key", base64.b64encode(offered).decode())  # trust on first use
            return offered
        if offered and offered != known:
            self._error("the server now presents another server key than the one pinned")
        return known

    # -- checks ------------------------------------------------------------------------------------
    def check(self, federation_id: str, config: Mapping[str, Any]) -> None:
        """Check what the server sent with an instruction; errors are logged and counted."""
        try:
            self._check(federation_id, config)
        finally:
            self._save_counts()

    def _check(self, federation_id: str, config: Mapping[str, Any]) -> None:
        note = config.get(CTX_CHECKPOINT)
        if not note:
            self._error("the server sent no checkpoint")
            return
        note = str(note)
        key = self._server_key(bytes(config.get(CTX_SERVER_KEY, b"")))
        if key is None:
            return
        try:
            cp = verify_checkpoint(note, key, origin=f"flower-chain/{federation_id}")
        except LedgerError as e:
            self._error(f"checkpoint does not verify: {e}")
            return
        previous = (self.dir / "checkpoint.txt").read_text() if (self.dir / "checkpoint.txt").is_file() else None
        sent_from = int(config.get(CTX_CONSISTENCY_FROM, -1))
        if previous is not None and sent_from == -1:
            # The server does not know this node yet (it restarted; node ids changed): it learns the
            # checkpoint this client saw from the client's reply. Allowed once in a row, never twice.
            if not self.deferred:
                self.deferred = True
                log.info("flower-chain: the server does not know this client yet; checks deferred to the next "
                         "instruction")
                return
            self._error("FORK?: the server again sent no consistency proof from the checkpoint this client saw")
            return
        self.deferred = False
        if previous is not None:
            try:
                old = verify_checkpoint(previous, key)
                if sent_from != old.size:
                    raise LedgerError(f"the server proves consistency from size {sent_from}, "
                                      f"but this client last saw size {old.size}")
                blob = bytes(config.get(CTX_CONSISTENCY, b""))
                proof = [blob[i : i + 32] for i in range(0, len(blob), 32)]
                merkle.verify_consistency(old.size, cp.size, proof, old.root_hash, cp.root_hash)
            except (LedgerError, ValueError) as e:
                self._error(f"FORK: the server's log at size {cp.size} is not an extension of the log this client "
                            f"saw before ({e}); the server rewrote or forked its history")
                return
        self._write("checkpoint.txt", note)
        pending = self._pending()
        if not pending:
            return
        texts = str(config.get(CTX_RECEIPT) or "")
        proven = {}
        for text in filter(None, texts.split(RECEIPT_SEPARATOR)):
            entry = self._check_receipt(str(text), cp, key)
            if entry is not None:
                proven[entry.statement] = (entry, str(text))
        for p in pending:  # every update this client sent before this instruction must be on the ledger
            got = proven.get(base64.b64decode(p["statement"]))
            if got is None:
                self._error(f"no valid receipt for this client's update of round {p['round']}: the update is "
                            "missing from the ledger (dropped by the server)")
                continue
            entry, text = got
            self._write(f"round-{p['round']}.proof", text)
            self.receipts += 1
            if entry.verdict != "accepted":
                log.warning("the server rejected this client's update of round %s: %s (%s)", p["round"],
                            entry.reason, entry.detail)
        self._write("pending.json", json.dumps([]))

    def _check_receipt(self, text: str, cp, key: bytes) -> UpdateEntry | None:
        """The update entry a receipt proves against the checkpoint ``cp``, or ``None`` (error logged)."""
        try:
            proof = InclusionProof.from_text(text)
            got = proof.verify(key)
            if (got.size, got.root_hash) != (cp.size, cp.root_hash):
                raise LedgerError("the receipt is for another checkpoint than the one sent with it")
            entry = decode_entry(proof.entry)
        except LedgerError as e:
            self._error(f"a receipt does not verify: {e}")
            return None
        return entry if isinstance(entry, UpdateEntry) else None

    def _pending(self) -> list[dict]:
        return self._load_json("pending.json") or []

    @property
    def pending_round(self) -> int:
        """The round whose receipt this client asks for next (-1: none)."""
        pending = self._pending()
        return int(pending[0]["round"]) if pending else -1

    def remember(self, server_round: int, statement: bytes) -> None:
        """Record a signed train statement: its receipt is expected with a following instruction."""
        pending = self._pending() + [{"round": server_round, "statement": base64.b64encode(statement).decode()}]
        self._write("pending.json", json.dumps(pending))

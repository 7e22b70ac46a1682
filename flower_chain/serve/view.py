"""The ledger as ``flower-chain serve`` shows it: :class:`LogView`, the verified head, followed as it grows.

A new head is accepted only if its checkpoint verifies under the genesis server key and its tree is consistent
with the served one (an RFC 9162 consistency proof against the served root); a ledger rewritten under the
server sets :attr:`LogView.diverged` and the routes (:mod:`flower_chain.serve.app`) answer 503.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

from flower_chain.ledger import merkle
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.checkpoint import Checkpoint, check_head, verify_checkpoint
from flower_chain.ledger.errors import CheckpointError, LedgerConnectionError, LedgerError, ProofError
from flower_chain.ledger.proofs import consistency_proof
from flower_chain.ledger.tiles import TILE_HEIGHT, TILE_WIDTH, TilePath, encode_bundle, tile_hashes
from flower_chain.ledger.writer import read_genesis
from flower_chain.serve.explorer import explorer_data

log = logging.getLogger("flower_chain.serve")

_FULL_TILE_CACHE_ITEMS = 4096


class _Checks(TypedDict):
    """The checks ``/api/status`` runs: keyword arguments of :func:`flower_chain.audit.status.ledger_status`."""

    server_key: bytes | None
    keys: str | Path | None
    witnesses: tuple[str, ...]
    quorum: int
    run_audit: bool


class LogView:
    """A ledger as the server currently shows it: the verified head, refreshed on a short interval.

    Parameters
    ----------
    ledger : Ledger
        The (already verified) ledger.
    refresh_s : float
        Minimum seconds between re-reads of the head.
    server_key : bytes, optional
        The pinned raw server public key the explorer's status verifies against (without it the page
        says the key was not pinned and never shows a green VERIFIED).
    keys : path, optional
        A keyring directory: the genesis must hold exactly its keys, and clients are shown by the
        names of their ``NAME.pub`` files.
    witnesses : sequence of str
        Trusted witness cosigner keys the status checks (``quorum`` of them on the head).
    audit : bool
        Also replay the aggregation for the status (once per head: slower on long ledgers).
    """

    def __init__(
        self,
        ledger: Ledger,
        refresh_s: float = 0.5,
        *,
        server_key: bytes | None = None,
        keys: str | Path | None = None,
        witnesses: Sequence[str] = (),
        quorum: int = 1,
        audit: bool = False,
    ) -> None:
        from flower_chain.audit.status import keyring_names

        self.ledger = ledger
        self.refresh_s = refresh_s
        self.checks: _Checks = {
            "server_key": server_key,
            "keys": keys,
            "witnesses": tuple(witnesses),
            "quorum": quorum,
            "run_audit": audit,
        }
        self.names = keyring_names(keys) if keys is not None else {}
        self._status: tuple[int, dict[str, Any]] | None = None
        self._status_lock = threading.Lock()
        self.genesis = read_genesis(ledger)
        self.origin = f"flower-chain/{self.genesis.federation_id}"
        self.lock = threading.RLock()
        head = ledger.head()
        if head is None:  # read_genesis found block 0 just above
            raise LedgerError(f"{ledger.uri}: the ledger is empty (no genesis block)")
        self.checkpoint = head.checkpoint
        self.size = head.header.log_size
        self.height = head.header.height
        cp = verify_checkpoint(head.checkpoint, self.genesis.server_key, origin=self.origin)
        self.root, self.block_hash = cp.root_hash, head.hash
        #: whether the served log's checkpoints name their head block (then every later one must)
        self.head_named = check_head(cp, head.header.height, head.hash, required=False)
        #: why serving stopped: the ledger was rewritten under the server (both checkpoints named), else None
        self.diverged: str | None = None
        self._checked = time.monotonic()
        self._full_tiles: dict[tuple[int | None, int], bytes] = {}
        self._explorer: tuple[int, dict[str, Any]] | None = None

    def refresh(self, force: bool = False) -> None:
        """Pick up blocks appended since the last look (no more often than ``refresh_s`` unless forced).

        Every look re-checks what is served: the stored tree at the served size must still have the served
        root and the served head block its hash. A new head is taken only when its checkpoint verifies,
        names that block (the head line), and its tree extends the served one; anything else stops serving.
        """
        with self.lock:
            now = time.monotonic()
            if self.diverged or (not force and now - self._checked < self.refresh_s):
                return
            self._checked = now
            try:
                self.ledger.reload()
                head = self.ledger.head()
            except LedgerConnectionError as e:  # the database is away: nothing was re-read
                log.error("cannot re-read %s: %s", self.ledger.uri, e)
                return
            except LedgerError as e:  # the storage was re-read and cannot be: it no longer holds the log
                self._diverge(f"the stored ledger can no longer be read ({e})", "(unreadable)")
                return
            if head is None:
                self._diverge("the stored ledger is empty", "(none)")
                return
            try:
                problem = self._served_problem()
            except LedgerConnectionError as e:
                log.error("cannot re-check %s: %s", self.ledger.uri, e)
                return
            if not problem and (head.header.height, head.checkpoint) == (self.height, self.checkpoint):
                return
            cp = None
            if not problem:
                problem, cp = self._new_head_problem(head)
            if problem or cp is None:
                self._diverge(problem, head.checkpoint)
                return
            self.checkpoint, self.size, self.height = head.checkpoint, cp.size, head.header.height
            self.root, self.block_hash = cp.root_hash, head.hash

    def _served_problem(self) -> str:
        """Why the storage no longer holds what is served ('' when it does): the root of the served size
        recomputed from the stored tree, and the served head block's hash."""
        try:
            stored_root = merkle.CompactRange.from_nodes(self.size, self.ledger.node).root()
            stored_hash = self.ledger.block(self.height).hash
        except LedgerConnectionError:
            raise  # the database is away: not a rewrite (refresh logs it and serves on)
        except (LedgerError, ValueError, IndexError, KeyError) as e:
            return f"the served log of {self.size} entries (block {self.height}) is no longer stored ({e})"
        if stored_root != self.root:
            return f"the stored tree of the served {self.size} entries has another root"
        if stored_hash != self.block_hash:
            return f"block {self.height} (the served head) was rewritten: another header"
        return ""

    def _new_head_problem(self, head: StoredBlock) -> tuple[str, Checkpoint | None]:
        """Why the stored head cannot follow the served one ('' and its checkpoint when it can)."""
        height = head.header.height
        try:
            cp = verify_checkpoint(head.checkpoint, self.genesis.server_key, origin=self.origin)
        except (CheckpointError, LedgerError) as e:
            return f"the stored head (block {height}) has a checkpoint that does not verify ({e})", None
        if cp.size != head.header.log_size:
            return f"the stored head's checkpoint names {cp.size} entries, its block {head.header.log_size}", None
        problem = self._inconsistency(height, cp.size, cp.root_hash)
        if problem:
            return problem, None
        try:
            self.head_named = check_head(cp, height, head.hash, required=self.head_named)
        except CheckpointError as e:
            return f"the stored head's checkpoint does not name its block {height} ({e})", None
        return "", cp

    def _inconsistency(self, height: int, size: int, root: bytes) -> str:
        """Why the stored head at ``height`` (``size`` entries, ``root``) cannot follow the served one ('' if it can)."""
        if size < self.size or height < self.height:
            return f"the log went back from {self.size} entries (block {self.height}) to {size} (block {height})"
        if height == self.height:
            return f"block {height} now has another signed checkpoint (another history at the same height)"
        try:
            proof = consistency_proof(self.ledger, self.size, size)
            merkle.verify_consistency(self.size, size, proof, self.root, root)
        except (ProofError, LedgerError) as e:
            return f"the stored tree of {size} entries does not extend the served one of {self.size} ({e})"
        return ""

    def _diverge(self, problem: str, stored: str) -> None:
        """Stop serving: the ledger under the server is not an extension of what it published."""
        self.diverged = (
            f"the ledger was rewritten under this server: {problem}. Served checkpoint:\n{self.checkpoint}\n"
            + (f"Stored checkpoint now:\n{stored}\n" if stored else "")
            + "Serving stopped (full tiles were promised immutable); investigate, "
            "then restart flower-chain serve"
        )
        self._full_tiles.clear()
        log.error("%s", self.diverged)

    # -- tiles -------------------------------------------------------------------------------------
    def _exists(self, t: TilePath) -> bool:
        level = 0 if t.level is None else t.level
        return (t.index * TILE_WIDTH + t.width) << (TILE_HEIGHT * level) <= self.size

    def tile(self, t: TilePath) -> bytes | None:
        """The bytes of a hash tile or entry bundle, or ``None`` if it is not in the tree."""
        with self.lock:
            if not self._exists(t):
                self.refresh(force=True)
                if not self._exists(t) or self.diverged:
                    return None
            key = (t.level, t.index)
            if not t.is_partial and key in self._full_tiles:
                return self._full_tiles[key]
            try:
                data, problem = self._read_tile(t)
            except LedgerConnectionError:  # the database is away: this request fails, serving goes on
                raise
            except LedgerError as e:  # damaged storage: it no longer holds the served log
                data, problem = b"", f"{t.path()} cannot be read ({e})"
            if problem:
                self._diverge(problem, "")
                return None
            if not t.is_partial:
                if len(self._full_tiles) >= _FULL_TILE_CACHE_ITEMS:
                    self._full_tiles.pop(next(iter(self._full_tiles)))
                self._full_tiles[key] = data
            return data

    def _read_tile(self, t: TilePath) -> tuple[bytes, str]:
        """A tile's bytes, and why they are not the served tree's ('' when they are).

        A full tile (cached and sent as immutable) is proved against the served root: its subtree hash,
        recomputed from its content, must chain up to ``self.root`` through stored siblings, so storage
        rewritten consistently (entries and nodes) cannot slip in. A partial tile (cached 10 s) is checked
        against the stored tree only; the served root is re-checked at every look (:meth:`refresh`).
        """
        if t.level is None:
            start = t.index * TILE_WIDTH
            entries = list(self.ledger.entries(start, start + t.width))
            hashes, data, level = merkle.leaf_hashes(entries), encode_bundle(entries), 0
        else:
            data = tile_hashes(self.ledger.node, t)
            hashes, level = [data[i : i + 32] for i in range(0, len(data), 32)], TILE_HEIGHT * t.level
        start = t.index * TILE_WIDTH
        if t.is_partial:
            stored = merkle.range_from_nodes(lambda lv, i: self.ledger.node(lv + level, i))(start, start + len(hashes))
            ok = merkle.root(hashes) == stored
        else:
            ok = self._chains_to_root(level + TILE_HEIGHT, t.index, merkle.root(hashes))
        return data, "" if ok else f"{t.path()} is not in the served tree (root {self.root.hex()[:16]}...)"

    def _chains_to_root(self, level: int, index: int, h: bytes) -> bool:
        """Whether the complete subtree hash ``h`` at (``level``, ``index``) leads to the served root through
        stored siblings (an inclusion proof of the subtree read from storage, checked against ``self.root``)."""
        while ((index >> 1) + 1) << (level + 1) <= self.size:  # the parent is complete within the served size
            sibling = self.ledger.node(level, index ^ 1)
            h = merkle.node_hash(sibling, h) if index & 1 else merkle.node_hash(h, sibling)
            level, index = level + 1, index >> 1
        top = (level, index)
        compact = merkle.CompactRange.from_nodes(
            self.size, lambda lv, i: h if (lv, i) == top else self.ledger.node(lv, i)
        )
        return compact.root() == self.root

    # -- explorer ----------------------------------------------------------------------------------
    def explorer(self) -> dict[str, Any]:
        """Everything the explorer page shows, computed once per head."""
        with self.lock:
            if self._explorer and self._explorer[0] == self.height:
                return self._explorer[1]
            data = explorer_data(self.ledger, self.height, self.names)
            data["checkpoint"] = self.checkpoint
            self._explorer = (self.height, data)
            return data

    def status(self) -> dict[str, Any]:
        """The verification (and audit) status of the served head: the checks run once per head.

        The checks read the ledger through a handle of their own when the backend can be reopened (a
        file or database), so tiles and explorer data keep being served while a long ledger is
        verified; one check runs at a time. They read the ledger as stored when they start: the head
        they checked is reported as ``height`` (a newer head is checked on the next request).
        """
        from flower_chain.audit.status import ledger_status
        from flower_chain.ledger import open_ledger
        from flower_chain.ledger.location import parse_ledger_uri

        with self._status_lock:
            with self.lock:
                if self._status and self._status[0] == self.height:
                    return self._status[1]
            own = None
            try:
                if parse_ledger_uri(self.ledger.uri).scheme != "memory":
                    own = open_ledger(self.ledger.uri)
            except (LedgerError, OSError):
                own = None  # not reopenable here: check through the shared handle, under the lock
            if own is not None:
                with own:
                    own_head = own.head()
                    if own_head is None:
                        raise LedgerError(f"{own.uri}: the ledger is empty (no genesis block)")
                    height = own_head.header.height
                    st = ledger_status(own, **self.checks).to_dict()
            else:
                with self.lock:
                    height = self.height
                    st = ledger_status(self.ledger, **self.checks).to_dict()
            st["height"] = height
            with self.lock:
                self._status = (height, st)
            return st

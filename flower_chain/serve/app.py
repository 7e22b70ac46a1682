"""The read-only log server: C2SP tlog-tiles over a ledger, plus the ledger explorer page.

Routes
------
``GET /checkpoint``
    The head's signed checkpoint note (``text/plain; charset=utf-8``,
    ``Cache-Control: public, max-age=2``).
``GET /tile/<L>/<N>[.p/<W>]``
    Hash tiles (``application/octet-stream``); full tiles are
    ``immutable`` for a year, partial tiles cached for 10 s.
``GET /tile/entries/<N>[.p/<W>]``
    Entry bundles (big-endian ``uint16`` length-prefixed entries), same caching.
``GET /``
    The explorer page (one HTML file with an inline script; no other host).
``GET /api/status``, ``/api/summary``, ``/api/rounds``, ``/api/keys/<id>``, ``/api/proof/<index>``
    The explorer's JSON (the status: :func:`flower_chain.audit.status.ledger_status` run once per
    head, with the checks the server was given), and a C2SP tlog-proof download per log entry. A
    client's ``<id>`` is ``key:<key id>`` (a bare key id works too) or ``node:<node id>`` for replies
    without a key.

A malformed tile path is 400; a tile or bundle outside the current tree is
404; nothing on bad input is a 500. The server follows a ledger another
process is appending to: it re-reads the head at most every ``refresh_s``
seconds (and at once when asked for a tile beyond the head it knows), and
accepts a new head only if its checkpoint verifies under the genesis server
key and the log did not shrink.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.checkpoint import verify_checkpoint
from flower_chain.ledger.errors import CheckpointError, LedgerError
from flower_chain.ledger.text import is_decimal
from flower_chain.ledger.tiles import (
    TILE_HEIGHT,
    TILE_WIDTH,
    TileError,
    TilePath,
    encode_bundle,
    parse_tile_path,
    tile_hashes,
)
from flower_chain.ledger.writer import read_genesis
from flower_chain.serve.explorer import explorer_data

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["LogView", "build_app", "explorer_data"]

log = logging.getLogger("flower_chain.serve")

CHECKPOINT_CACHE = "public, max-age=2"
FULL_TILE_CACHE = "public, max-age=31536000, immutable"
PARTIAL_TILE_CACHE = "public, max-age=10"
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
        self._checked = time.monotonic()
        self._full_tiles: dict[tuple[int | None, int], bytes] = {}
        self._explorer: tuple[int, dict[str, Any]] | None = None

    def refresh(self, force: bool = False) -> None:
        """Pick up blocks appended since the last look (no more often than ``refresh_s`` unless forced)."""
        with self.lock:
            now = time.monotonic()
            if not force and now - self._checked < self.refresh_s:
                return
            self._checked = now
            try:
                self.ledger.reload()
                head = self.ledger.head()
            except LedgerError as e:
                log.error("cannot re-read %s: %s", self.ledger.uri, e)
                return
            if head is None or head.header.height == self.height:
                return
            try:
                cp = verify_checkpoint(head.checkpoint, self.genesis.server_key, origin=self.origin)
            except (CheckpointError, LedgerError) as e:
                log.error("not serving block %d: its checkpoint does not verify (%s)", head.header.height, e)
                return
            if cp.size < self.size or head.header.height < self.height or cp.size != head.header.log_size:
                log.error(
                    "not serving block %d: the log went from %d to %d entries", head.header.height, self.size, cp.size
                )
                return
            self.checkpoint, self.size, self.height = head.checkpoint, cp.size, head.header.height

    # -- tiles -------------------------------------------------------------------------------------
    def _exists(self, t: TilePath) -> bool:
        level = 0 if t.level is None else t.level
        return (t.index * TILE_WIDTH + t.width) << (TILE_HEIGHT * level) <= self.size

    def tile(self, t: TilePath) -> bytes | None:
        """The bytes of a hash tile or entry bundle, or ``None`` if it is not in the tree."""
        with self.lock:
            if not self._exists(t):
                self.refresh(force=True)
                if not self._exists(t):
                    return None
            key = (t.level, t.index)
            if not t.is_partial and key in self._full_tiles:
                return self._full_tiles[key]
            if t.level is None:
                start = t.index * TILE_WIDTH
                data = encode_bundle(self.ledger.entries(start, start + t.width))
            else:
                data = tile_hashes(self.ledger.node, t)
            if not t.is_partial:
                if len(self._full_tiles) >= _FULL_TILE_CACHE_ITEMS:
                    self._full_tiles.pop(next(iter(self._full_tiles)))
                self._full_tiles[key] = data
            return data

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


def build_app(view: LogView) -> Starlette:
    """The Starlette application serving ``view``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    page = resources.files("flower_chain.serve").joinpath("explorer.html").read_text(encoding="utf-8")

    async def checkpoint(request: Request) -> Response:
        view.refresh(force=True)
        return Response(
            view.checkpoint, media_type="text/plain; charset=utf-8", headers={"Cache-Control": CHECKPOINT_CACHE}
        )

    async def tile(request: Request) -> Response:
        try:
            t = parse_tile_path("tile/" + request.path_params["rest"])
        except TileError as e:
            return PlainTextResponse(f"bad tile path: {e}\n", status_code=400)
        view.refresh()
        try:
            data = view.tile(t)
        except TileError as e:  # an entry too large for a uint16 length prefix
            return PlainTextResponse(f"{e}\n", status_code=501)
        except LedgerError as e:  # the storage cannot be read (damaged file)
            log.error("tile %s: %s", t.path(), e)
            return PlainTextResponse("the ledger cannot be read\n", status_code=503)
        if data is None:
            return PlainTextResponse("no such tile in this log\n", status_code=404)
        return Response(
            data,
            media_type="application/octet-stream",
            headers={"Cache-Control": PARTIAL_TILE_CACHE if t.is_partial else FULL_TILE_CACHE},
        )

    async def index(request: Request) -> Response:
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    def _data() -> dict[str, Any]:
        view.refresh()
        return view.explorer()

    def _unavailable(e: Exception) -> Response:
        log.error("explorer data: %s", e)
        return JSONResponse({"error": f"the ledger cannot be read: {e}"}, status_code=503)

    async def summary(request: Request) -> Response:
        try:
            d = _data()
        except LedgerError as e:
            return _unavailable(e)
        return JSONResponse(
            {
                k: d[k]
                for k in (
                    "federation_id",
                    "origin",
                    "strategy",
                    "allowed_keys",
                    "blocks",
                    "log_size",
                    "reasons",
                    "evaluate_reasons",
                    "checkpoint",
                    "clients",
                    "key_names",
                    "verdict_colours",
                )
            }
            | {"keys": sorted(d["keys"])}
        )

    async def status(request: Request) -> Response:
        from starlette.concurrency import run_in_threadpool

        view.refresh()
        try:  # verify (and audit) of a new head runs off the event loop
            return JSONResponse(await run_in_threadpool(view.status), headers={"Cache-Control": "no-cache"})
        except LedgerError as e:
            return _unavailable(e)

    async def rounds(request: Request) -> Response:
        try:
            d = _data()
        except LedgerError as e:
            return _unavailable(e)
        return JSONResponse({"rounds": d["rounds"], "accuracy": d["accuracy"], "block_times": d["block_times"]})

    async def key_history(request: Request) -> Response:
        kid = request.path_params["kid"]
        try:
            keys = _data()["keys"]
            hist = keys.get(kid, keys.get("key:" + kid))  # "key:<key id>", "node:<node id>", or a bare key id
        except LedgerError as e:
            return _unavailable(e)
        if hist is None:
            return JSONResponse({"error": f"no entries for key {kid[:40]}"}, status_code=404)
        return JSONResponse({"key_id": kid, "entries": hist})

    async def proof(request: Request) -> Response:
        from flower_chain.ledger.tlog_proof import prove_inclusion

        s = request.path_params["index"]
        if not is_decimal(s) or len(s) > 18:
            return PlainTextResponse("entry index must be a decimal number\n", status_code=400)
        index = int(s)
        with view.lock:
            view.refresh()
            if index >= view.size:
                return PlainTextResponse(f"no entry {index} in a log of {view.size} entries\n", status_code=404)
            try:
                text = prove_inclusion(view.ledger, index).to_text()
            except LedgerError as e:
                return PlainTextResponse(f"{e}\n", status_code=404)
        return Response(
            text,
            media_type="text/plain; charset=utf-8",
            headers={
                "Content-Disposition": f'attachment; filename="entry-{index}.tlog-proof"',
                "Cache-Control": "no-cache",
            },
        )

    routes = [
        Route("/", index),
        Route("/checkpoint", checkpoint),
        Route("/tile/{rest:path}", tile),
        Route("/api/summary", summary),
        Route("/api/status", status),
        Route("/api/rounds", rounds),
        Route("/api/keys/{kid}", key_history),
        Route("/api/proof/{index}", proof),
    ]
    return Starlette(routes=routes, middleware=[Middleware(GZipMiddleware, minimum_size=1024)])

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
key and the new tree is consistent with the one it served (RFC 9162 consistency
proof against the served root). A ledger rewritten under it (another history of
the same or any size, or a shorter log) stops the server: every route answers 503
naming both checkpoints, since full tiles were promised immutable.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.text import is_decimal
from flower_chain.ledger.tiles import (
    TileError,
    parse_tile_path,
)
from flower_chain.serve.explorer import explorer_data
from flower_chain.serve.view import LogView

if TYPE_CHECKING:
    from starlette.applications import Starlette

__all__ = ["LogView", "build_app", "explorer_data"]  # LogView lives in serve/view.py

log = logging.getLogger("flower_chain.serve")

CHECKPOINT_CACHE = "public, max-age=2"
FULL_TILE_CACHE = "public, max-age=31536000, immutable"
PARTIAL_TILE_CACHE = "public, max-age=10"


def build_app(view: LogView) -> Starlette:
    """The Starlette application serving ``view``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.middleware.gzip import GZipMiddleware
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    page = resources.files("flower_chain.serve").joinpath("explorer.html").read_text(encoding="utf-8")

    def guarded(handler: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        """``handler``, or 503 naming both checkpoints once the ledger was rewritten under the server (checked
        before the handler runs and again after it, since the handler may be the one that found out)."""

        async def route(request: Request) -> Response:
            view.refresh()
            response = None if view.diverged else await handler(request)
            if view.diverged is not None:
                return PlainTextResponse(view.diverged + "\n", status_code=503, headers={"Cache-Control": "no-store"})
            assert response is not None
            return response

        return route

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
        Route("/checkpoint", guarded(checkpoint)),
        Route("/tile/{rest:path}", guarded(tile)),
        Route("/api/summary", guarded(summary)),
        Route("/api/status", guarded(status)),
        Route("/api/rounds", guarded(rounds)),
        Route("/api/keys/{kid}", guarded(key_history)),
        Route("/api/proof/{index}", guarded(proof)),
    ]
    return Starlette(routes=routes, middleware=[Middleware(GZipMiddleware, minimum_size=1024)])

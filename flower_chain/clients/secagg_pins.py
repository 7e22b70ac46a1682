"""What a SecAgg+ node has seen of each log, kept on disk beside its receipts.

Per federation the node pins the server key, the size and root of the last checkpoint it verified and
whether that log's checkpoints name their head block (then every later one must). Flower keeps a node's
``Context.state`` in memory per run series: a SuperNode restart or a new series would forget it, and a server
could then show the node a log that does not extend the one it saw, or drop the head line. Where the node
keeps receipts (``receipts-dir`` / ``FLOWER_CHAIN_RECEIPTS``, or ``receipts/<key id>`` beside its key), the
pins are also written to ``secagg-pins.ce1`` there (CE1, replaced atomically) and read back at each
instruction; the later of two views of a log wins, and a head line once seen stays required.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context

from flower_chain.clients.settings import receipts_dir
from flower_chain.ledger.encoding import decode, encode
from flower_chain.ledger.errors import EncodingError

FILE = "secagg-pins.ce1"
STATE = "flower-chain.secagg-state"  # the node's protocol state in Context.state
_FIELDS = {"server_key": bytes, "size": int, "root": bytes, "named": bool}


def pins_path(context: Context, key_file: Path | None, kid: str) -> Path | None:
    """The node's pins file, or ``None`` when it keeps no receipts directory."""
    directory = receipts_dir(context, key_file, kid)
    return directory / FILE if directory is not None else None


def _valid(pins: Any) -> bool:
    return isinstance(pins, dict) and all(
        isinstance(fid, str)
        and isinstance(p, dict)
        and set(p) == set(_FIELDS)
        and all(type(p[k]) is t for k, t in _FIELDS.items())
        for fid, p in pins.items()
    )


def read_pins(path: Path | None) -> dict[str, dict[str, Any]] | str:
    """The pins kept in ``path`` (``{}`` when there is none), or why they cannot be read (a damaged file is
    never taken as "nothing seen": the node refuses until it is repaired or removed by its operator)."""
    if path is None or not path.exists():
        return {}
    try:
        pins = decode(path.read_bytes())
    except (OSError, EncodingError) as e:
        return f"the SecAgg+ pins file {path} cannot be read ({e}): restore or remove it"
    return pins if _valid(pins) else f"the SecAgg+ pins file {path} is not a pins file: restore or remove it"


def merge(state: dict[str, dict[str, Any]], kept: dict[str, dict[str, Any]]) -> None:
    """Fold the pins on disk into the in-memory ones: per log the larger view, a head line seen stays seen."""
    for fid, pin in kept.items():
        cur = state.get(fid)
        if cur is None or pin["size"] > cur["size"]:
            state[fid] = dict(pin)
        if pin["named"]:
            state[fid]["named"] = True


def write_pins(path: Path | None, pins: dict[str, dict[str, Any]]) -> None:
    """Replace the pins file with ``pins`` (written to a temporary file first, then renamed over it)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_bytes(encode(pins))
    os.replace(tmp, path)


def load_state(context: Context, path: Path | None) -> tuple[dict[str, Any], str]:
    """The node's SecAgg+ state (``Context.state``) with the pins on disk folded in, and why the pins file
    cannot be read ('' when it can)."""
    rec = context.state.config_records.get(STATE)
    raw = rec.get("state") if rec is not None else None
    state = decode(raw) if isinstance(raw, bytes) else {"pins": {}}
    kept = read_pins(path)
    if isinstance(kept, str):
        return state, kept
    merge(state["pins"], kept)
    return state, ""


def save_state(context: Context, path: Path | None, state: dict[str, Any]) -> None:
    """Keep the state in ``Context.state`` and the pins on disk."""
    context.state.config_records[STATE] = ConfigRecord({"state": encode(state)})
    write_pins(path, state["pins"])

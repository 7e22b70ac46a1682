"""``flower-chain serve`` and ``flower-chain witness serve`` (registered in :mod:`flower_chain.cli`).

Exit codes follow the CLI: 2 for usage and input errors (bad key, bad
``--log``, unusable database), 1 when the ledger to serve does not verify.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer

from flower_chain.cli.common import EXIT_FAILED, EXIT_USAGE
from flower_chain.cli.errors import Meaning, meanings
from flower_chain.ledger.errors import KeyFileError, LedgerError, LedgerOpenError, VerificationError

if TYPE_CHECKING:
    from starlette.applications import Starlette

witness_app = typer.Typer(help="A C2SP tlog-witness that cosigns consistent checkpoints.", no_args_is_help=True)


def _fail(message: str, code: int = 2) -> NoReturn:
    from flower_chain.cli.common import fail

    fail(message, code)


def _run(app: Starlette, host: str, port: int) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")


@meanings(
    Meaning((VerificationError,), "{uri} does not verify, not serving it: ", EXIT_FAILED, not_verified=False),
    Meaning((LedgerError,), "{uri}: ", EXIT_FAILED, unless=(LedgerOpenError, KeyFileError)),
)
def serve_command(
    uri: str = typer.Argument(..., help="ledger URI, e.g. sqlite:///ledger.db"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(7380, "--port"),
    refresh: float = typer.Option(0.5, "--refresh", help="seconds between re-reads of the head"),
    server_key: str | None = typer.Option(
        None,
        "--server-key",
        help="pin the server public key (PEM or verifier key): the page's status is VERIFIED only with it",
    ),
    keys: Path | None = typer.Option(
        None,
        "--keys",
        help="keyring directory: the genesis must hold exactly these keys; clients are shown by their file names",
    ),
    witness: list[str] = typer.Option([], "--witness", help="a trusted witness verifier key (repeat)"),
    witness_quorum: int = typer.Option(0, "--witness-quorum"),
    audit: bool = typer.Option(False, "--audit", help="also replay the aggregation for the status (once per head)"),
) -> None:
    """Serve a ledger read-only: C2SP tlog-tiles (/checkpoint, /tile/...) and the explorer page at /."""
    from flower_chain.cli.common import err, read_server_key
    from flower_chain.cli.common import open_or_fail as _open
    from flower_chain.ledger import verify
    from flower_chain.serve.app import LogView, build_app

    if not 0 < port < 65536:
        _fail(f"--port {port} is not a TCP port")
    pinned = read_server_key(server_key) if server_key else None
    ledger = _open(uri)
    report = verify(ledger, server_key=pinned)
    view = LogView(
        ledger,
        refresh_s=refresh,
        server_key=pinned,
        keys=keys,
        witnesses=witness,
        quorum=witness_quorum or 1,
        audit=audit,
    )
    err.print(
        f"serving {uri} ({report.blocks} blocks, {report.entries} entries, origin {view.origin}, server key "
        f"{report.server_key_id} {'pinned' if pinned else 'not pinned'}) on http://{host}:{port}/",
        highlight=False,
    )
    _run(build_app(view), host, port)


@witness_app.command("serve")
@meanings(Meaning((KeyFileError,), "", EXIT_USAGE), Meaning((sqlite3.Error, OSError), "--db {db}: ", EXIT_USAGE))
def witness_serve(
    key: Path = typer.Option(..., "--key", help="the witness's Ed25519 private key (PEM)"),
    db: str = typer.Option("sqlite:///witness.db", "--db", help="state: sqlite:///PATH"),
    logs: list[str] = typer.Option(..., "--log", help="ORIGIN=VKEY of a log to witness (repeatable)"),
    name: str | None = typer.Option(None, "--name", help="witness key name (default: flower-chain-witness/<key id>)"),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(7381, "--port"),
) -> None:
    """Cosign checkpoints of the configured logs (POST /add-checkpoint, C2SP tlog-witness)."""
    from flower_chain.cli.common import err, out
    from flower_chain.ledger.keys import key_id, load_private
    from flower_chain.ledger.location import parse_ledger_uri
    from flower_chain.witness.server import Witness, WitnessStore, build_app, parse_log_option

    if not 0 < port < 65536:
        _fail(f"--port {port} is not a TCP port")
    try:
        location = parse_ledger_uri(db)
    except LedgerOpenError:
        location = None
    if location is None or location.scheme != "sqlite" or location.path is None:
        _fail(f"--db {db!r}: write sqlite:///relative/path or sqlite:////absolute/path")
    k = load_private(key)
    configured: dict[str, list[tuple[str, bytes]]] = {}
    for value in logs:
        origin, vk = parse_log_option(value)
        configured.setdefault(origin, []).append(vk)
    witness = Witness(name or f"flower-chain-witness/{key_id(k)}", k, configured, WitnessStore(location.path))
    out.print(witness.verifier_key, highlight=False)
    err.print(
        f"witnessing {', '.join(sorted(configured))} on http://{host}:{port}/add-checkpoint"
        f" (latest cosigned: http://{host}:{port}/latest-checkpoint?origin=ORIGIN)",
        highlight=False,
    )
    _run(build_app(witness), host, port)


@witness_app.command("vkey")
def witness_vkey(
    key: Path = typer.Option(..., "--key", help="the witness's Ed25519 private or public key (PEM)"),
    name: str | None = typer.Option(None, "--name", help="witness key name"),
) -> None:
    """Print the witness's cosigner verifier key (what clients configure to check its cosignatures)."""
    from flower_chain.cli.common import out
    from flower_chain.ledger.cosignature import cosigner_verifier_key
    from flower_chain.ledger.keys import key_id, load_public

    pub = load_public(key)  # a KeyFileError: one error line, exit 2 (flower_chain.cli.errors)
    out.print(cosigner_verifier_key(name or f"flower-chain-witness/{key_id(pub)}", pub), highlight=False)

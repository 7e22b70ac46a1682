"""``flower-chain keys``: Ed25519 key pairs for clients and the server, key ids, revocation."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from flower_chain.cli.common import EXIT_FAILED, EXIT_USAGE, emit_json, fail, open_or_fail, out
from flower_chain.cli.errors import Meaning, meanings
from flower_chain.ledger.errors import KeyFileError, VerificationError
from flower_chain.ledger.keys import key_id, load_private, load_public

keys_app = typer.Typer(help="Ed25519 keys for clients and the server.", no_args_is_help=True)


@keys_app.command("new")
@meanings(Meaning((OSError,), "", EXIT_USAGE))  # a KeyFileError (e.g. the pair exists) is exit 2 too
def keys_new(
    out_dir: Path = typer.Option(..., "--out", help="directory to write NAME.key and NAME.pub into"),
    name: str = typer.Option(..., "--name", help="key name, e.g. client-0"),
    force: bool = typer.Option(False, "--force", help="overwrite an existing pair"),
) -> None:
    """Write a new Ed25519 key pair (private key PEM with mode 0600, public key PEM)."""
    from flower_chain.ledger.keys import generate

    priv, pub = generate(out_dir, name, overwrite=force)
    out.print(f"{key_id(load_public(pub))}  {priv}  {pub}", highlight=False)


@keys_app.command("init")
@meanings(Meaning((KeyFileError, OSError), "cannot write keys into {directory}: ", EXIT_USAGE, strerror=True))
def keys_init(
    directory: Path = typer.Argument(..., metavar="DIR"),
    clients: int = typer.Option(..., "--clients", min=1, help="number of client key pairs"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Keys for a whole federation: DIR/server/server.key, DIR/clients/client-<i>.key, DIR/keyring/*.pub.

    ``DIR/keyring`` holds only the clients' public keys: give it to the server as its keyring
    (``keyring=DIR/keyring``); each client gets its own ``DIR/clients/client-<i>.key``. Existing keys are
    never overwritten.
    """
    import shutil

    from flower_chain.ledger.keys import generate

    names = [("server", "server")] + [("clients", f"client-{i}") for i in range(clients)]
    targets = [directory / sub / f"{n}{ext}" for sub, n in names for ext in (".key", ".pub")]
    targets += [directory / "keyring" / f"client-{i}.pub" for i in range(clients)]
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        fail(
            f"{len(existing)} key files already exist (e.g. {existing[0]}); keys init never overwrites keys: "
            "choose another DIR or remove them first"
        )
    rows = []
    for sub, name in names:
        priv, pub = generate(directory / sub, name)
        kid = key_id(load_public(pub))
        if sub == "clients":
            (directory / "keyring").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(pub, directory / "keyring" / pub.name)
        rows.append({"name": name, "key_id": kid, "private": str(priv), "public": str(pub)})
    if as_json:
        emit_json({"server": rows[0], "clients": rows[1:], "keyring": str(directory / "keyring")})
        return
    t = Table("name", "key id", "private key", "public key")
    for r in rows:
        t.add_row(r["name"], r["key_id"], r["private"], r["public"])
    out.print(t)
    out.print(f"server keyring (public keys only): {directory / 'keyring'}", highlight=False)


@keys_app.command("list")
def keys_list(directory: Path, as_json: bool = typer.Option(False, "--json")) -> None:
    """Print the key id of every public key in a directory."""
    files = sorted(directory.glob("*.pub")) if directory.is_dir() else None
    if not files:
        fail(f"no *.pub keys in {directory}")
    rows = [(key_id(load_public(f)), f.stem, str(f)) for f in files]
    if as_json:
        emit_json([{"key_id": k, "name": n, "path": p} for k, n, p in rows])
        return
    t = Table("key id", "name", "file")
    for r in rows:
        t.add_row(*r)
    out.print(t)


@keys_app.command("revoke")
@meanings(Meaning((VerificationError,), "the ledger does not verify, not revoking: ", EXIT_FAILED, not_verified=False))
def keys_revoke(
    uri: str,
    kid: str = typer.Argument(..., metavar="KEYID"),
    server_key: Path = typer.Option(..., "--server-key", help="the server's private key (PEM)"),
    reason: str = typer.Option("revoked by operator", "--reason"),
) -> None:
    """Append a revocation entry: later updates signed by KEYID are rejected."""
    from flower_chain.ledger import verify
    from flower_chain.ledger.keys import raw_public
    from flower_chain.ledger.writer import LedgerWriter

    ledger = open_or_fail(uri)
    key = load_private(server_key)
    writer = LedgerWriter(ledger, key)  # the ledger writer alone (no strategy, no flwr): the server's key,
    verify(ledger, server_key=raw_public(key))  # a verified ledger, one block
    writer.revoke(kid, reason)
    out.print(f"revoked {kid} in {uri} (block {ledger.block_count() - 1})")

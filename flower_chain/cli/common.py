"""What every command group of the CLI shares: the consoles, ``fail``, JSON output, opening a ledger.

Exit codes are those of :mod:`flower_chain.ledger.errors` (``EXIT_OK`` 0, ``EXIT_FAILED`` 1,
``EXIT_USAGE`` 2); a :class:`~flower_chain.ledger.errors.LedgerError` that escapes a command is
turned into its one-line message and its ``exit_code`` by :func:`flower_chain.cli.handle_ledger_error`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, NoReturn, Optional

import click
import typer
from rich.console import Console

from flower_chain.ledger import open_ledger
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.checkpoint import parse_verifier_key
from flower_chain.ledger.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from flower_chain.ledger.keys import load_public, raw_public

__all__ = ["EXIT_FAILED", "EXIT_OK", "EXIT_USAGE", "URI_META", "emit_json", "err", "fail", "open_or_fail", "out",
           "read_server_key", "write_or_print"]

URI_META = "flower_chain.uri"
"""Key in the click context's ``meta`` under which the ledger URI a command works on is kept
(named in the ``NOT VERIFIED URI: ...`` line of an escaping verification error)."""

out = Console()
err = Console(stderr=True, soft_wrap=True)  # one error per line, never wrapped (scripts grep it)


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print ``error: MESSAGE`` on stderr and exit with ``code``.

    Parameters
    ----------
    message : str
        One line saying what is wrong.
    code : int, optional
        The exit code (default :data:`EXIT_USAGE`).

    Raises
    ------
    typer.Exit
        Always.
    """
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


def emit_json(data: Any) -> None:
    """Write ``data`` as indented JSON on stdout (values JSON does not know become strings)."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def remember_uri(uri: str) -> None:
    """Note the ledger URI the running command works on (for the error handler's messages)."""
    ctx = click.get_current_context(silent=True)
    if ctx is not None:
        ctx.meta[URI_META] = uri


def open_or_fail(uri: str) -> Ledger:
    """Open an existing ledger for reading.

    Parameters
    ----------
    uri : str
        A ledger URI or path (see :func:`flower_chain.ledger.open_ledger`).

    Returns
    -------
    Ledger
        The opened ledger.

    Raises
    ------
    typer.Exit
        With :data:`EXIT_USAGE` when the file system refuses (a ``LedgerError`` such as a wrong URI
        or a torn file propagates to the CLI's handler, which exits with its ``exit_code``).
    """
    remember_uri(uri)
    try:
        return open_ledger(uri)
    except OSError as e:
        fail(str(e))


def read_server_key(value: str) -> bytes:
    """A server public key: a PEM file (public or private) or a signed-note verifier key.

    Parameters
    ----------
    value : str
        A path to a PEM key file, or ``NAME+KEYID+BASE64``.

    Returns
    -------
    bytes
        The raw 32-byte Ed25519 public key.

    Raises
    ------
    KeyFileError
        The file is not an Ed25519 key, or a malformed verifier key (exit 2 through the CLI's handler).
    typer.Exit
        With :data:`EXIT_USAGE` when ``value`` is neither a file nor a verifier key.
    """
    p = Path(value)
    if p.is_file():
        return raw_public(load_public(p))
    if "+" in value:
        return parse_verifier_key(value)[1]
    fail(f"server key {value!r} is neither a key file nor a NAME+KEYID+BASE64 verifier key")


def write_or_print(text: str, dest: Optional[Path]) -> None:
    """Write ``text`` to ``dest`` (saying so on stderr), or to stdout when ``dest`` is ``None``."""
    if dest is None:
        sys.stdout.write(text)
        return
    try:
        dest.write_text(text)
    except OSError as e:
        fail(f"cannot write {dest}: {e.strerror or e}")
    err.print(f"wrote {dest}", highlight=False)

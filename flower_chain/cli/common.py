"""What every command group of the CLI shares: the consoles, ``fail``, JSON output, opening a ledger.

Every string printed through :data:`out` and :data:`err` (messages, table cells, the verdict line)
is text of outside origin until proven otherwise: a :class:`SafeConsole` reads no rich markup in it
and writes every control character as a visible escape (:func:`~flower_chain.ledger.text.terminal_text`),
so a ledger, a proof file or a network peer can neither move the cursor, recolour a line, nor crash
the output with unbalanced ``[/]`` brackets. The one markup a console still reads is a leading verdict
label the CLI itself writes, ``[bold red]NOT VERIFIED[/] ...`` (:data:`LABEL`); :func:`say` builds
such a line explicitly. When stdout or stderr is not a terminal (a pipe, a file, a test), nothing is
wrapped at 80 columns: long URIs and digests stay whole on one line.

Exit codes are those of :mod:`flower_chain.ledger.errors` (``EXIT_OK`` 0, ``EXIT_FAILED`` 1,
``EXIT_USAGE`` 2); a :class:`~flower_chain.ledger.errors.LedgerError` that escapes a command is
turned into its one-line message and its ``exit_code`` by :func:`flower_chain.cli.handle_ledger_error`.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import typer
from rich.console import Console, ConsoleDimensions
from rich.style import Style
from rich.text import Text

from flower_chain.ledger import open_ledger
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.checkpoint import parse_verifier_key
from flower_chain.ledger.errors import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from flower_chain.ledger.keys import load_public, raw_public
from flower_chain.ledger.text import terminal_text

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "LABEL",
    "URI_META",
    "SafeConsole",
    "emit_json",
    "err",
    "fail",
    "open_or_fail",
    "out",
    "read_server_key",
    "say",
    "write_or_print",
]

URI_META = "flower_chain.uri"
"""Key in the click context's ``meta`` under which the ledger URI a command works on is kept
(named in the ``NOT VERIFIED URI: ...`` line of an escaping verification error)."""

LABEL = re.compile(r"\[(bold (?:red|green|yellow))\]([A-Za-z][A-Za-z (),:-]{0,40})\[/\]")
"""The only markup a :class:`SafeConsole` reads: a verdict label at the very start of a printed string,
``[bold red|green|yellow]WORDS[/]`` (``error:``, ``NOT VERIFIED``, ``VERIFIED``, ``WARNING``, ...)."""

PIPE_WIDTH = 1 << 16
"""Console width when the output is not a terminal: wide enough that no line or table is ever wrapped."""


class SafeConsole(Console):
    """A rich console for text of outside origin: no markup read, no control character written.

    Every ``str`` it renders (a printed message, a table cell) goes through :meth:`render_str`: a leading
    :data:`LABEL` becomes styled text, the rest is plain :class:`~rich.text.Text` of
    :func:`~flower_chain.ledger.text.terminal_text` (escape sequences, ``\\r``, ``BEL``, C1 controls,
    bidirectional overrides and newlines as visible escapes; ``[...]`` printed as is). Rich adds its own
    colours only around that text. When the output is not a terminal and no width was given (or set
    with ``COLUMNS``) the width is :data:`PIPE_WIDTH`, so nothing is hard-wrapped at 80 columns.
    """

    def render_str(
        self,
        text: str,
        *,
        style: str | Style = "",
        markup: bool | None = None,
        highlight: bool | None = None,
        **kwargs: Any,
    ) -> Text:
        """Plain, escaped text with at most a leading verdict label styled (see the class)."""
        label = LABEL.match(text)
        rest = text[label.end() :] if label else text
        rendered = super().render_str(
            terminal_text(rest),
            style=style,
            markup=False,
            emoji=False,
            highlight=highlight,
            **{k: v for k, v in kwargs.items() if k != "emoji"},
        )
        if label is None:
            return rendered
        head = Text(terminal_text(label.group(2)), style=label.group(1))
        head.append_text(rendered)
        return head

    @property
    def size(self) -> ConsoleDimensions:
        """The terminal's size, or :data:`PIPE_WIDTH` columns when the output is not a terminal."""
        size = super().size
        if self._width is None and not self.is_terminal:
            return ConsoleDimensions(PIPE_WIDTH, size.height)
        return size

    @size.setter
    def size(self, new_size: tuple[int, int]) -> None:
        # mypy models a property with a setter as an overloaded function; at run time it is a property
        Console.size.fset(self, new_size)  # type: ignore[attr-defined]


out = SafeConsole(soft_wrap=True)
err = SafeConsole(stderr=True, soft_wrap=True)  # one error per line, never wrapped (scripts grep it)


def say(label: str, style: str, message: object, *, stderr: bool = False) -> None:
    """Print one line ``LABEL MESSAGE``: ``label`` styled (CLI text), ``message`` as plain escaped text.

    Parameters
    ----------
    label : str
        The verdict word the CLI writes (``VERIFIED``, ``NOT VERIFIED``, ``error:``, ...).
    style : str
        Its rich style (``bold green``, ``bold red``, ``bold yellow``).
    message : object
        The rest of the line; any text of outside origin (``str`` of anything else).
    stderr : bool
        Print on stderr instead of stdout.
    """
    line = Text(terminal_text(label), style=style)
    line.append(" " + terminal_text(message))
    (err if stderr else out).print(line, highlight=False)


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
    say("error:", "bold red", message, stderr=True)
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


def write_lines(text: str) -> None:
    """Write ``text`` (a note, a proof: lines of outside origin) on stdout, each line through
    :func:`~flower_chain.ledger.text.terminal_text`: its newlines kept, every other control character escaped."""
    sys.stdout.write("\n".join(terminal_text(line) for line in text.split("\n")))


def write_or_print(text: str, dest: Path | None) -> None:
    """Write ``text`` to ``dest`` (saying so on stderr), or to stdout when ``dest`` is ``None``
    (escaped by :func:`write_lines`: a file gets the bytes, a terminal never a control character)."""
    if dest is None:
        write_lines(text)
        return
    try:
        dest.write_text(text)
    except OSError as e:
        fail(f"cannot write {dest}: {e.strerror or e}")
    err.print(f"wrote {dest}", highlight=False)

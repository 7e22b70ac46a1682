"""How an error that escapes a command ends the ``flower-chain`` process: one line, one exit code.

Every :class:`~flower_chain.ledger.errors.FlowerChainError` carries its exit code; the root command
group (:mod:`flower_chain.cli`) catches what escapes a command and calls :func:`handle_error` — the
one place that prints and exits. A command whose errors mean something more (``summary`` reads the
whole ledger, so any ledger error there means a damaged ledger: exit 1) declares it with
:func:`meanings`, next to its definition; no command catches errors itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

import click
import typer

from flower_chain.cli.common import EXIT_USAGE, URI_META, emit_json, err
from flower_chain.ledger.errors import CheckpointError, FlowerChainError, ProofError, VerificationError

VERIFICATION_FAILURES = (VerificationError, ProofError, CheckpointError)
"""Errors reported as ``NOT VERIFIED`` rather than ``error:``."""

MEANINGS_META = "flower_chain.meanings"
"""Key in the click context's ``meta`` under which the running command's :class:`Meaning` s and arguments are."""


@dataclass(frozen=True)
class Meaning:
    """What errors of some types mean inside one command.

    Attributes
    ----------
    types : tuple of exception types
        The errors this meaning applies to (the first matching meaning of a command wins).
    prefix : str
        Put before the error's text; ``str.format`` fields name the command's arguments (``{uri}``).
    code : int, optional
        The exit code; default the error's own ``exit_code`` (2 for an error without one).
    not_verified : bool, optional
        Print ``NOT VERIFIED`` instead of ``error:``; default: for verification failures.
    unless : tuple of exception types
        Types this meaning does not apply to (left to the next meaning, or to the error's own code).
    strerror : bool
        Print an ``OSError``'s ``strerror`` (no errno, no path) instead of its whole text.
    """

    types: tuple[type[BaseException], ...]
    prefix: str = ""
    code: int | None = None
    not_verified: bool | None = None
    unless: tuple[type[BaseException], ...] = ()
    strerror: bool = False

    def applies(self, error: BaseException) -> bool:
        return isinstance(error, self.types) and not isinstance(error, self.unless)


def meanings(*items: Meaning) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Declare what errors mean inside the decorated command (see :class:`Meaning`)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(command)
        def run(*args: Any, **kwargs: Any) -> Any:
            ctx = click.get_current_context(silent=True)
            if ctx is not None:
                ctx.meta[MEANINGS_META] = (items, kwargs)
            return command(*args, **kwargs)

        return run

    return decorate


def declared(error: BaseException, meta: Mapping[str, Any]) -> Meaning | None:
    """The running command's meaning of ``error``, if it declared one."""
    items, _ = meta.get(MEANINGS_META, ((), {}))
    return next((m for m in items if m.applies(error)), None)


def handle_error(error: BaseException, meta: Mapping[str, Any]) -> NoReturn:
    """Report an error that escaped a command on one stderr line and exit with its code.

    Parameters
    ----------
    error : BaseException
        A :class:`FlowerChainError`, or an error the command declared a :class:`Meaning` for.
    meta : Mapping
        The click context's ``meta``: the ledger URI the command works on, its declared meanings and
        arguments (a ``--json`` command also gets a verification failure as JSON on stdout).

    Raises
    ------
    typer.Exit
        Always.
    """
    meaning = declared(error, meta) or Meaning((BaseException,))
    _, args = meta.get(MEANINGS_META, ((), {}))
    uri = meta.get(URI_META)
    code = meaning.code if meaning.code is not None else int(getattr(error, "exit_code", EXIT_USAGE))
    text = (getattr(error, "strerror", None) or str(error)) if meaning.strerror else str(error)
    text = meaning.prefix.format(**{"uri": uri, **args}) + text
    not_verified = (
        meaning.not_verified if meaning.not_verified is not None else isinstance(error, VERIFICATION_FAILURES)
    )
    if args.get("as_json") and isinstance(error, VerificationError):
        emit_json({"verified": False, "height": error.height, "entry": error.entry, "error": error.what})
    if not_verified:
        where = f" {uri}:" if uri and not meaning.prefix else ""
        err.print(f"[bold red]NOT VERIFIED[/]{where} {text}", highlight=False)
    else:
        err.print(f"[bold red]error:[/] {text}", highlight=False)
    raise typer.Exit(code)


def handles(error: BaseException, meta: Mapping[str, Any]) -> bool:
    """Whether :func:`handle_error` reports ``error`` (else it is a bug and keeps its traceback)."""
    return isinstance(error, FlowerChainError) or declared(error, meta) is not None

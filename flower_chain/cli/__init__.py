"""The ``flower-chain`` command line: keys, ledger inspection and proofs, reports, log server, witness.

One module per command group: :mod:`~flower_chain.cli.keys`, :mod:`~flower_chain.cli.ledger`
(with ``ledger audit`` in :mod:`~flower_chain.cli.audit`), :mod:`~flower_chain.cli.proof`,
:mod:`~flower_chain.cli.report`, :mod:`~flower_chain.cli.model`; ``serve`` and ``witness`` come from :mod:`flower_chain.cli.serve`.

Exit codes: 0 ok; 1 verification failed (a ledger, proof or checkpoint does not verify, a torn or
tampered file); 2 usage or input error (missing file, not a ledger, unknown round or client, wrong
URI, bad key). They are carried by the error types (``exit_code`` of
:class:`~flower_chain.ledger.errors.FlowerChainError` and its subclasses) and mapped in one place:
the root group catches what escapes a command and :func:`~flower_chain.cli.errors.handle_error`
prints its one line and exits; a command declares what errors mean in it with
:func:`~flower_chain.cli.errors.meanings`, it never catches them itself.
"""

from __future__ import annotations

from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from flower_chain.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    URI_META,
    emit_json,
    err,
    fail,
    open_or_fail,
    out,
)
from flower_chain.cli.errors import VERIFICATION_FAILURES, handle_error, handles
from flower_chain.ledger.errors import LedgerError

__all__ = [
    "EXIT_FAILED",
    "EXIT_OK",
    "EXIT_USAGE",
    "VERIFICATION_FAILURES",
    "app",
    "emit_json",
    "err",
    "fail",
    "handle_error",
    "handle_ledger_error",
    "main",
    "out",
]

_open = open_or_fail  # the name flower_chain.cli.serve (and older callers) use


def handle_ledger_error(error: LedgerError, uri: str | None = None) -> NoReturn:
    """Report ``error`` on one stderr line and exit with its ``exit_code`` (:func:`handle_error`)."""
    handle_error(error, {URI_META: uri} if uri else {})


class _LedgerErrorGroup(TyperGroup):
    """The root command group: runs a command and maps what escapes it to one line and an exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as e:  # a FlowerChainError, or an error the command declared a meaning for
            if not handles(e, ctx.meta):
                raise
            handle_error(e, ctx.meta)


app = typer.Typer(
    cls=_LedgerErrorGroup,
    help="flower-chain: auditable federated learning ledgers for Flower.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from flower_chain.cli import audit as _audit  # noqa: E402,F401 - registers `ledger audit` on ledger_app
from flower_chain.cli.keys import keys_app  # noqa: E402
from flower_chain.cli.ledger import ledger_app  # noqa: E402
from flower_chain.cli.model import model_app  # noqa: E402
from flower_chain.cli.proof import proof_app  # noqa: E402
from flower_chain.cli.receipts import receipts_app  # noqa: E402
from flower_chain.cli.report import report_cmd  # noqa: E402
from flower_chain.cli.serve import serve_command, witness_app  # noqa: E402

app.add_typer(keys_app, name="keys")
app.add_typer(ledger_app, name="ledger")
app.add_typer(model_app, name="model")
app.add_typer(proof_app, name="proof")
app.add_typer(receipts_app, name="receipts")
app.command("report")(report_cmd)
app.command("serve")(serve_command)
app.add_typer(witness_app, name="witness")


def main() -> None:
    """Entry point of the ``flower-chain`` script and of ``python -m flower_chain.cli``."""
    app()

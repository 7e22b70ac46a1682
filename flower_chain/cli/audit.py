"""``flower-chain ledger audit``: verify, then re-derive every round's aggregate from the stored updates."""

from __future__ import annotations

from typing import Optional

import typer

from flower_chain.cli.common import EXIT_FAILED, EXIT_OK, emit_json, err, fail, open_or_fail, out
from flower_chain.cli.ledger import ledger_app
from flower_chain.ledger import verify
from flower_chain.ledger.errors import LedgerError, VerificationError

def _rounds_text(rounds: list[int]) -> str:
    """``1, 2, 3`` for up to 20 rounds, else the first and last ones and the count."""
    if len(rounds) <= 20:
        return ", ".join(map(str, rounds))
    return f"{', '.join(map(str, rounds[:10]))}, … {', '.join(map(str, rounds[-3:]))} ({len(rounds)} rounds)"


@ledger_app.command("audit")
def ledger_audit(uri: str,
                 strict: bool = typer.Option(False, "--strict",
                                             help="rounds that cannot be re-derived fail the audit (exit 1)"),
                 strategy_class: Optional[list[str]] = typer.Option(
                     None, "--strategy-class", help="a replayable strategy of your own: package.module:Class"),
                 as_json: bool = typer.Option(False, "--json")) -> None:
    """Verify the ledger, then recompute every round's global model from the stored accepted updates.

    Exit 1 when a round's recorded model_after or state_after is not what the recorded strategy computes
    from the round's accepted updates (or, with --strict, when a round cannot be re-derived).
    """
    from flower_chain.audit.replay import audit, load_class

    classes = [load_class(c) for c in strategy_class or []]  # AuditInputError: exit 2 by the CLI's handler
    ledger = open_or_fail(uri)
    try:
        checked = verify(ledger, client_signatures=True, blobs=True)  # the replayed updates must obey the policy
        report = audit(ledger, strategy_classes=classes)
    except VerificationError as e:
        if as_json:
            emit_json({"verified": False, "height": e.height, "entry": e.entry, "error": e.what, "ok": False})
        err.print(f"[bold red]NOT VERIFIED[/] {uri}: {e}", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    except LedgerError as e:
        fail(f"{uri}: {e}", EXIT_FAILED)
    missing = report.not_rederived
    unchecked = checked.arrays_unchecked  # accepted updates whose arrays are not stored: their rules unchecked
    failed = bool(report.mismatches) or (strict and bool(missing or unchecked))
    if as_json:
        emit_json({"verified": True, **report.to_dict(), "strict": strict, "ok": not failed})
        raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)
    train = [r for r in report.rounds if r.train]
    for r in report.mismatches:
        err.print(f"[bold red]NOT RE-DERIVED[/] round {r.round} (block {r.height}): {r.detail}", highlight=False)
    if report.mismatches:
        err.print("the recorded global model or strategy state of these rounds is not what the recorded strategy "
                  "computes from their accepted updates: the server did not aggregate what it recorded",
                  highlight=False)
    if unchecked:
        (err if strict else out).print(("[bold red]FAILED (--strict)[/] " if strict else "")
                                       + f"{unchecked} accepted updates' arrays are not in the blob store: their "
                                       "shapes, dtypes and finiteness were not re-derived", highlight=False)
    if missing:
        reasons = sorted({r.detail for r in missing})
        line = (f"aggregation not re-derivable for rounds {_rounds_text([r.round for r in missing])}: "
                + "; ".join(reasons[:3]) + (f"; … ({len(reasons)} reasons)" if len(reasons) > 3 else ""))
        (err if strict else out).print(("[bold red]FAILED (--strict)[/] " if strict else "") + line, highlight=False)
    ok = len(report.rederived)
    summary_line = (f"{ok} of {len(train)} train rounds re-derived bit for bit with {report.strategy} "
                    + (f"({len(missing)} not re-derivable) " if missing else "")
                    + f"({report.updates_replayed} updates replayed in {report.seconds:.2f} s)")
    if failed:
        err.print(f"[bold red]AUDIT FAILED[/] {uri}: {summary_line}", highlight=False)
        raise typer.Exit(EXIT_FAILED)
    out.print(f"[bold green]AUDITED[/] {uri}: {summary_line}", highlight=False)

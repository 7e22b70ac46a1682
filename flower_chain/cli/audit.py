"""``flower-chain ledger audit``: verify, then re-derive every round's aggregate from the stored updates.

Also ``flower-chain ledger audit-key DIR``: make the auditor's X25519 key pair that a server seals
accepted updates to (``audit_key=``, docs/sealed-updates.md).

SecAgg+ rounds are audited from their protocol transcript
(:func:`flower_chain.audit.secagg.audit_secagg`), the other rounds by replaying the stored updates
(:func:`flower_chain.audit.replay.audit`).

Exit codes of ``audit``: 0 AUDITED (every train round and federated evaluation re-derived bit for
bit, every SecAgg+ round proved); 1 AUDIT FAILED (the ledger does not verify, or a recorded model,
state or evaluation summary is not what the recorded strategy computes, a SecAgg+ check fails, or
``--strict`` with any round not re-derived or a SecAgg+ warning); 2 usage or
input error; 3 NOT AUDITED (nothing contradicts the record, but some rounds could not be re-derived:
their inputs are not stored, are sealed without ``--audit-key``, or the strategy cannot be replayed).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from flower_chain.cli.common import EXIT_FAILED, EXIT_OK, emit_json, err, fail, open_or_fail, out, say
from flower_chain.cli.ledger import ledger_app
from flower_chain.ledger import verify
from flower_chain.ledger.errors import EXIT_USAGE, LedgerError, VerificationError

if TYPE_CHECKING:
    from flower_chain.audit.replay import AuditReport, RoundAudit
    from flower_chain.audit.secagg import SecAggReport

#: ``audit``'s exit code when some rounds could not be re-derived and none contradicts the record.
EXIT_NOT_AUDITED = 3


def _rounds_text(rounds: list[int]) -> str:
    """``1, 2, 3`` for up to 20 rounds, else the first and last ones and the count."""
    rounds = sorted(set(rounds))
    if len(rounds) <= 20:
        return ", ".join(map(str, rounds))
    return f"{', '.join(map(str, rounds[:10]))}, … {', '.join(map(str, rounds[-3:]))} ({len(rounds)} rounds)"


def _summary(report: AuditReport, unchecked: int) -> str:
    """One line of counts: train rounds and evaluations re-derived out of those recorded, each counted once."""
    train = report.train_rounds
    evals = report.evaluations
    ok_train = sum(r.status == "ok" for r in train)
    ok_eval = sum(r.status == "ok" for r in evals)
    text = f"{ok_train} of {len(train)} train rounds"
    if evals:
        text += f" and {ok_eval} of {len(evals)} federated evaluations"
    text += f" re-derived bit for bit with {report.strategy} ({report.updates_replayed} updates replayed"
    if report.sealed_opened:
        text += f", {report.sealed_opened} opened from sealed blobs"
    text += f" in {report.seconds:.2f} s)"
    if unchecked:
        text += f"; {unchecked} accepted updates' arrays not checked against the array rules"
    return text


@ledger_app.command("audit")
def ledger_audit(
    uri: str,
    strict: bool = typer.Option(
        False, "--strict", help="rounds that cannot be re-derived fail the audit (exit 1, not 3)"
    ),
    strategy_class: list[str] | None = typer.Option(
        None, "--strategy-class", help="a replayable strategy of your own: package.module:Class"
    ),
    audit_key: str | None = typer.Option(
        None,
        "--audit-key",
        help="the auditor's X25519 private key (PEM file or 64 hex digits): "
        "opens the updates the server stored sealed to it",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Verify the ledger, then recompute every round's global model from the stored accepted updates.

    SecAgg+ rounds are re-derived from their protocol transcript. Exit 0 AUDITED: every train round
    (and federated evaluation) re-derived bit for bit. Exit 1 AUDIT FAILED: the ledger does not verify,
    a recorded model_after, state_after or evaluation summary is not what the recorded strategy computes,
    or a SecAgg+ check fails (--strict: also a round not re-derived, a SecAgg+ warning). Exit 2: bad input.
    Exit 3 NOT AUDITED: some rounds could not be re-derived (updates not stored, sealed without
    --audit-key, strategy not replayable); they are listed with the reason.
    """
    from flower_chain.audit.replay import audit, load_class
    from flower_chain.audit.secagg import audit_secagg
    from flower_chain.ledger.sealed import load_audit_private

    classes = [load_class(c) for c in strategy_class or []]  # AuditInputError: exit 2 by the CLI's handler
    key = None
    if audit_key is not None:
        try:
            key = load_audit_private(audit_key)
        except LedgerError as e:
            fail(f"--audit-key: {e}", EXIT_USAGE)
    ledger = open_or_fail(uri)
    try:
        checked = verify(ledger, client_signatures=True, blobs=True)  # the replayed updates must obey the policy
        report = audit(ledger, strategy_classes=classes, audit_key=key)
        secagg = audit_secagg(ledger)  # SecAgg+ rounds, from their transcript alone (none: rounds == 0)
    except VerificationError as e:
        if as_json:
            emit_json(
                {
                    "verified": False,
                    "height": e.height,
                    "entry": e.entry,
                    "error": e.what,
                    "ok": False,
                    "audited": False,
                }
            )
        say("NOT VERIFIED", "bold red", f"{uri}: {e}", stderr=True)
        raise typer.Exit(EXIT_FAILED) from None
    except LedgerError as e:
        fail(f"{uri}: {e}", EXIT_FAILED)
    from flower_chain.audit.settings_check import read_settings, settings_findings, settings_text

    strategy, config, why = read_settings(ledger)  # printed: a replay is bit for bit whatever they say
    setting_problems = settings_findings(config) if config is not None else []
    # accepted updates verify could not check (their arrays not in plaintext): those the audit opened it checked
    unchecked = max(0, checked.arrays_unchecked - report.sealed_opened)
    missing = report.not_rederived
    secagg_failed = bool(secagg.rounds) and (not secagg.ok or (strict and bool(secagg.findings)))
    audited = report.audited and not unchecked and not secagg_failed
    code = (
        EXIT_FAILED
        if report.mismatches or secagg_failed or (strict and not audited)
        else EXIT_OK
        if audited
        else EXIT_NOT_AUDITED
    )
    if as_json:
        emit_json(
            {
                "verified": True,
                **report.to_dict(),
                "arrays_unchecked": unchecked,
                "strict": strict,
                "secagg": _secagg_json(secagg),
                "audited": audited,
                "exit_code": code,
                "settings": settings_text(strategy, config, why),
                "settings_findings": setting_problems,
            }
        )
        raise typer.Exit(code)
    out.print(f"settings: {settings_text(strategy, config, why)}", highlight=False, markup=False)
    for text in setting_problems:
        say("SETTING", "bold yellow", text, stderr=True)
    _explain(report, missing, strict)
    if secagg.rounds:  # one line per proved round, one per finding (warnings fail only with --strict)
        for text in secagg.lines():
            (out if secagg.ok and not (strict and secagg.findings) else err).print(text, highlight=False)
    line = _summary(report, unchecked) + (
        f"; {secagg.rounds} SecAgg+ rounds audited from their transcript" if secagg.rounds else ""
    )
    if code == EXIT_OK:
        say("AUDITED", "bold green", f"{uri}: {line}")
        return
    label = "AUDIT FAILED" if code == EXIT_FAILED else "NOT AUDITED"
    say(label, "bold red", f"{uri}: {line}", stderr=True)
    raise typer.Exit(code)


def _secagg_json(secagg: SecAggReport) -> dict[str, Any]:
    return {
        "rounds": secagg.rounds,
        "ok": secagg.ok,
        "proved": list(secagg.proved),
        "replay_seconds": secagg.replay_seconds,
        "findings": [
            {"round": f.round, "stage": f.stage, "node": f.node, "message": f.message, "severity": f.severity}
            for f in secagg.findings
        ],
    }


def _explain(report: AuditReport, missing: list[RoundAudit], strict: bool) -> None:
    """The mismatches, then the rounds not re-derived grouped by reason (on stderr)."""
    for r in report.mismatches:
        what = {"train": "round", "evaluate": "evaluation of round"}.get(r.kind, "block of round")
        say("NOT RE-DERIVED", "bold red", f"{what} {r.round} (block {r.height}): {r.detail}", stderr=True)
    if report.mismatches:
        err.print(
            "the recorded global model, strategy state or evaluation summary of these rounds is not what the "
            "recorded strategy computes from their accepted updates: the server did not aggregate what it "
            "recorded",
            highlight=False,
        )
    by_reason: dict[str, list[int]] = {}
    for r in missing:
        by_reason.setdefault(r.detail, []).append(r.round)
    lines = [
        f"not re-derived: rounds {_rounds_text(rounds)}: {reason}" for reason, rounds in list(by_reason.items())[:5]
    ]
    if len(by_reason) > 5:
        lines.append(f"… and {len(by_reason) - 5} other reasons (--json lists every round)")
    for text in lines:
        if strict:
            say("FAILED (--strict)", "bold red", text, stderr=True)
        else:
            err.print(text, highlight=False)


@ledger_app.command("audit-key")
def audit_key_init(
    directory: Path = typer.Argument(..., help="where to write NAME.audit.key and NAME.audit.pub"),
    name: str = typer.Option("audit", "--name", help="file name stem"),
) -> None:
    """Make an auditor's X25519 key pair: the server seals accepted updates to the public key (audit_key=),
    `ledger audit --audit-key NAME.audit.key` opens them. Keep the private key away from the server."""
    from flower_chain.ledger.sealed import load_audit_public, raw_x25519, write_audit_keypair

    if not name or "/" in name or name.startswith("."):
        fail(f"--name {name!r}: a plain file name stem is required", EXIT_USAGE)
    try:
        priv, pub = write_audit_keypair(directory, name)
    except (LedgerError, OSError) as e:
        fail(str(e), EXIT_USAGE)
    out.print(f"wrote {priv} (private: give it to the auditor only) and {pub}", highlight=False)
    out.print(f"public key (hex): {raw_x25519(load_audit_public(pub)).hex()}", highlight=False)
    out.print(
        f"server: LedgerStrategy(..., audit_key='{pub}'); auditor: flower-chain ledger audit URI --audit-key {priv}",
        highlight=False,
    )

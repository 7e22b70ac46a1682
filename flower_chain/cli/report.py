"""``flower-chain report``: a self-contained HTML report of a ledger (and run.py's metrics).

The status at the top comes from the checks asked for here: ``--server-key`` (pinned server key; without
it the page never shows a green VERIFIED), ``--keys`` (the genesis keyring, and the names keys were
created with), ``--witness`` (cosignatures), ``--audit`` (aggregation replay), ``--blobs``.
"""

from __future__ import annotations

from pathlib import Path

import typer

from flower_chain.cli.common import fail, open_or_fail, out, read_server_key


def report_cmd(
    uri: str,
    dest: Path = typer.Option(Path("report.html"), "-o", "--out"),
    metrics: Path | None = typer.Option(None, "--metrics", help="run.py's metrics.json (optional)"),
    png_dir: Path | None = typer.Option(None, "--png", help="also write the plots as PNG files here"),
    server_key: str | None = typer.Option(None, "--server-key", help="pin the server public key (PEM or verifier key)"),
    keys: Path | None = typer.Option(
        None,
        "--keys",
        help="keyring directory: the genesis must hold exactly these keys; clients are shown by their file names",
    ),
    witness: list[str] = typer.Option([], "--witness", help="a trusted witness verifier key (repeat)"),
    witness_quorum: int = typer.Option(0, "--witness-quorum", help="cosignatures the head needs (0: one)"),
    run_audit: bool = typer.Option(False, "--audit", help="also replay every round's aggregation"),
    blobs: bool = typer.Option(False, "--blobs", help="also hash stored models and updates"),
) -> None:
    """A self-contained HTML report: status, training metrics, verdicts, clients by name, timing."""
    from flower_chain.audit.report import write_report
    from flower_chain.audit.status import keyring_names, ledger_status
    from flower_chain.ledger.cosignature import parse_cosigner_key

    pinned = read_server_key(server_key) if server_key else None
    names = keyring_names(keys) if keys is not None else None  # KeyFileError: exit 2 by the CLI's handler
    if keys is not None and not names:
        fail(f"no *.pub keys in {keys}")
    for w in witness:
        parse_cosigner_key(w)  # a malformed witness key is bad input (exit 2), not a failed verification
    if witness_quorum and not witness:
        fail("--witness-quorum needs at least one --witness VKEY")
    if witness and not 0 <= witness_quorum <= len(set(witness)):
        fail(f"--witness-quorum must be between 1 and {len(set(witness))} (the witness keys given)")
    ledger = open_or_fail(uri)
    status = ledger_status(
        ledger,
        server_key=pinned,
        keys=keys,
        witnesses=witness,
        quorum=witness_quorum or 1,
        run_audit=run_audit,
        blobs=blobs,
    )
    try:
        write_report(ledger, dest, metrics_path=metrics, png_dir=png_dir, status=status, names=names)
    except OSError as e:  # a LedgerError goes to the CLI's handler (exit by its exit_code)
        fail(str(e))
    out.print(f"wrote {dest}: {status.headline}, {status.audit_headline}", highlight=False, soft_wrap=True)

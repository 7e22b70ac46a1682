"""``flower-chain report``: a self-contained HTML report of a ledger (and run.py's metrics)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from flower_chain.cli.common import fail, open_or_fail, out


def report_cmd(uri: str, dest: Path = typer.Option(Path("report.html"), "-o", "--out"),
               metrics: Optional[Path] = typer.Option(None, "--metrics", help="run.py's metrics.json (optional)"),
               png_dir: Optional[Path] = typer.Option(None, "--png", help="also write the plots as PNG files here"),
               ) -> None:
    """A self-contained HTML report: accuracy/loss, verdicts by reason, participation, timing, verification."""
    from flower_chain.audit.report import write_report

    ledger = open_or_fail(uri)
    try:
        write_report(ledger, dest, metrics_path=metrics, png_dir=png_dir)
    except OSError as e:  # a LedgerError goes to the CLI's handler (exit by its exit_code)
        fail(str(e))
    out.print(f"wrote {dest}", highlight=False)

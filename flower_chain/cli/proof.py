"""``flower-chain proof``: check inclusion and consistency proofs offline, with the server's public key only."""

from __future__ import annotations

from pathlib import Path

import typer

from flower_chain.cli.common import EXIT_FAILED, fail, out, read_server_key
from flower_chain.cli.errors import Meaning, meanings
from flower_chain.ledger.errors import ProofError

proof_app = typer.Typer(help="Check proofs offline.", no_args_is_help=True)


@proof_app.command("verify")
@meanings(Meaning((ProofError, UnicodeDecodeError), "{proof_file}: ", EXIT_FAILED, not_verified=True))
def proof_verify(
    proof_file: Path = typer.Argument(..., metavar="PROOF"),
    server_key: str = typer.Option(..., "--server-key", help="server public key: PEM or verifier key"),
) -> None:
    """Check an inclusion (tlog-proof) or consistency proof with nothing but the server's public key."""
    from flower_chain.ledger.entries import UpdateEntry, decode_entry
    from flower_chain.ledger.tlog_proof import InclusionProof, parse_proof

    if not proof_file.is_file():
        fail(f"proof file {proof_file} not found")
    pub = read_server_key(server_key)
    proof = parse_proof(proof_file.read_text())
    if isinstance(proof, InclusionProof):
        result = proof.verify(pub)
        entry = decode_entry(proof.entry)
        what = f"{entry.TYPE} entry" + (
            f" of client {entry.key_id}, round {entry.round}, {entry.verdict}" if isinstance(entry, UpdateEntry) else ""
        )
        out.print(
            f"[bold green]VERIFIED[/] {what} is entry {proof.index} of the log {result.origin} at size {result.size}",
            highlight=False,
        )
    else:
        old, new = proof.verify(pub)
        out.print(
            f"[bold green]VERIFIED[/] {new.origin}: the log at size {new.size} extends the log at size {old.size}",
            highlight=False,
        )

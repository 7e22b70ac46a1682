"""``flower-chain model``: export the final global model with its signed provenance, and verify one.

``model export URI -o DIR --server-key KEY`` verifies the ledger under the server's key, then writes
``model.npz``, ``model.safetensors`` and ``provenance.intoto.jsonl`` (an in-toto statement with a
SLSA v1 predicate in a DSSE envelope signed by the server key) into DIR. ``model verify DIR
--server-key PUB [--ledger URI]`` checks them (see :mod:`flower_chain.audit.provenance`). Exit 0
when everything matches, 1 naming each difference, 2 for bad input (one ``error:`` line).
"""

from __future__ import annotations

from pathlib import Path

import typer

from flower_chain.cli.common import EXIT_FAILED, emit_json, err, fail, open_or_fail, out, read_server_key

model_app = typer.Typer(
    help="Export the final global model with its signed provenance, and verify it.", no_args_is_help=True
)


@model_app.command("export")
def model_export(
    uri: str = typer.Argument(..., help="ledger URI, e.g. sqlite:///ledger.db"),
    dest: Path = typer.Option(..., "-o", "--out", help="directory to write the model files into"),
    server_key: Path = typer.Option(..., "--server-key", help="the server's private key (PEM): signs the statement"),
    model_signing_key: Path | None = typer.Option(
        None,
        "--model-signing-key",
        help="an ECDSA P-256 private key (PEM): also write model.sig, an OpenSSF model-signing bundle "
        "over every file, its public key named in the server-signed statement",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Write the head's global model (.npz, .safetensors) and its DSSE-signed in-toto provenance into DIR."""
    from flower_chain.audit.provenance import ProvenanceInputError, export_model
    from flower_chain.ledger.errors import VerificationError
    from flower_chain.ledger.keys import load_private

    key = load_private(server_key)  # KeyFileError: exit 2 by the CLI's handler
    signing = None
    if model_signing_key is not None:
        from flower_chain.audit.model_signing import load_signing_key

        signing = load_signing_key(model_signing_key)
    ledger = open_or_fail(uri)
    if dest.exists() and not dest.is_dir():
        fail(f"{dest} exists and is not a directory")
    try:
        res = export_model(ledger, key, dest, signing)
    except VerificationError as e:
        err.print(f"[bold red]NOT VERIFIED[/] {uri}: {e} (nothing exported)", highlight=False)
        raise typer.Exit(EXIT_FAILED) from None
    except ProvenanceInputError as e:
        fail(str(e))
    except OSError as e:
        fail(f"cannot write {dest}: {e.strerror or e}")
    if as_json:
        emit_json(
            {
                "directory": str(dest),
                "files": res.files,
                "model_digest": res.model_digest,
                "block": res.height,
                "origin": res.origin,
            }
        )
        return
    out.print(
        f"exported the model of block {res.height} of {res.origin} (model digest {res.model_digest[:16]}…) "
        f"to {dest}: {', '.join(res.files)}, provenance.intoto.jsonl"
        + (" and model.sig (OpenSSF model-signing, P-256)" if signing is not None else ""),
        highlight=False,
        soft_wrap=True,
    )


@model_app.command("verify")
def model_verify(
    directory: Path = typer.Argument(..., help="a directory written by `model export`"),
    server_key: str = typer.Option(..., "--server-key", help="the server's public key (PEM, or NAME+KEYID+BASE64)"),
    ledger_uri: str | None = typer.Option(
        None, "--ledger", help="also check against this ledger: the exported model is its head's model_after"
    ),
    run_audit: bool = typer.Option(
        False,
        "--audit",
        help="with --ledger: also replay every round's aggregation (the model is what the recorded strategy computes)",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Check the model files against the signed statement (and, with --ledger, against the ledger)."""
    from flower_chain.audit.provenance import ProvenanceError, ProvenanceInputError
    from flower_chain.audit.provenance_check import verify_export

    pub = read_server_key(server_key)
    if run_audit and not ledger_uri:
        fail("--audit needs --ledger URI (the aggregation is replayed from the ledger)")
    ledger = open_or_fail(ledger_uri) if ledger_uri else None
    try:
        res = verify_export(directory, pub, ledger, run_audit=run_audit)
    except ProvenanceError as e:
        if as_json:
            emit_json({"verified": False, "problems": str(e).split("; ")})
        err.print(f"[bold red]NOT VERIFIED[/] {directory}: {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_FAILED) from None
    except ProvenanceInputError as e:
        fail(str(e))
    if as_json:
        emit_json(
            {
                "verified": True,
                "origin": res.origin,
                "block": res.height,
                "model_digest": res.model_digest,
                "files": res.files,
                "ledger_checked": res.ledger_checked,
                "ledger_head": res.head_height,
                "audited": res.audited,
            }
        )
        return
    against = (
        f"; it is the model_after of the given ledger's head (block {res.head_height})"
        if res.ledger_checked
        else "; not checked against a ledger (add --ledger URI)"
    )
    against += (
        "; AUDITED: every train round re-derived bit for bit"
        if res.audited
        else "; the aggregation was not replayed (add --audit)"
        if res.ledger_checked
        else ""
    )
    out.print(
        f"[bold green]VERIFIED[/] {directory}: {', '.join(res.files)} match the statement signed by the "
        f"pinned server key for block {res.height} of {res.origin} (model digest {res.model_digest[:16]}…)" + against,
        highlight=False,
        soft_wrap=True,
    )

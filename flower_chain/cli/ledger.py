"""``flower-chain ledger``: inspect, verify, prove, export, anchor and repair a round ledger.

(``ledger audit`` is in :mod:`flower_chain.cli.audit`.) An error that escapes a command ends the
process with its ``exit_code`` through :func:`flower_chain.cli.errors.handle_error`; a command
declares with :func:`~flower_chain.cli.errors.meanings` where an error means more (``summary``,
``blocks`` and ``export`` read the whole ledger, so a failure there means the ledger is damaged: 1).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.table import Table

from flower_chain.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    emit_json,
    fail,
    open_or_fail,
    out,
    read_server_key,
    say,
    write_or_print,
)
from flower_chain.cli.errors import Meaning, meanings
from flower_chain.cli.ledger_verify_support import (
    _check_witnesses,
    _counter_text,
    _keyring_difference,
    _print_verified,
    _verify_json,
)
from flower_chain.ledger import open_ledger, verify
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.checkpoint import verifier_key
from flower_chain.ledger.errors import LedgerError, LedgerOpenError, VerificationError
from flower_chain.ledger.location import parse_ledger_uri

if TYPE_CHECKING:
    from flower_chain.anchor.evm import EvmAnchor

ledger_app = typer.Typer(help="Inspect, verify and prove things about a round ledger.", no_args_is_help=True)


@ledger_app.command("summary")
@meanings(Meaning((LedgerError,), "{uri}: ", EXIT_FAILED, unless=(LedgerOpenError,)))
def ledger_summary(uri: str, as_json: bool = typer.Option(False, "--json")) -> None:
    """Federation id, rounds, entries, every verdict (train and evaluate replies), head hash, checkpoint."""
    from flower_chain.audit.settings_check import read_settings, settings_findings, settings_text
    from flower_chain.ledger.inspect import summary

    ledger = open_or_fail(uri)
    s = summary(ledger)
    strategy, config, why = read_settings(ledger)
    findings = settings_findings(config) if config is not None else []
    if as_json:
        emit_json(
            {
                **s,
                "settings": config,
                "settings_not_shown": why if config is None else "",
                "settings_findings": findings,
            }
        )
        return
    t = Table(show_header=False)
    for k in ("federation_id", "backend", "strategy", "allowed_keys", "rounds", "blocks", "entries"):
        t.add_row(k, str(s[k]))
    t.add_row("settings", settings_text(strategy, config, why))
    t.add_row(
        "train replies",
        f"{s['accepted']} accepted, {s['rejected']} rejected"
        + (f" ({_counter_text(s['reasons'])})" if s["reasons"] else ""),
    )
    t.add_row(
        "evaluate replies",
        f"{s['evaluate_accepted']} accepted, {s['evaluate_rejected']} rejected"
        + (f" ({_counter_text(s['evaluate_reasons'])})" if s["evaluate_reasons"] else ""),
    )
    if s["equivocating_keys"]:
        t.add_row(
            "equivocating keys",
            ", ".join(s["equivocating_keys"])
            + f" (a stolen key? revoke: flower-chain keys revoke {uri} KEYID --server-key KEY)",
        )
    for k in ("head_hash", "model_digest"):
        t.add_row(k, str(s[k]))
    out.print(t)
    for line in findings:  # settings that void or invert the clients' contributions: a replay is bit for bit anyway
        say("SETTING", "bold yellow", line, stderr=True)
    sys.stdout.write(f"settings digest (a node pins it: settings-digest): {s['settings_digest']}\n")  # whole, unwrapped
    sys.stdout.write("checkpoint:\n" + s["checkpoint"])


@ledger_app.command("blocks")
@meanings(Meaning((LedgerError,), "{uri}: ", EXIT_FAILED, unless=(LedgerOpenError,)))
def ledger_blocks(
    uri: str,
    start: int = typer.Option(0, "--from", help="first height"),
    end: int | None = typer.Option(None, "--to", help="last height (inclusive)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """One row per block: height, round, entries, accepted, rejected, model digest, time."""
    from flower_chain.ledger.inspect import block_rows

    rows = list(block_rows(open_or_fail(uri), start, None if end is None else end + 1))
    if as_json:
        emit_json([r.to_dict() for r in rows])
        return
    t = Table("height", "round", "entries", "accepted", "rejected", "model digest", "time (UTC)")
    for r in rows:
        t.add_row(
            str(r.height), str(r.round), str(r.entries), str(r.accepted), str(r.rejected), r.model_after[:16], r.time
        )
    out.print(t)


@ledger_app.command("show")
def ledger_show(
    uri: str, server_round: int = typer.Argument(..., metavar="ROUND"), as_json: bool = typer.Option(False, "--json")
) -> None:
    """Every entry of a round: client key id, verdict, reason, num-examples, digests, metrics."""
    from flower_chain.ledger.inspect import round_entries

    ledger = open_or_fail(uri)
    rows = round_entries(ledger, server_round)  # an unknown round: LedgerError, exit 2 by the CLI's handler
    if as_json:
        emit_json(rows)
        return
    t = Table("block", "index", "type", "client key", "verdict", "reason", "n", "arrays digest", "metrics")
    for r in rows:
        if r["type"] == "update":
            t.add_row(
                str(r["block"]),
                str(r["index"]),
                "update",
                r["key_id"] or "-",
                r["verdict"],
                r["reason"],
                str(r["num_examples"]),
                r["arrays_digest"][:16],
                json.dumps(r["metrics"]),
            )
        else:
            extra = {k: v for k, v in r.items() if k not in ("block", "index", "type")}
            t.add_row(str(r["block"]), str(r["index"]), r["type"], "", "", "", "", "", json.dumps(extra))
    out.print(t)


@ledger_app.command("verify")
@meanings(Meaning((ValueError,), "", EXIT_USAGE))
def ledger_verify(
    uri: str,
    keys: Path | None = typer.Option(None, "--keys", help="client keys the genesis must hold, no more, no fewer"),
    server_key: str | None = typer.Option(
        None, "--server-key", help="expected server public key (PEM or verifier key)"
    ),
    client_signatures: bool = typer.Option(
        True, "--client-signatures/--no-client-signatures", help="re-check every accepted update's signature"
    ),
    blobs: bool = typer.Option(
        False, "--blobs", help="also check the stored models, states and updates against their digests"
    ),
    strict: bool = typer.Option(
        False,
        "--strict",
        help="implies --blobs; verdicts that cannot be re-derived from the "
        "ledger, blobs that are not stored and accepted updates whose "
        "arrays are not stored fail (exit 1)",
    ),
    anchor_url: str | None = typer.Option(None, "--anchor", help="also check anchors: evm+http://..."),
    contract: str | None = typer.Option(None, "--contract", help="LedgerAnchor address"),
    owner: str | None = typer.Option(None, "--owner", help="the account that must own the anchor contract"),
    chain_id: int | None = typer.Option(None, "--chain-id"),
    witness: list[str] = typer.Option(
        [], "--witness", help="a witness verifier key (NAME+KEYID+BASE64); repeat for more"
    ),
    witness_quorum: int = typer.Option(0, "--witness-quorum", help="cosignatures the head must carry (0: one)"),
    witness_latest: list[str] = typer.Option(
        [],
        "--witness-latest",
        help="a witness URL (http://...) whose latest cosigned checkpoint of this log is fetched, or a file "
        "holding one fetched earlier; the ledger must hold it (else: rollback or fork); repeat for more",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Exit 0 only if the whole ledger verifies; else exit 1 naming block, entry and what mismatched."""
    expected = read_server_key(server_key) if server_key else None
    if anchor_url and not contract:
        fail("--anchor needs --contract ADDRESS to verify against")
    if (owner or contract) and not anchor_url:
        fail("--contract and --owner need --anchor evm+http://HOST:PORT")
    if (witness_quorum or witness_latest) and not witness:
        fail(f"{'--witness-quorum' if witness_quorum else '--witness-latest'} needs at least one --witness VKEY")
    ledger = open_or_fail(uri)
    blobs = blobs or strict  # --strict: nothing that could be checked goes unchecked
    report = verify(ledger, server_key=expected, client_signatures=client_signatures, blobs=blobs)
    if keys is not None:
        problem = _keyring_difference(ledger, keys)
        if problem:
            raise VerificationError(problem, height=0, entry=0)
    anchors = _check_anchors(ledger, anchor_url, contract, owner, chain_id) if anchor_url else None
    witnessed = _check_witnesses(ledger, witness, witness_quorum, witness_latest) if witness else None
    failed = strict and bool(report.not_rederived or report.blob_problems or report.arrays_unchecked)
    if as_json:
        emit_json(_verify_json(report, anchors, witnessed, failed, blobs, strict))
        raise typer.Exit(EXIT_FAILED if failed else EXIT_OK)
    _print_verified(uri, report, anchors, witnessed, blobs, strict)
    if failed:
        raise typer.Exit(EXIT_FAILED)


def _check_anchors(
    ledger: Ledger, url: str, contract: str | None, owner: str | None, chain_id: int | None
) -> dict[str, Any]:
    """Every block's anchor on chain (raises ``VerificationError`` on a mismatch)."""
    from flower_chain.anchor.publish import verify_against_chain

    return verify_against_chain(
        ledger, _evm(ledger, url, contract, None, chain_id, False, "auto", need_key=False), owner=owner
    )


def _evm(
    uri_ledger: Ledger,
    url: str,
    contract: str | None,
    key_file: Path | None,
    chain_id: int | None,
    poa: bool,
    fee: str,
    need_key: bool,
) -> EvmAnchor:
    """Connect to the anchor contract; an ``AnchorError`` (exit 2) goes to the CLI's handler."""
    from flower_chain.ledger.writer import read_genesis

    try:
        from flower_chain.anchor.evm import EvmAnchor, read_private_key
    except ImportError:
        fail("anchoring needs web3: pip install 'flower-chain[evm]'")
    key = read_private_key(key_file) if (need_key or key_file) else None
    try:
        return EvmAnchor(
            url,
            federation_id=read_genesis(uri_ledger).federation_id,
            private_key=key,
            contract=contract,
            chain_id=chain_id,
            poa=poa,
            fee_mode=fee,
        )
    except ImportError:
        fail("anchoring needs web3: pip install 'flower-chain[evm]'")


@ledger_app.command("anchor")
def ledger_anchor(
    uri: str,
    url: str = typer.Option(..., "--anchor", help="evm+http://HOST:PORT"),
    contract: str | None = typer.Option(None, "--contract", help="LedgerAnchor address"),
    key_file: Path | None = typer.Option(None, "--key-file", help="hex private key (default: FLOWER_CHAIN_EVM_KEY)"),
    chain_id: int | None = typer.Option(None, "--chain-id"),
    poa: bool = typer.Option(False, "--poa"),
    fee: str = typer.Option("auto", "--fee"),
    catch_up_: bool = typer.Option(True, "--catch-up/--no-catch-up", help="publish every block not anchored yet"),
) -> None:
    """Publish the ledger's block checkpoints to the anchor contract (deploying it when no --contract)."""
    from flower_chain.anchor.publish import catch_up

    ledger = open_or_fail(uri)
    anchor = _evm(ledger, url, contract, key_file, chain_id, poa, fee, need_key=True)
    res = catch_up(ledger, anchor) if catch_up_ else {"anchored": 0, "contract": anchor.address}
    out.print(
        f"anchored {res['anchored']} blocks ({res.get('already_anchored', 0)} were already) in contract "
        f"{res['contract']} on chain {anchor.chain_id}",
        highlight=False,
    )


@ledger_app.command("checkpoint")
def ledger_checkpoint(
    uri: str, vkey: bool = typer.Option(False, "--verifier-key", help="also print the server's note verifier key")
) -> None:
    """Print the current signed checkpoint (C2SP signed note)."""
    from flower_chain.ledger.writer import read_genesis

    ledger = open_or_fail(uri)
    head = ledger.head()
    if head is None:
        fail(f"{uri}: the ledger is empty", EXIT_FAILED)
    sys.stdout.write(head.checkpoint)
    if vkey:
        g = read_genesis(ledger)
        sys.stdout.write(verifier_key(head.checkpoint.split("\n", 1)[0], g.server_key) + "\n")


@ledger_app.command("prove")
def ledger_prove(
    uri: str,
    server_round: int = typer.Option(..., "--round"),
    client: str = typer.Option(..., "--client", help="client key id"),
    dest: Path | None = typer.Option(None, "--out", help="file (default: stdout)"),
    as_json: bool = typer.Option(False, "--json", help="JSON instead of C2SP tlog-proof"),
) -> None:
    """Inclusion proof of a client's update against the latest signed checkpoint (C2SP tlog-proof)."""
    import base64

    from flower_chain.ledger.tlog_proof import find_update, prove_inclusion

    ledger = open_or_fail(uri)
    proof = prove_inclusion(ledger, find_update(ledger, server_round, client))
    if as_json:
        text = (
            json.dumps(
                {
                    "format": "flower-chain/inclusion-proof@v1",
                    "index": proof.index,
                    "entry": base64.b64encode(proof.entry).decode(),
                    "proof": [base64.b64encode(h).decode() for h in proof.hashes],
                    "checkpoint": proof.checkpoint,
                },
                indent=2,
            )
            + "\n"
        )
    else:
        text = proof.to_text()
    write_or_print(text, dest)


@ledger_app.command("consistency")
def ledger_consistency(
    uri: str,
    old_size: int = typer.Option(..., "--from", help="log size of the older checkpoint"),
    dest: Path | None = typer.Option(None, "--out"),
) -> None:
    """Consistency proof from an older checkpoint (a block boundary) to the current one."""
    from flower_chain.ledger.tlog_proof import prove_consistency

    ledger = open_or_fail(uri)
    proof = prove_consistency(ledger, old_size)
    write_or_print(proof.to_text(), dest)


@ledger_app.command("export")
@meanings(Meaning((LedgerError,), "", EXIT_FAILED, unless=(LedgerOpenError,)))
def ledger_export(
    uri: str,
    fmt: str = typer.Option("json", "--format", help="json or csv"),
    dest: Path | None = typer.Option(None, "--out"),
) -> None:
    """Every block and entry, flattened (one row per entry)."""
    from flower_chain.ledger.inspect import export_rows

    if fmt not in ("json", "csv"):
        fail(f"--format must be json or csv, not {fmt!r}")
    rows = list(export_rows(open_or_fail(uri)))
    if fmt == "json":
        text = json.dumps(rows, indent=1, default=str) + "\n"
    else:
        buf = io.StringIO()
        fields: list[str] = []
        for r in rows:
            fields += [k for k in r if k not in fields]
        w = csv.DictWriter(buf, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in r.items()})
        text = buf.getvalue()
    write_or_print(text, dest)


@ledger_app.command("repair")
@meanings(
    Meaning((VerificationError,), "still does not verify: ", EXIT_FAILED, not_verified=False),
    Meaning((LedgerError,), "", EXIT_USAGE),
)
def ledger_repair(uri: str) -> None:
    """Drop a torn last line of a JSONL ledger (an append interrupted by a crash), then verify."""
    location = parse_ledger_uri(uri)
    ledger = (
        open_ledger(uri, create=True) if location.path is not None and location.path.exists() else open_or_fail(uri)
    )
    report = verify(ledger)
    out.print(f"{uri}: {report.blocks} blocks verify")

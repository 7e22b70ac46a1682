"""The parts of ``flower-chain ledger verify`` beyond its options: the keyring comparison, the witness check,
the JSON document and the lines of text it prints for a verify report."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flower_chain.cli.common import err, fail, out
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.errors import VerificationError
from flower_chain.ledger.keys import Keyring


def _keyring_difference(ledger: Ledger, keys: Path) -> str:
    """Both directions: keys of DIR the genesis lacks, and genesis keys DIR does not hold ("" when equal)."""
    from flower_chain.ledger.writer import read_genesis

    want = Keyring.from_path(keys).keys
    have = read_genesis(ledger).client_keys
    lacks, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    problems = []
    if lacks:
        problems.append(f"the genesis keyring lacks keys {', '.join(lacks)} from {keys}")
    if extra:
        problems.append(f"the genesis allows keys {', '.join(extra)} that are not in {keys}")
    return "; ".join(problems)


def _check_witnesses(ledger: Ledger, witness: list[str], quorum: int, latest: Sequence[str] = ()) -> Any:
    """The head's witness cosignatures, and each witness's latest cosigned checkpoint in ``latest`` (a URL or a
    file) held by the ledger (a ``ValueError`` for a bad witness key or latest checkpoint is a usage error, exit 2)."""
    from flower_chain.audit.witnessed import verify_witnessed

    notes = [(f"--witness-latest {source}", _latest_note(ledger, source)) for source in latest]
    witnessed = verify_witnessed(ledger, list(witness), quorum=quorum or 1, latest=notes)
    if not witnessed.ok:
        raise VerificationError(f"witness cosignatures: {witnessed.summary()}")
    return witnessed


def _latest_note(ledger: Ledger, source: str) -> str:
    """``--witness-latest SOURCE``: fetched from a witness URL, else read from a file (64 KiB at most)."""
    from flower_chain.ledger.text import safe_text
    from flower_chain.ledger.writer import read_genesis
    from flower_chain.witness.client import WitnessError, fetch_latest

    if source.startswith(("http://", "https://")):
        try:
            return fetch_latest(source, read_genesis(ledger).origin)
        except WitnessError as e:
            fail(f"--witness-latest: cannot fetch the latest checkpoint: {safe_text(str(e), 300)}")
    try:
        with open(source, "rb") as f:
            data = f.read(65537)
    except OSError as e:
        fail(f"--witness-latest {safe_text(source, 200)}: {safe_text(e.strerror or str(e), 200)}")
    if len(data) > 65536:
        fail(f"--witness-latest {safe_text(source, 200)}: over 64 KiB, not a cosigned checkpoint")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        fail(f"--witness-latest {safe_text(source, 200)}: not UTF-8, not a cosigned checkpoint")


def _counter_text(counter: Any) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], str(kv[0]))))


def _verdict_rows(verdicts: Any) -> list[dict[str, Any]]:
    return [{"kind": kind, "reason": reason, "count": n} for (kind, reason), n in sorted(verdicts.items())]


def _verify_json(report: Any, anchors: Any, witnessed: Any, failed: bool, blobs: bool, strict: bool) -> dict[str, Any]:
    return {
        "verified": not failed,
        "anchors": anchors,
        "federation_id": report.federation_id,
        "blocks": report.blocks,
        "entries": report.entries,
        "accepted": report.accepted,
        "rejected": report.rejected,
        "client_signatures_checked": report.client_signatures_checked,
        "verdicts": _verdict_rows(report.verdicts),
        "verdicts_rederived": report.verdicts_rederived,
        "accepted_proven_by_client_signatures": report.accepted_proven,
        "rejected_proven_by_client_signatures": report.rejected_proven,
        "rejected_on_server_evidence": dict(report.rejected_on_server_evidence),
        "not_rederived": dict(report.not_rederived),
        "equivocating_keys": sorted(report.equivocating_keys),
        "blobs_checked": blobs,
        "blob_problems": list(report.blob_problems),
        "strict": strict,
        "arrays_unchecked": report.arrays_unchecked,
        "client_cosignatures": report.client_cosignatures,
        "client_cosigned_heights": {k: sorted(v) for k, v in report.cosigned.items()},
        "witnessed": witnessed.to_dict() if witnessed is not None else None,
        "log_root": report.log_root.hex(),
        "head_hash": report.head_hash.hex(),
        "server_key_id": report.server_key_id,
        "secagg_rounds": report.secagg_rounds,
        "centralized_evaluations_unchecked": sorted(set(report.centralized_evaluations)),
    }


def _client_coverage(report: Any) -> list[str]:
    """Which keyring keys cosigned the checkpoints of which heights, and which never did."""
    from flower_chain.audit.witnessed import height_ranges

    lines = [
        f"key {kid}: cosigned {len(report.cosigned[kid])} checkpoints (heights "
        f"{height_ranges(sorted(report.cosigned[kid]))})"
        for kid in sorted(report.cosigned)
    ]
    never = [kid for kid in report.keyring if kid not in report.cosigned]
    if never:
        lines.append(f"keys that never cosigned: {', '.join(never[:20])}" + (", ..." if len(never) > 20 else ""))
    return lines


def _proof_line(report: Any) -> str:
    """Verdicts that follow from the ledger, and which of them a client's own signature proves."""
    proven = report.accepted_proven + report.rejected_proven
    return (
        f"verdicts re-derived from the ledger: {report.verdicts_rederived}; proven by client signatures: "
        f"{proven} (accepted {report.accepted_proven}, rejected {report.rejected_proven})"
    )


def _print_verified(uri: str, report: Any, anchors: Any, witnessed: Any, blobs: bool, strict: bool) -> None:
    """What verify checked, what it could not, and the verdict line (``NOT VERIFIED (--strict)`` on a gap)."""
    not_rederived, blob_problems, unchecked = report.not_rederived, report.blob_problems, report.arrays_unchecked
    failed = strict and bool(not_rederived or blob_problems or unchecked)
    if anchors is not None:
        todo = anchors["not_anchored"]
        out.print(
            f"anchors: contract {anchors['contract']} (owner {anchors['owner']}) on chain {anchors['chain_id']}: "
            f"{len(anchors['anchored'])} heights match" + (f"; not anchored yet: {todo}" if todo else ""),
            highlight=False,
        )
    for kind in sorted({k for k, _ in report.verdicts}):
        row = {reason: n for (k, reason), n in report.verdicts.items() if k == kind}
        out.print(f"{kind} verdicts: {_counter_text(row)}", highlight=False)
    if witnessed is not None:
        out.print(f"witnesses: {witnessed.summary()}", highlight=False)
        for line in witnessed.coverage_lines():
            out.print(line, highlight=False, markup=False)
    if report.client_cosignatures:
        out.print(f"client cosignatures checked: {report.client_cosignatures}", highlight=False)
        for line in _client_coverage(report):
            out.print(line, highlight=False, markup=False)
    if report.verdicts_rederived or not_rederived:
        out.print(_proof_line(report), highlight=False)
        server_only = report.rejected_on_server_evidence
        if server_only:
            out.print(
                f"rejected on evidence only the server recorded: {_counter_text(server_only)} (consistent with "
                "the ledger, not proven by it: no valid client signature; each node's receipts check its own)",
                highlight=False,
            )
    if not_rederived:
        (err if strict else out).print(
            ("[bold red]FAILED (--strict)[/] " if strict else "")
            + f"not re-derivable from the ledger: {_counter_text(not_rederived)}",
            highlight=False,
        )
    if report.secagg_rounds:  # never a silent pass: say what this verify did not check
        out.print(
            f"not checked: the aggregate of {report.secagg_rounds} SecAgg+ rounds (no plaintext update is "
            f"recorded): flower-chain ledger audit {uri} replays it",
            highlight=False,
        )
    central = report.centralized_evaluations
    if central:  # the server evaluated its own model: no client signed these numbers
        rounds = ", ".join(str(r) for r in sorted(set(central))[:20]) + (", ..." if len(set(central)) > 20 else "")
        out.print(
            f"not checked: {len(central)} centralized evaluation results (rounds {rounds}) are unchecked "
            "claims of the server (no client signed them)",
            highlight=False,
        )
    if unchecked and not failed:
        out.print(
            f"not checked: the array rules (names, shapes, dtypes, finite values) of {unchecked} accepted "
            + (
                "updates: add --blobs to check them against the stored arrays"
                if not blobs
                else "updates whose arrays are not stored (--strict fails on this)"
            ),
            highlight=False,
        )
    for kid in sorted(report.equivocating_keys):
        err.print(
            f"[bold yellow]WARNING[/] key {kid} signed two different statements for one round (a stolen "
            f"key?): revoke it with  flower-chain keys revoke {uri} {kid} --server-key KEY",
            highlight=False,
        )
    for problem in blob_problems:  # an altered blob fails verify itself; these are blobs that are not stored
        err.print(("[bold red]BLOB[/] " if strict else "[bold yellow]BLOB[/] ") + problem, highlight=False)
    if failed:
        gaps = [f"{sum(not_rederived.values())} verdicts cannot be re-derived from the ledger"] if not_rederived else []
        gaps += [f"{len(blob_problems)} blobs are missing"] if blob_problems else []
        gaps += (
            [f"{unchecked} accepted updates' arrays are not stored (their array rules unchecked)"] if unchecked else []
        )
        err.print(f"[bold red]NOT VERIFIED (--strict)[/] {uri}: {'; '.join(gaps)}", highlight=False)
        return
    ev_accepted = sum(n for (kind, reason), n in report.verdicts.items() if kind == "evaluate" and reason == "ok")
    ev_rejected = sum(n for (kind, reason), n in report.verdicts.items() if kind == "evaluate" and reason != "ok")
    out.print(
        f"[bold green]VERIFIED[/] {uri}: federation {report.federation_id}, {report.blocks} blocks, "
        f"{report.entries} entries (train: {report.accepted} accepted, {report.rejected} rejected; "
        f"evaluate: {ev_accepted} accepted, {ev_rejected} rejected; "
        f"{report.client_signatures_checked} client signatures checked"
        + (", stored blobs checked" if blobs else "")
        + f"), server key {report.server_key_id}",
        highlight=False,
    )

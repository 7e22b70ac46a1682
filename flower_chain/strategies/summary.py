"""The end-of-run summary a ledger strategy logs: where the ledger is, what was judged, how to check it.

The commands it prints pin what the strategy was configured with, as absolute paths: the server's
public key (``server.pub`` beside a ``server.key`` given as a path, as ``flower-chain keys init``
writes them) and the keyring directory, so the ``verify`` a user copies does not trust the key the
ledger's own genesis names.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from flower_chain.ledger.policy import OK
from flower_chain.strategies.options import LedgerOptions


def pins(options: LedgerOptions) -> str:
    """`` --server-key PUB --keys DIR`` for the key and keyring the strategy read from files ("" for objects)."""
    out = ""
    if isinstance(options.server_key, (str, Path)):
        key = Path(options.server_key).resolve()
        pub = key.with_suffix(".pub")
        out += f" --server-key {pub}" if key.suffix == ".key" and pub.is_file() else " --server-key <the server's .pub>"
    if isinstance(options.keyring, (str, Path)):
        out += f" --keys {Path(options.keyring).resolve()}"
    return out


def summary_lines(
    federation_id: str, uri: str, blocks: int, entries: int, verdicts: Counter[tuple[str, str]], options: LedgerOptions
) -> list[str]:
    """The lines: the ledger, this run's verdicts by kind and reason, how to audit and verify it.

    Parameters
    ----------
    federation_id, uri : str
        The federation and its ledger.
    blocks, entries : int
        The ledger's size.
    verdicts : Counter
        ``(kind, reason) -> replies`` judged by this server process.
    options : LedgerOptions
        What the strategy was configured with (the paths the commands pin).
    """
    lines = [f"flower-chain: federation {federation_id}, ledger {uri} ({blocks} blocks, {entries} entries)"]
    for kind in ("train", "evaluate", "secagg"):  # secagg: SecAgg+ stage replies (LedgerSecAggPlusWorkflow)
        got = {r: n for (k, r), n in verdicts.items() if k == kind}
        if got:
            ok = got.pop(OK, 0)
            rej = ", ".join(f"{r} {n}" for r, n in sorted(got.items(), key=lambda t: (-t[1], t[0])))
            lines.append(
                f"  {'secagg stage' if kind == 'secagg' else kind} replies: {ok} accepted, {sum(got.values())} rejected"
                + (f" ({rej})" if rej else "")
            )
    if not verdicts:
        lines.append("  no replies were judged in this run")
    lines.append(f"  audit it:   flower-chain ledger audit {uri}")
    lines.append(f"  verify it:  flower-chain ledger verify {uri}{pins(options)}")
    return lines

"""What witnesses vouched for: the auditor's check of the cosigned checkpoints a ledger stores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.checkpoint import Checkpoint, HeadMismatchError, check_head, head_of, verify_checkpoint
from flower_chain.ledger.cosignature import (
    CosignerKey,
    note_body,
    parse_cosigner_key,
    stored_cosigned_note,
    verify_cosigned_checkpoint,
)
from flower_chain.ledger.errors import CheckpointError, KeyFileError
from flower_chain.ledger.text import safe_text
from flower_chain.ledger.writer import read_genesis

__all__ = ["WitnessReport", "height_ranges", "verify_witnessed"]


@dataclass
class WitnessReport:
    """What :func:`verify_witnessed` found.

    Attributes
    ----------
    blocks : int
        Blocks checked.
    quorum : int
        Trusted cosignatures a checkpoint needs to count as witnessed.
    counts : dict
        Block height -> valid cosignatures by trusted witnesses on its stored note (0: none stored).
    witnessed : list of int
        Heights whose stored checkpoint has the quorum.
    uncovered : list of int
        Heights after the last witnessed checkpoint. A witnessed checkpoint of size S
        vouches for every block up to S (the witness checked consistency with all it
        cosigned before, and ``verify`` checks the log's continuity), so only these are unwitnessed.
    problems : list of str
        Stored notes that are for another checkpoint than their block's, not signed by the
        log key, or carry a trusted witness's line that does not verify.
    coverage : dict
        Trusted witness (``NAME`` of its verifier key) -> heights whose stored note it validly cosigned,
        each height once however often its line is repeated; a trusted key that never cosigned maps to [].
    head_mismatches : list of HeadMismatchError
        Checkpoints (stored or cosigned) whose head line names another block than the ledger's block at
        their size, or that lack one after the log started naming its head: each carries the height, the
        ledger's block hash and what the checkpoint names (also in ``problems``).
    latest : list of dict
        Each witness's latest cosigned checkpoint compared (``verify --witness-latest``): its source, the
        witnesses that cosigned it, its size and head, and ``problem`` (a rollback or a fork, also in
        ``problems``; empty when this ledger holds that checkpoint).
    """

    blocks: int = 0
    quorum: int = 1
    counts: dict[int, int] = field(default_factory=dict)
    witnessed: list[int] = field(default_factory=list)
    uncovered: list[int] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    coverage: dict[str, list[int]] = field(default_factory=dict)
    head_mismatches: list[HeadMismatchError] = field(default_factory=list)
    latest: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no stored cosignature is bad and the head's checkpoint has the quorum."""
        return self.blocks > 0 and not self.problems and not self.uncovered

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "blocks": self.blocks,
            "quorum": self.quorum,
            "witnessed": len(self.witnessed),
            "uncovered": self.uncovered,
            "problems": self.problems,
            "coverage": {name: list(heights) for name, heights in self.coverage.items()},
            "head_mismatches": [
                {
                    "height": m.height,
                    "ledger_block_hash": m.block_hash.hex(),
                    "named_height": m.named.height if m.named else None,
                    "named_block_hash": m.named.block_hash.hex() if m.named else None,
                }
                for m in self.head_mismatches
            ],
            "latest": list(self.latest),
        }

    def coverage_lines(self) -> list[str]:
        """One line per trusted witness: the heights it cosigned, or that it never did."""
        out = []
        for name, heights in sorted(self.coverage.items()):
            label = safe_text(name, 80)
            if heights:
                out.append(
                    f"witness {label}: cosigned {len(heights)} of {self.blocks} checkpoints "
                    f"(heights {height_ranges(heights)})"
                )
            else:
                out.append(f"witness {label}: never cosigned a checkpoint of this ledger")
        return out

    def summary(self) -> str:
        """One line for people."""
        if self.ok:
            return (
                f"witnessed: {len(self.witnessed)} of {self.blocks} checkpoints carry {self.quorum}+ trusted "
                f"cosignature(s); the head (height {self.blocks - 1}) is witnessed"
            )
        why = (
            self.problems[0]
            if self.problems
            else (
                f"blocks {self.uncovered[0]}..{self.uncovered[-1]} follow the last checkpoint with {self.quorum} trusted "
                "cosignature(s)"
                if self.uncovered
                else "the ledger is empty"
            )
        )
        return f"NOT witnessed: {why}"


def height_ranges(heights: Sequence[int], most: int = 12) -> str:
    """``0-4, 7, 9-12`` (at most ``most`` runs, then ``...``)."""
    runs: list[list[int]] = []
    for h in sorted(set(heights)):
        if runs and h == runs[-1][1] + 1:
            runs[-1][1] = h
        else:
            runs.append([h, h])
    text = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in runs[:most])
    return text + (", ..." if len(runs) > most else "")


def verify_witnessed(
    ledger: Ledger,
    witness_keys: Sequence[str | CosignerKey],
    quorum: int = 1,
    *,
    server_key: bytes | None = None,
    latest: Sequence[tuple[str, str]] = (),
) -> WitnessReport:
    """Check the stored cosignatures of every block against trusted witness keys.

    Parameters
    ----------
    ledger : Ledger
        The ledger (its own integrity is :func:`flower_chain.ledger.verify`'s job).
    witness_keys : sequence of str or CosignerKey
        Trusted witnesses, as cosigner verifier keys ``NAME+KEYID+BASE64``.
    quorum : int
        Distinct trusted witnesses a checkpoint needs (at least 1).
    server_key : bytes, optional
        The log's raw Ed25519 key (default: the genesis's).
    latest : sequence of (str, str)
        ``(source, cosigned note)``: a witness's latest cosigned checkpoint of this log (fetched from it or
        kept from earlier). The ledger must hold it: a larger size or a later head height is a rollback, another
        block at its height a fork (both NOT witnessed, naming both checkpoints).

    Returns
    -------
    WitnessReport
        ``.ok`` when no stored note is bad and the head block's checkpoint has the quorum.

    Raises
    ------
    KeyFileError
        A witness key does not parse.
    ValueError
        A quorum below 1 or above the number of distinct trusted keys, or a ``latest`` note that is not this
        log's checkpoint signed by its key and cosigned by a trusted witness (it proves nothing).
    """
    keys = [k if isinstance(k, CosignerKey) else parse_cosigner_key(str(k)) for k in witness_keys]
    distinct = {(k.name, k.key_id) for k in keys}
    if not 1 <= int(quorum) <= len(distinct):
        raise ValueError(f"the witness quorum must be between 1 and {len(distinct)} (the trusted keys given)")
    genesis = read_genesis(ledger)
    log_key = bytes(server_key) if server_key is not None else genesis.server_key
    report = WitnessReport(quorum=int(quorum), coverage={k.name: [] for k in keys})
    last_witnessed, bound = -1, False
    for block in ledger.blocks():
        h = block.header.height
        report.blocks += 1
        stored = stored_cosigned_note(ledger, block)
        count = 0
        try:  # the block's own checkpoint names it (once one checkpoint names its head block, every later one must)
            bound = check_head(Checkpoint.from_text(note_body(block.checkpoint)), h, block.hash, required=bound)
        except (CheckpointError, KeyFileError) as e:
            _head_problem(report, h, "the stored checkpoint", e)
        if stored is not None:
            try:
                if note_body(stored) != note_body(block.checkpoint):
                    _witnessed_head(report, block, stored, bound)
                    raise CheckpointError("the stored cosigned note is for another checkpoint than the block's")
                verify_checkpoint(stored, log_key, origin=genesis.origin)
                cosigners = verify_cosigned_checkpoint(stored, log_key, keys, 0, origin=genesis.origin)[1]
                count = len(cosigners)  # by witness: a repeated line counts once
                for name in cosigners:
                    report.coverage.setdefault(name, []).append(h)
            except _Reported:
                count = 0
            except (CheckpointError, KeyFileError) as e:
                report.problems.append(f"block {h}: {safe_text(str(e), 300)}")
                count = 0
        report.counts[h] = count
        if count >= report.quorum:
            report.witnessed.append(h)
            last_witnessed = h
    report.uncovered = [h for h in sorted(report.counts) if h > last_witnessed]
    for source, note in latest:
        _compare_latest(report, ledger, source, note, log_key, genesis.origin, keys)
    return report


def _compare_latest(
    report: WitnessReport, ledger: Ledger, source: str, note: str, log_key: bytes, origin: str, keys: list[CosignerKey]
) -> None:
    """A witness's latest cosigned checkpoint against the ledger: the ledger must hold it (docstring above)."""
    where = safe_text(source, 200)
    try:
        cp, cosigners = verify_cosigned_checkpoint(note, log_key, keys, 1, origin=origin)
        named = head_of(cp)
    except (CheckpointError, KeyFileError) as e:
        raise ValueError(f"{where}: not a checkpoint of this log cosigned by a trusted witness: {e}") from None
    head = ledger.head()
    entry: dict[str, Any] = {"source": source, "witnesses": sorted(cosigners), "size": cp.size, "problem": ""}
    entry["head_height"], entry["head_hash"] = (named.height, named.block_hash.hex()) if named else (None, None)
    theirs = f"size {cp.size}" + (f", head block {named.height} {named.block_hash.hex()}" if named else "")
    who = ", ".join(safe_text(n, 80) for n in sorted(cosigners))
    if head is None:
        return
    ours = f"size {head.header.log_size}, head block {head.header.height} {head.hash.hex()}"
    if cp.size > head.header.log_size or (named is not None and named.height > head.header.height):
        entry["problem"] = (
            f"rollback: witness {who} cosigned this log's checkpoint of {theirs} ({where}); the ledger ends "
            f"before it, at {ours}"
        )
    else:
        block = _block_of(ledger, cp, named)
        if (
            block is None
            or (block.header.log_size, block.header.log_root) != (cp.size, cp.root_hash)
            or (named is not None and block.hash != named.block_hash)
        ):
            at = f"block {block.header.height} {block.hash.hex()}" if block is not None else "no block of that size"
            entry["problem"] = (
                f"fork: witness {who} cosigned this log's checkpoint of {theirs} ({where}); the ledger holds {at} "
                f"there (it ends at {ours})"
            )
    report.latest.append(entry)
    if entry["problem"]:
        report.problems.append(entry["problem"])


def _block_of(ledger: Ledger, cp: Checkpoint, named: Any) -> StoredBlock | None:
    """The ledger's block a checkpoint names (its head line), else the last block of its size."""
    if named is not None:
        return ledger.block(named.height)
    found = None
    for block in ledger.blocks():
        if block.header.log_size == cp.size:
            found = block
        elif block.header.log_size > cp.size:
            break
    return found


class _Reported(Exception):
    """A problem already added to the report (the cosigned note does not count)."""


def _witnessed_head(report: WitnessReport, block: StoredBlock, stored: str, bound: bool) -> None:
    """A cosigned note of this block's log size and root that names another head block than this one: the
    header was re-signed after the witnesses cosigned (raises :class:`_Reported` once the problem is added)."""
    cp = Checkpoint.from_text(note_body(stored))
    if (cp.size, cp.root_hash) != (block.header.log_size, block.header.log_root):
        return  # another checkpoint altogether (a fork): the caller says so
    try:
        check_head(cp, block.header.height, block.hash, required=bound)
    except CheckpointError as e:
        raise _Reported(_head_problem(report, block.header.height, "the witnessed checkpoint", e)) from e


def _head_problem(report: WitnessReport, height: int, what: str, e: Exception) -> str:
    """Add a head line problem of block ``height`` to ``report`` (NOT VERIFIED: names both hashes)."""
    text = f"block {height}: {what} does not name the ledger's block: {safe_text(str(e), 400)}"
    report.problems.append(text)
    if isinstance(e, HeadMismatchError):
        report.head_mismatches.append(e)
    return text

"""Reading SecAgg+ rounds off a ledger into per-round transcripts (docs/secagg.md §2), never raising.

:func:`read_rounds` walks the blocks once and groups the ``secagg`` entries by round; anything that does
not decode or does not fit becomes a :class:`Finding` naming round, stage and node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from flower_chain.ledger.arrays import ARRAY_DIGEST_VERSION
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.block import StoredBlock
from flower_chain.ledger.entries import (
    ACCEPTED,
    RevocationEntry,
    UpdateEntry,
    decode_entry,
)
from flower_chain.ledger.errors import EncodingError, LedgerError
from flower_chain.ledger.secagg import (
    CLIENT_STAGES,
    COMMIT,
    HEADER,
    MASKED,
    RESULT,
    SETUP,
    SHARE_KEYS,
    SecAggEntry,
    StageStatement,
    check_commit,
    check_header,
    check_result,
    header_digest,
)
from flower_chain.strategies.secagg_unmask import public_key_problem


@dataclass(frozen=True)
class Finding:
    """One thing the SecAgg+ audit found: ``severity`` is ``error`` (the check fails) or ``warning``."""

    round: int
    stage: str
    node: str
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = f"round {self.round}, stage {self.stage}" + (f", node {self.node}" if self.node else "")
        return f"{self.severity}: {where}: {self.message}"


@dataclass
class Record:
    """A node's stage record with its decoded statement (``None`` when it does not decode)."""

    entry: SecAggEntry
    index: int
    statement: StageStatement | None


@dataclass
class RoundTranscript:
    """Everything the ledger holds about one SecAgg+ round."""

    round: int
    header: dict | None = None
    round_id: bytes = b""
    records: dict[str, list[Record]] = field(default_factory=lambda: {s: [] for s in CLIENT_STAGES})
    commit: dict | None = None
    commit_index: int = -1
    commit_block: StoredBlock | None = None
    later_commits: list[tuple[int, bytes]] = field(default_factory=list)  # (log size, root) of second commit blocks
    result: dict | None = None
    result_block: StoredBlock | None = None
    revoked: frozenset = frozenset()
    plain_updates: int = 0
    digest_version: int = ARRAY_DIGEST_VERSION  # the ledger's (its genesis'), set by the auditor

    def accepted(self, stage: str) -> dict[str, Record]:
        """The accepted records of a stage by node (the first one of a node when the ledger has more)."""
        out: dict[str, Record] = {}
        for r in self.records[stage]:
            if r.entry.verdict == ACCEPTED and r.statement is not None:
                out.setdefault(r.entry.node_id, r)
        return out


def read_rounds(ledger: Ledger, findings: list[Finding]) -> dict[int, RoundTranscript]:
    """The SecAgg+ rounds of ``ledger`` by round number."""
    rounds: dict[int, RoundTranscript] = {}
    revoked: set[str] = set()
    try:
        blocks = list(ledger.blocks())
    except LedgerError as e:
        findings.append(Finding(0, "ledger", "", f"the ledger cannot be read: {e}"))
        return rounds
    index = 0
    for block in blocks:
        count = block.header.entry_count
        try:
            datas = list(ledger.entries(index, index + count))
        except LedgerError as e:
            findings.append(Finding(block.header.round, "ledger", "", f"block {block.header.height}: {e}"))
            datas = []
        for i, data in enumerate(datas):
            _take(data, index + i, block, rounds, revoked, findings)
        index += count
    return rounds


def _take(data: bytes, index: int, block: StoredBlock, rounds: dict, revoked: set, findings: list) -> None:
    r = block.header.round
    try:
        entry = decode_entry(data)
    except EncodingError as e:
        findings.append(Finding(r, "ledger", "", f"entry {index} does not decode: {e}"))
        return
    if isinstance(entry, RevocationEntry):
        revoked.add(entry.key_id)
        return
    if isinstance(entry, UpdateEntry) and entry.kind == "train" and r in rounds:
        rounds[r].plain_updates += 1
    if not isinstance(entry, SecAggEntry):
        return
    if entry.round != r:
        findings.append(
            Finding(r, entry.stage, entry.node_id, f"a record of round {entry.round} in a block of round {r}")
        )
        return
    t = rounds.setdefault(r, RoundTranscript(r, revoked=frozenset(revoked)))
    if entry.stage in CLIENT_STAGES:
        try:
            st = StageStatement.from_bytes(entry.statement) if entry.statement else None
        except EncodingError as e:
            st = None
            if entry.verdict == ACCEPTED:
                findings.append(Finding(r, entry.stage, entry.node_id, f"accepted statement does not decode: {e}"))
        t.records[entry.stage].append(Record(entry, index, st))
    elif entry.stage == HEADER:
        _server(t, "header", entry, findings, check_header)
        if t.header is not None:
            t.round_id = header_digest(t.header)
    elif entry.stage == COMMIT:
        if t.commit is not None:
            t.later_commits.append((block.header.log_size, block.header.log_root))
        if _server(t, "commit", entry, findings, check_commit):
            t.commit_index, t.commit_block = index, block
    elif entry.stage == RESULT:
        if _server(t, "result", entry, findings, check_result):
            t.result_block = block
    else:
        findings.append(Finding(r, entry.stage, entry.node_id, "unknown SecAgg+ record stage"))


def _server(t: RoundTranscript, name: str, entry: SecAggEntry, findings: list, check) -> bool:
    if getattr(t, name) is not None:
        what = "a second commit for the round" if name == "commit" else f"a second {name} record"
        findings.append(Finding(t.round, name, "", what))
        return False
    try:
        setattr(t, name, check(entry.data))
    except EncodingError as e:
        findings.append(Finding(t.round, name, "", f"malformed {name}: {e}"))
        return False
    return True


def content_problem(t: RoundTranscript, stage: str, nid: str, reply: dict) -> str | None:
    """What is wrong with the signed content of an accepted reply itself (the server must have rejected it)."""
    if stage == SETUP:
        for name in ("pk1", "pk2"):  # parsed as the neighbours parse it
            problem = public_key_problem(reply[name])
            if problem:
                return f"accepted a public key {name} that {problem}: its neighbours cannot use it"
    if stage == SHARE_KEYS and sorted(reply["shares"]) != sorted(set(reply["sent"]) | {nid}):
        return "accepted without a share commitment for each node it sent shares to and itself"
    if stage == MASKED and t.header is not None and reply["base_digest"] != t.header["base_digest"]:
        return "the signed masked input names another base model than the header's base_digest"
    return None

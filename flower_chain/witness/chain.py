"""The header chain an add-checkpoint request carries (our extension of c2sp.org/tlog-witness).

A checkpoint's ``flower-chain/head`` line names one block; the witness also checks that the blocks between the
head it cosigned last and the new one link, so a server cannot re-sign an earlier header (another
``model_after``, same entries) and then gather cosignatures for a block appended after it. The request's
first part holds, after the ``old`` and proof lines, one line per block header::

    flower-chain/header <base64 of the header bytes (docs/ledger-format.md §4)>

from the height after the head the witness cosigned last (or any earlier height down to a block whose log
size is the old size) up to the head the checkpoint names; at most :data:`MAX_HEADERS` lines of at most
:data:`MAX_HEADER_BYTES` bytes each. A longer gap is closed by submitting earlier blocks' checkpoints first
(:class:`~flower_chain.witness.client.WitnessPool` does). Standard library and ``flower_chain.ledger`` only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from flower_chain.ledger.block import BlockHeader
from flower_chain.ledger.checkpoint import Checkpoint, HeadLine
from flower_chain.ledger.errors import EncodingError

HEADER_TAG = "flower-chain/header"
MAX_HEADERS = 4096
"""Header lines one request may carry."""
MAX_HEADER_BYTES = 4096
"""Bytes one header may have (a v1 header is about 460 bytes plus the federation id)."""
MAX_HEADERS_TOTAL = 4 * 1024 * 1024
"""Header bytes (decoded) one request may carry in all: the log server splits a longer chain."""


@dataclass(frozen=True)
class ChainHeader:
    """One decoded header line: the header and its block hash."""

    header: BlockHeader
    block_hash: bytes


class ChainRefusal(Exception):
    """The header lines are refused: ``status`` 400 (malformed), 409 (do not link), 422 (incomplete)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def header_line(header_bytes: bytes) -> str:
    """``flower-chain/header <base64>`` (no newline)."""
    return f"{HEADER_TAG} {base64.b64encode(bytes(header_bytes)).decode()}"


def split_lines(lines: Sequence[str]) -> tuple[list[str], list[str]]:
    """The request's lines after ``old N`` → (proof lines in their order, header payloads).

    A line is a header line when its first word is ``flower-chain/header`` (a proof line is base64, never
    with a space), so header lines may come anywhere among the proof lines: the answer does not depend on it.
    """
    proof, headers = [], []
    prefix = HEADER_TAG + " "
    for line in lines:
        if line.startswith(prefix):
            headers.append(line[len(prefix) :])
        else:
            proof.append(line)
    return proof, headers


def decode_headers(payloads: Sequence[str]) -> list[ChainHeader]:
    """Decode the header lines and sort them by height (their order in the request does not matter).

    Raises
    ------
    ChainRefusal
        400: more than :data:`MAX_HEADERS` lines or :data:`MAX_HEADERS_TOTAL` bytes, a line that is not
        canonical base64, a header over :data:`MAX_HEADER_BYTES` or that does not decode, two of one height.
    """
    if len(payloads) > MAX_HEADERS:
        raise ChainRefusal(400, f"more than {MAX_HEADERS} header lines: submit an earlier block's checkpoint first")
    total, out, heights = 0, [], set()
    for text in payloads:
        if len(text) > (MAX_HEADER_BYTES + 2) // 3 * 4:
            raise ChainRefusal(400, f"a header line holds more than {MAX_HEADER_BYTES} bytes")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise ChainRefusal(400, "a header line is not base64") from None
        if base64.b64encode(raw).decode() != text:
            raise ChainRefusal(400, "a header line is not canonical base64")
        total += len(raw)
        if total > MAX_HEADERS_TOTAL:
            raise ChainRefusal(400, f"the header lines hold more than {MAX_HEADERS_TOTAL} bytes")
        try:
            header = BlockHeader.from_bytes(raw)
        except (EncodingError, ValueError, TypeError, RecursionError) as e:
            raise ChainRefusal(400, f"a header line is not a block header: {str(e)[:200]}") from None
        if header.height in heights:
            raise ChainRefusal(400, f"two header lines of height {header.height}")
        heights.add(header.height)
        out.append(ChainHeader(header, hashlib.sha256(raw).digest()))
    return sorted(out, key=lambda c: c.header.height)


def check_chain(chain: Sequence[ChainHeader], cp: Checkpoint, head: HeadLine | None) -> None:
    """The header lines form one chain ending at the block the checkpoint names (before any stored state).

    Raises
    ------
    ChainRefusal
        400: header lines for a checkpoint without a head line; 422: a height skipped, a ``prev_hash`` that
        is not the hash of the header before, or a last header that is not the named block (height, hash,
        log size and root of the checkpoint).
    """
    if not chain:
        return
    if head is None:
        raise ChainRefusal(400, "header lines need a checkpoint that names its head block (flower-chain/head)")
    for before, after in zip(chain, chain[1:]):
        if after.header.height != before.header.height + 1:
            raise ChainRefusal(
                422, f"the header lines skip from height {before.header.height} to {after.header.height}"
            )
        if after.header.prev_hash != before.block_hash:
            raise ChainRefusal(
                422,
                f"header {after.header.height}'s prev_hash {_b64(after.header.prev_hash)} is not the hash "
                f"{_b64(before.block_hash)} of header {before.header.height}",
            )
    last = chain[-1]
    if (last.header.height, last.block_hash) != (head.height, head.block_hash):
        raise ChainRefusal(
            422,
            f"the last header line (height {last.header.height}, hash {_b64(last.block_hash)}) is not the head "
            f"block the checkpoint names (height {head.height}, hash {_b64(head.block_hash)})",
        )
    if (last.header.log_size, last.header.log_root) != (cp.size, cp.root_hash):
        raise ChainRefusal(422, "the head header's log size and root are not the checkpoint's")


def check_link(chain: Sequence[ChainHeader], stored: HeadLine, head: HeadLine) -> None:
    """The chain reaches the head cosigned last: run only when ``head`` is later than ``stored``.

    Raises
    ------
    ChainRefusal
        422: no header lines, or they start after ``stored.height + 1``; 409: the header after the stored
        head does not name its hash, or the header of the stored height is another block (the message is
        the evidence: both hashes).
    """
    if not chain or chain[0].header.height > stored.height + 1:
        first = f"start at height {chain[0].header.height}" if chain else "are missing"
        raise ChainRefusal(
            422,
            f"the header lines {first}: they must run from height {stored.height + 1} (after the head this "
            f"witness cosigned last) to {head.height}",
        )
    cosigned = f"cosigned last: flower-chain/head {stored.height} {_b64(stored.block_hash)}"
    for c in chain:
        if c.header.height == stored.height and c.block_hash != stored.block_hash:
            raise ChainRefusal(
                409,
                f"the header chain does not link to the head this witness cosigned\n{cosigned}\n"
                f"header {stored.height} of this request hashes to {_b64(c.block_hash)}",
            )
        if c.header.height == stored.height + 1 and c.header.prev_hash != stored.block_hash:
            raise ChainRefusal(
                409,
                f"the header chain does not link to the head this witness cosigned\n{cosigned}\n"
                f"header {c.header.height} of this request has prev_hash {_b64(c.header.prev_hash)}",
            )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()

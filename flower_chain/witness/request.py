"""Parsing an add-checkpoint request body (c2sp.org/tlog-witness plus our header lines); never raises."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from flower_chain.ledger import merkle
from flower_chain.ledger.text import is_decimal
from flower_chain.witness.chain import HEADER_TAG, MAX_HEADERS, MAX_HEADERS_TOTAL, split_lines

MAX_PROOF_LINES = 63
MAX_NOTE_BYTES = 64 * 1024
"""The request without its header lines (old size, proof, signed note)."""
MAX_BODY_BYTES = MAX_NOTE_BYTES + MAX_HEADERS_TOTAL * 4 // 3 + MAX_HEADERS * (len(HEADER_TAG) + 7)
"""The whole request, header lines included (about 5.8 MiB)."""


@dataclass(frozen=True)
class Reply:
    """An HTTP answer: status, body and content type."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


def parse_request(body: bytes) -> tuple[int, list[bytes], list[str], str] | Reply:
    """``(old size, proof hashes, header line payloads, signed note)`` or the 400/413 refusal."""
    if len(body) > MAX_BODY_BYTES:
        return Reply(413, b"request body too large\n")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return Reply(400, b"request body is not UTF-8\n")
    head, sep, note = text.partition("\n\n")
    if not sep or not note:
        return Reply(400, b"no empty line between the old size and proof lines and the checkpoint\n")
    lines = head.split("\n")
    first = lines[0]
    if not first.startswith("old "):
        return Reply(400, b"the first line must be 'old <size>'\n")
    size_s = first[4:]
    if not is_decimal(size_s) or (len(size_s) > 1 and size_s[0] == "0") or len(size_s) > 20:
        return Reply(400, b"the old size must be a decimal number without leading zeros\n")
    proof_lines, header_payloads = split_lines(lines[1:])
    if len(body) - sum(len(p) + len(HEADER_TAG) + 2 for p in header_payloads) > MAX_NOTE_BYTES:
        return Reply(413, b"request body too large (without its header lines)\n")
    if len(proof_lines) > MAX_PROOF_LINES:
        return Reply(400, f"more than {MAX_PROOF_LINES} consistency proof lines\n".encode())
    proof = []
    for pl in proof_lines:
        try:
            h = base64.b64decode(pl, validate=True)
        except (binascii.Error, ValueError):
            return Reply(400, b"a consistency proof line is not base64\n")
        if len(h) != merkle.HASH_SIZE:
            return Reply(400, b"a consistency proof line is not a 32-byte hash\n")
        proof.append(h)
    return int(size_s), proof, header_payloads, note

"""Deeply nested JSON in every file a command reads, in a process whose recursion limit a library raised.

py-evm and py_ecc (pulled in by the EVM anchor tooling) raise Python's recursion limit to 100,000 when
imported; Python's C JSON decoder then recurses past the C stack on a document nested a million levels deep
and the process dies of a segmentation fault (CI saw it). Every reader of outside JSON goes through
:mod:`flower_chain.ledger.json_input`, which measures the nesting first: each case here must end in the
reader's own error, in a child process with the limit raised, with exit status 0.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

DEEP = 1_000_000

SCRIPT = textwrap.dedent(
    f"""
    import sys, tempfile
    from pathlib import Path
    sys.setrecursionlimit(10**6)  # what importing py_ecc or eth does (to 100,000), and more
    deep = b"[" * {DEEP}
    tmp = Path(tempfile.mkdtemp())
    seen = []

    from flower_chain.ledger.backends.jsonl import JSONLLedger, MAGIC
    from flower_chain.ledger.errors import LedgerError
    import json
    p = tmp / "l.jsonl"
    p.write_bytes(json.dumps(MAGIC).encode() + b"\\n" + deep + b"\\n")
    try:
        JSONLLedger(p)
    except LedgerError as e:
        seen.append(("jsonl", str(e)))
    p.write_bytes(deep + b"\\n")
    try:
        JSONLLedger(p)
    except LedgerError as e:
        seen.append(("jsonl-magic", str(e)))
    # UTF-16: U+2200 is the bytes 00 22, a quote to a byte-level count (json.loads(bytes) guesses UTF-16)
    hidden = ('["\\u2200",' + "[" * {DEEP} + "]" * {DEEP} + "]").encode("utf-16-le")
    p.write_bytes(json.dumps(MAGIC).encode() + b"\\n" + hidden.replace(b"\\n", b"") + b"\\n")
    try:
        JSONLLedger(p)
    except LedgerError as e:
        seen.append(("jsonl-utf16", str(e)))

    from flower_chain.ledger.tlog_proof import ConsistencyProof
    from flower_chain.ledger.errors import ProofError
    try:
        ConsistencyProof.from_text(deep.decode())
    except ProofError as e:
        seen.append(("consistency", str(e)))

    from flower_chain.audit.model_files import read_safetensors
    import struct
    try:
        read_safetensors(struct.pack("<Q", len(deep)) + deep)
    except ValueError as e:
        seen.append(("safetensors", str(e)))

    from flower_chain.audit.model_signing import check_bundle, SIGNATURE
    (tmp / SIGNATURE).write_bytes(deep)
    seen.append(("bundle", " ".join(check_bundle(tmp, "not a key"))))

    from flower_chain.audit.provenance_check import read_envelope, ENVELOPE
    from flower_chain.audit.provenance import ProvenanceError
    (tmp / ENVELOPE).write_bytes(deep)
    try:
        read_envelope(tmp)
    except ProvenanceError as e:
        seen.append(("envelope", str(e)))

    for name, text in seen:
        print(name, "|", text)
    """
)


def test_every_json_reader_refuses_deep_nesting_without_crashing_under_a_raised_recursion_limit():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    lines = dict(line.split(" | ", 1) for line in r.stdout.splitlines())
    assert set(lines) == {"jsonl", "jsonl-magic", "jsonl-utf16", "consistency", "safetensors", "bundle", "envelope"}, (
        r.stdout
    )
    assert "is not JSON" in lines["jsonl-utf16"], lines["jsonl-utf16"]
    for name in ("jsonl", "consistency", "safetensors", "envelope"):
        assert "nested too deeply" in lines[name], (name, lines[name])
    assert "is not a flower-chain JSONL ledger" in lines["jsonl-magic"]
    assert "not a model-signing bundle" in lines["bundle"]

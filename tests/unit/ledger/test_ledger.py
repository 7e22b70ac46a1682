"""The ledger: encoding, entries, checkpoints, backends, writer, proofs and streaming verify."""

from __future__ import annotations

import base64
import json
import math
import sqlite3
import textwrap

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger import (
    CheckpointError,
    EncodingError,
    LedgerCorruptError,
    LedgerError,
    LedgerOpenError,
    LedgerWriter,
    VerificationError,
    decode_entry,
    merkle,
    open_ledger,
    proofs,
    verify,
)
from flower_chain.ledger.arrays import array_digest, decode_arrays, encode_arrays
from flower_chain.ledger.checkpoint import (
    Checkpoint,
    parse_verifier_key,
    sign_checkpoint,
    verifier_key,
    verify_checkpoint,
)
from flower_chain.ledger.encoding import decode, encode
from flower_chain.ledger.keys import raw_public

BACKENDS = ["memory", "sqlite", "jsonl", "postgresql"]


# --- canonical encoding ---------------------------------------------------------------------------


def test_encoding_roundtrip_and_determinism():
    v = {"b": [1, -2, 2**62, 1.5, float("inf")], "a": b"\x00\xff", "c": {"z": None, "y": True, "x": "é"}}
    data = encode(v)
    assert decode(data) == v
    assert encode({"c": v["c"], "a": v["a"], "b": v["b"]}) == data  # key order does not matter
    assert data.hex()[:10] == "0800000003"  # map of 3
    assert math.isnan(decode(encode(float("nan"))))


def _spec_encode(v) -> bytes:
    """CE1 as docs/ledger-format.md §2 specifies it, written independently of the encoder (slow, plain)."""
    import struct

    if v is None:
        return b"\x00"
    if isinstance(v, (bool, np.bool_)):
        return b"\x02" if v else b"\x01"
    if isinstance(v, (int, np.integer)):
        if not -(2**63) <= int(v) < 2**63:
            raise EncodingError("range")
        return b"\x03" + struct.pack(">q", int(v))
    if isinstance(v, (float, np.floating)):
        return b"\x04" + (b"\x7f\xf8" + bytes(6) if math.isnan(v) else struct.pack(">d", float(v)))
    if isinstance(v, (bytes, bytearray, memoryview)):
        return b"\x05" + struct.pack(">I", len(bytes(v))) + bytes(v)
    if isinstance(v, str):
        return b"\x06" + struct.pack(">I", len(v.encode())) + v.encode()
    if isinstance(v, (list, tuple)):
        return b"\x07" + struct.pack(">I", len(v)) + b"".join(_spec_encode(x) for x in v)
    items = sorted((k.encode(), _spec_encode(x)) for k, x in v.items())
    return b"\x08" + struct.pack(">I", len(items)) + b"".join(struct.pack(">I", len(k)) + k + x for k, x in items)


class _Str(str):
    pass


class _Int(int):
    pass


def test_the_encoder_is_the_specification_for_every_value_type():
    """The encoder's fast paths for exact built-in types and its general path give the specified bytes: nested
    values of every type, subclasses, tuples, numpy scalars, NaN, infinities, integer bounds, non-ASCII keys."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=True),
        st.binary(max_size=40),
        st.text(max_size=20),
        st.builds(_Str, st.text(max_size=5)),
        st.builds(_Int, st.integers(-5, 5)),
        st.integers(-100, 100).map(np.int64),
        st.floats(width=32).map(np.float32),
        st.booleans().map(np.bool_),
        st.binary(max_size=8).map(bytearray),
    )
    values = st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.lists(inner, max_size=3).map(tuple),
            st.dictionaries(st.one_of(st.text(max_size=6), st.builds(_Str, st.text(max_size=3))), inner, max_size=4),
        ),
        max_leaves=25,
    )

    @settings(max_examples=1500, deadline=None, database=None)
    @given(values)
    def same(v):
        assert encode(v) == _spec_encode(v)

    same()
    for bad in (2**63, -(2**63) - 1, {1: 2}, {"a": {1: 2}}, object(), [set()]):
        with pytest.raises(EncodingError):
            encode(bad)


@pytest.mark.parametrize(
    "bad",
    [
        b"\x09",  # unknown tag
        b"\x03\x00\x00",  # truncated int
        b"\x00\x00",  # trailing byte
        b"\x06\x00\x00\x00\x01\xff",  # invalid UTF-8
        b"\x08\x00\x00\x00\x02\x00\x00\x00\x01b\x00\x00\x00\x00\x01a\x00",  # unsorted keys
        b"\x08\x00\x00\x00\x02\x00\x00\x00\x01a\x00\x00\x00\x00\x01a\x00",  # duplicate keys
        b"\x04\x7f\xf8\x00\x00\x00\x00\x00\x01",  # non-canonical NaN
    ],
)
def test_decoder_rejects_non_canonical(bad):
    with pytest.raises(EncodingError):
        decode(bad)


def test_entry_decoding_rejects_wrong_domain_and_fields(federation_factory):
    f = federation_factory("memory")
    e = f.update(1, 0)
    assert decode_entry(e.to_bytes()) == e
    with pytest.raises(EncodingError):
        decode_entry(b"flower-chain:block:v1\x00" + e.to_bytes()[len(b"flower-chain:entry:v1\x00") :])
    d = e.to_dict()
    d["num_examples"] = "10"
    with pytest.raises(EncodingError):
        decode_entry(b"flower-chain:entry:v1\x00" + encode(d))
    d = e.to_dict()
    d["extra"] = 1
    with pytest.raises(EncodingError):
        decode_entry(b"flower-chain:entry:v1\x00" + encode(d))


# --- arrays ---------------------------------------------------------------------------------------


def test_array_digest_is_layout_independent_and_roundtrips():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    named = [("w", a), ("b", np.zeros(3, dtype=np.int64))]
    d = array_digest(named)
    assert array_digest([("w", np.asfortranarray(a)), named[1]]) == d
    assert array_digest([("w", a.astype(">f4")), named[1]]) == d
    assert array_digest([("w", a.reshape(4, 3)), named[1]]) != d
    assert array_digest([("w", a.astype(np.float64)), named[1]]) != d
    assert array_digest([("v", a), named[1]]) != d
    assert array_digest(list(reversed(named))) != d
    blob = encode_arrays(named)
    import hashlib

    assert hashlib.sha256(blob).digest() == d
    back = decode_arrays(blob)
    assert [n for n, _ in back] == ["w", "b"] and np.array_equal(back[0][1], a)
    with pytest.raises(EncodingError):
        decode_arrays(blob[:-1])


# --- checkpoints ------------------------------------------------------------------------------------


def test_checkpoint_signed_note_roundtrip_and_failures():
    key = Ed25519PrivateKey.generate()
    cp = Checkpoint("flower-chain/fed", 42, bytes(range(32)))
    note = sign_checkpoint(cp, key)
    lines = note.split("\n")
    assert lines[:3] == ["flower-chain/fed", "42", base64.b64encode(bytes(range(32))).decode()]
    assert lines[3] == "" and lines[4].startswith("\u2014 flower-chain/fed ")
    assert verify_checkpoint(note, key.public_key()) == cp
    vk = verifier_key(cp.origin, key.public_key())
    assert parse_verifier_key(vk) == (cp.origin, raw_public(key))
    other = Ed25519PrivateKey.generate()
    with pytest.raises(CheckpointError):
        verify_checkpoint(note, other.public_key())
    with pytest.raises(CheckpointError):
        verify_checkpoint(note.replace("\n42\n", "\n43\n"), key.public_key())
    with pytest.raises(CheckpointError):
        verify_checkpoint(note, key.public_key(), origin="flower-chain/other")
    with pytest.raises(CheckpointError):
        verify_checkpoint("not a note", key.public_key())
    # found by the tamper suite: a non-ASCII character where base64 is expected is an error, not a crash
    sig_line = note.rstrip("\n").split("\n")[-1]
    with pytest.raises(CheckpointError):
        verify_checkpoint(note.replace(sig_line, sig_line[:-3] + "\ufffd=="), key.public_key())


# --- writer, backends, verify -----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_write_reopen_verify_and_prove(backend, federation_factory):
    f = federation_factory(backend, n_clients=5)  # 4 accepted keys and one whose signature is broken
    for r in range(1, 6):
        f.add_round(r, n=4, rejected=1)
    rep = verify(f.ledger, server_key=raw_public(f.server_key), client_signatures=True)
    assert (rep.blocks, rep.entries, rep.accepted, rep.rejected) == (6, 26, 20, 5)
    assert rep.client_signatures_checked == 20
    if backend != "memory":
        f.ledger.close()
        f.ledger = open_ledger(f.uri)
        w = LedgerWriter(f.ledger, f.server_key)
        assert w.head_hash == f.writer.head_hash
        f.writer = w
        f.add_round(6)
        assert verify(f.ledger).blocks == 7
    size = f.ledger.log_size()
    leaves = [merkle.leaf_hash(e) for e in f.ledger.entries()]
    root = f.ledger.head().header.log_root
    for i in (0, 7, size - 1):
        p = proofs.inclusion_proof(f.ledger, i)
        assert p == merkle.inclusion_proof(leaves, i)
        merkle.verify_inclusion(leaves[i], i, size, p, root)
    old = proofs.block_with_size(f.ledger, 6)
    merkle.verify_consistency(6, size, proofs.consistency_proof(f.ledger, 6), old.header.log_root, root)


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_server_key_cannot_append(backend, federation_factory):
    f = federation_factory(backend)
    with pytest.raises(LedgerError, match="server key"):
        LedgerWriter(f.ledger, Ed25519PrivateKey.generate())


def test_verify_pinned_server_key_and_empty_ledger(federation_factory, tmp_path):
    f = federation_factory("memory")
    with pytest.raises(VerificationError, match="server key"):
        verify(f.ledger, server_key=raw_public(Ed25519PrivateKey.generate()))
    empty = open_ledger(f"sqlite:///{tmp_path}/empty.db", create=True)
    with pytest.raises(VerificationError, match="empty"):
        verify(empty)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "memory"])
def test_head_changed_under_writer_is_detected(backend, federation_factory):
    f = federation_factory(backend)
    f.add_round(1)
    other = LedgerWriter(open_ledger(f.uri), f.server_key)
    other.append(2, [])
    with pytest.raises(LedgerError, match="changed under the server"):
        f.writer.check_head()


def _tamper_sqlite(path, sql, params=()):
    db = sqlite3.connect(path)
    db.execute(sql, params)
    db.commit()
    db.close()


@pytest.mark.parametrize(
    "what,match",
    [
        ("entry", "entries_root|unknown verdict"),
        ("header", "decode|prev_hash|signature|entries_root"),
        ("signature", "signature"),
        ("delete-last-entry", "counts"),
        ("checkpoint", "checkpoint"),
    ],
)
def test_sqlite_tampering_is_caught(what, match, federation_factory, tmp_path):
    f = federation_factory("sqlite")
    for r in range(1, 4):
        f.add_round(r)
    f.ledger.close()
    path = f.uri[len("sqlite:///") :]
    if what == "entry":
        row = sqlite3.connect(path).execute("SELECT data FROM entries WHERE idx = 5").fetchone()[0]
        bad = bytearray(row)
        bad[-1] ^= 1
        _tamper_sqlite(path, "UPDATE entries SET data = ? WHERE idx = 5", (bytes(bad),))
    elif what == "header":
        row = sqlite3.connect(path).execute("SELECT header FROM blocks WHERE height = 2").fetchone()[0]
        bad = bytearray(row)
        bad[-40] ^= 1
        _tamper_sqlite(path, "UPDATE blocks SET header = ? WHERE height = 2", (bytes(bad),))
    elif what == "signature":
        _tamper_sqlite(path, "UPDATE blocks SET signature = ? WHERE height = 2", (b"\x00" * 64,))
    elif what == "delete-last-entry":
        _tamper_sqlite(path, "DELETE FROM entries WHERE idx = (SELECT MAX(idx) FROM entries)")
    else:
        _tamper_sqlite(path, "UPDATE blocks SET checkpoint = 'x' WHERE height = 3")
    with pytest.raises(VerificationError) as e:
        verify(open_ledger(f.uri))
    assert e.value.height is not None
    assert any(m in str(e.value) for m in match.split("|")), str(e.value)


def test_jsonl_torn_last_line_is_reported_then_dropped_by_writer(federation_factory):
    f = federation_factory("jsonl")
    f.add_round(1)
    f.add_round(2)
    f.ledger.close()
    path = f.uri[len("jsonl:///") :]
    data = open(path, "rb").read()
    open(path, "ab").write(b'{"height": 3, "header": "AAAA')  # an append cut short by a crash
    with pytest.raises(LedgerCorruptError, match="torn"):
        open_ledger(f.uri)
    ledger = open_ledger(f.uri, create=True)  # a writer drops the never-acknowledged line
    assert open(path, "rb").read() == data
    assert verify(ledger).blocks == 3


def test_jsonl_is_human_readable_and_edits_are_caught(federation_factory):
    f = federation_factory("jsonl")
    f.add_round(1)
    path = f.uri[len("jsonl:///") :]
    lines = open(path).read().splitlines()
    rec = json.loads(lines[2])
    assert rec["view"]["round"] == 1 and rec["view"]["entry_count"] == 3
    rec["entries"][0], rec["entries"][1] = rec["entries"][1], rec["entries"][0]
    lines[2] = json.dumps(rec)
    open(path, "w").write("\n".join(lines) + "\n")
    with pytest.raises(VerificationError, match="block 1"):
        verify(open_ledger(f.uri))


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "empty"),
        (b"hello world\n", "not a flower-chain"),
        (b"SQLite format 3\x00" + b"\x00" * 100, "not a flower-chain|damaged"),
    ],
)
def test_foreign_and_empty_files_are_clear_errors(content, match, tmp_path):
    for suffix in (".jsonl", ".db"):
        p = tmp_path / f"f{suffix}"
        p.write_bytes(content)
        with pytest.raises(LedgerError):
            open_ledger(str(p))
    p = tmp_path / "x.jsonl"
    p.write_bytes(content)
    with pytest.raises(LedgerError, match=match):
        open_ledger(f"jsonl:///{p}") if content != b"SQLite format 3\x00" + b"\x00" * 100 else open_ledger(
            f"sqlite:///{p}"
        )


def test_uri_errors(tmp_path):
    with pytest.raises(LedgerOpenError, match="not found"):
        open_ledger(f"sqlite:///{tmp_path}/missing.db")
    with pytest.raises(LedgerOpenError, match="directory"):
        open_ledger(f"sqlite:///{tmp_path}")
    with pytest.raises(LedgerOpenError, match="unknown ledger scheme"):
        open_ledger("postgres://x")
    with pytest.raises(LedgerOpenError, match="three slashes"):
        open_ledger("sqlite://rel.db")


def test_third_party_backend_via_entry_point(tmp_path, monkeypatch, federation_factory):
    dist = tmp_path / "site" / "fc_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fc-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[flower_chain.ledgers]\nplugmem = fc_plugin:factory\n")
    (tmp_path / "site" / "fc_plugin.py").write_text(
        textwrap.dedent("""
        from flower_chain.ledger.backends import MemoryLedger
        STORE = {}
        def factory(uri, *, create):
            if uri not in STORE:
                if not create:
                    raise FileNotFoundError(uri)
                STORE[uri] = MemoryLedger(uri)
            return STORE[uri]
    """)
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    from tests.conftest import Federation

    fed = Federation("plugmem:one")
    fed.add_round(1)
    assert type(open_ledger("plugmem:one")).__name__ == "MemoryLedger"
    assert verify(open_ledger("plugmem:one")).blocks == 2


@pytest.mark.parametrize("size", ["\u00b2", "\u0663", "1\u00b2", "\uff11"])
def test_non_ascii_digits_are_not_a_checkpoint_size(size):
    """str.isdigit() is true for these; int() refuses "²" and reads "٣" as 3: a parse error, never a crash."""
    from flower_chain.ledger.checkpoint import Checkpoint
    from flower_chain.ledger.errors import CheckpointError

    body = f"example.com/log\n{size}\n{base64.b64encode(bytes(32)).decode()}\n"
    with pytest.raises(CheckpointError, match="not a decimal number"):
        Checkpoint.from_text(body)

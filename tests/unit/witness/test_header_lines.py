"""The add-checkpoint request's header lines (docs/ledger-format.md §5.2): malformed or over-long lists are
400, lists that are no chain to the named head 422, and nothing a client sends makes the witness raise."""

from __future__ import annotations

import base64
import dataclasses
import random

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from flower_chain.ledger.checkpoint import Checkpoint, parse_verifier_key, sign_checkpoint, verifier_key
from flower_chain.ledger.proofs import consistency_proof
from flower_chain.witness.chain import HEADER_TAG, MAX_HEADERS, header_line
from flower_chain.witness.client import chain_headers, request_body
from flower_chain.witness.server import Witness, WitnessStore
from tests.conftest import Federation

FED = "fed-lines"
ORIGIN = f"flower-chain/{FED}"


@pytest.fixture
def setup(tmp_path):
    """A witness that cosigned block 1; blocks 2 and 3 appended since, with the request parts for block 3."""
    f = Federation(f"sqlite:///{tmp_path}/l.db", federation_id=FED)
    f.add_round(1)
    w = Witness(
        "witness.test/lines",
        Ed25519PrivateKey.generate(),
        {ORIGIN: [parse_verifier_key(verifier_key(ORIGIN, f.server_key.public_key()))]},
        WitnessStore(tmp_path / "w.db"),
    )
    assert w.add_checkpoint(request_body(f.writer.checkpoint(), 0, [])).status == 200
    size1 = f.writer.log_size
    f.add_round(2)
    f.add_round(3)
    proof = consistency_proof(f.ledger, size1)
    return f, w, size1, proof, chain_headers(f.ledger, 2, 3)


def _raw(f, size, proof, lines: list[str], note: str | None = None) -> bytes:
    head = "\n".join([f"old {size}"] + [base64.b64encode(h).decode() for h in proof] + lines)
    return (head + "\n\n" + (note or f.writer.checkpoint())).encode()


def test_malformed_and_over_long_header_lists_are_400_and_change_nothing(setup):
    f, w, size1, proof, (h2, h3) = setup
    before = w.store.latest(ORIGIN)
    other = dataclasses.replace(f.ledger.block(2).header, model_after=b"\x01" * 32).to_bytes()
    bare = sign_checkpoint(Checkpoint(ORIGIN, f.writer.log_size, f.ledger.block(3).header.log_root), f.server_key)
    t = HEADER_TAG + " "
    cases = {
        "too many lines": [header_line(h3)] * (MAX_HEADERS + 1),
        "not base64": [t + "!!!"],
        "not canonical base64": [t + "QR=="],
        "not a header": [t + base64.b64encode(b"\x00" * 40).decode()],
        "a header over the size limit": [t + base64.b64encode(b"\x00" * 5000).decode()],
        "two of one height": [header_line(h2), header_line(other), header_line(h3)],
        "an empty header line": [t],
    }
    for what, lines in cases.items():
        r = w.add_checkpoint(_raw(f, size1, proof, lines))
        assert r.status == 400, (what, r)
    r = w.add_checkpoint(request_body(bare, size1, proof, [h2, h3]))  # header lines, no head line to end at
    assert r.status == 400 and b"head" in r.body, r
    assert w.store.latest(ORIGIN) == before


def test_header_lists_that_are_no_chain_to_the_named_head_are_422(setup):
    f, w, size1, proof, (h2, h3) = setup
    before = w.store.latest(ORIGIN)
    h2_other = dataclasses.replace(f.ledger.block(2).header, model_after=b"\x01" * 32).to_bytes()
    cases = {
        "a height skipped": [f.ledger.block(1).header_bytes, h3],
        "prev_hash does not link": [h2_other, h3],
        "does not end at the named head": [h2],
        "missing below the new head": [h3][:0],
    }
    for what, hdrs in cases.items():
        r = w.add_checkpoint(request_body(f.writer.checkpoint(), size1, proof, hdrs))
        assert r.status == 422, (what, r)
    assert w.store.latest(ORIGIN) == before


def test_the_answer_does_not_depend_on_the_order_of_the_lines(setup):
    f, w, size1, proof, (h2, h3) = setup
    lines = [header_line(h3), base64.b64encode(proof[0]).decode(), header_line(h2)]
    lines += [base64.b64encode(p).decode() for p in proof[1:]]  # proof lines keep their order among themselves
    head = "\n".join([f"old {size1}", *lines])
    r = w.add_checkpoint((head + "\n\n" + f.writer.checkpoint()).encode())
    assert r.status == 200, r
    # the stored head's own header may lead the list (a log server that only knows the witness's size)
    f.add_block(4, [])
    hdrs = chain_headers(f.ledger, 2, f.writer.head.header.height)
    random.Random(1).shuffle(hdrs)
    assert w.add_checkpoint(request_body(f.writer.checkpoint(), f.writer.log_size, [], hdrs)).status == 200


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.lists(st.binary(max_size=600), max_size=4),
    flips=st.lists(st.tuples(st.integers(0, 1), st.integers(0, 10_000), st.integers(1, 255)), max_size=3),
)
def test_no_header_list_makes_the_witness_raise_or_cosign_a_mutated_chain(setup, data, flips):
    f, w, size1, proof, (h2, h3) = setup
    before = w.store.latest(ORIGIN)
    hdrs = [bytearray(h2), bytearray(h3)]
    for which, pos, xor in flips:
        hdrs[which][pos % len(hdrs[which])] ^= xor
    assume(data or [bytes(h) for h in hdrs] != [h2, h3])  # the unmutated chain is cosigned (tests above)
    lines = [header_line(bytes(h)) for h in hdrs] + [header_line(d) for d in data]
    random.Random(len(flips)).shuffle(lines)
    r = w.add_checkpoint(_raw(f, size1, proof, lines))
    assert r.status in (400, 422), r
    assert w.store.latest(ORIGIN) == before

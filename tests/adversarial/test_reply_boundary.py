"""Findings of the review that are not about parsing: receipts only for verified replies, bounded
receipt work, escaped log lines, the JSONL human-readable copy, and one verdict per reply however hostile."""

from __future__ import annotations

import logging

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord

from flower_chain.ledger.entries import UpdateStatement
from flower_chain.ledger.keys import key_id
from flower_chain.strategies import LedgerStrategy
from flower_chain.strategies.receipts import MAX_RECEIPTS
from flower_chain.wire import CTX_RECEIPT, PENDING_ROUND, RECEIPT_SEPARATOR, SIG_RECORD, SIGNATURE, STATEMENT
from tests.support.fl_helpers import Clients, FakeGrid, arrays, fedavg, signed_train_reply
from tests.support.statements import resign

pytestmark = pytest.mark.usefixtures("task_identity")
NODES = [21, 22, 23]


def setup(n=3):
    clients = Clients(n)
    s = LedgerStrategy(
        fedavg(), ledger="memory:", keyring=clients.keyring, server_key=Ed25519PrivateKey.generate(), federation_id="tb"
    )
    return s, clients


def instructions(s, rnd, glob):
    return sorted(s.configure_train(rnd, glob, ConfigRecord({}), FakeGrid(NODES)), key=lambda m: m.metadata.dst_node_id)


def test_a_keyless_reply_naming_a_victims_key_is_not_the_victims_receipt():
    """The attacker's reply comes first and names the victim's key id; the victim must get its own entry."""
    s, clients = setup()
    msgs = instructions(s, 1, arrays(0))
    replies = [signed_train_reply(m, k, arrays(i + 1), 10) for i, (m, k) in enumerate(zip(msgs, clients.keys))]
    victim = clients.keys[0]
    forged = signed_train_reply(msgs[2], victim, arrays(50), 10)
    sig = bytearray(forged.content[SIG_RECORD][SIGNATURE])
    sig[5] ^= 0xFF  # no key: the signature does not verify
    forged.content[SIG_RECORD][SIGNATURE] = bytes(sig)
    forged.content[SIG_RECORD][PENDING_ROUND] = 1
    s.aggregate_train(1, [forged] + replies[:2])  # the forger's node sends nothing else this round
    kid = key_id(victim)
    head = s.ledger.head().header
    assert s.core.update_index[(kid, 1)] == [head.first_index + 1], "only the verified entry is the victim's"
    forger = str(msgs[2].metadata.dst_node_id)
    assert forger not in s.core.node_pending, "an unverified reply must not ask for the victim's receipts"
    assert CTX_RECEIPT not in s.core.receipt_config(forger)


def test_an_unverified_pending_round_moves_nothing():
    """An unsigned reply asking for receipts from round 1 on gets nothing: no scans, no proofs."""
    s, clients = setup()
    glob = arrays(0)
    for rnd in (1, 2, 3):
        msgs = instructions(s, rnd, glob)
        replies = [
            signed_train_reply(m, k, arrays(10 * rnd + i), 10) for i, (m, k) in enumerate(zip(msgs, clients.keys))
        ]
        unsigned = signed_train_reply(msgs[2], None, arrays(7), 10)
        from flwr.app import ConfigRecord as CR

        unsigned.content[SIG_RECORD] = CR({PENDING_ROUND: 1})
        glob, _ = s.aggregate_train(rnd, replies[:2] + [unsigned])
    node = str(NODES[2])
    assert node not in s.core.node_pending
    assert CTX_RECEIPT not in s.core.receipt_config(NODES[2])


def test_receipt_work_per_instruction_is_bounded():
    s, clients = setup(1)
    glob = arrays(0)
    node = NODES[0]
    for rnd in range(1, MAX_RECEIPTS + 6):
        msgs = list(s.configure_train(rnd, glob, ConfigRecord({}), FakeGrid([node])))
        reply = signed_train_reply(msgs[0], clients.keys[0], arrays(rnd), 10)
        resign(reply, clients.keys[0], pending_round=1)  # a verified client asking for every receipt since round 1
        glob, _ = s.aggregate_train(rnd, [reply])
    texts = s.core.receipt_config(node)[CTX_RECEIPT].split(RECEIPT_SEPARATOR)
    assert len(texts) == MAX_RECEIPTS


def test_text_from_the_network_cannot_forge_log_lines(caplog):
    s, clients = setup()
    msgs = instructions(s, 1, arrays(0))
    replies = [signed_train_reply(m, k, arrays(i + 1), 10) for i, (m, k) in enumerate(zip(msgs, clients.keys))]
    st = UpdateStatement.from_bytes(replies[1].content[SIG_RECORD][STATEMENT])
    forged = UpdateStatement(
        st.kind,
        st.federation_id,
        st.round,
        "x\nERROR forged line $x^2$",
        st.parent,
        st.base_digest,
        st.arrays_digest,
        st.num_examples,
        st.metrics_digest,
    ).to_bytes()
    replies[1].content[SIG_RECORD][STATEMENT] = forged
    with caplog.at_level(logging.WARNING):
        s.aggregate_train(1, replies)
    lines = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert lines and all("\n" not in line for line in lines), lines
    from flower_chain.ledger import decode_entry

    rejected = [decode_entry(d) for d in s.ledger.entries(s.ledger.head().header.first_index)]
    bad = [e for e in rejected if e.verdict == "rejected"]
    assert [e.reason for e in bad] == ["unknown-key"] and bad[0].key_id == ""  # a malformed key id is not recorded


def _npy_with_header(shape: str, descr: str = "<f4", payload: bytes = b"") -> bytes:
    h = ("{'descr': '%s', 'fortran_order': False, 'shape': %s, }" % (descr, shape)).encode()
    h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(h).to_bytes(2, "little") + h + payload


@pytest.mark.parametrize(
    "shape,payload",
    [
        ("(0, 2**70)", b""),  # zero elements, but a dimension numpy cannot make
        (f"(0, {2**70})", b""),
        (f"({2**63}, 0)", b""),
        (f"({2**40}, {2**40}, 0)", b""),
        ("(-1, 3)", b""),
        ("(2, 2)", b"\0" * 15),  # one byte short
        ("(" + "1, " * 70 + ")", b"\0" * 4),  # more dimensions than numpy allows
    ],
)
def test_parse_npy_never_raises_on_hostile_shapes(shape, payload):
    from flower_chain.wire import parse_npy

    got = parse_npy(_npy_with_header(shape, payload=payload))
    assert isinstance(got, str), got  # a reason for the `malformed` verdict, not an exception

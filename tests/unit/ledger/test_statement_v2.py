"""Update statement v2 (docs/ledger-format.md §7): the client signs the checkpoint size it verified, the round it
asks receipts from and the settings digest; v1 statements keep their bytes; the policy's ``wrong-settings``."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.ledger.encoding import encode_with_domain
from flower_chain.ledger.entries import STATEMENT_DOMAIN, UpdateStatement, metrics_digest
from flower_chain.ledger.errors import EncodingError
from flower_chain.ledger.keys import key_id, raw_public
from flower_chain.ledger.policy import PROVEN_REJECTIONS, Evidence, RoundRules, judge_round
from flower_chain.wire import CTX_SETTINGS, ContextProblem, LedgerContext, parse_context

SETTINGS = hashlib.sha256(b"the genesis settings").digest()
KEY = Ed25519PrivateKey.generate()
V1 = UpdateStatement("train", "fed", 3, key_id(KEY), b"p" * 32, b"b" * 32, b"a" * 32, 10, metrics_digest({}))
V2 = dataclasses.replace(V1, seen_size=7, pending_round=2, settings_digest=SETTINGS)


def test_a_v1_statement_keeps_its_bytes_and_decodes_as_v1():
    fields = {f: getattr(V1, f) for f in ("kind", "federation_id", "round", "key_id", "parent", "base_digest")}
    fields |= {"arrays_digest": V1.arrays_digest, "num_examples": 10, "metrics_digest": V1.metrics_digest}
    assert V1.to_bytes() == encode_with_domain(STATEMENT_DOMAIN, fields)  # what clients before v2 signed
    back = UpdateStatement.from_bytes(V1.to_bytes())
    assert back == V1 and back.version == 1 and back.settings_digest is None


def test_a_v2_statement_round_trips():
    back = UpdateStatement.from_bytes(V2.to_bytes())
    assert back == V2 and back.version == 2 and (back.seen_size, back.pending_round) == (7, 2)


def _raw(**changes) -> bytes:
    d = {f.name: getattr(V2, f.name) for f in dataclasses.fields(V2)} | changes
    return encode_with_domain(STATEMENT_DOMAIN, {k: v for k, v in d.items() if v is not _ABSENT})


_ABSENT = object()


@pytest.mark.parametrize(
    "changes",
    [
        {"seen_size": _ABSENT},  # only some of the v2 fields: neither v1 nor v2
        {"settings_digest": _ABSENT},
        {"seen_size": _ABSENT, "pending_round": _ABSENT},
        {"seen_size": None},  # present with the "absent" value
        {"settings_digest": None},
        {"seen_size": True},
        {"pending_round": -2},
        {"seen_size": 2**63},
        {"settings_digest": b"short"},
        {"settings_digest": "0" * 64},
    ],
)
def test_a_v2_statement_with_missing_or_bad_fields_does_not_decode(changes):
    with pytest.raises(EncodingError):
        UpdateStatement.from_bytes(_raw(**changes))


def test_a_statement_with_some_v2_fields_does_not_encode():
    with pytest.raises(EncodingError):
        dataclasses.replace(V1, seen_size=1).to_bytes()


def test_the_context_carries_the_settings_digest_and_parse_never_raises():
    ctx = LedgerContext("fed", 1, b"p" * 32, b"b" * 32, 2, SETTINGS)
    assert parse_context(ctx.to_config()) == ctx
    older = LedgerContext("fed", 1, b"p" * 32, b"b" * 32, 2)
    assert CTX_SETTINGS not in older.to_config() and parse_context(older.to_config()).settings_digest is None
    for bad in (b"x" * 31, "ab" * 32, 5, b""):
        got = parse_context({**ctx.to_config(), CTX_SETTINGS: bad})
        assert isinstance(got, ContextProblem) and got.field == CTX_SETTINGS


def _verdict(statement: UpdateStatement, settings: bytes = SETTINGS) -> str:
    rules = RoundRules(
        "fed", "train", 3, b"p" * 32, b"b" * 32, {key_id(KEY): raw_public(KEY)}, settings_digest=settings
    )
    raw = statement.to_bytes()
    ev = Evidence(raw, KEY.sign(raw), 10, b"a" * 32, {})
    return judge_round(rules, [ev])[0].reason


def test_a_v2_statement_for_other_settings_is_rejected_wrong_settings():
    assert _verdict(V2) == "ok"
    assert _verdict(dataclasses.replace(V2, settings_digest=hashlib.sha256(b"other").digest())) == "wrong-settings"
    assert _verdict(V2, settings=b"") == "wrong-settings"  # a caller that does not pass the genesis' fails closed
    assert "wrong-settings" in PROVEN_REJECTIONS  # the client's own signature names the settings it consented to


def test_a_v1_statement_signs_no_settings_and_is_judged_as_before():
    assert _verdict(V1) == "ok"
    assert _verdict(V1, settings=hashlib.sha256(b"other").digest()) == "ok"

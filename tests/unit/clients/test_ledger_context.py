"""The client's ledger context parser (wire.parse_context): never raises, never guesses a digest version."""

from __future__ import annotations

import pytest

from flower_chain.ledger.arrays import ARRAY_DIGEST_VERSION
from flower_chain.wire import (
    CTX_BASE,
    CTX_DIGEST_VERSION,
    CTX_FEDERATION,
    CTX_PARENT,
    CTX_ROUND,
    ContextProblem,
    LedgerContext,
    parse_context,
)

GOOD = LedgerContext("fed", 3, b"\x01" * 32, b"\x02" * 32, 1)


def test_a_context_round_trips_with_its_digest_version():
    config = GOOD.to_config()
    assert config[CTX_DIGEST_VERSION] == 1
    assert parse_context(config) == GOOD == LedgerContext.from_config(config)


def test_no_context_is_none():
    assert parse_context({"lr": 0.1}) is None


def test_a_context_without_a_version_is_the_current_version():
    config = GOOD.to_config()
    del config[CTX_DIGEST_VERSION]
    got = parse_context(config)
    assert isinstance(got, LedgerContext) and got.digest_version == ARRAY_DIGEST_VERSION == 2


@pytest.mark.parametrize(
    "key, value",
    [
        (CTX_DIGEST_VERSION, 3),
        (CTX_DIGEST_VERSION, 0),
        (CTX_DIGEST_VERSION, -1),
        (CTX_DIGEST_VERSION, True),
        (CTX_DIGEST_VERSION, 1.0),
        (CTX_DIGEST_VERSION, "1"),
        (CTX_DIGEST_VERSION, None),
        (CTX_DIGEST_VERSION, [1]),
        (CTX_ROUND, "3"),
        (CTX_ROUND, True),
        (CTX_PARENT, "00" * 32),
        (CTX_BASE, [1, 2]),
        (CTX_FEDERATION, 7),
    ],
)
def test_a_malformed_field_is_a_problem_naming_it(key, value):
    config = {**GOOD.to_config(), key: value}
    got = parse_context(config)
    assert isinstance(got, ContextProblem) and got.field == key and got.reason, got
    with pytest.raises(ValueError):
        LedgerContext.from_config(config)


def test_a_missing_round_or_parent_is_a_problem():
    for key in (CTX_ROUND, CTX_PARENT):
        config = GOOD.to_config()
        del config[key]
        got = parse_context(config)
        assert isinstance(got, ContextProblem) and got.field == key


def test_a_long_value_is_cut_in_the_problem():
    got = parse_context({**GOOD.to_config(), CTX_DIGEST_VERSION: "9" * 10_000})
    assert isinstance(got, ContextProblem) and len(got.value) <= 63 and got.value.endswith("...")
    assert got.federation_id == "fed"


class Hostile(dict):
    def get(self, *args):
        raise RuntimeError("hostile mapping")


def test_a_config_that_raises_when_read_is_a_problem_not_an_exception():
    got = parse_context(Hostile(GOOD.to_config()))
    assert isinstance(got, ContextProblem) and "does not read" in got.reason

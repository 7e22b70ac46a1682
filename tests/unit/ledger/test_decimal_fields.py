"""Decimal fields from outside are bounded before ``int()``: 4,301 digits would raise out of any parser."""

from __future__ import annotations

import base64

import pytest

from flower_chain.ledger.checkpoint import Checkpoint, head_of
from flower_chain.ledger.errors import CheckpointError
from flower_chain.ledger.text import MAX_DECIMAL_DIGITS, is_decimal

ROOT = base64.b64encode(b"\x01" * 32).decode()


def test_is_decimal_bounds_the_digits():
    assert is_decimal("0") and is_decimal("9" * MAX_DECIMAL_DIGITS) and is_decimal(str(2**64 - 1))
    for bad in ("", "9" * (MAX_DECIMAL_DIGITS + 1), "9" * 5000, "²", "٣", "1.0", "-1", " 1"):
        assert not is_decimal(bad), bad


@pytest.mark.parametrize("digits", [21, 4301, 5000])
def test_a_checkpoint_size_or_head_height_of_many_digits_is_a_checkpoint_error(digits):
    with pytest.raises(CheckpointError):
        Checkpoint.from_text(f"o\n{'9' * digits}\n{ROOT}\n")
    cp = Checkpoint.from_text(f"o\n5\n{ROOT}\nflower-chain/head {'9' * digits} {ROOT}\n")
    with pytest.raises(CheckpointError):
        head_of(cp)

"""Serving and witnessing (issue 19, item 13): notes the C2SP signed-note spec rejects are rejected, and
the answer never depends on the order of the signature lines.

The witness accepted a note with a malformed signature line after a valid one (``open_note`` returned
at the first valid line and never read the rest), a note carrying control characters, and answered
differently for the same lines in another order (two lines for one key: valid first accepted, invalid
first refused). Now every line is parsed before any signature is checked.
"""

from __future__ import annotations

import base64
import itertools

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from flower_chain.ledger.checkpoint import Checkpoint, open_note, sign_checkpoint, sign_note
from flower_chain.ledger.errors import CheckpointError
from flower_chain.ledger.keys import raw_public
from flower_chain.witness.server import Witness, WitnessStore

ORIGIN = "example.com/log"
LOG_KEY = Ed25519PrivateKey.generate()
DASH = "\u2014"


def note(extensions: tuple[str, ...] = (), size: int = 5) -> str:
    return sign_checkpoint(Checkpoint(ORIGIN, size, b"\x11" * 32, extensions), LOG_KEY)


def split(n: str) -> tuple[str, list[str]]:
    sep = n.rfind("\n\n")
    return n[: sep + 1], n[sep + 2 : -1].split("\n")


def join(body: str, lines: list[str]) -> str:
    return body + "\n" + "\n".join(lines) + "\n"


def unknown_line(name: str = "other.example/w") -> str:
    return f"{DASH} {name} " + base64.b64encode(b"\x01\x02\x03\x04" + b"\x00" * 64).decode()


MALFORMED = [
    f"{DASH} only-two-fields",
    f"{DASH} name not base64!",
    f"{DASH} name AAAA",  # < 5 bytes
    f"- {ORIGIN} " + base64.b64encode(b"\x00" * 68).decode(),  # not an em dash
    f"{DASH} na+me " + base64.b64encode(b"\x00" * 68).decode(),
    "",
]


@pytest.fixture
def witness(tmp_path):
    return Witness(
        "witness.example/w1",
        Ed25519PrivateKey.generate(),
        {ORIGIN: [(ORIGIN, raw_public(LOG_KEY))]},
        WitnessStore(tmp_path / "w.db"),
    )


def submit(w: Witness, text: str) -> int:
    return w.add_checkpoint(f"old 0\n\n{text}".encode()).status


@pytest.mark.parametrize("bad", MALFORMED)
def test_a_malformed_signature_line_after_a_valid_one_is_refused(witness, bad):
    body, lines = split(note())
    for order in (lines + [bad], [bad] + lines):
        with pytest.raises(CheckpointError):
            open_note(join(body, order), ORIGIN, raw_public(LOG_KEY))
        assert submit(witness, join(body, order)) == 400
    assert submit(witness, note()) == 200  # nothing was stored by the refusals


@pytest.mark.parametrize("control", ["\x1b[31m", "\r", "\x07", "\x00", "\x7f", "\x85", "\x9b"])
def test_a_validly_signed_note_with_control_characters_is_refused(witness, control):
    bad = note((f"ext{control}line",))
    with pytest.raises(CheckpointError, match="control character"):
        open_note(bad, ORIGIN, raw_public(LOG_KEY))
    assert submit(witness, bad) == 400


def test_two_lines_for_one_key_are_refused_in_either_order(witness):
    body, (good,) = split(note())
    blob = bytearray(base64.b64decode(good.split(" ")[2]))
    blob[-1] ^= 1
    forged = f"{DASH} {ORIGIN} {base64.b64encode(bytes(blob)).decode()}"
    for order in ([good, forged], [forged, good]):
        assert submit(witness, join(body, order)) == 400


@settings(max_examples=25, deadline=None)
@given(
    extra=st.lists(
        st.sampled_from([unknown_line(), unknown_line("b.example/w"), *MALFORMED[:3]]), max_size=3, unique=True
    ),
    data=st.data(),
)
def test_the_answer_never_depends_on_line_order(tmp_path_factory, extra, data):
    body, lines = split(note())
    answers = set()
    for order in itertools.islice(itertools.permutations(lines + extra), 12):
        w = Witness(
            "witness.example/w1",
            Ed25519PrivateKey.generate(),
            {ORIGIN: [(ORIGIN, raw_public(LOG_KEY))]},
            WitnessStore(tmp_path_factory.mktemp("w") / "w.db"),
        )
        answers.add(submit(w, join(body, list(order))))
    assert len(answers) == 1, answers
    assert answers == ({200} if all(x.startswith(f"{DASH} ") and "." in x.split(" ")[1] for x in extra) else {400})


def test_signature_lines_of_unknown_keys_are_still_ignored(witness):
    body, lines = split(note())
    assert submit(witness, join(body, [unknown_line()] + lines + [unknown_line("b.example/w")])) == 200


def test_a_key_name_the_spec_forbids_is_never_signed():
    for name in ("has space", "has+plus", "", "ctl\x1b"):
        with pytest.raises(CheckpointError):
            sign_note("body\n", name, LOG_KEY)

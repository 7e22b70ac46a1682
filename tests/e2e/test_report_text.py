"""Ledger text from unauthenticated replies (key ids, node ids, reasons, details, metric names) cannot break
`flower-chain report`: no mathtext crash, no markup in the HTML, bounded labels."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from flower_chain.audit.report import write_report
from flower_chain.ledger import EvaluationEntry, UpdateEntry
from flower_chain.ledger.text import safe_label, safe_text

NASTY = [
    "line one\nFORGED 2099-01-01 everything verified",
    "$x^2$",
    r"$\frac{1}{$",
    "<script>alert('x')</script>",
    "k" * 10_000,
    "\u202egnp.exe\u202c safe",
    "tab\there\x1b[31mred\x00",
]


def _nasty_ledger(fed):
    entries = []
    for i, text in enumerate(NASTY):
        entries.append(
            UpdateEntry(
                kind="train",
                round=1,
                node_id=text,
                key_id=text,
                verdict="rejected",
                reason=text,
                detail=text,
                num_examples=-1,
                arrays_digest=b"",
                metrics={text: 1.0},
                statement=b"",
                signature=b"",
            )
        )
    fed.writer.append(1, entries + [fed.update(1, 0)], model_before=bytes(32), model_after=bytes.fromhex("11" * 32))
    fed.add_block(
        1,
        [
            EvaluationEntry(
                round=1,
                source="centralized",
                num_replies=0,
                metrics={"accuracy": 0.5, "loss": 0.5, **{t: 1.0 for t in NASTY}},
            )
        ],
    )
    return fed


def test_the_report_of_a_ledger_full_of_hostile_text_renders_safely(federation_factory, tmp_path):
    fed = _nasty_ledger(federation_factory("sqlite"))
    dest = tmp_path / "report.html"
    data = write_report(fed.ledger, dest, png_dir=tmp_path / "png")  # mathtext would raise on r"$\frac{1}{$"
    doc = dest.read_text()
    assert "<script" not in doc.lower() and "&lt;script&gt;" in doc  # shown, escaped
    assert "\u202e" not in doc and "\x1b" not in doc and "\x00" not in doc
    assert "\nFORGED" not in doc
    assert "k" * 100 not in doc  # 10,000 characters are bounded
    assert len(list((tmp_path / "png").glob("*.png"))) == 4
    labels = list(data["participation"]) + [k for v in data["verdicts"].values() for k in v]
    labels += [k for v in data["central"].values() for k in v]
    assert labels and all(len(k) <= 34 and "\n" not in k and "$" not in k.replace("\\$", "") for k in labels)
    # distinct hostile values stay distinct after shortening
    assert len({k for k in data["participation"]}) == len(NASTY) + 1


def test_flower_chain_report_command_succeeds(federation_factory, tmp_path):
    fed = _nasty_ledger(federation_factory("sqlite"))
    fed.ledger.close()
    dest = tmp_path / "r.html"
    r = subprocess.run(
        [sys.executable, "-m", "flower_chain.cli", "report", fed.uri, "-o", str(dest)],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, COLUMNS="200"),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "<script" not in dest.read_text().lower()


def test_safe_text_and_labels():
    assert safe_text("a\nb") == "a\\x0ab"
    assert safe_text("$x$") == "\\$x\\$"
    assert safe_text("\u202e") == "\\u202e"
    assert safe_text("x" * 100, 10) == "x" * 10 + "…"
    assert re.fullmatch(r"(\\x0a){2}…", safe_text("\n" * 10, 9))  # never half an escape
    assert safe_label("0123456789abcdef") == "0123456789abcdef"  # a real key id is shown as it is
    a, b = safe_label("k" * 10_000), safe_label("k" * 9_999)
    assert a != b and len(a) <= 34 and a.startswith("k" * 24 + "…#")

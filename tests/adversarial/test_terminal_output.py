"""Terminal injection (issue 19, item 9): text of outside origin never reaches the terminal raw.

A ledger, a proof file and a genesis carry escape sequences, ``\\r``, ``BEL``, C1 controls,
bidirectional overrides and rich markup (``[bold green]VERIFIED[/]``, an unbalanced ``[/x]``). The
real CLI runs on them (in process, and once as a process whose output is a pipe, and once with colours
forced on): no control byte of outside origin reaches stdout or stderr, the verdict line says what the
exit code says (a NOT VERIFIED can no longer be repainted as VERIFIED), markup brackets are printed as
text (a federation id with ``[/x]`` crashed ``verify``), and a long URI is not wrapped when piped.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from click.testing import CliRunner

from flower_chain.cli import app
from flower_chain.ledger import UpdateEntry, UpdateStatement
from flower_chain.ledger.entries import metrics_digest
from flower_chain.ledger.keys import key_id
from tests.conftest import Federation

HOSTILE = "\x1b[2K\r\x1b[1;32mVERIFIED\x07 \x9b31m\x85\u202e\u2066[bold green]VERIFIED[/] [/x] \x1b]0;title\x07"
MARKUP_ID = "fed-[/x][bold]VERIFIED[/][link=http://evil]x[/link]"  # a key name: no space, no "+"
RUNNER = CliRunner()
COMMAND = typer.main.get_command(app)
REPO = Path(__file__).resolve().parents[2]

# Bytes a terminal acts on: C0 controls but the newline, DEL, C1 controls, bidi embeddings/overrides/isolates.
FORBIDDEN = re.compile("[\x00-\x09\x0b-\x1f\x7f\x80-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
RICH_SGR = re.compile("\x1b\\[[0-9;]*m")  # the colours rich itself adds around a verdict label on a terminal


def cli(*args: str) -> tuple[int, str, str]:
    result = RUNNER.invoke(COMMAND, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(
            f"{args[:2]} raised {type(result.exception).__name__}: {result.exception}"
        ) from result.exception
    return result.exit_code, result.stdout, result.stderr


def assert_clean(*streams: str) -> None:
    for text in streams:
        bad = FORBIDDEN.search(text)
        assert bad is None, f"control character U+{ord(bad.group()):04X} reached the terminal: {text!r}"


def verdicts(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"(NOT )?VERIFIED\b|error:", line)]


def hostile_update(f: Federation, rnd: int, i: int, base: bytes, metric: str, **kw) -> UpdateEntry:
    """Client i's signed update whose metric name (the client's own text) is ``metric``."""
    k = f.client_keys[i]
    metrics = {metric: 0.5, "train_loss": 0.25}
    digest = f.rng.randbytes(32)
    st = UpdateStatement(
        "train", f.federation_id, rnd, key_id(k), f.writer.head_hash, base, digest, 10, metrics_digest(metrics)
    )
    sb = st.to_bytes()
    return UpdateEntry(
        kind="train",
        round=rnd,
        node_id=str(i),
        key_id=key_id(k),
        verdict=kw.get("verdict", "accepted"),
        reason=kw.get("reason", "ok"),
        detail=kw.get("detail", ""),
        num_examples=10,
        arrays_digest=digest,
        metrics=metrics,
        statement=sb,
        signature=k.sign(sb),
    )


@pytest.fixture(scope="module")
def ledgers(tmp_path_factory):
    d = tmp_path_factory.mktemp("term")
    markup = Federation(f"sqlite:///{d}/markup.db", federation_id=MARKUP_ID)
    before = bytes(32)
    markup.writer.append(
        1,
        [hostile_update(markup, 1, i, before, HOSTILE) for i in range(2)],
        model_before=before,
        model_after=markup.rng.randbytes(32),
    )
    markup.ledger.close()
    # A server-recorded reason carrying the same text: the ledger does not verify (the detail is not the
    # policy's), so its NOT VERIFIED line must stay what it is.
    forged = Federation(f"sqlite:///{d}/forged.db", federation_id=MARKUP_ID)
    forged.writer.append(
        1,
        [hostile_update(forged, 1, 0, before, HOSTILE, verdict="rejected", reason=HOSTILE, detail=HOSTILE)],
        model_before=before,
        model_after=before,
    )
    forged.ledger.close()
    return {"markup": (d / "markup.db", markup), "forged": (d / "forged.db", forged), "dir": d}


def test_markup_in_a_federation_id_and_controls_in_metric_names_reach_no_terminal(ledgers):
    uri = f"sqlite:///{ledgers['markup'][0]}"
    code, out, err = cli("ledger", "verify", uri)
    assert_clean(out, err)
    assert code == 0, err
    assert verdicts(out) == [line for line in out.splitlines() if line.startswith("VERIFIED ")]
    assert len(verdicts(out)) == 1 and MARKUP_ID in out  # the brackets are printed as text
    for args in (
        ("summary", uri),
        ("blocks", uri),
        ("show", uri, "1"),
        ("export", uri),
        ("checkpoint", uri),
        ("export", uri, "--format", "csv"),
    ):
        code, out, err = cli("ledger", *args)
        assert_clean(out, err)
        assert code == 0, (args, err)
    code, out, _ = cli("ledger", "show", uri, "1")
    assert "\\x1b[2K\\x0d" in out or "\\u001b" in out  # shown, as visible escapes


def test_a_not_verified_line_cannot_be_repainted_as_verified(ledgers):
    uri = f"sqlite:///{ledgers['forged'][0]}"
    code, out, err = cli("ledger", "verify", uri)
    assert_clean(out, err)
    if code == 0:  # the policy accepts the recorded detail: still one clean VERIFIED line
        assert len(verdicts(out)) == 1
        return
    assert code == 1
    lines = verdicts(out + err)
    assert len(lines) == 1 and lines[0].startswith("NOT VERIFIED"), out + err
    assert not any(line.startswith("VERIFIED") for line in (out + err).splitlines())


def test_a_checkpoint_with_control_characters_is_one_clean_error(ledgers, tmp_path):
    src, _f = ledgers["markup"]
    path = tmp_path / "cp.db"
    path.write_bytes(src.read_bytes())
    db = sqlite3.connect(path)
    (cp,) = db.execute("SELECT checkpoint FROM blocks WHERE height = 1").fetchone()
    db.execute("UPDATE blocks SET checkpoint = ? WHERE height = 1", (cp.replace("\n", "\n" + HOSTILE, 1),))
    db.commit()
    db.close()
    for command in ("verify", "summary", "checkpoint"):
        code, out, err = cli("ledger", command, f"sqlite:///{path}")
        assert_clean(out, err)
        assert code in (1, 2) and len(err.strip().splitlines()) == 1, (command, err)
        assert not verdicts(out)


def test_a_hostile_proof_file_is_one_clean_not_verified_line(ledgers, tmp_path):
    path, f = ledgers["markup"]
    proof = tmp_path / "p.txt"
    key = tmp_path / "server.vkey"
    code, out, err = cli("ledger", "checkpoint", f"sqlite:///{path}", "--verifier-key")
    vkey = out.strip().splitlines()[-1]
    key.write_text(vkey)
    code, text, err = cli("ledger", "prove", f"sqlite:///{path}", "--round", "1", "--client", key_id(f.client_keys[0]))
    assert code == 0, err
    for hostile in (text.replace("\n", "\n" + HOSTILE, 2), HOSTILE + "\n" + text, text + HOSTILE):
        proof.write_text(hostile)
        code, out, err = cli("proof", "verify", str(proof), "--server-key", vkey)
        assert_clean(out, err)
        assert code in (1, 2)
        lines = verdicts(out + err) + [line for line in err.splitlines() if line.startswith("NOT VERIFIED")]
        assert lines and all(not line.startswith("VERIFIED") for line in lines), out + err
    proof.write_text(text)  # the honest proof: VERIFIED, the entry's client text escaped
    code, out, err = cli("proof", "verify", str(proof), "--server-key", vkey)
    assert_clean(out, err)
    assert code == 0 and len(verdicts(out)) == 1


def _process(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flower_chain.cli", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_as_a_process_piped_and_with_colours_forced(ledgers, tmp_path):
    deep = tmp_path.joinpath(*["d" * 40] * 6)
    deep.mkdir(parents=True)
    path = deep / "ledger-with-a-long-name-so-the-uri-is-far-over-eighty-columns.db"
    path.write_bytes(ledgers["markup"][0].read_bytes())
    uri = f"sqlite:///{path}"
    assert len(uri) > 300
    piped = _process("ledger", "verify", uri, env={"COLUMNS": "", "FORCE_COLOR": "", "NO_COLOR": "1"})
    assert piped.returncode == 0, piped.stderr
    assert_clean(piped.stdout, piped.stderr)
    line = next(ln for ln in piped.stdout.splitlines() if ln.startswith("VERIFIED"))
    assert uri in line, "the URI was wrapped"
    forged = _process("ledger", "verify", f"sqlite:///{ledgers['forged'][0]}", env={"FORCE_COLOR": "1"})
    for text in (forged.stdout, forged.stderr):
        assert_clean(RICH_SGR.sub("", text))  # only rich's own colours are escape sequences
    visible = RICH_SGR.sub("", forged.stdout + forged.stderr)
    if forged.returncode == 1:
        assert [ln for ln in visible.splitlines() if "VERIFIED" in ln.split(" ")[0:2]][0].startswith("NOT VERIFIED")

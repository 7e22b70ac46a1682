"""Issue 19 item 7: the witness serves its latest cosigned checkpoint per log (``GET /latest-checkpoint``),
and ``ledger verify --witness-latest`` (a witness URL, or a file holding a note fetched earlier) fails a
ledger cut back to an older witnessed head (rollback) or holding another block at the witnessed height
(fork), naming both checkpoints."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from flower_chain.cli import app
from flower_chain.ledger import open_ledger
from flower_chain.ledger.checkpoint import parse_verifier_key, verifier_key
from flower_chain.ledger.cosignature import parse_cosigner_key, verify_cosigned_checkpoint
from flower_chain.serve.background import ServerThread
from flower_chain.strategies.witnessing import Witnessing
from flower_chain.witness.client import WitnessError, fetch_latest
from flower_chain.witness.server import Witness, WitnessStore, build_app
from tests.conftest import Federation
from tests.support.dishonest import rewrite

FED = "fed-latest/a?b&c=%2F#d"  # an origin that needs encoding in a URL
ORIGIN = f"flower-chain/{FED}"


def cli(*args):
    r = CliRunner().invoke(app, list(map(str, args)))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, " ".join(r.output.split())


@pytest.fixture
def served(tmp_path):
    """A ledger of rounds 1..3, each block cosigned over HTTP; ``cut``: a copy of it cut back to block 2."""
    path = tmp_path / "l.db"
    f = Federation(f"sqlite:///{path}", federation_id=FED)
    w = Witness(
        "witness.test/latest",
        Ed25519PrivateKey.generate(),
        {ORIGIN: [parse_verifier_key(verifier_key(ORIGIN, f.server_key.public_key()))]},
        WitnessStore(tmp_path / "w.db"),
    )
    with ServerThread(build_app(w)) as url:
        ws = Witnessing(f.ledger, [(url, w.verifier_key)], quorum=1, timeout=5)
        ws.on_block(f.writer.head)
        for rnd in (1, 2, 3):
            ws.on_block(f.add_round(rnd))
        ws.close()
        assert not ws.shortfall
        f.ledger.close()
        shutil.copy(path, tmp_path / "cut.db")  # the server cuts its ledger back to block 2 (re-signed as it was)
        rewrite(tmp_path / "cut.db", f.server_key, lambda blocks: blocks[:3], head_lines=True)
        yield f, w, url, path, tmp_path / "cut.db"


def test_the_witness_serves_its_latest_cosigned_checkpoint(served):
    f, w, url, path, _ = served
    note = fetch_latest(url, ORIGIN)
    cp, names = verify_cosigned_checkpoint(
        note, f.server_key.public_key(), [parse_cosigner_key(w.verifier_key)], 1, origin=ORIGIN
    )
    with open_ledger(f.uri) as ledger:
        assert cp.size == ledger.head().header.log_size and set(names) == {w.name}
    for query, status in (("", 400), ("?origin=" + urllib.parse.quote("flower-chain/other", safe=""), 404)):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url + "/latest-checkpoint" + query, timeout=5)
        assert e.value.code == status
    with pytest.raises(WitnessError) as e:
        fetch_latest(url, "flower-chain/other")
    assert e.value.status == 404


def test_a_ledger_cut_back_to_an_older_witnessed_head_is_not_verified_naming_both_checkpoints(served, tmp_path):
    f, w, url, path, cut = served
    code, out = cli("ledger", "verify", f"sqlite:///{cut}", "--witness", w.verifier_key)
    assert code == 0, out  # the cut ledger's own head is witnessed: alone, --witness cannot tell
    with open_ledger(f.uri) as full, open_ledger(f"sqlite:///{cut}") as short:
        latest, older = full.head(), short.head()
    saved = tmp_path / "latest.note"
    saved.write_text(fetch_latest(url, ORIGIN))
    for source in (url, saved):
        code, out = cli("ledger", "verify", f"sqlite:///{cut}", "--witness", w.verifier_key, "--witness-latest", source)
        assert code == 1 and "NOT VERIFIED" in out and "rollback" in out, out
        assert latest.hash.hex() in out and older.hash.hex() in out, out  # both checkpoints' heads
        assert f"size {latest.header.log_size}" in out and f"size {older.header.log_size}" in out, out
    code, out = cli("ledger", "verify", f.uri, "--witness", w.verifier_key, "--witness-latest", url, "--json")
    assert code == 0, out
    [entry] = json.loads(out)["witnessed"]["latest"]
    assert entry["problem"] == "" and entry["head_height"] == 3 and entry["witnesses"] == [w.name]


def test_another_block_at_the_witnessed_height_is_a_fork(served):
    f, w, url, path, _ = served

    def edit(blocks):
        blocks[3][0]["model_after"] = b"\x66" * 32

    rewrite(path, f.server_key, edit, head_lines=True)
    with open_ledger(f.uri) as ledger:
        forged = ledger.head()
    code, out = cli("ledger", "verify", f.uri, "--witness", w.verifier_key, "--witness-latest", url)
    assert code == 1 and "fork" in out and forged.hash.hex() in out, out
    assert "rollback" not in out, out
    code, out = cli("ledger", "verify", f.uri, "--witness", w.verifier_key)
    assert code == 1, out  # the rewritten head has no cosignature either


def test_unusable_latest_sources_are_one_error_line_exit_2(served, tmp_path):
    f, w, url, path, _ = served
    other = Witness("witness.test/other", Ed25519PrivateKey.generate(), w.logs, WitnessStore(tmp_path / "o.db"))
    note = fetch_latest(url, ORIGIN)
    untrusted = tmp_path / "untrusted.note"
    untrusted.write_text(note.replace(w.name, other.name))
    garbage = tmp_path / "garbage.note"
    garbage.write_bytes(b"\xff\xfe not a note")
    big = tmp_path / "big.note"
    big.write_bytes(b"x" * 70_000)
    for source in (tmp_path / "missing.note", garbage, big, untrusted, "http://127.0.0.1:9/"):
        code, out = cli("ledger", "verify", f.uri, "--witness", w.verifier_key, "--witness-latest", source)
        assert code == 2 and out.startswith("error:") and "Traceback" not in out, (source, out)
    code, out = cli("ledger", "verify", f.uri, "--witness-latest", url)
    assert code == 2 and "--witness" in out, out

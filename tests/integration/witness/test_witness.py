"""C2SP tlog-witness conformance, cosignature/v1 bytes, atomicity, restarts, the log-side client, interop."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from flower_chain.ledger.checkpoint import Checkpoint, parse_verifier_key, sign_checkpoint, verifier_key
from flower_chain.ledger.cosignature import (
    CosignerKey,
    add_cosignatures,
    cosignature_message,
    parse_cosignature,
    parse_cosigner_key,
    sign_cosignature,
    verify_cosignature,
    verify_cosigned_checkpoint,
)
from flower_chain.ledger.errors import CheckpointError, KeyFileError
from flower_chain.ledger.keys import raw_public
from flower_chain.ledger.proofs import consistency_proof
from flower_chain.serve.background import ServerThread, free_port
from flower_chain.witness.client import (
    WitnessConflict,
    WitnessEndpoint,
    WitnessError,
    WitnessPool,
    chain_headers,
    request_body,
    submit,
)
from flower_chain.witness.request import MAX_BODY_BYTES
from flower_chain.witness.server import Witness, WitnessStore, build_app

ORIGIN = "flower-chain/fed-test"


def post(url: str, body: bytes) -> tuple[int, bytes, str]:
    req = urllib.request.Request(url + "/add-checkpoint", data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read(), e.headers.get("content-type", "")


@pytest.fixture
def setup(federation_factory, tmp_path):
    fed = federation_factory("sqlite")
    fed.add_round(1, 5)
    wkey = Ed25519PrivateKey.generate()
    logs = {ORIGIN: [parse_verifier_key(verifier_key(ORIGIN, fed.server_key.public_key()))]}
    witness = Witness("witness.test/w1", wkey, logs, WitnessStore(tmp_path / "witness.db"))
    with ServerThread(build_app(witness)) as url:
        yield fed, witness, url


# --- cosignature/v1 bytes -------------------------------------------------------------------------------------


def test_cosignature_bytes_follow_the_spec():
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    pub = raw_public(key)
    body = "example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
    line = sign_cosignature(body, "witness.example.com/w1", key, timestamp=1679315147)
    assert line.startswith("\u2014 witness.example.com/w1 ") and line.endswith("\n") and line.count("\n") == 1
    blob = base64.b64decode(line.split(" ")[2])
    assert len(blob) == 76
    assert blob[:4] == hashlib.sha256(b"witness.example.com/w1\n\x04" + pub).digest()[:4]
    assert struct.unpack(">Q", blob[4:12])[0] == 1679315147
    msg = b"cosignature/v1\ntime 1679315147\n" + body.encode()
    assert cosignature_message(body, 1679315147) == msg
    key.public_key().verify(blob[12:], msg)  # raises if the signed message differs
    ck = CosignerKey("witness.example.com/w1", pub)
    assert parse_cosigner_key(ck.vkey()) == ck
    assert ck.vkey().split("+", 2)[2] == base64.b64encode(b"\x04" + pub).decode()
    assert verify_cosignature(body, line, ck) == 1679315147
    with pytest.raises(CheckpointError):  # another checkpoint
        verify_cosignature(body.replace("20852163", "20852164"), line, ck)
    with pytest.raises(CheckpointError):  # another key
        verify_cosignature(body, line, CosignerKey("witness.example.com/w1", raw_public(Ed25519PrivateKey.generate())))
    with pytest.raises(CheckpointError):  # another name
        verify_cosignature(body, line, CosignerKey("witness.example.com/w2", pub))
    forged = parse_cosignature(line)
    with pytest.raises(CheckpointError):  # a changed timestamp breaks the signature
        verify_cosignature(body, type(forged)(forged.name, forged.key_id, forged.timestamp + 1, forged.signature), ck)
    future = sign_cosignature(body, "witness.example.com/w1", key, timestamp=int(time.time()) + 86400)
    with pytest.raises(CheckpointError):
        verify_cosignature(body, future, ck)
    for bad in ("— w1 AAAA", "w1 " + line.split(" ")[2], "— w1 !!!", ""):
        with pytest.raises(CheckpointError):
            parse_cosignature(bad)
    for bad in (
        "w+00+AAAA",
        "w+" + ck.vkey().split("+", 1)[1].replace("+", "", 1),
        verifier_key("w", pub),
    ):  # an ordinary 0x01 note key is not a cosigner key
        with pytest.raises(KeyFileError):
            parse_cosigner_key(bad)


# --- add-checkpoint conformance -------------------------------------------------------------------------------


def test_every_status_code_and_no_state_change_on_refusal(setup, tmp_path):
    fed, witness, url = setup
    note1, size1 = fed.writer.checkpoint(), fed.writer.log_size
    status, body, ctype = post(url, request_body(note1, 0, []))
    assert status == 200
    ck = parse_cosigner_key(witness.verifier_key)
    assert verify_cosignature(note1, body.decode(), ck) > 0
    h1 = fed.writer.head.header.height
    fed.add_round(2, 7)
    note2, size2 = fed.writer.checkpoint(), fed.writer.log_size
    proof = consistency_proof(fed.ledger, size1, size2)
    hdrs = chain_headers(fed.ledger, h1 + 1, fed.writer.head.header.height)  # the blocks since the cosigned head
    state = witness.store.get(ORIGIN)

    other_key = Ed25519PrivateKey.generate()
    cp2 = Checkpoint.from_text(note2[: note2.index("\n\n") + 1])
    refusals = {
        "unknown origin": (
            404,
            request_body(sign_checkpoint(Checkpoint("example.com/other", 1, b"\x01" * 32), other_key), 0, []),
        ),
        "forged signature": (403, request_body(sign_checkpoint(cp2, other_key), size1, proof)),
        "tampered body": (403, request_body(note2.replace(f"\n{size2}\n", f"\n{size2 + 1}\n"), size1, proof)),
        "old larger than size": (400, request_body(note2, size2 + 1, proof, hdrs)),
        "stale old size": (409, request_body(note2, 0, [], hdrs)),
        "bad proof": (422, request_body(note2, size1, [bytes([proof[0][0] ^ 1]) + proof[0][1:]] + proof[1:], hdrs)),
        "short proof": (422, request_body(note2, size1, proof[:-1], hdrs)),
        "no header lines": (422, request_body(note2, size1, proof)),
        "replayed old checkpoint": (409, request_body(note1, 0, [])),
        "old size below the stored one": (409, request_body(note1, size1 - 1, [])),
    }
    for what, (want, req) in refusals.items():
        status, body, ctype = post(url, req)
        assert status == want, (what, status, body)
        if status == 409:
            assert body == f"{size1}\n".encode() and ctype == "text/x.tlog.size", what
        assert witness.store.get(ORIGIN) == state, what
    # a 409 for the same size with another root
    same_size = sign_checkpoint(Checkpoint(ORIGIN, size1, b"\x07" * 32), fed.server_key)
    status, body, ctype = post(url, request_body(same_size, size1, []))
    assert status == 409 and body == f"{size1}\n".encode()
    # the good request succeeds after all the refusals
    status, body, _ = post(url, request_body(note2, size1, proof, hdrs))
    assert status == 200 and verify_cosignature(note2, body.decode(), ck)
    assert witness.store.get(ORIGIN)[0] == size2
    # the same checkpoint again (old size = size): cosigned again, nothing changes
    assert post(url, request_body(note2, size2, []))[0] == 200
    # a replay of the old checkpoint with the new size as old size
    assert post(url, request_body(note1, size2, []))[0] == 400
    assert witness.store.get(ORIGIN)[0] == size2


def test_malformed_and_oversized_bodies_are_400_and_change_nothing(setup):
    fed, witness, url = setup
    note = fed.writer.checkpoint()
    h = base64.b64encode(b"\x00" * 32).decode()
    bad = [
        b"",
        b"\n\n",
        b"old 0\n",
        b"old 0" + note.encode(),
        b"old 00\n\n" + note.encode(),
        b"old -1\n\n" + note.encode(),
        b"old x\n\n" + note.encode(),
        b"new 0\n\n" + note.encode(),
        b"old  0\n\n" + note.encode(),
        b"old 0\nnot base64!\n\n" + note.encode(),
        b"old 0\n" + base64.b64encode(b"short") + b"\n\n" + note.encode(),
        b"old 0\n\xff\xfe\n\n" + note.encode(),
        b"\xff" * 100,
        ("old 5\n" + (h + "\n") * 64 + "\n" + note).encode(),  # 64 proof lines: more than 63
        b"old 99999999999999999999999\n\n" + note.encode(),
        b"old 0\n\n" + note.encode().replace(b"\n\n", b"\n"),  # checkpoint without its signature block
    ]
    for body in bad:
        status, _, _ = post(url, body)
        assert status in (400, 403), (body[:40], status)
    huge = sign_checkpoint(Checkpoint(ORIGIN, 2**64, b"\x01" * 32), fed.server_key)  # signed by the log itself
    assert post(url, request_body(huge, 0, []))[0] == 400
    status, _, _ = post(url, b"old 0\n\n" + b"x" * (70 * 1024))
    assert status == 413  # over 64 KiB without header lines
    assert witness.add_checkpoint(b"old 0\n\n" + b"x" * (MAX_BODY_BYTES + 1)).status == 413
    assert urllib.request.urlopen(url + "/", timeout=5).status == 200
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url + "/add-checkpoint", timeout=5)  # GET
    assert e.value.code == 405
    assert witness.store.latest(ORIGIN) is None and witness.store.get(ORIGIN)[0] == 0


def test_concurrent_submissions_for_one_log_exactly_one_succeeds(setup, tmp_path):
    fed, witness, url = setup
    base, base_h = fed.writer.log_size, fed.writer.head.header.height
    assert post(url, request_body(fed.writer.checkpoint(), 0, []))[0] == 200
    for trial in range(6):
        fed.add_round(10 + 2 * trial, 2)
        note_a, size_a, h_a = fed.writer.checkpoint(), fed.writer.log_size, fed.writer.head.header.height
        fed.add_round(11 + 2 * trial, 3)
        note_b, size_b, h_b = fed.writer.checkpoint(), fed.writer.log_size, fed.writer.head.header.height
        bodies = [
            request_body(
                note_a, base, consistency_proof(fed.ledger, base, size_a), chain_headers(fed.ledger, base_h + 1, h_a)
            ),
            request_body(
                note_b, base, consistency_proof(fed.ledger, base, size_b), chain_headers(fed.ledger, base_h + 1, h_b)
            ),
        ]
        barrier = threading.Barrier(2)
        results = [None, None]

        def go(i):
            barrier.wait()
            results[i] = post(url, bodies[i])

        threads = [threading.Thread(target=go, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=20)
        statuses = sorted(r[0] for r in results)
        assert statuses == [200, 409], (trial, results)
        base = witness.store.get(ORIGIN)[0]
        assert base == (size_a if results[0][0] == 200 else size_b)
        base_h = h_a if results[0][0] == 200 else h_b
    # two witness instances (as two processes would) on one database file: still exactly one wins
    fed.add_round(90, 2)
    note_a, size_a, h_a = fed.writer.checkpoint(), fed.writer.log_size, fed.writer.head.header.height
    fed.add_round(91, 2)
    note_b, size_b, h_b = fed.writer.checkpoint(), fed.writer.log_size, fed.writer.head.header.height
    twins = [Witness(witness.name, witness.key, witness.logs, WitnessStore(witness.store.path)) for _ in range(2)]
    barrier = threading.Barrier(2)
    out = [None, None]

    def direct(i, note, size, height):
        barrier.wait()
        hdrs = chain_headers(fed.ledger, base_h + 1, height)
        out[i] = (
            twins[i].add_checkpoint(request_body(note, base, consistency_proof(fed.ledger, base, size), hdrs)).status
        )

    threads = [
        threading.Thread(target=direct, args=(0, note_a, size_a, h_a)),
        threading.Thread(target=direct, args=(1, note_b, size_b, h_b)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(out) == [200, 409]


def test_state_survives_a_restart_of_the_witness_command(federation_factory, tmp_path):
    from flower_chain.ledger.keys import generate

    fed = federation_factory("sqlite")
    fed.add_round(1, 4)
    priv, _ = generate(tmp_path / "keys", "witness")
    db = f"sqlite:///{tmp_path / 'state' / 'witness.db'}"
    vkey = verifier_key(ORIGIN, fed.server_key.public_key())

    def start():
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flower_chain.cli",
                "witness",
                "serve",
                "--key",
                str(priv),
                "--db",
                db,
                "--log",
                f"{ORIGIN}={vkey}",
                "--name",
                "witness.test/cli",
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "COLUMNS": "300"},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2)
                return proc, f"http://127.0.0.1:{port}"
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
                time.sleep(0.1)

    proc, url = start()
    try:
        size1, h1 = fed.writer.log_size, fed.writer.head.header.height
        line = submit(url, fed.writer.checkpoint(), 0, [])
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    printed = proc.stdout.read().decode().strip()
    ck = parse_cosigner_key(printed)  # the command prints its cosigner vkey
    assert ck.name == "witness.test/cli" and verify_cosignature(fed.writer.checkpoint(), line, ck)
    fed.add_round(2, 3)
    proc, url = start()
    try:
        with pytest.raises(WitnessConflict) as e:  # the restarted witness remembers size1
            submit(url, fed.writer.checkpoint(), 0, [])
        assert e.value.size == size1
        hdrs = chain_headers(fed.ledger, h1 + 1, fed.writer.head.header.height)
        line = submit(url, fed.writer.checkpoint(), size1, consistency_proof(fed.ledger, size1), headers=hdrs)
        assert verify_cosignature(fed.writer.checkpoint(), line, ck)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_witness_command_refuses_bad_input(tmp_path):
    from flower_chain.cli import app
    from flower_chain.ledger.keys import generate

    priv, pub = generate(tmp_path, "w")
    good_log = f"{ORIGIN}={verifier_key(ORIGIN, raw_public(Ed25519PrivateKey.generate()))}"
    runner = CliRunner()
    for args in (
        ["--key", str(priv), "--log", "no-equals-sign"],
        ["--key", str(priv), "--log", "o=name+0000+AAAA"],
        ["--key", str(tmp_path / "missing.key"), "--log", f"{ORIGIN}=x"],
        ["--key", str(priv), "--log", good_log, "--db", "witness.db"],
        ["--key", str(priv), "--log", good_log, "--db", f"sqlite:///{tmp_path}"],  # a directory
        ["--key", str(priv), "--log", good_log, "--port", "0"],
    ):
        res = runner.invoke(app, ["witness", "serve", *args])
        assert res.exit_code == 2 and "error:" in res.output, (args, res.output)
    res = runner.invoke(app, ["witness", "vkey", "--key", str(pub), "--name", "w.example/1"])
    assert res.exit_code == 0 and parse_cosigner_key(res.output.strip()).name == "w.example/1"


# --- the log server's side --------------------------------------------------------------------------------------


def test_pool_learns_sizes_from_409_and_collects_verified_cosignatures(setup):
    fed, witness, url = setup
    ck = parse_cosigner_key(witness.verifier_key)
    submit(url, fed.writer.checkpoint(), 0, [])  # someone else already had the witness cosign this size
    fed.add_round(2, 4)
    pool = WitnessPool([WitnessEndpoint(url, ck)], timeout=5)
    note, errors = pool.cosign(fed.ledger, fed.writer.checkpoint())
    assert errors == {} and pool.witnesses[0].size == fed.writer.log_size
    cp, valid = verify_cosigned_checkpoint(note, fed.server_key.public_key(), [ck], quorum=1, origin=ORIGIN)
    assert cp.size == fed.writer.log_size and set(valid) == {ck.name}
    fed.add_round(3, 4)
    note, errors = pool.cosign(fed.ledger, fed.writer.checkpoint())  # from the size it remembers: one request
    assert errors == {} and verify_cosigned_checkpoint(note, fed.server_key.public_key(), [ck], 1)
    with pytest.raises(CheckpointError):
        verify_cosigned_checkpoint(fed.writer.checkpoint(), fed.server_key.public_key(), [ck], quorum=1)
    wrong = CosignerKey(ck.name, raw_public(Ed25519PrivateKey.generate()))
    with pytest.raises(CheckpointError):  # the line is ignored as another key's: quorum not met
        verify_cosigned_checkpoint(note, fed.server_key.public_key(), [wrong], quorum=1)
    impostor = Witness(ck.name, Ed25519PrivateKey.generate(), witness.logs, WitnessStore(":memory:"))
    pool_bad = WitnessPool([WitnessEndpoint(url, CosignerKey(ck.name, raw_public(impostor.key)), size=0)])
    note_bad, errors = pool_bad.cosign(fed.ledger, fed.writer.checkpoint())  # cosigned by a key it does not trust
    assert note_bad == fed.writer.checkpoint() and "no valid cosignature" in errors[url]


def test_submit_times_out_and_reports_unreachable_witnesses(setup):
    fed, witness, url = setup
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection, never answers
    dead = f"http://127.0.0.1:{free_port()}"
    try:
        t0 = time.monotonic()
        with pytest.raises(WitnessError):
            submit(f"http://127.0.0.1:{silent.getsockname()[1]}", fed.writer.checkpoint(), 0, [], timeout=0.5)
        assert time.monotonic() - t0 < 5
        with pytest.raises(WitnessError):
            submit(dead, fed.writer.checkpoint(), 0, [], timeout=0.5)
        ck = parse_cosigner_key(witness.verifier_key)
        pool = WitnessPool(
            [
                WitnessEndpoint(url, ck),
                WitnessEndpoint(dead, ck),
                WitnessEndpoint(f"http://127.0.0.1:{silent.getsockname()[1]}", ck),
            ],
            timeout=0.5,
        )
        t0 = time.monotonic()
        note, errors = pool.cosign(fed.ledger, fed.writer.checkpoint())
        assert time.monotonic() - t0 < 5 and set(errors) == {dead, f"http://127.0.0.1:{silent.getsockname()[1]}"}
        assert verify_cosigned_checkpoint(note, fed.server_key.public_key(), [ck], quorum=1)
    finally:
        silent.close()


def test_add_cosignatures_refuses_garbage_and_keeps_one_copy(setup):
    fed, witness, url = setup
    line = submit(url, fed.writer.checkpoint(), 0, [])
    note = add_cosignatures(fed.writer.checkpoint(), [line, line])
    assert note.count(line) == 1 and note.startswith(fed.writer.checkpoint())
    with pytest.raises(CheckpointError):
        add_cosignatures(fed.writer.checkpoint(), ["— x notbase64!"])


# --- interop with an independent implementation ------------------------------------------------------------------


def test_interop_with_the_aics_witness_implementation(federation_factory, tmp_path):
    """aics-witness (PyPI, Apache-2.0) is an independent C2SP tlog-witness; it needs Python >= 3.12."""
    try:
        from aics_tlog.cosign import verify_cosignature as aics_verify
        from aics_tlog.note import parse_vkey
        from aics_witness import LogConfig
        from aics_witness import Witness as AicsWitness
        from aics_witness import WitnessError as AicsError
        from aics_witness import WitnessStore as AicsStore
    except ImportError:
        pytest.skip(
            f"aics-witness is not installed (it requires Python >= 3.12; this is "
            f"{sys.version_info.major}.{sys.version_info.minor}): `pip install aics-witness` to run this"
        )
    fed = federation_factory("sqlite")
    fed.add_round(1, 3)
    wkey = Ed25519PrivateKey.generate()
    theirs = AicsWitness(
        "aics.test/w",
        wkey,
        AicsStore(tmp_path / "aics.db", create=True),
        [LogConfig(ORIGIN, (parse_vkey(verifier_key(ORIGIN, fed.server_key.public_key())),))],
    )
    ck = parse_cosigner_key(theirs.vkey_text)  # their vkey text parses as ours

    def their_submit(url, note, old, proof, timeout, headers=()):  # their witness knows no header lines (C2SP core)
        try:
            return theirs.add_checkpoint(request_body(note, old, proof)).decode()
        except AicsError as e:
            if e.status == 409:
                raise WitnessConflict("409", int(e.body.decode().strip()), e.body.decode()) from None
            raise WitnessError(e.message, e.status) from None

    line = their_submit("", fed.writer.checkpoint(), 0, [], 1)  # our checkpoint and request format, their witness
    assert verify_cosignature(fed.writer.checkpoint(), line, ck)  # their cosignature, our verifier
    size1 = fed.writer.log_size
    fed.add_round(2, 5)
    with pytest.raises(WitnessConflict) as e:
        their_submit("", fed.writer.checkpoint(), 0, [], 1)
    assert e.value.size == size1
    pool = WitnessPool([WitnessEndpoint("aics", ck)], submit_fn=their_submit)  # our consistency proofs, their check
    note, errors = pool.cosign(fed.ledger, fed.writer.checkpoint())
    assert errors == {} and verify_cosigned_checkpoint(note, fed.server_key.public_key(), [ck], 1)
    bad = consistency_proof(fed.ledger, size1)
    with pytest.raises(AicsError) as ae:
        theirs.add_checkpoint(request_body(fed.writer.checkpoint(), size1, [bytes(32)] + bad[1:]))
    assert ae.value.status in (409, 422)
    # our witness's cosignature, their verifier
    ours = sign_cosignature(fed.writer.checkpoint(), "ours.test/w", wkey, int(time.time()))
    cp = Checkpoint.from_text(fed.writer.checkpoint().split("\n\n")[0] + "\n")
    blob = base64.b64decode(ours.split(" ")[2])
    assert aics_verify(blob[4:], "ours.test/w", raw_public(wkey), cp.origin, cp.size, cp.root_hash)
    assert not aics_verify(blob[4:], "ours.test/w", raw_public(wkey), cp.origin, cp.size + 1, cp.root_hash)


def test_pool_deadline_holds_against_a_witness_that_trickles_bytes(setup):
    fed, witness, url = setup
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(2)
    stop = threading.Event()

    def trickle():
        conn, _ = srv.accept()
        conn.recv(65536)
        for b in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n"[:30]:  # one byte every 0.2 s, at most 6 s
            if stop.is_set():
                break
            conn.send(bytes([b]))
            time.sleep(0.2)
        conn.close()

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    slow = f"http://127.0.0.1:{srv.getsockname()[1]}"
    ck = parse_cosigner_key(witness.verifier_key)
    pool = WitnessPool([WitnessEndpoint(url, ck), WitnessEndpoint(slow, ck)], timeout=0.5)
    t0 = time.monotonic()
    note, errors = pool.cosign(fed.ledger, fed.writer.checkpoint())
    elapsed = time.monotonic() - t0
    stop.set()
    t.join(timeout=10)
    srv.close()
    assert elapsed < 3 and set(errors) == {slow} and "no answer" in errors[slow]
    assert verify_cosigned_checkpoint(note, fed.server_key.public_key(), [ck], quorum=1)

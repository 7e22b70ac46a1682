"""C2SP tlog-tiles: path encoding, entry bundles, the log server and a client that verifies from tiles alone."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
from typer.testing import CliRunner

from flower_chain.ledger import merkle
from flower_chain.ledger.errors import ProofError
from flower_chain.ledger.keys import raw_public
from flower_chain.ledger.proofs import consistency_proof, inclusion_proof
from flower_chain.ledger.tiles import (
    TileError,
    TilesClient,
    decode_bundle,
    encode_bundle,
    encode_index,
    parse_tile_path,
    partial_width,
    tile_path,
    tile_width_for,
)
from flower_chain.serve.app import LogView, build_app
from flower_chain.serve.background import ServerThread, free_port


def get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


# --- formats ----------------------------------------------------------------------------------------------


def test_index_encoding_follows_the_spec_example_and_round_trips():
    assert encode_index(1234067) == "x001/x234/067"
    assert encode_index(0) == "000" and encode_index(999) == "999" and encode_index(1000) == "x001/000"
    assert tile_path(0, 1234067, 3) == "tile/0/x001/x234/067.p/3"
    assert tile_path(None, 5) == "tile/entries/005" and tile_path(2, 0, 1) == "tile/2/000.p/1"
    for n in (0, 1, 255, 256, 999, 1000, 1001, 65535, 10**6, 1234067, 10**12 + 7, 2**63):
        for level, width in ((0, 256), (5, 1), (63, 255), (None, 17)):
            t = parse_tile_path(tile_path(level, n, width))
            assert (t.level, t.index, t.width) == (level, n, width)


@pytest.mark.parametrize(
    "bad",
    [
        "tile/00/000",
        "tile/64/000",
        "tile/-1/000",
        "tile/a/000",
        "tile/0/00",
        "tile/0/0000",
        "tile/0/x001",
        "tile/0/001/234",
        "tile/0/x1/234",
        "tile/0/x000/001",
        "tile/0/000.p/0",
        "tile/0/000.p/256",
        "tile/0/000.p/01",
        "tile/0/000.p/",
        "tile/0/000.q/5",
        "tile/entries/",
        "tile/0/",
        "tiles/0/000",
        "tile/0/+01",
        "tile/0/１２３",
        "tile/0/x001/x002/x003/x004/x005/x006/x007/x008/009",
        "tile/entries/000.p/999",
    ],
)
def test_malformed_tile_paths_are_refused(bad):
    with pytest.raises(TileError):
        parse_tile_path(bad)


def test_partial_widths_match_the_spec_example():
    size = 70000  # the spec: 273 full level-0 tiles, a level-0 partial of 112, one full level-1 tile,
    assert size // 256 == 273 and partial_width(0, size) == 112  # a level-1 partial of 17, a level-2 partial of 1
    assert tile_width_for(1, 0, size) == 256 and partial_width(1, size) == 17 and partial_width(2, size) == 1
    assert tile_width_for(0, 273, size) == 112 and tile_width_for(0, 274, size) == 0
    assert partial_width(0, 256) == 0 and partial_width(1, 256) == 1  # size 256: full level 0, level-1 partial of 1


def test_entry_bundles_round_trip_and_refuse_truncation():
    entries = [b"", b"a", bytes(range(256)) * 10, b"\x00" * 65535]
    data = encode_bundle(entries)
    assert data[:2] == b"\x00\x00" and data[2:4] == b"\x00\x01" and data[4:5] == b"a"  # big-endian uint16 prefixes
    assert decode_bundle(data) == entries
    for cut in (1, 3, len(data) - 1):
        with pytest.raises(TileError):
            decode_bundle(data[:cut])
    with pytest.raises(TileError):
        encode_bundle([b"x" * 65536])


# --- the server -------------------------------------------------------------------------------------------


@pytest.fixture
def served(federation_factory):
    """A sqlite ledger of 3 rounds crossing a tile boundary, served on loopback while it grows."""
    fed = federation_factory("sqlite")
    fed.add_round(1, 120)
    fed.add_round(2, 150, rejected=3)  # 1 + 120 + 153 = 274 entries: one full level-0 tile, a partial of 18
    with ServerThread(build_app(LogView(fed.ledger, refresh_s=0.0))) as url:
        yield fed, url


def test_client_verifies_every_update_and_consistency_from_tiles_alone(served):
    fed, url = served
    client = TilesClient(url, raw_public(fed.server_key), origin="flower-chain/fed-test")
    cp1, note1 = client.checkpoint()
    assert cp1.size == 274 and note1 == fed.writer.checkpoint()
    client.verify_tree(cp1)
    fed.add_round(3, 300)  # the server follows the ledger a running server appends to
    fed.add_round(4, 40, rejected=2)
    cp2, _ = client.checkpoint()
    assert cp2.size == 274 + 300 + 42 == fed.writer.log_size
    assert client.verify_consistency(cp1, cp2) == consistency_proof(fed.ledger, cp1.size, cp2.size)
    checked = 0
    for index, entry in enumerate(client.entries(0, cp2.size, cp2.size)):
        proof = client.verify_inclusion(entry, index, cp2)
        assert proof == inclusion_proof(fed.ledger, index, cp2.size)
        checked += 1
    assert checked == cp2.size == 616
    # consistency from an older size whose partial tiles are now superseded by full ones
    assert client.verify_consistency(cp1, cp1) == []
    with pytest.raises(ProofError):
        client.verify_consistency(cp2, cp1)


def test_partial_tiles_at_the_right_edge_and_caching_headers(served):
    fed, url = served
    size = fed.writer.log_size  # 274
    status, body, headers = get(f"{url}/tile/0/001.p/18")
    assert status == 200 and body == b"".join(fed.ledger.node(0, 256 + i) for i in range(18))
    assert headers["content-type"] == "application/octet-stream" and "immutable" not in headers["cache-control"]
    status, body, headers = get(f"{url}/tile/0/000")
    assert status == 200 and len(body) == 8192 and "immutable" in headers["cache-control"]
    assert body[:32] == merkle.leaf_hash(next(fed.ledger.entries(0, 1)))
    status, body, _ = get(f"{url}/tile/1/000.p/1")  # level 1: the hash of the one full level-0 tile
    assert status == 200 and body == merkle.root(
        [body_i for body_i in (get(f"{url}/tile/0/000")[1][i : i + 32] for i in range(0, 8192, 32))]
    )
    status, body, _ = get(f"{url}/tile/entries/001.p/18")
    assert status == 200 and [merkle.leaf_hash(e) for e in decode_bundle(body)] == [
        fed.ledger.node(0, 256 + i) for i in range(18)
    ]
    status, body, headers = get(f"{url}/checkpoint")
    assert status == 200 and body.decode() == fed.writer.checkpoint()
    assert headers["content-type"] == "text/plain; charset=utf-8" and headers["cache-control"] == "public, max-age=2"
    for missing in (
        "tile/0/001",
        "tile/0/001.p/19",
        "tile/0/002.p/1",
        "tile/1/000",
        "tile/2/000.p/1",
        "tile/entries/001",
        "tile/entries/002.p/1",
        "tile/0/x001/000",
    ):
        assert get(f"{url}/{missing}")[0] == 404, missing
    assert size == 274


def test_malformed_tile_requests_are_400_and_never_500(served):
    _, url = served
    for bad in (
        "tile/",
        "tile/0",
        "tile/00/000",
        "tile/64/000",
        "tile/0/0000",
        "tile/0/000.p/0",
        "tile/0/000.p/256",
        "tile/0/x000/001",
        "tile/entries/abc",
        "tile/0/000.p/01",
        "tile/0/%00",
        "tile/0/000/../000",
    ):
        status, _, _ = get(f"{url}/{bad}")
        assert status in (400, 404), (bad, status)
    assert get(f"{url}/tile/0/000.p/1")[0] == 200  # a partial tile of an earlier size is still served


def test_client_refuses_tampered_tiles_and_foreign_checkpoints(served):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from flower_chain.ledger.tiles import http_fetcher

    fed, url = served
    honest = http_fetcher(url)

    def tampering(path: str) -> bytes:
        data = honest(path)
        if path.startswith("tile/0/001"):
            data = bytes([data[0] ^ 1]) + data[1:]
        return data

    client = TilesClient(tampering, raw_public(fed.server_key))
    cp, _ = client.checkpoint()
    with pytest.raises(ProofError):
        client.verify_tree(cp)
    with pytest.raises(ProofError):
        list(client.entries(256, 260, cp.size))  # a bundle entry no longer matches its tile hash
    entry0 = next(TilesClient(url, raw_public(fed.server_key)).entries(0, 1, cp.size))
    with pytest.raises(ProofError):
        client.verify_inclusion(entry0 + b"x", 0, cp)
    with pytest.raises(ProofError):
        TilesClient(url, raw_public(Ed25519PrivateKey.generate())).checkpoint()
    with pytest.raises(ProofError):
        TilesClient(url, raw_public(fed.server_key), origin="flower-chain/other").checkpoint()


# --- the command --------------------------------------------------------------------------------------------


def test_serve_refuses_a_ledger_that_does_not_verify(federation_factory):
    from flower_chain.cli import app

    fed = federation_factory("sqlite")
    fed.add_round(1, 3)
    path = fed.uri[len("sqlite:///") :]
    db = sqlite3.connect(path)
    db.execute("UPDATE entries SET data = data || x'00' WHERE idx = 2")
    db.commit()
    db.close()
    res = CliRunner().invoke(app, ["serve", fed.uri, "--port", str(free_port())])
    assert res.exit_code == 1 and "does not verify" in res.output
    res = CliRunner().invoke(app, ["serve", "sqlite:///does/not/exist.db"])
    assert res.exit_code == 2


def test_serve_command_serves_the_checkpoint(federation_factory):
    fed = federation_factory("sqlite")
    fed.add_round(1, 5)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "flower_chain.cli", "serve", fed.uri, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, body, _ = get(f"http://127.0.0.1:{port}/checkpoint")
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
                time.sleep(0.1)
        assert status == 200 and body.decode() == fed.writer.checkpoint()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_tiles_and_cosignature_modules_import_neither_flwr_nor_torch_nor_a_web_framework():
    code = (
        "import sys, flower_chain.ledger.tiles, flower_chain.ledger.cosignature, flower_chain.witness.client;"
        "print(sorted(m for m in ('flwr', 'torch', 'starlette', 'uvicorn') if m in sys.modules))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and res.stdout.strip() == "[]", res.stdout + res.stderr

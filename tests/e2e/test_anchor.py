"""Anchoring on an EVM chain: the in-process eth-tester chain always, a real anvil node when installed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("web3")
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from flower_chain.anchor.evm import AnchorError, EvmAnchor, artifact  # noqa: E402
from flower_chain.anchor.publish import AnchorPublisher, catch_up, verify_against_chain  # noqa: E402
from flower_chain.ledger import LedgerWriter, VerificationError, open_ledger, verify  # noqa: E402
from tests.support.anvil import ANVIL_KEY, TESTER_KEY, Anvil, _anvil_bin, _free_port  # noqa: E402,F401

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def fed(federation_factory):
    f = federation_factory("sqlite")
    for r in (1, 2, 3):
        f.add_round(r)
    return f


def anchor_on_tester(fed, **kw) -> EvmAnchor:
    return EvmAnchor("evm+tester:", federation_id=fed.federation_id, private_key=TESTER_KEY, **kw)


def test_anchor_all_blocks_verify_and_no_second_anchor(fed):
    a = anchor_on_tester(fed)
    assert catch_up(fed.ledger, a) == {"anchored": 4, "already_anchored": 0, "contract": a.address}
    assert catch_up(fed.ledger, a)["already_anchored"] == 4
    rep = verify_against_chain(fed.ledger, a)
    assert rep["anchored"] == [0, 1, 2, 3] and rep["not_anchored"] == []
    head = fed.ledger.head()
    with pytest.raises(AnchorError, match="already anchored"):
        a.anchor(3, head.header.log_size, head.header.log_root, head.hash)
    # the contract itself refuses a second anchor for a height, whoever asks
    fn = a.contract.functions.anchor(3, 1, b"\x01" * 32, b"\x02" * 32)
    with pytest.raises(Exception, match="AlreadyAnchored|revert"):
        fn.call({"from": a.account.address})


def test_not_yet_anchored_heights_are_reported(fed):
    a = anchor_on_tester(fed)
    catch_up(fed.ledger, a)
    fed.add_round(4)
    assert verify_against_chain(fed.ledger, a)["not_anchored"] == [4]


def _rewrite_tail(f, from_height: int) -> None:
    """The server itself rewrites history from ``from_height``: re-signed with its own key, so the
    ledger verifies on its own, but no longer matches the anchors."""
    path = f.uri[len("sqlite:///") :]
    f.ledger.close()
    import sqlite3

    from flower_chain.ledger import merkle

    db = sqlite3.connect(path)
    first = db.execute("SELECT MIN(idx) FROM entries WHERE height >= ?", (from_height,)).fetchone()[0]
    db.execute("DELETE FROM blocks WHERE height >= ?", (from_height,))
    db.execute("DELETE FROM entries WHERE height >= ?", (from_height,))
    db.execute("DELETE FROM nodes")
    leaves = [merkle.leaf_hash(d) for (d,) in db.execute("SELECT data FROM entries ORDER BY idx")]
    cr = merkle.CompactRange()
    db.executemany("INSERT INTO nodes VALUES (?, ?, ?)", [n for h in leaves for n in cr.append(h)])
    db.commit()
    db.close()
    assert first is not None
    f.ledger = open_ledger(f.uri)
    f.writer = LedgerWriter(f.ledger, f.server_key)
    f.add_round(from_height)


def test_rewritten_ledger_fails_against_the_chain(fed):
    a = anchor_on_tester(fed)
    catch_up(fed.ledger, a)
    _rewrite_tail(fed, 2)
    verify(fed.ledger)  # the rewrite is self-consistent ...
    with pytest.raises(VerificationError) as e:
        verify_against_chain(fed.ledger, a)  # ... but the chain remembers
    assert e.value.height == 2


def test_publisher_runs_off_the_critical_path_and_records_failures(fed, tmp_path):
    a = anchor_on_tester(fed)
    pub = AnchorPublisher(lambda: a, tmp_path / "status.jsonl", backoff=0.01)
    fed.writer.listeners.append(pub.submit)
    t = time.perf_counter()
    fed.add_round(4)
    assert time.perf_counter() - t < 1.0
    pub.close()
    rows = [json.loads(x) for x in (tmp_path / "status.jsonl").read_text().splitlines()]
    assert rows[-1]["ok"] and rows[-1]["height"] == 4 and rows[-1]["gas_used"] > 0

    def broken():
        raise AnchorError("cannot reach the Ethereum node at 127.0.0.1:1")

    pub2 = AnchorPublisher(broken, tmp_path / "status2.jsonl", retries=2, backoff=0.01)
    fed.writer.listeners[-1] = pub2.submit
    fed.add_round(5)  # the ledger keeps going
    pub2.close()
    row = json.loads((tmp_path / "status2.jsonl").read_text())
    assert row["ok"] is False and "cannot reach" in row["error"]
    verify(fed.ledger)
    assert catch_up(fed.ledger, a)["anchored"] == 5  # the backlog, later: blocks 0-3 (never submitted) and 5
    assert verify_against_chain(fed.ledger, a)["not_anchored"] == []


def test_bad_input_is_a_clear_error(fed):
    with pytest.raises(AnchorError, match="cannot reach"):
        EvmAnchor(f"evm+http://127.0.0.1:{_free_port()}", federation_id="x", private_key=TESTER_KEY, timeout=2)
    with pytest.raises(AnchorError, match="not the expected chain"):
        anchor_on_tester(fed, chain_id=1)
    a = anchor_on_tester(fed)
    with pytest.raises(AnchorError, match="no contract"):
        anchor_on_tester(fed, contract=a.account.address)  # an account, not a contract
    other = EvmAnchor("evm+tester:", federation_id="fed-other", private_key=TESTER_KEY)
    with pytest.raises(AnchorError, match="another federation"):
        EvmAnchor("evm+tester:", federation_id=fed.federation_id, private_key=TESTER_KEY, contract=other.address)
    # a contract that is not ours (runtime code: a single STOP)
    w3 = a.w3
    tx = w3.eth.send_transaction({"from": w3.eth.accounts[0], "data": "0x6001600c60003960016000f300"})
    foreign = w3.eth.wait_for_transaction_receipt(tx)["contractAddress"]
    with pytest.raises(AnchorError, match="not a flower-chain LedgerAnchor"):
        anchor_on_tester(fed, contract=foreign)
    with pytest.raises(AnchorError, match="cannot pay for gas"):
        EvmAnchor("evm+tester:", federation_id="y", private_key="0x" + "ab" * 32)
    with pytest.raises(AnchorError, match="evm\\+http"):
        EvmAnchor("http://127.0.0.1:1", federation_id="x", private_key=TESTER_KEY)


def test_checked_in_artifact_matches_the_source():
    solcjs = ROOT / "node_modules" / ".bin" / "solcjs"
    if not solcjs.exists() and not shutil.which("solcjs"):
        pytest.skip("solc-js is not installed (npm install solc@0.8.37; .ci/run does)")
    r = subprocess.run(
        [sys.executable, str(ROOT / "contracts" / "build.py"), "--check"], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert artifact()["evmVersion"] == "paris"


# --- a real node: anvil ----------------------------------------------------------------------------------


@pytest.fixture
def anvil(tmp_path):
    if _anvil_bin() is None:
        pytest.skip("anvil is not installed (npm install @foundry-rs/anvil; .ci/run does)")
    node = Anvil(tmp_path / "anvil-state.json").start()
    yield node
    node.stop()


def _run(tmp_path, anvil, *extra):
    key = tmp_path / "evm.key"
    key.write_text(ANVIL_KEY)
    uri = f"sqlite:///{tmp_path}/ledger.db"
    args = [
        sys.executable,
        str(ROOT / "run.py"),
        "--num-clients",
        "3",
        "--rounds",
        "3",
        "--out",
        str(tmp_path / "out"),
        "--data-dir",
        str(tmp_path / "data"),
        "--ledger",
        uri,
        "--anchor",
        anvil.url,
        "--anchor-key-file",
        str(key),
        "--anchor-chain-id",
        "31337",
        *extra,
    ]
    return (
        uri,
        key,
        subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=dict(os.environ, RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0"),
        ),
    )


def _status(uri: str) -> list[dict]:
    p = Path(uri[len("sqlite:///") :] + ".anchors.jsonl")
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "flower_chain.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=dict(os.environ, COLUMNS="200"),
    )


def test_full_run_anchors_every_block_on_anvil_and_rewrite_is_caught(tmp_path, anvil):
    uri, _key, p = _run(tmp_path, anvil)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
    rows = _status(uri)
    with open_ledger(uri) as led:
        n = led.block_count()
    assert len(rows) == n and all(r["ok"] for r in rows), rows
    contract = rows[0]["contract"]
    assert len({r["contract"] for r in rows}) == 1  # deployed once
    r = _cli("ledger", "verify", uri, "--anchor", anvil.url, "--contract", contract, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["anchors"]["not_anchored"] == []
    # the server rewrites block 3 after anchoring, re-signed with its own key
    from tests.conftest import Federation

    f = Federation.__new__(Federation)
    from flower_chain.ledger.keys import load_private

    f.uri, f.ledger = uri, open_ledger(uri)
    f.server_key = load_private(tmp_path / "out" / "keys" / "server" / "server.key")
    f.client_keys = [Ed25519PrivateKey.generate()]
    f.federation_id = json.loads((tmp_path / "out" / "metrics.json").read_text())["summary"]["federation_id"]
    f.rng = __import__("random").Random(1)
    _rewrite_tail(f, 3)
    f.ledger.close()
    r = _cli("ledger", "verify", uri, "--anchor", anvil.url, "--contract", contract, "--no-client-signatures")
    assert r.returncode == 1 and "block 3" in r.stderr and "rewritten after anchoring" in r.stderr


def test_anvil_dies_mid_run_the_run_completes_and_catch_up_works(tmp_path, anvil):
    uri, key, p = _run(tmp_path, anvil)
    deadline = time.time() + 300
    while time.time() < deadline and not any(r.get("ok") for r in _status(uri)):
        time.sleep(0.2)
    anvil.stop()  # the chain goes away mid-run
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
    rows = _status(uri)
    assert any(r["ok"] for r in rows) and any(not r["ok"] for r in rows), rows
    with open_ledger(uri) as led:
        verify(led)
    contract = next(r["contract"] for r in rows if r["ok"])
    anvil.start()  # back, with its state
    r = _cli("ledger", "anchor", uri, "--anchor", anvil.url, "--contract", contract, "--key-file", key)
    assert r.returncode == 0, r.stderr
    r = _cli("ledger", "verify", uri, "--anchor", anvil.url, "--contract", contract, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["anchors"]["not_anchored"] == [], r.stdout + r.stderr


# --- rollback, owner pinning, and the status file is never evidence (issue 11 item 4) --------------------------


def _drop_last_blocks(f, n: int) -> None:
    """The server rolls its ledger back by ``n`` blocks (re-signed: it verifies on its own)."""
    from tests.support import dishonest

    f.ledger.close()
    dishonest.rewrite(f.uri, f.server_key, lambda blocks: blocks[:-n])
    f.ledger = open_ledger(f.uri)


def test_anchors_beyond_the_local_head_fail(fed):
    a = anchor_on_tester(fed)
    catch_up(fed.ledger, a)
    assert verify_against_chain(fed.ledger, a)["latest_height"] == 3
    _drop_last_blocks(fed, 1)
    verify(fed.ledger)  # the truncated ledger is self-consistent ...
    with pytest.raises(VerificationError, match="anchors height 3, beyond the local head .height 2.") as e:
        verify_against_chain(fed.ledger, a)  # ... but the chain has seen height 3
    assert e.value.height == 3


def test_owner_is_reported_and_can_be_pinned(fed):
    a = anchor_on_tester(fed)
    catch_up(fed.ledger, a)
    me = a.account.address
    rep = verify_against_chain(fed.ledger, a, owner=me.lower())
    assert rep["owner"] == me and rep["contract"] == a.address
    stranger = "0x" + "12" * 20
    with pytest.raises(VerificationError, match=f"owned by {me}, not by the pinned owner {stranger}"):
        verify_against_chain(fed.ledger, a, owner=stranger)


ANVIL_KEY_1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"  # anvil's account 1
ANVIL_ADDR_0 = "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"


def test_cli_anchor_checks_on_anvil_rollback_owner_and_status_file(fed, tmp_path, anvil):
    from eth_account import Account

    addr_1 = Account.from_key(ANVIL_KEY_1).address
    key0 = tmp_path / "evm0.key"
    key0.write_text(ANVIL_KEY)
    uri = fed.uri
    fed.ledger.close()
    r = _cli("ledger", "anchor", uri, "--anchor", anvil.url, "--key-file", key0)
    assert r.returncode == 0 and "anchored 4 blocks" in r.stdout, r.stdout + r.stderr
    contract = r.stdout.split("in contract ")[1].split()[0]
    r = _cli("ledger", "verify", uri, "--anchor", anvil.url, "--contract", contract, "--owner", ANVIL_ADDR_0)
    assert r.returncode == 0 and f"contract {contract} (owner {ANVIL_ADDR_0})" in r.stdout, r.stdout + r.stderr
    r = _cli("ledger", "verify", uri, "--anchor", anvil.url, "--contract", contract, "--owner", addr_1)
    assert r.returncode == 1 and "not by the pinned owner" in r.stderr, r.stdout + r.stderr
    # a contract of the same federation deployed and filled by another account: pinning the owner refuses it
    key1 = tmp_path / "evm1.key"
    key1.write_text(ANVIL_KEY_1)
    r = _cli("ledger", "anchor", uri, "--anchor", anvil.url, "--key-file", key1)
    other = r.stdout.split("in contract ")[1].split()[0]
    assert _cli("ledger", "verify", uri, "--anchor", anvil.url, "--contract", other).returncode == 0
    r = _cli("ledger", "verify", uri, "--anchor", anvil.url, "--contract", other, "--owner", ANVIL_ADDR_0)
    assert r.returncode == 1 and f"owned by {addr_1}" in r.stderr, r.stderr
    # roll back one block: the chain's latest anchored height is beyond the local head
    fed.ledger = open_ledger(uri)
    _drop_last_blocks(fed, 1)
    fed.ledger.close()
    assert _cli("ledger", "verify", uri).returncode == 0  # on its own it verifies
    status = Path(uri[len("sqlite:///") :] + ".anchors.jsonl")  # a status file claiming all is well changes nothing
    status.write_text("".join(json.dumps({"height": h, "ok": True, "contract": contract}) + "\n" for h in range(3)))
    r = _cli("ledger", "verify", uri, "--anchor", anvil.url, "--contract", contract, "--json")
    assert r.returncode == 1 and "truncated or rolled back" in json.loads(r.stdout)["error"], r.stdout + r.stderr
    # and a contract with no anchors is not "verified against the chain" because the status file says so
    fresh = EvmAnchor(anvil.url, federation_id=fed.federation_id, private_key=ANVIL_KEY).address
    status.write_text("".join(json.dumps({"height": h, "ok": True, "contract": fresh}) + "\n" for h in range(3)))
    doc = json.loads(_cli("ledger", "verify", uri, "--anchor", anvil.url, "--contract", fresh, "--json").stdout)
    assert doc["anchors"]["anchored"] == [] and doc["anchors"]["not_anchored"] == [0, 1, 2]

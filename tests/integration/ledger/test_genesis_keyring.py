"""A genesis keyring too large for one tlog-tiles entry (issue 19 item 13): block 0 continues it in ``keys``
entries, each within the bundle's uint16 length; every reader joins them; misplaced or repeated keys fail
``verify`` naming the entry; a small federation's genesis block is byte for byte what it was."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord

from flower_chain.clients.secagg_checks import _genesis_keys
from flower_chain.ledger import GenesisEntry, LedgerWriter, open_ledger, verify
from flower_chain.ledger.encoding import encode
from flower_chain.ledger.entries import KeysEntry, decode_entry
from flower_chain.ledger.errors import VerificationError
from flower_chain.ledger.genesis import (
    MAX_ENTRY_BYTES,
    GenesisError,
    join_genesis,
    keyring_proof,
    read_genesis,
    split_genesis,
)
from flower_chain.ledger.keys import key_id, raw_public
from flower_chain.ledger.writer import config_digest, origin_for
from flower_chain.strategies import LedgerStrategy
from flower_chain.strategies.ledger_strategy import strategy_config
from tests.support.digest_ledgers import cli
from tests.support.fl_helpers import FakeGrid, arrays, fedavg, signed_train_reply

FID = "fed-10k"


@pytest.fixture(scope="module")
def keys10k() -> list[Ed25519PrivateKey]:
    """10,000 client keys (about half a second)."""
    return [Ed25519PrivateKey.generate() for _ in range(10_000)]


def keyring(keys) -> dict[str, bytes]:
    return {key_id(k): raw_public(k) for k in keys}


def genesis_of(server_key, ring: dict[str, bytes], fid: str = FID, digest: bytes = bytes(32)) -> GenesisEntry:
    return GenesisEntry(
        federation_id=fid,
        origin=origin_for(fid),
        server_key=raw_public(server_key),
        client_keys=dict(ring),
        strategy="FedAvg",
        config_digest=digest,
        created_ms=1764892800000,
    )


def block0(ledger) -> list[bytes]:
    return list(ledger.entries(0, ledger.block(0).header.log_size))


def forged_block0(tmp_path, server_key, genesis: GenesisEntry, entries) -> object:
    """A ledger whose block 0 holds ``entries`` as given, signed by the server key (a dishonest server)."""
    ledger = open_ledger(f"sqlite:///{tmp_path}/forged.db", create=True)
    writer = LedgerWriter(ledger, server_key)
    writer.genesis = genesis
    writer.append(0, entries)
    return ledger


def test_a_10000_key_genesis_is_split_into_entries_that_each_fit_a_tile_bundle_and_verifies(tmp_path, keys10k):
    sk, ring = Ed25519PrivateKey.generate(), keyring(keys10k)
    genesis = genesis_of(sk, ring)
    assert len(genesis.to_bytes()) > MAX_ENTRY_BYTES  # one entry: no bundle could carry it
    ledger = open_ledger(f"sqlite:///{tmp_path}/10k.db", create=True)
    LedgerWriter(ledger, sk).init(genesis)
    datas = block0(ledger)
    decoded = [decode_entry(d) for d in datas]
    assert len(datas) > 1 and all(len(d) <= MAX_ENTRY_BYTES for d in datas)
    assert isinstance(decoded[0], GenesisEntry) and all(isinstance(e, KeysEntry) for e in decoded[1:])
    pair = 4 + 16 + len(encode(bytes(32)))  # one more key: every entry but the last is as full as it can be
    assert all(len(d) + pair > MAX_ENTRY_BYTES for d in datas[:-1])
    assert sum(len(e.client_keys) for e in decoded) == 10_000
    assert read_genesis(ledger) == genesis  # every reader sees the whole keyring
    report = verify(ledger, client_signatures=True)
    assert report.keyring == sorted(ring) and report.blocks == 1
    assert LedgerWriter(ledger, sk).genesis.client_keys == ring  # a restarted server too
    ledger.close()


def test_the_split_is_greedy_in_key_order_and_joins_back_to_the_genesis():
    sk = Ed25519PrivateKey.generate()
    ring = keyring(Ed25519PrivateKey.generate() for _ in range(60))
    genesis = genesis_of(sk, ring)
    parts = split_genesis(genesis, limit=1200)
    sizes = [len(p.to_bytes()) for p in parts]
    assert len(parts) > 2 and max(sizes) <= 1200 and all(s + 57 > 1200 for s in sizes[:-1])
    assert [k for p in parts for k in p.client_keys] == sorted(ring)  # CE1 key order, each key once
    assert join_genesis(parts) == genesis
    assert split_genesis(genesis) == [genesis]  # fits 65,535 bytes: one entry, the genesis itself


#: sha256 of the genesis entry and hash of block 0 as written before keys entries existed (computed on the
#: tree before this change): federations of 3 and of 1,100 keys (63,015 bytes, just under the limit).
VECTORS = {
    3: (
        "3b35edd74ad1944c70c5bc2ea87a6c54955b8344c6e1dfcd9765044367055022",
        "d833fe1b98f95ee99a3145a63ce5d279e4067f298c5168f0cd65e814b2c2b9ec",
    ),
    1100: (
        "5961a32f7c4f2602f93922fdfd2f2222329bd1f011d6c3dc821ed87dfea5271a",
        "e317dfb3951aae1db59863575a951d849289141fc4e724ca6a2bf4e33aa2c8a1",
    ),
}


@pytest.mark.parametrize("n", sorted(VECTORS))
def test_a_small_federations_genesis_block_is_byte_identical_to_before(n):
    def key(i: int) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"genesis-vector %d" % i).digest())

    genesis = GenesisEntry(
        federation_id="fed-vector",
        origin="flower-chain/fed-vector",
        server_key=raw_public(key(-1)),
        client_keys=keyring(map(key, range(n))),
        strategy="FedAvg",
        config_digest=bytes(32),
        created_ms=1764892800000,
    )
    ledger = open_ledger("memory:", create=True)
    block = LedgerWriter(ledger, key(-1), clock=lambda: 1764892800.0).init(genesis)
    assert block0(ledger) == [genesis.to_bytes()]
    assert (hashlib.sha256(genesis.to_bytes()).hexdigest(), block.hash.hex()) == VECTORS[n]


# --- a dishonest server's block 0 -----------------------------------------------------------------------------


def test_a_key_id_twice_across_the_genesis_entries_fails_verify_naming_the_entry(tmp_path, keys10k):
    sk, ring = Ed25519PrivateKey.generate(), keyring(keys10k[:2000])
    genesis = genesis_of(sk, ring)
    first, second = split_genesis(genesis)
    again = next(iter(first.client_keys))  # a genesis key listed once more in the continuation
    forged = KeysEntry(client_keys={**second.client_keys, again: ring[again]})
    ledger = forged_block0(tmp_path, sk, genesis, [first, forged])
    with pytest.raises(VerificationError, match=f"key id {again} appears twice") as e:
        verify(ledger)
    assert (e.value.height, e.value.entry) == (0, 1)
    with pytest.raises(GenesisError, match="appears twice"):
        read_genesis(ledger)


def test_a_keys_entry_outside_block_0_fails_verify_and_adds_no_key(tmp_path):
    sk, ring = Ed25519PrivateKey.generate(), keyring(Ed25519PrivateKey.generate() for _ in range(3))
    ledger = open_ledger(f"sqlite:///{tmp_path}/late.db", create=True)
    writer = LedgerWriter(ledger, sk)
    writer.init(genesis_of(sk, ring))
    sybil = Ed25519PrivateKey.generate()  # the server's own "client", added once the federation runs
    writer.append(0, [KeysEntry(client_keys=keyring([sybil]))])
    with pytest.raises(VerificationError, match="a keys entry outside block 0") as e:
        verify(ledger)
    assert (e.value.height, e.value.entry) == (1, 0)
    assert key_id(sybil) not in read_genesis(ledger).client_keys


def test_a_keys_entry_before_the_genesis_fails_verify(tmp_path, keys10k):
    sk, ring = Ed25519PrivateKey.generate(), keyring(keys10k[:2000])
    genesis = genesis_of(sk, ring)
    first, second = split_genesis(genesis)
    ledger = forged_block0(tmp_path, sk, genesis, [second, first])
    with pytest.raises(VerificationError, match="a keys entry before the genesis entry") as e:
        verify(ledger)
    assert (e.value.height, e.value.entry) == (0, 0)


def test_a_continued_key_that_is_not_its_key_id_fails_verify(tmp_path, keys10k):
    sk, ring = Ed25519PrivateKey.generate(), keyring(keys10k[:2000])
    genesis = genesis_of(sk, ring)
    first, second = split_genesis(genesis)
    kid = next(iter(second.client_keys))
    swapped = KeysEntry(client_keys={**second.client_keys, kid: raw_public(Ed25519PrivateKey.generate())})
    ledger = forged_block0(tmp_path, sk, genesis, [first, swapped])
    with pytest.raises(VerificationError, match=f"client key {kid} does not match its key id") as e:
        verify(ledger)
    assert (e.value.height, e.value.entry) == (0, 1)


# --- the readers ---------------------------------------------------------------------------------------------


def test_a_secagg_node_reads_the_whole_keyring_from_the_commit_proof_and_refuses_a_forged_one(tmp_path, keys10k):
    sk, ring = Ed25519PrivateKey.generate(), keyring(keys10k)
    ledger = open_ledger(f"sqlite:///{tmp_path}/secagg.db", create=True)
    writer = LedgerWriter(ledger, sk)
    writer.init(genesis_of(sk, ring))
    writer.append(1, [])
    size, root = writer.log_size, ledger.head().header.log_root
    proof = keyring_proof(ledger, size)
    assert len(proof["genesis_keys"]) == len(block0(ledger)) - 1
    keys, problem = _genesis_keys(proof, (size, root), FID)
    assert problem is None and keys == ring
    paths = proof["genesis_keys_inclusion"]
    swapped = {**proof, "genesis_keys_inclusion": [paths[1], paths[0], *paths[2:]]}  # proofs of other indices
    assert "is not entry 1 of the signed log" in str(_genesis_keys(swapped, (size, root), FID)[1])
    sybil = Ed25519PrivateKey.generate()
    added = KeysEntry(client_keys={**decode_entry(proof["genesis_keys"][0]).client_keys, **keyring([sybil])})
    forged = {**proof, "genesis_keys": [added.to_bytes(), *proof["genesis_keys"][1:]]}
    keys, problem = _genesis_keys(forged, (size, root), FID)
    assert keys == {} and "is not entry 1 of the signed log" in str(problem)
    unequal = {**proof, "genesis_keys_inclusion": paths[:-1]}
    assert "two lists of equal length" in str(_genesis_keys(unequal, (size, root), FID)[1])
    ledger.close()


def test_a_key_from_the_continuation_signs_an_update_that_is_accepted_and_audited(tmp_path, keys10k, task_identity):
    by_id = {key_id(k): k for k in keys10k}
    clients = [by_id[kid] for kid in sorted(by_id)[-3:]]  # the last key ids: in the last keys entry
    uri = f"sqlite:///{tmp_path}/audit.db"
    server_key = Ed25519PrivateKey.generate()
    strategy = LedgerStrategy(fedavg(), ledger=uri, keyring=keyring(keys10k), server_key=server_key, federation_id=FID)
    current = arrays(0)
    for rnd in (1, 2):
        if rnd == 2:  # a restarted server reads the keyring back from block 0
            strategy = LedgerStrategy(fedavg(), ledger=uri, keyring=keyring(keys10k), server_key=server_key)
        msgs = sorted(
            strategy.configure_train(rnd, current, ConfigRecord({}), FakeGrid([101, 102, 103])),
            key=lambda m: m.metadata.dst_node_id,
        )
        replies = [
            signed_train_reply(m, k, arrays(10 * rnd + i), 10 + i) for i, (m, k) in enumerate(zip(msgs, clients))
        ]
        current, _ = strategy.aggregate_train(rnd, replies)
        stats = strategy.round_stats(rnd)
        strategy.close()
        assert current is not None and stats["accepted"] == 3, stats
    ledger = open_ledger(uri)
    datas = block0(ledger)
    ledger.close()
    in_genesis = decode_entry(datas[0]).client_keys
    assert len(datas) > 1 and not any(key_id(k) in in_genesis for k in clients)
    code, out = cli("ledger", "verify", uri)
    assert code == 0 and "VERIFIED" in out, out
    code, out = cli("ledger", "audit", uri, "--strict")
    assert code == 0 and "NOT AUDITED" not in out and "AUDITED" in out, out


def test_the_settings_check_reads_the_genesis_through_the_keyring_rules(tmp_path, keys10k):
    from flower_chain.audit.settings_check import read_settings

    sk, config = Ed25519PrivateKey.generate(), strategy_config(fedavg())
    genesis = genesis_of(sk, keyring(keys10k[:2000]), digest=config_digest(config))
    first, second = split_genesis(genesis)
    ledger = open_ledger(f"sqlite:///{tmp_path}/settings.db", create=True)
    ledger.put_blob(encode(config), config_digest(config))
    LedgerWriter(ledger, sk).init(genesis)
    assert read_settings(ledger) == ("FedAvg", config, "")
    ledger.close()
    again = next(iter(first.client_keys))
    forged = forged_block0(tmp_path, sk, genesis, [first, KeysEntry({**second.client_keys, again: b"x"})])
    forged.put_blob(encode(config), config_digest(config))
    name, settings, why = read_settings(forged)  # a malformed keyring is no genesis to read settings from
    assert settings is None and "appears twice" in why, why

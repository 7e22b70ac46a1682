"""Array digest versions end to end: a LedgerStrategy round on a model over one v2 chunk (1 MiB) with a 0-d
array, recorded, verified with its blobs and replayed; the genesis names the version."""

from __future__ import annotations

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Array, ArrayRecord, ConfigRecord

from flower_chain.ledger import open_ledger, verify
from flower_chain.ledger.arrays import (
    CHUNK_SIZE,
    array_digest,
    array_digest_v1,
    decode_arrays,
    encode_arrays,
    stream_digest,
)
from flower_chain.ledger.writer import digest_version_of, read_genesis
from flower_chain.wire import record_digest
from tests.support.fl_helpers import Clients, FakeGrid, fedavg, signed_train_reply

pytestmark = pytest.mark.usefixtures("task_identity")
NODES = [101, 102, 103]
#: 1.2 MB of float32: two v2 chunks, where v1 and v2 differ.
SHAPES = (("conv.weight", (300, 1024)), ("fc.bias", (10,)))
#: The same with a BatchNorm-style 0-d counter (every torchvision ResNet has them).
WITH_SCALAR = (("conv.weight", (300, 1024)), ("bn.num_batches_tracked", ()), ("fc.bias", (10,)))


def model(seed: int, shapes=SHAPES) -> ArrayRecord:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in shapes:
        a = np.asarray(rng.standard_normal(shape), dtype=np.float32) if shape else np.asarray(seed, np.int64)
        out[name] = Array(a)
    return ArrayRecord(out)


def run_rounds(uri: str, rounds: int = 2, shapes=SHAPES):
    from flower_chain.strategies import LedgerStrategy

    clients = Clients(len(NODES))
    strategy = LedgerStrategy(
        fedavg(),
        ledger=uri,
        keyring=clients.keyring,
        server_key=Ed25519PrivateKey.generate(),
        federation_id="fed-digest",
    )
    current = model(0, shapes)
    for rnd in range(1, rounds + 1):
        msgs = sorted(
            strategy.configure_train(rnd, current, ConfigRecord({}), FakeGrid(NODES)),
            key=lambda m: m.metadata.dst_node_id,
        )
        replies = [
            signed_train_reply(m, k, model(10 * rnd + i, shapes), 10 + i)
            for i, (m, k) in enumerate(zip(msgs, clients.keys))
        ]
        current, _ = strategy.aggregate_train(rnd, replies)
        assert current is not None, f"round {rnd}: nothing accepted"
    return strategy, current


def test_a_new_ledger_is_v2_and_its_models_are_addressed_by_the_v2_digest(tmp_path):
    uri = f"sqlite:///{tmp_path}/v2.db"
    strategy, current = run_rounds(uri)
    ledger = open_ledger(uri)
    try:
        assert read_genesis(ledger).digest_version == 2 == digest_version_of(ledger)
        head = ledger.head().header
        assert (
            head.model_after
            == record_digest(current)
            == array_digest([(k, np.asarray(v.numpy())) for k, v in current.items()])
        )
        assert head.model_after != array_digest_v1([(k, v.numpy()) for k, v in current.items()])
        blob = ledger.get_blob(head.model_after)
        assert len(blob) > CHUNK_SIZE and stream_digest(blob) == head.model_after
        report = verify(ledger, client_signatures=True)  # every verdict re-derived from the v2 digests
        assert report.last_round == 2
    finally:
        ledger.close()


def test_a_v2_ledger_with_a_model_over_one_chunk_verifies_with_its_blobs(tmp_path):
    uri = f"sqlite:///{tmp_path}/v2-blobs.db"
    run_rounds(uri)
    ledger = open_ledger(uri)
    try:
        verify(ledger, client_signatures=True, blobs=True)
    finally:
        ledger.close()


def test_a_v2_ledger_replays_bit_for_bit(tmp_path):
    from flower_chain.audit.replay import audit

    uri = f"sqlite:///{tmp_path}/v2-audit.db"
    run_rounds(uri)
    ledger = open_ledger(uri)
    try:
        report = audit(ledger)
        assert not report.mismatches and len(report.rederived) >= 2, report
    finally:
        ledger.close()


def test_a_blob_altered_in_its_second_chunk_no_longer_matches_its_address(tmp_path):
    uri = f"sqlite:///{tmp_path}/v2-tamper.db"
    run_rounds(uri, rounds=1)
    ledger = open_ledger(uri)
    try:
        digest = ledger.head().header.model_after
        blob = bytearray(ledger.get_blob(digest))
        blob[CHUNK_SIZE + 3] ^= 1  # a bit in the second chunk: only the tree's second leaf changes
        assert stream_digest(bytes(blob)) != digest
        named = decode_arrays(bytes(blob))
        assert array_digest(named) != digest and encode_arrays(named) == bytes(blob)
    finally:
        ledger.close()


def test_a_0d_array_is_stored_with_its_shape_in_a_v2_blob(tmp_path):
    uri = f"sqlite:///{tmp_path}/v2-scalar.db"
    run_rounds(uri, rounds=1, shapes=WITH_SCALAR)
    ledger = open_ledger(uri)
    try:
        blob = ledger.get_blob(ledger.head().header.model_after)
        assert {n: a.shape for n, a in decode_arrays(blob)}["bn.num_batches_tracked"] == ()
        assert stream_digest(blob) == ledger.head().header.model_after
    finally:
        ledger.close()


def test_a_model_with_a_0d_array_trains_two_rounds_verifies_and_replays(tmp_path):
    from flower_chain.audit.replay import audit

    uri = f"sqlite:///{tmp_path}/v2-scalar-2.db"
    _, current = run_rounds(uri, rounds=2, shapes=WITH_SCALAR)
    assert current["bn.num_batches_tracked"].shape == ()  # the global model keeps the 0-d counter's shape
    ledger = open_ledger(uri)
    try:
        verify(ledger, client_signatures=True, blobs=True)
        report = audit(ledger)
        assert not report.mismatches and len(report.rederived) >= 2, report
    finally:
        ledger.close()

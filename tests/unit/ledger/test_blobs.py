"""The one blob reader: an array blob comes back only if it hashes to its address and decodes (a bare
ledger has no genesis to say its digest version: the tests name version 1, whose address is SHA-256)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from flower_chain.ledger import open_ledger
from flower_chain.ledger.arrays import encode_arrays
from flower_chain.ledger.blobs import ALTERED, MISSING, UNDECODABLE, BlobError, read_arrays
from flower_chain.ledger.errors import EXIT_FAILED


@pytest.fixture
def ledger():
    led = open_ledger("memory:", create=True)
    yield led
    led.close()


def test_a_stored_model_reads_back(ledger):
    data = encode_arrays([("w", np.arange(6, dtype=np.float32).reshape(2, 3))], 1)
    digest = ledger.put_blob(data)
    [(name, a)] = read_arrays(ledger, digest, "global model", version=1)
    assert name == "w" and a.tolist() == [[0, 1, 2], [3, 4, 5]]


@pytest.mark.parametrize("kind", [MISSING, ALTERED, UNDECODABLE])
def test_each_way_a_blob_can_be_wrong_is_named(ledger, kind):
    good = encode_arrays([("w", np.ones(3, dtype=np.float32))], 1)
    if kind == MISSING:
        digest = hashlib.sha256(good).digest()  # never stored
    elif kind == ALTERED:
        digest = hashlib.sha256(good).digest()
        ledger.put_blob(good[:-1] + b"\x00", digest)  # stored under the address of other bytes
    else:
        junk = b"not an array stream"
        digest = ledger.put_blob(junk)
    with pytest.raises(BlobError) as got:
        read_arrays(ledger, digest, "global model", version=1)
    assert got.value.kind == kind and got.value.digest == digest and got.value.exit_code == EXIT_FAILED
    assert digest.hex()[:16] in str(got.value) and "global model" in str(got.value)

"""A final model that carries its provenance: export from a ledger, and verify offline or against it.

:func:`export_model` writes the global model after the ledger's head block (its ``model_after``,
read from the blob store and checked against its digest) as ``model.npz`` and
``model.safetensors``, and an `in-toto Statement v1 <https://github.com/in-toto/attestation>`_
whose subjects are those two files (SHA-256) and whose predicate is SLSA Provenance v1
(``https://slsa.dev/provenance/v1``) filled from the ledger: the federation, strategy and its
recorded settings and rounds (``externalParameters``), the keys whose updates were accepted
(``internalParameters``), the ledger itself as a resolved dependency (origin, head block hash and
height, the head's signed checkpoint) and the model's flower-chain array digest (a byproduct). The
statement is wrapped in a DSSE envelope signed with the server's Ed25519 key over DSSE's
pre-authentication encoding (PAE), in ``provenance.intoto.jsonl`` (one envelope per line).

:mod:`flower_chain.audit.provenance_check` verifies an export. With an ECDSA P-256 key the export also
writes ``model.sig``, an OpenSSF model-signing bundle (:mod:`flower_chain.audit.model_signing`) whose
public key the statement names.

The model files are written and read by :mod:`flower_chain.audit.model_files`; an export of the
same ledger head is byte-identical.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.audit.model_files import UnsupportedDtype, npz_bytes, read_npz, read_safetensors, safetensors_bytes
from flower_chain.ledger.arrays import decode_arrays, stream_digest
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.encoding import decode
from flower_chain.ledger.entries import ACCEPTED, UpdateEntry, decode_entry
from flower_chain.ledger.errors import EXIT_FAILED, EXIT_USAGE, LedgerError
from flower_chain.ledger.keys import key_id, raw_public
from flower_chain.ledger.verify import verify
from flower_chain.ledger.writer import read_genesis

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
BUILD_TYPE = "urn:flower-chain:federated-training:v1"
NPZ, SAFETENSORS, ENVELOPE = "model.npz", "model.safetensors", "provenance.intoto.jsonl"
READERS = {NPZ: read_npz, SAFETENSORS: read_safetensors}
LEDGER_DEP = "round-ledger"
MODEL_PRODUCT = "global-model"
SIGNING_KEY_PRODUCT = "openssf-model-signing-key"


class ProvenanceError(LedgerError):
    """The exported model, its statement or the ledger do not match (one line per difference)."""

    exit_code = EXIT_FAILED


class ProvenanceInputError(LedgerError):
    """What to export or verify is missing or unusable (a directory, a file, a model in the ledger)."""

    exit_code = EXIT_USAGE


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: ``"DSSEv1" SP len(type) SP type SP len(body) SP body``."""
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def digest_key(version: int) -> str:
    """The DigestSet algorithm name of a flower-chain array digest of ``version``."""
    return f"flowerChainArraysV{version}"


# -- the statement -------------------------------------------------------------------------------------
def _rfc3339(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _history(ledger: Ledger) -> tuple[list[int], Counter, bytes]:
    """(train rounds, accepted train updates per key id, the first model a train round started from)."""
    rounds, keys, first = set(), Counter(), b""
    for block in ledger.blocks(1):
        h = block.header
        for data in ledger.entries(h.first_index, h.log_size):
            e = decode_entry(data)
            if isinstance(e, UpdateEntry) and e.kind == "train":
                rounds.add(h.round)
                if e.verdict == ACCEPTED:
                    keys[e.key_id] += 1
        if h.model_before and not first:
            first = h.model_before
    return sorted(rounds), keys, first


def _settings(ledger: Ledger, genesis) -> dict[str, Any]:
    """The strategy settings recorded under the genesis' ``config_digest`` (or why they are not shown)."""
    try:
        data = ledger.get_blob(genesis.config_digest)
        config = decode(data) if hashlib.sha256(data).digest() == genesis.config_digest else None
    except LedgerError:
        config = None
    if not isinstance(config, dict):
        return {"strategySettingsNotRecorded": "the blob store holds no settings matching the genesis config_digest"}
    return {"strategySettings": _plain(config)}


def _plain(v: Any) -> Any:
    """A recorded setting as strict JSON: bytes as hex, a non-finite float as its name, other types as text."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v if v is None or isinstance(v, (str, int, float, bool)) else str(v)


def build_statement(
    ledger: Ledger, files: dict[str, bytes], named: list[tuple[str, np.ndarray]], signing_pem: bytes | None = None
) -> dict[str, Any]:
    """The in-toto statement of ``files`` (name -> bytes) exported from ``ledger``'s head.

    ``signing_pem`` is the P-256 public key of an OpenSSF model-signing bundle written beside them.
    """
    genesis, head = read_genesis(ledger), ledger.head()
    version = genesis.digest_version
    rounds, accepted, first = _history(ledger)
    model = head.header.model_after.hex()
    deps = [
        {
            "name": LEDGER_DEP,
            "uri": f"flower-chain:{genesis.origin}",
            "digest": {"flowerChainBlock": head.hash.hex()},
            "annotations": {
                "origin": genesis.origin,
                "height": head.header.height,
                "logSize": head.header.log_size,
                "checkpoint": head.checkpoint,
                "serverKeyId": key_id(genesis.server_key),
            },
        }
    ]
    if first:
        deps.append({"name": "initial-model", "digest": {digest_key(version): first.hex()}})
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {"sha256": hashlib.sha256(b).hexdigest()}} for n, b in files.items()],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "federationId": genesis.federation_id,
                    "strategy": genesis.strategy,
                    **_settings(ledger, genesis),
                    "rounds": len(rounds),
                    "lastRound": rounds[-1] if rounds else 0,
                },
                "internalParameters": {
                    "allowedKeys": sorted(genesis.client_keys),
                    "acceptedKeys": dict(sorted(accepted.items())),
                    "digestVersion": version,
                },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": f"urn:flower-chain:server-key:{key_id(genesis.server_key)}"},
                "metadata": {
                    "invocationId": genesis.origin,
                    "startedOn": _rfc3339(genesis.created_ms),
                    "finishedOn": _rfc3339(head.header.timestamp_ms),
                },
                "byproducts": [
                    {
                        "name": MODEL_PRODUCT,
                        "digest": {digest_key(version): model},
                        "annotations": {
                            "arrays": [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape)} for n, a in named]
                        },
                    },
                    *_signing_product(signing_pem),
                ],
            },
        },
    }


def _signing_product(pem: bytes | None) -> list[dict[str, Any]]:
    if pem is None:
        return []
    from flower_chain.audit.model_signing import SIGNATURE, key_hint

    return [
        {
            "name": SIGNING_KEY_PRODUCT,
            "digest": {"sha256": key_hint(pem)},
            "annotations": {"publicKeyPem": pem.decode(), "bundle": SIGNATURE},
        }
    ]


def sign_envelope(statement: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A DSSE envelope of ``statement`` signed with ``key`` over the PAE."""
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(payload).decode(),
        "signatures": [{"keyid": key_id(key), "sig": base64.b64encode(sig).decode()}],
    }


@dataclass
class Export:
    """What :func:`export_model` wrote."""

    directory: Path
    files: dict[str, str]  # file name -> sha256 hex
    model_digest: str
    height: int
    origin: str
    statement: dict[str, Any] = field(repr=False, default_factory=dict)


def head_model(ledger: Ledger) -> list[tuple[str, np.ndarray]]:
    """The arrays of the head's ``model_after`` from the blob store, checked against that digest."""
    head = ledger.head()
    digest = head.header.model_after if head is not None else b""
    if not digest:
        raise ProvenanceInputError(f"{ledger.uri}: the head block names no model (no train round recorded yet)")
    try:
        data = ledger.get_blob(digest)
    except LedgerError:
        raise ProvenanceInputError(
            f"{ledger.uri}: the model {digest.hex()[:16]} of block {head.header.height} is not in the blob store"
        ) from None
    if stream_digest(data, read_genesis(ledger).digest_version) != digest:
        raise ProvenanceError(f"the stored model {digest.hex()[:16]} does not match its digest (altered)")
    return decode_arrays(data)


def _prepare(dest: Path) -> None:
    """Create ``dest``, or reuse it when it holds nothing but an earlier export's files (replaced)."""
    from flower_chain.audit.model_signing import SIGNATURE

    ours = {NPZ, SAFETENSORS, ENVELOPE, SIGNATURE}
    if dest.exists():
        if not dest.is_dir():
            raise ProvenanceInputError(f"{dest} exists and is not a directory")
        other = sorted(p.name for p in dest.iterdir() if p.name not in ours)
        if other:
            raise ProvenanceInputError(
                f"{dest} holds other files ({', '.join(other[:3])}): export into an empty "
                "or new directory (every file of it is signed)"
            )
    dest.mkdir(parents=True, exist_ok=True)
    (dest / SIGNATURE).unlink(missing_ok=True)  # a bundle of an earlier export would not match


def export_model(ledger: Ledger, key: Ed25519PrivateKey, dest: Path, signing_key: Any = None) -> Export:
    """Verify ``ledger`` under ``key``'s public half, then write the head's model, its statement and envelope.

    With ``signing_key`` (an ECDSA P-256 private key) also an OpenSSF model-signing bundle over all of
    them (:mod:`flower_chain.audit.model_signing`), its public key named in the statement.

    Raises
    ------
    VerificationError
        The ledger does not verify under ``key`` (nothing is written).
    ProvenanceInputError
        No model at the head, or a model dtype safetensors cannot hold.
    """
    genesis = read_genesis(ledger)
    if genesis.server_key != raw_public(key):
        raise ProvenanceInputError(
            f"{ledger.uri} is signed by server key {key_id(genesis.server_key)}, not by "
            f"the given key {key_id(key)}: export with the ledger's own server key"
        )
    verify(ledger, server_key=genesis.server_key, client_signatures=True)
    named = head_model(ledger)
    head = ledger.head()
    meta = {
        "flower_chain.origin": genesis.origin,
        "flower_chain.model_digest": head.header.model_after.hex(),
        "flower_chain.block": str(head.header.height),
    }
    try:
        files = {NPZ: npz_bytes(named), SAFETENSORS: safetensors_bytes(named, meta)}
    except UnsupportedDtype as e:
        raise ProvenanceInputError(str(e)) from None
    pem = None
    if signing_key is not None:
        from flower_chain.audit.model_signing import public_pem

        pem = public_pem(signing_key)
    statement = build_statement(ledger, files, named, pem)
    _prepare(dest)
    for name, data in files.items():
        (dest / name).write_bytes(data)
    (dest / ENVELOPE).write_text(json.dumps(sign_envelope(statement, key), separators=(",", ":")) + "\n")
    if signing_key is not None:
        from flower_chain.audit.model_signing import sign_directory

        sign_directory(dest, [*files, ENVELOPE], signing_key)
    return Export(
        dest,
        {s["name"]: s["digest"]["sha256"] for s in statement["subject"]},
        head.header.model_after.hex(),
        head.header.height,
        genesis.origin,
        statement,
    )

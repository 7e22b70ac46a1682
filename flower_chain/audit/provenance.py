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

:func:`verify_export` checks, with a pinned server key: the envelope's signature; each model file's
SHA-256 against the statement; that both files decode to the arrays whose flower-chain digest the
statement names; that the statement's checkpoint is signed by that key for the statement's origin;
and, given the ledger, that the ledger verifies under that key, its block at the recorded height has
the recorded hash and checkpoint, and the ledger's head still names that model as ``model_after``.
Every difference is one line of the :class:`ProvenanceError` it raises (exit 1); missing input is
:class:`ProvenanceInputError` (exit 2).

The model files are written and read by :mod:`flower_chain.audit.model_files`; an export of the
same ledger head is byte-identical.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from flower_chain.audit.model_files import UnsupportedDtype, npz_bytes, read_npz, read_safetensors, safetensors_bytes
from flower_chain.ledger.arrays import array_digest, decode_arrays, stream_digest
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.checkpoint import verify_checkpoint
from flower_chain.ledger.encoding import decode
from flower_chain.ledger.entries import ACCEPTED, UpdateEntry, decode_entry
from flower_chain.ledger.errors import CheckpointError, EXIT_FAILED, EXIT_USAGE, LedgerError, VerificationError
from flower_chain.ledger.keys import key_id, raw_public, verify_signature
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
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    return {"strategySettings": json.loads(json.dumps(config, default=_json_value))}


def _json_value(v: Any) -> Any:
    return v.hex() if isinstance(v, bytes) else str(v)


def build_statement(ledger: Ledger, files: dict[str, bytes], named: list[tuple[str, np.ndarray]]) -> dict[str, Any]:
    """The in-toto statement of ``files`` (name -> bytes) exported from ``ledger``'s head."""
    genesis, head = read_genesis(ledger), ledger.head()
    version = genesis.digest_version
    rounds, accepted, first = _history(ledger)
    model = head.header.model_after.hex()
    deps = [{"name": LEDGER_DEP, "uri": f"flower-chain:{genesis.origin}", "digest": {"flowerChainBlock": head.hash.hex()},
             "annotations": {"origin": genesis.origin, "height": head.header.height, "logSize": head.header.log_size,
                             "checkpoint": head.checkpoint, "serverKeyId": key_id(genesis.server_key)}}]
    if first:
        deps.append({"name": "initial-model", "digest": {digest_key(version): first.hex()}})
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": n, "digest": {"sha256": hashlib.sha256(b).hexdigest()}} for n, b in files.items()],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"federationId": genesis.federation_id, "strategy": genesis.strategy,
                                       **_settings(ledger, genesis), "rounds": len(rounds),
                                       "lastRound": rounds[-1] if rounds else 0},
                "internalParameters": {"allowedKeys": sorted(genesis.client_keys),
                                       "acceptedKeys": dict(sorted(accepted.items())), "digestVersion": version},
                "resolvedDependencies": deps},
            "runDetails": {
                "builder": {"id": f"urn:flower-chain:server-key:{key_id(genesis.server_key)}"},
                "metadata": {"invocationId": genesis.origin, "startedOn": _rfc3339(genesis.created_ms),
                             "finishedOn": _rfc3339(head.header.timestamp_ms)},
                "byproducts": [{"name": MODEL_PRODUCT, "digest": {digest_key(version): model},
                                "annotations": {"arrays": [{"name": n, "dtype": a.dtype.str, "shape": list(a.shape)}
                                                           for n, a in named]}}]},
        },
    }


def sign_envelope(statement: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """A DSSE envelope of ``statement`` signed with ``key`` over the PAE."""
    payload = json.dumps(statement, sort_keys=True, separators=(",", ":")).encode()
    sig = key.sign(pae(PAYLOAD_TYPE, payload))
    return {"payloadType": PAYLOAD_TYPE, "payload": base64.b64encode(payload).decode(),
            "signatures": [{"keyid": key_id(key), "sig": base64.b64encode(sig).decode()}]}


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
        raise ProvenanceInputError(f"{ledger.uri}: the model {digest.hex()[:16]} of block {head.header.height} "
                                   "is not in the blob store") from None
    if stream_digest(data, read_genesis(ledger).digest_version) != digest:
        raise ProvenanceError(f"the stored model {digest.hex()[:16]} does not match its digest (altered)")
    return decode_arrays(data)


def export_model(ledger: Ledger, key: Ed25519PrivateKey, dest: Path) -> Export:
    """Verify ``ledger`` under ``key``'s public half, then write the head's model, its statement and envelope.

    Raises
    ------
    VerificationError
        The ledger does not verify under ``key`` (nothing is written).
    ProvenanceInputError
        No model at the head, or a model dtype safetensors cannot hold.
    """
    genesis = read_genesis(ledger)
    if genesis.server_key != raw_public(key):
        raise ProvenanceInputError(f"{ledger.uri} is signed by server key {key_id(genesis.server_key)}, not by "
                                   f"the given key {key_id(key)}: export with the ledger's own server key")
    verify(ledger, server_key=genesis.server_key, client_signatures=True)
    named = head_model(ledger)
    head = ledger.head()
    meta = {"flower_chain.origin": genesis.origin, "flower_chain.model_digest": head.header.model_after.hex(),
            "flower_chain.block": str(head.header.height)}
    try:
        files = {NPZ: npz_bytes(named), SAFETENSORS: safetensors_bytes(named, meta)}
    except UnsupportedDtype as e:
        raise ProvenanceInputError(str(e)) from None
    statement = build_statement(ledger, files, named)
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (dest / name).write_bytes(data)
    (dest / ENVELOPE).write_text(json.dumps(sign_envelope(statement, key), separators=(",", ":")) + "\n")
    return Export(dest, {s["name"]: s["digest"]["sha256"] for s in statement["subject"]},
                  head.header.model_after.hex(), head.header.height, genesis.origin, statement)


# -- verification ----------------------------------------------------------------------------------------
@dataclass
class Verified:
    """What :func:`verify_export` checked."""

    origin: str
    height: int
    model_digest: str
    files: list[str]
    ledger_checked: bool
    head_height: int | None = None


def read_envelope(directory: Path) -> dict[str, Any]:
    """The DSSE envelope of an export directory, parsed (not yet checked)."""
    if not directory.is_dir():
        raise ProvenanceInputError(f"{directory} is not a directory (export one with `flower-chain model export`)")
    path = directory / ENVELOPE
    if not path.is_file():
        raise ProvenanceInputError(f"{directory} holds no {ENVELOPE}: not a `flower-chain model export` directory")
    try:
        env = json.loads(path.read_bytes())
    except RecursionError:
        raise ProvenanceError(f"{ENVELOPE} is nested too deeply to be a DSSE envelope") from None
    except (ValueError, OSError) as e:
        raise ProvenanceError(f"{ENVELOPE} is not JSON: {e}") from None
    if not isinstance(env, dict) or not isinstance(env.get("signatures"), list) or not isinstance(
            env.get("payload"), str) or env.get("payloadType") != PAYLOAD_TYPE:
        raise ProvenanceError(f"{ENVELOPE} is not a DSSE envelope of an in-toto statement")
    return env


def open_envelope(env: dict[str, Any], server_key: bytes) -> dict[str, Any]:
    """The statement of ``env`` when one of its signatures verifies under ``server_key`` over the PAE."""
    try:
        payload = base64.b64decode(env["payload"], validate=True)
    except (binascii.Error, ValueError):
        raise ProvenanceError(f"{ENVELOPE}: the payload is not base64") from None
    message, seen = pae(PAYLOAD_TYPE, payload), []
    for s in env["signatures"]:
        if not isinstance(s, dict) or not isinstance(s.get("sig"), str):
            continue
        seen.append(str(s.get("keyid", "?"))[:40])
        try:
            sig = base64.b64decode(s["sig"], validate=True)
        except (binascii.Error, ValueError):
            continue
        if verify_signature(server_key, sig, message):
            break
    else:
        raise ProvenanceError(f"the statement is not signed by the pinned server key {key_id(server_key)} "
                              f"(signatures by key ids: {', '.join(seen) or 'none'}; or the statement was changed)")
    try:
        st = json.loads(payload)
    except RecursionError:
        raise ProvenanceError("the signed statement is nested too deeply") from None
    except ValueError as e:
        raise ProvenanceError(f"the signed statement is not JSON: {e}") from None
    if not isinstance(st, dict) or st.get("_type") != STATEMENT_TYPE or st.get("predicateType") != PREDICATE_TYPE:
        raise ProvenanceError("the signed payload is not an in-toto v1 statement with a SLSA v1 predicate")
    return st


def _facts(st: dict[str, Any]) -> tuple[dict[str, str], dict[str, Any], str, int]:
    """(subject name -> sha256, the ledger dependency, model digest hex, digest version) of a statement."""
    try:
        pred = st["predicate"]
        subjects = {s["name"]: s["digest"]["sha256"] for s in st["subject"]}
        dep = next(d for d in pred["buildDefinition"]["resolvedDependencies"] if d.get("name") == LEDGER_DEP)
        version = int(pred["buildDefinition"]["internalParameters"]["digestVersion"])
        product = next(p for p in pred["runDetails"]["byproducts"] if p.get("name") == MODEL_PRODUCT)
        model = product["digest"][digest_key(version)]
        ann = dep["annotations"]
        if not (isinstance(ann["origin"], str) and isinstance(ann["checkpoint"], str) and type(ann["height"]) is int
                and isinstance(dep["digest"]["flowerChainBlock"], str) and isinstance(model, str)
                and all(isinstance(v, str) for v in subjects.values()) and subjects):
            raise TypeError("a field has the wrong type")
    except (KeyError, TypeError, ValueError, StopIteration, AttributeError) as e:
        raise ProvenanceError(f"the statement lacks what a flower-chain model export records ({e!r})") from None
    return subjects, dep, model, version


def _check_files(directory: Path, subjects: dict[str, str], model: str, version: int) -> list[str]:
    problems = []
    for name, want in subjects.items():
        reader = READERS.get(name)
        path = directory / name
        if reader is None:
            problems.append(f"{name!r}: not a model file name this export writes")
            continue
        if not path.is_file():
            problems.append(f"{name}: missing from {directory}")
            continue
        data = path.read_bytes()
        have = hashlib.sha256(data).hexdigest()
        if have != want:
            problems.append(f"{name}: sha256 {have[:16]}… differs from the statement's {want[:16]}… "
                            "(the file was changed after the export)")
        try:
            arrays = array_digest(reader(data), version).hex()
        except (ValueError, LedgerError) as e:
            problems.append(f"{name}: does not decode: {e}")
            continue
        if arrays != model:
            problems.append(f"{name}: its arrays have digest {arrays[:16]}…, the statement's model is {model[:16]}…")
    return problems


def _check_ledger(ledger: Ledger, server_key: bytes, dep: dict[str, Any], model: str) -> tuple[list[str], int | None]:
    ann, origin = dep["annotations"], dep["annotations"]["origin"]
    genesis = read_genesis(ledger)
    if genesis.origin != origin:
        return [f"the statement is from ledger {origin!r}, not from the given ledger {genesis.origin!r}"], None
    try:
        verify(ledger, server_key=server_key)
    except VerificationError as e:
        return [f"the given ledger does not verify under the pinned server key: {e}"], None
    head = ledger.head()
    height = ann["height"]
    if not 0 < height <= head.header.height:
        return [(f"the statement names block {height}; the given ledger has blocks 1..{head.header.height} "
                 "(another ledger of the same federation?)")], head.header.height
    block = ledger.block(height)
    problems = []
    if block.hash.hex() != dep["digest"]["flowerChainBlock"]:
        problems.append(f"block {height} of the given ledger has hash {block.hash.hex()[:16]}…, the statement "
                        f"names {dep['digest']['flowerChainBlock'][:16]}… (a statement from another ledger)")
    elif block.checkpoint != ann["checkpoint"]:
        problems.append(f"the checkpoint of block {height} differs from the statement's")
    if head.header.model_after.hex() != model:
        problems.append(f"the given ledger's head (block {head.header.height}) has model_after "
                        f"{head.header.model_after.hex()[:16]}…, not the exported model {model[:16]}…"
                        + (" (the ledger grew after the export)" if head.header.height > height else ""))
    return problems, head.header.height


def verify_export(directory: Path, server_key: bytes, ledger: Ledger | None = None) -> Verified:
    """Check an export directory against its signed statement (and ``ledger`` when given).

    Raises
    ------
    ProvenanceInputError
        ``directory`` is not an export directory (exit 2).
    ProvenanceError
        Anything differs: one line per difference (exit 1).
    """
    statement = open_envelope(read_envelope(directory), server_key)
    subjects, dep, model, version = _facts(statement)
    problems = _check_files(directory, subjects, model, version)
    ann = dep["annotations"]
    try:
        cp = verify_checkpoint(ann["checkpoint"], server_key, origin=ann["origin"])
        if cp.size != ann.get("logSize"):
            problems.append(f"the statement's checkpoint is of size {cp.size}, not {ann.get('logSize')}")
    except CheckpointError as e:
        problems.append(f"the statement's checkpoint does not verify under the pinned key: {e}")
    head_height = None
    if ledger is not None:
        more, head_height = _check_ledger(ledger, server_key, dep, model)
        problems += more
    if problems:
        raise ProvenanceError("; ".join(problems))
    return Verified(ann["origin"], ann["height"], model, sorted(subjects), ledger is not None, head_height)

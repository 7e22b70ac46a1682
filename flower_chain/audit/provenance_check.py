"""Verify a model export: the files against the server-signed statement, and the statement against a ledger.

:func:`verify_export` checks, with a pinned server key: the DSSE envelope's signature over the PAE;
each model file's SHA-256 against the statement; that both files decode to the arrays whose
flower-chain digest the statement names; the OpenSSF model-signing bundle when the statement names
its key (:func:`flower_chain.audit.model_signing.check_bundle`); that the statement's checkpoint is
signed by that key for the statement's origin; and, given the ledger, that the ledger verifies under
that key, its block at the recorded height has the recorded hash and checkpoint, and the ledger's head
still names that model as ``model_after``. Every difference is one line of the
:class:`~flower_chain.audit.provenance.ProvenanceError` it raises (exit 1); missing input is
:class:`~flower_chain.audit.provenance.ProvenanceInputError` (exit 2). Hostile files never raise
anything else.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flower_chain.audit.provenance import (
    ENVELOPE,
    LEDGER_DEP,
    MODEL_PRODUCT,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    READERS,
    SIGNING_KEY_PRODUCT,
    STATEMENT_TYPE,
    ProvenanceError,
    ProvenanceInputError,
    digest_key,
    pae,
)
from flower_chain.ledger import json_input
from flower_chain.ledger.arrays import array_digest
from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.checkpoint import verify_checkpoint
from flower_chain.ledger.errors import CheckpointError, LedgerError, VerificationError
from flower_chain.ledger.json_input import JSONInputError
from flower_chain.ledger.keys import key_id, verify_signature
from flower_chain.ledger.verify import verify
from flower_chain.ledger.writer import read_genesis


@dataclass
class Verified:
    """What :func:`verify_export` checked."""

    origin: str
    height: int
    model_digest: str
    files: list[str]
    ledger_checked: bool
    head_height: int | None = None
    audited: bool = False


def read_envelope(directory: Path) -> dict[str, Any]:
    """The DSSE envelope of an export directory, parsed (not yet checked)."""
    if not directory.is_dir():
        raise ProvenanceInputError(f"{directory} is not a directory (export one with `flower-chain model export`)")
    path = directory / ENVELOPE
    if not path.is_file():
        raise ProvenanceInputError(f"{directory} holds no {ENVELOPE}: not a `flower-chain model export` directory")
    try:
        env = json_input.loads(path.read_bytes())
    except JSONInputError as e:
        raise ProvenanceError(f"{ENVELOPE} {e}") from None
    except OSError as e:
        raise ProvenanceError(f"{ENVELOPE} cannot be read: {e}") from None
    if (
        not isinstance(env, dict)
        or not isinstance(env.get("signatures"), list)
        or not isinstance(env.get("payload"), str)
        or env.get("payloadType") != PAYLOAD_TYPE
    ):
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
        raise ProvenanceError(
            f"the statement is not signed by the pinned server key {key_id(server_key)} "
            f"(signatures by key ids: {', '.join(seen) or 'none'}; or the statement was changed)"
        )
    try:
        st = json_input.loads(payload)
    except JSONInputError as e:
        raise ProvenanceError(f"the signed statement {e}") from None
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
        if not (
            isinstance(ann["origin"], str)
            and isinstance(ann["checkpoint"], str)
            and type(ann["height"]) is int
            and isinstance(dep["digest"]["flowerChainBlock"], str)
            and isinstance(model, str)
            and all(isinstance(v, str) for v in subjects.values())
            and subjects
        ):
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
            problems.append(
                f"{name}: sha256 {have[:16]}… differs from the statement's {want[:16]}… "
                "(the file was changed after the export)"
            )
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
        return [
            (
                f"the statement names block {height}; the given ledger has blocks 1..{head.header.height} "
                "(another ledger of the same federation?)"
            )
        ], head.header.height
    block = ledger.block(height)
    problems = []
    if block.hash.hex() != dep["digest"]["flowerChainBlock"]:
        problems.append(
            f"block {height} of the given ledger has hash {block.hash.hex()[:16]}…, the statement "
            f"names {dep['digest']['flowerChainBlock'][:16]}… (a statement from another ledger)"
        )
    elif block.checkpoint != ann["checkpoint"]:
        problems.append(f"the checkpoint of block {height} differs from the statement's")
    if head.header.model_after.hex() != model:
        problems.append(
            f"the given ledger's head (block {head.header.height}) has model_after "
            f"{head.header.model_after.hex()[:16]}…, not the exported model {model[:16]}…"
            + (" (the ledger grew after the export)" if head.header.height > height else "")
        )
    return problems, head.header.height


def _check_model_signing(directory: Path, st: dict[str, Any]) -> list[str]:
    """Problems with the OpenSSF model-signing bundle the statement names (none when it names none)."""
    from flower_chain.audit.model_signing import check_bundle

    try:
        named = [p for p in st["predicate"]["runDetails"]["byproducts"] if p.get("name") == SIGNING_KEY_PRODUCT]
        pem = named[0]["annotations"]["publicKeyPem"] if named else None
    except (KeyError, TypeError, AttributeError, IndexError):
        return ["the statement's model-signing key entry is malformed"]
    if pem is None:
        return []
    if not isinstance(pem, str):
        return ["the statement's model-signing key is not a PEM text"]
    return check_bundle(directory, pem)


def verify_export(
    directory: Path, server_key: bytes, ledger: Ledger | None = None, *, run_audit: bool = False
) -> Verified:
    """Check an export directory against its signed statement (and ``ledger`` when given).

    With ``run_audit`` (and a ledger) the ledger's aggregation is also replayed: the model must be
    what the recorded strategy computes from the accepted updates, every train round re-derived.

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
    problems += _check_model_signing(directory, statement)
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
        if run_audit and not more:
            problems += _check_audit(ledger, server_key)
    if problems:
        raise ProvenanceError("; ".join(problems))
    return Verified(
        ann["origin"],
        ann["height"],
        model,
        sorted(subjects),
        ledger is not None,
        head_height,
        audited=bool(run_audit and ledger is not None),
    )


def _check_audit(ledger: Ledger, server_key: bytes) -> list[str]:
    from flower_chain.audit.status import ledger_status

    st = ledger_status(ledger, server_key=server_key, run_audit=True)
    if st.audited:
        return []
    return [f"the ledger's aggregation is not re-derived ({st.audit_headline}): {st.audit_text}"]

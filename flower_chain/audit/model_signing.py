"""An OpenSSF ``model-signing`` (v1.0 format) bundle for an exported model, signed with an ECDSA P-256 key.

OpenSSF's ``model_signing verify key`` accepts elliptic-curve keys only (P-256/P-384/P-521), not Ed25519,
so the server's ledger key cannot sign this bundle. The export signs it with a separate P-256 key and
binds that key to the ledger: the server's Ed25519-signed in-toto statement
(:mod:`flower_chain.audit.provenance`) carries the P-256 public key (PEM) and its model-signing key
hint. Whoever pins the server key can therefore check the bundle without any other trust anchor;
whoever only has the P-256 public key can run OpenSSF's verifier (offline: key mode uses no
transparency log)::

    model_signing verify key --signature DIR/model.sig --public_key p256.pub DIR

The bundle is a Sigstore bundle v0.3 JSON (``verificationMaterial.publicKey.hint`` = SHA-256 of the
PEM SubjectPublicKeyInfo, no tlog entries) holding a DSSE envelope of an in-toto statement with
predicate ``https://model_signing/signature/v1.0``: one ``resources`` entry per file (name, sha256),
sorted by name, the ``files`` serialization, and one subject named after the directory whose sha256 is
SHA-256 over the files' raw digests in that order. The bundle covers every file of the export except
itself (the model files and ``provenance.intoto.jsonl``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from flower_chain.ledger import json_input
from flower_chain.ledger.errors import KeyFileError

SIGNATURE = "model.sig"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
SERIALIZATION = {"method": "files", "hash_type": "sha256", "allow_symlinks": False, "ignore_paths": []}


def _pae(payload: bytes) -> bytes:
    t = PAYLOAD_TYPE.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def load_signing_key(path: str | Path) -> ec.EllipticCurvePrivateKey:
    """An ECDSA P-256 private key from a PEM file; :class:`KeyFileError` for anything else."""
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise KeyFileError(
            f"{p}: not a readable unencrypted PEM private key ({getattr(e, 'strerror', None) or e})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(
            f"{p}: OpenSSF model-signing needs an ECDSA P-256 key "
            "(openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out KEY)"
        )
    return key


def public_pem(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    """The PEM SubjectPublicKeyInfo of a key's public half."""
    pub = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_hint(pem: bytes) -> str:
    """The model-signing key hint of a public key: SHA-256 of its PEM SubjectPublicKeyInfo, hex."""
    return hashlib.sha256(pem).hexdigest()


def statement(name: str, digests: dict[str, str]) -> dict[str, Any]:
    """The model-signing v1.0 in-toto statement of files (name -> sha256 hex)."""
    ordered = sorted(digests.items())
    root = hashlib.sha256(b"".join(bytes.fromhex(d) for _, d in ordered)).hexdigest()
    return {
        "_type": "https://in-toto.io/Statement/v1",
        "subject": [{"name": name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "resources": [{"name": n, "algorithm": "sha256", "digest": d} for n, d in ordered],
            "serialization": dict(SERIALIZATION),
        },
    }


def sign_directory(directory: Path, files: list[str], key: ec.EllipticCurvePrivateKey) -> Path:
    """Write ``directory/model.sig``: a bundle over ``files`` (names in ``directory``) signed with ``key``."""
    digests = {n: hashlib.sha256((directory / n).read_bytes()).hexdigest() for n in files}
    payload = json.dumps(statement(directory.resolve().name, digests), indent=2).encode()
    sig = key.sign(_pae(payload), ec.ECDSA(hashes.SHA256()))
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_hint(public_pem(key))}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}],
        },
    }
    path = directory / SIGNATURE
    path.write_text(json.dumps(bundle, indent=2) + "\n")
    return path


def check_bundle(directory: Path, pem: str) -> list[str]:
    """Problems with ``directory/model.sig`` under the P-256 public key ``pem`` (empty when it verifies).

    Checks what OpenSSF's verifier checks: the key hint, the ECDSA signature over the DSSE PAE, the
    statement's root digest, and that the signed resources are exactly the directory's files (but
    the bundle) with those SHA-256 digests. Never raises on a malformed bundle.
    """
    path = directory / SIGNATURE
    if not path.is_file():
        return [f"{SIGNATURE}: missing (the statement names an OpenSSF model-signing key)"]
    try:
        public = serialization.load_pem_public_key(pem.encode())
        bundle = json_input.loads(path.read_bytes())
        env = bundle["dsseEnvelope"]
        payload = base64.b64decode(env["payload"], validate=True)
        sig = base64.b64decode(env["signatures"][0]["sig"], validate=True)
        hint = bundle["verificationMaterial"]["publicKey"]["hint"]
    except (OSError, ValueError, KeyError, IndexError, TypeError, RecursionError, binascii.Error) as e:
        return [f"{SIGNATURE}: not a model-signing bundle ({type(e).__name__})"]
    if not isinstance(public, ec.EllipticCurvePublicKey):
        return [f"{SIGNATURE}: the statement's model-signing key is not an elliptic-curve key"]
    if hint != key_hint(pem.encode()):
        return [f"{SIGNATURE}: signed by another model-signing key than the one the statement names"]
    try:
        public.verify(sig, _pae(payload), ec.ECDSA(hashes.SHA256()))
        st = json_input.loads(payload)
        signed = {r["name"]: r["digest"] for r in st["predicate"]["resources"]}
        root = st["subject"][0]["digest"]["sha256"]
    except InvalidSignature:
        return [f"{SIGNATURE}: the ECDSA signature does not verify"]
    except (ValueError, KeyError, IndexError, TypeError, RecursionError):
        return [f"{SIGNATURE}: the signed statement is not a model-signing v1.0 statement"]
    problems = []
    if st.get("predicateType") != PREDICATE_TYPE or root != statement("", signed)["subject"][0]["digest"]["sha256"]:
        problems.append(f"{SIGNATURE}: the statement's root digest does not match its resources")
    have = {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in directory.iterdir()
        if p.is_file() and p.name != SIGNATURE
    }
    for name in sorted(set(signed) | set(have)):
        if name not in have:
            problems.append(f"{SIGNATURE}: signs {name}, which is missing")
        elif name not in signed:
            problems.append(f"{SIGNATURE}: {name} is not signed by it")
        elif signed[name] != have[name]:
            problems.append(f"{SIGNATURE}: {name} differs from the signed sha256")
    return problems

"""`flower-chain model export` / `model verify`: the final global model with its DSSE-signed in-toto provenance.

A round trip verifies (offline and against the ledger); one changed byte of a model file, a statement
from another ledger, a ledger that grew, a wrong pinned key and a re-signed statement all fail with exit 1
naming what differs; bad input is one `error:` line and exit 2.
"""

from __future__ import annotations

import base64
import hashlib
import json

import numpy as np
import pytest
import typer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from flower_chain.audit.model_files import npz_bytes, read_npz, read_safetensors, safetensors_bytes
from flower_chain.audit.provenance import ENVELOPE, NPZ, SAFETENSORS, pae, sign_envelope
from flower_chain.cli import _LedgerErrorGroup
from flower_chain.cli.model import model_app
from flower_chain.ledger import open_ledger
from flower_chain.ledger.arrays import decode_arrays
from flower_chain.ledger.entries import EvaluationEntry
from flower_chain.strategies import LedgerStrategy
from tests.integration.audit.test_audit import run_rounds
from tests.support.fl_helpers import Clients, arrays, fedavg

pytestmark = pytest.mark.usefixtures("task_identity")

root = typer.Typer(cls=_LedgerErrorGroup)  # the CLI's own root group: a LedgerError maps to its exit code
root.add_typer(model_app, name="model")


def cli(*args):
    return CliRunner().invoke(root, ["model", *map(str, args)], catch_exceptions=False)


def write_key(key: Ed25519PrivateKey, path):
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pub = path.with_suffix(".pub")
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path, pub


def run(tmp_path, name, key, fid="fed-a", rounds=3):
    clients = Clients(3)
    uri = f"sqlite:///{tmp_path / name}"
    s = LedgerStrategy(fedavg(), ledger=uri, keyring=clients.keyring, server_key=key, federation_id=fid)
    run_rounds(s, clients, range(1, rounds + 1), arrays(0))
    s.close()
    return uri, clients


@pytest.fixture
def exported(tmp_path):
    key = Ed25519PrivateKey.generate()
    priv, pub = write_key(key, tmp_path / "server.key")
    uri, clients = run(tmp_path, "a.db", key)
    out = tmp_path / "model"
    r = cli("export", uri, "-o", out, "--server-key", priv)
    assert r.exit_code == 0, r.output
    return uri, key, priv, pub, out, clients


def test_round_trip_offline_and_against_the_ledger(exported):
    uri, key, _, pub, out, clients = exported
    assert sorted(p.name for p in out.iterdir()) == sorted([NPZ, SAFETENSORS, ENVELOPE])
    with open_ledger(uri) as led:
        head = led.head().header
        model = decode_arrays(led.get_blob(head.model_after))
    for name, reader in ((NPZ, read_npz), (SAFETENSORS, read_safetensors)):
        got = reader((out / name).read_bytes())
        assert [n for n, _ in got] == [n for n, _ in model]
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for (_, a), (_, b) in zip(got, model))
    env = json.loads((out / ENVELOPE).read_text())
    payload = base64.b64decode(env["payload"])
    key.public_key().verify(base64.b64decode(env["signatures"][0]["sig"]), pae(env["payloadType"], payload))
    st = json.loads(payload)
    assert st["_type"] == "https://in-toto.io/Statement/v1" and st["predicateType"] == "https://slsa.dev/provenance/v1"
    assert {s["name"]: s["digest"]["sha256"] for s in st["subject"]} == {
        n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in (NPZ, SAFETENSORS)
    }
    pred = st["predicate"]
    ext, internal = pred["buildDefinition"]["externalParameters"], pred["buildDefinition"]["internalParameters"]
    assert ext["strategy"] == "FedAvg" and ext["rounds"] == 3 and ext["lastRound"] == 3
    assert isinstance(ext["strategySettings"], dict) and ext["strategySettings"]
    assert internal["acceptedKeys"] == {k: 3 for k in clients.keyring}
    dep = pred["buildDefinition"]["resolvedDependencies"][0]
    with open_ledger(uri) as led:
        assert dep["digest"]["flowerChainBlock"] == led.head().hash.hex()
        assert dep["annotations"]["checkpoint"] == led.head().checkpoint
    assert (
        pred["runDetails"]["byproducts"][0]["digest"][f"flowerChainArraysV{internal['digestVersion']}"]
        == head.model_after.hex()
    )

    r = cli("verify", out, "--server-key", pub)
    assert r.exit_code == 0 and "VERIFIED" in r.output and "not checked against a ledger" in r.output, r.output
    r = cli("verify", out, "--server-key", pub, "--ledger", uri)
    assert r.exit_code == 0 and "model_after of the given ledger's head" in r.output, r.output
    # an export of the same head is byte-identical
    again = out.parent / "again"
    assert cli("export", uri, "-o", again, "--server-key", exported[2]).exit_code == 0
    assert all((again / n).read_bytes() == (out / n).read_bytes() for n in (NPZ, SAFETENSORS))


@pytest.mark.parametrize("name", [NPZ, SAFETENSORS])
def test_one_changed_byte_of_a_model_file_fails(exported, name):
    uri, _, _, pub, out, _ = exported
    data = bytearray((out / name).read_bytes())
    with open_ledger(uri) as led:
        last = decode_arrays(led.get_blob(led.head().header.model_after))[-1][1].tobytes()
    at = bytes(data).rfind(last)
    assert at > 0
    data[at + 1] ^= 0x01  # one byte of the last array: the file still decodes, to other numbers
    (out / name).write_bytes(bytes(data))
    for extra in ((), ("--ledger", uri)):
        r = cli("verify", out, "--server-key", pub, *extra)
        assert r.exit_code == 1 and "NOT VERIFIED" in r.output, r.output
        assert f"{name}: sha256" in r.output  # and the file's arrays are not the model (or fail their zip CRC)
        assert f"{name}: its arrays have digest" in r.output or f"{name}: does not decode" in r.output
        other = SAFETENSORS if name == NPZ else NPZ
        assert f"{other}:" not in r.output  # only what differs is named


def test_a_statement_from_another_ledger_fails(exported, tmp_path):
    _, key, _, pub, out, _ = exported
    other_fed, _ = run(tmp_path, "b.db", key, fid="fed-b")
    r = cli("verify", out, "--server-key", pub, "--ledger", other_fed)
    assert r.exit_code == 1 and "the statement is from ledger 'flower-chain/fed-a'" in r.output, r.output
    # the same federation id and server key, another run: block hashes differ
    same_name, _ = run(tmp_path, "c.db", key, fid="fed-a")
    r = cli("verify", out, "--server-key", pub, "--ledger", same_name)
    assert r.exit_code == 1 and "a statement from another ledger" in r.output, r.output


def test_a_ledger_that_grew_after_the_export_is_named(exported):
    uri, key, _, pub, out, clients = exported
    s = LedgerStrategy(fedavg(), ledger=uri, keyring=clients.keyring, server_key=key, resume=True)
    run_rounds(s, clients, [4], s.resume_arrays())
    s.close()
    r = cli("verify", out, "--server-key", pub, "--ledger", uri)
    assert r.exit_code == 1 and "the ledger grew after the export" in r.output, r.output
    assert cli("verify", out, "--server-key", pub).exit_code == 0  # offline, the export itself is intact


def test_wrong_key_and_a_resigned_statement_fail(exported, tmp_path):
    uri, _, _, pub, out, _ = exported
    _, other_pub = write_key(Ed25519PrivateKey.generate(), tmp_path / "other.key")
    r = cli("verify", out, "--server-key", other_pub)
    assert r.exit_code == 1 and "not signed by the pinned server key" in r.output, r.output
    # someone edits the statement (claims other accepted keys) and signs it with their own key
    env = json.loads((out / ENVELOPE).read_text())
    st = json.loads(base64.b64decode(env["payload"]))
    st["predicate"]["buildDefinition"]["internalParameters"]["acceptedKeys"] = {"0" * 16: 3}
    mallory = Ed25519PrivateKey.generate()
    (out / ENVELOPE).write_text(json.dumps(sign_envelope(st, mallory)))
    r = cli("verify", out, "--server-key", pub)
    assert r.exit_code == 1 and "not signed by the pinned server key" in r.output, r.output
    # ... or keeps the server's signature over the old payload
    env["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
    (out / ENVELOPE).write_text(json.dumps(env))
    assert cli("verify", out, "--server-key", pub).exit_code == 1
    # exporting with a key that is not the ledger's is refused
    other_priv, _ = write_key(Ed25519PrivateKey.generate(), tmp_path / "third.key")
    r = cli("export", uri, "-o", tmp_path / "x", "--server-key", other_priv)
    assert r.exit_code == 2 and r.output.count("error:") == 1 and "not by the given key" in r.output, r.output


def test_bad_input_is_one_error_line_and_exit_2(exported, tmp_path):
    uri, _, _, pub, out, _ = exported
    cases = [
        ("verify", tmp_path / "nowhere", "--server-key", pub),
        ("verify", tmp_path, "--server-key", pub),  # a directory with no envelope
        ("verify", out, "--server-key", tmp_path / "missing.pub"),
        ("verify", out, "--server-key", pub, "--ledger", "mysql://x"),
        ("export", uri, "-o", tmp_path / "e", "--server-key", tmp_path / "missing.key"),
    ]
    for args in cases:
        r = cli(*args)
        assert r.exit_code == 2 and r.output.count("error:") == 1 and "Traceback" not in r.output, (args, r.output)
    (out / ENVELOPE).write_text("{ not json")
    r = cli("verify", out, "--server-key", pub)
    assert r.exit_code == 1 and "is not JSON" in r.output
    (out / ENVELOPE).write_text("[" * 100_000)
    r = cli("verify", out, "--server-key", pub)
    assert r.exit_code == 1 and "nested too deeply" in r.output


def test_a_ledger_without_a_model_cannot_be_exported(federation_factory, tmp_path):
    fed = federation_factory("sqlite")
    fed.add_block(1, [EvaluationEntry(round=1, source="centralized", num_replies=0, metrics={"accuracy": 0.5})])
    priv, _ = write_key(fed.server_key, tmp_path / "s.key")
    r = cli("export", fed.uri, "-o", tmp_path / "m", "--server-key", priv)
    assert r.exit_code == 2 and "names no model" in r.output, r.output


def test_model_file_formats_round_trip_and_refuse_malformed_input():
    named = [
        ("w", np.arange(12, dtype=np.float32).reshape(3, 4)),
        ("b", np.array([1, -2], dtype=np.int64)),
        ("flag", np.array([True, False])),
        ("scalar", np.float64(2.5).reshape(())),
    ]
    st = safetensors_bytes(named, {"k": "v"})
    n = int.from_bytes(st[:8], "little")
    assert n % 8 == 0 and json.loads(st[8 : 8 + n])["__metadata__"] == {"k": "v"}
    for got in (read_safetensors(st), read_npz(npz_bytes(named))):
        assert [x for x, _ in got] == [x for x, _ in named]
        assert all(np.array_equal(a, b) and a.dtype == b.dtype for (_, a), (_, b) in zip(got, named))
    assert npz_bytes(named) == npz_bytes(named)
    for bad in (b"", st[:7], (1 << 60).to_bytes(8, "little") + st[8:], st[:-1], st + b"\0", st[:8] + b"[" + st[9:]):
        with pytest.raises(ValueError):
            read_safetensors(bad)
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:  # a decompression bomb is never inflated
        zf.writestr("w.npy", b"\0" * 10_000_000)
    deep = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(ValueError, match="nested too deeply"):
        read_safetensors(len(deep).to_bytes(8, "little") + deep)
    for bad in (b"", b"PK\x03\x04junk", npz_bytes(named)[:-5], buf.getvalue()):
        with pytest.raises(ValueError):
            read_npz(bad)
    with pytest.raises(ValueError, match="cannot be written as safetensors"):
        safetensors_bytes([("c", np.zeros(2, dtype=np.complex64))], {})


# -- OpenSSF model-signing bundle (ECDSA P-256) ---------------------------------------------------------------
def write_p256(path):
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    pub = path.with_suffix(".pub")
    pub.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return key, pub


@pytest.fixture
def signed_export(exported, tmp_path):
    uri, _, priv, pub, _, _ = exported
    p256, p256_pub = write_p256(tmp_path / "ms.key")
    out = tmp_path / "signed"
    r = cli("export", uri, "-o", out, "--server-key", priv, "--model-signing-key", tmp_path / "ms.key")
    assert r.exit_code == 0 and "model.sig (OpenSSF model-signing, P-256)" in r.output, r.output
    return uri, pub, out, p256, p256_pub


def test_the_model_signing_bundle_covers_every_file_and_its_key_is_named_in_the_signed_statement(signed_export):
    from flower_chain.audit.model_signing import PREDICATE_TYPE, SIGNATURE, key_hint, public_pem

    uri, pub, out, p256, _ = signed_export
    bundle = json.loads((out / SIGNATURE).read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    assert bundle["verificationMaterial"]["publicKey"]["hint"] == key_hint(public_pem(p256))
    st = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert st["predicateType"] == PREDICATE_TYPE
    assert {r["name"]: r["digest"] for r in st["predicate"]["resources"]} == {
        n: hashlib.sha256((out / n).read_bytes()).hexdigest() for n in (ENVELOPE, NPZ, SAFETENSORS)
    }
    env = json.loads((out / ENVELOPE).read_text())
    prov = json.loads(base64.b64decode(env["payload"]))
    named = [p for p in prov["predicate"]["runDetails"]["byproducts"] if p["name"] == "openssf-model-signing-key"]
    assert named[0]["annotations"]["publicKeyPem"] == public_pem(p256).decode()
    r = cli("verify", out, "--server-key", pub, "--ledger", uri)
    assert r.exit_code == 0, r.output


def test_a_changed_byte_or_a_resigned_bundle_fails_the_model_signing_check(signed_export, tmp_path):
    from cryptography.hazmat.primitives.asymmetric import ec

    from flower_chain.audit.model_signing import SIGNATURE, sign_directory

    _, pub, out, _, _ = signed_export
    bundle = (out / SIGNATURE).read_bytes()
    data = bytearray((out / SAFETENSORS).read_bytes())
    data[-1] ^= 0x01
    (out / SAFETENSORS).write_bytes(bytes(data))
    r = cli("verify", out, "--server-key", pub)
    assert r.exit_code == 1 and "model.sig: model.safetensors differs from the signed sha256" in r.output, r.output
    data[-1] ^= 0x01
    (out / SAFETENSORS).write_bytes(bytes(data))
    sign_directory(out, [ENVELOPE, NPZ, SAFETENSORS], ec.generate_private_key(ec.SECP256R1()))  # another key
    r = cli("verify", out, "--server-key", pub)
    assert r.exit_code == 1 and "signed by another model-signing key" in r.output, r.output
    (out / SIGNATURE).write_bytes(bundle)
    (out / "extra.bin").write_bytes(b"x")
    r = cli("verify", out, "--server-key", pub)
    assert r.exit_code == 1 and "extra.bin is not signed by it" in r.output, r.output
    (out / "extra.bin").unlink()
    (out / SIGNATURE).unlink()
    r = cli("verify", out, "--server-key", pub)
    assert r.exit_code == 1 and "model.sig: missing" in r.output, r.output


def test_an_ed25519_key_is_refused_as_a_model_signing_key(exported, tmp_path):
    uri, _, priv, _, _, _ = exported
    r = cli("export", uri, "-o", tmp_path / "x", "--server-key", priv, "--model-signing-key", priv)
    assert r.exit_code == 2 and r.output.count("error:") == 1 and "ECDSA P-256" in r.output, r.output


def test_export_refuses_a_directory_with_other_files_and_replaces_its_own(exported, tmp_path):
    uri, _, priv, pub, out, _ = exported
    (out / "notes.txt").write_text("mine")
    r = cli("export", uri, "-o", out, "--server-key", priv)
    assert r.exit_code == 2 and "holds other files (notes.txt)" in r.output, r.output
    (out / "notes.txt").unlink()
    (out / "model.sig").write_text("stale")
    assert cli("export", uri, "-o", out, "--server-key", priv).exit_code == 0
    assert not (out / "model.sig").exists() and cli("verify", out, "--server-key", pub).exit_code == 0


def test_audit_catches_a_substituted_model_that_verify_alone_accepts(tmp_path):
    """A dishonest server records a model of its own as round 3's result and re-signs the whole ledger: the export
    verifies (it is the head's model_after, every signature is right); only --audit finds it is not the aggregate."""
    from flower_chain.ledger.arrays import array_digest, encode_arrays
    from tests.integration.audit.test_audit import _substitute_model
    from tests.support import dishonest

    key = Ed25519PrivateKey.generate()
    priv, pub = write_key(key, tmp_path / "server.key")
    uri, _ = run(tmp_path, "d.db", key)
    model = [("w", np.full((8, 4), 0.5, np.float32)), ("b", np.zeros(4, np.float32))]
    fake = array_digest(model)
    dishonest.put_blob(uri, fake, encode_arrays(model))
    dishonest.rewrite(uri, key, _substitute_model(3, fake))
    out = tmp_path / "m"
    assert cli("export", uri, "-o", out, "--server-key", priv).exit_code == 0
    r = cli("verify", out, "--server-key", pub, "--ledger", uri)
    assert r.exit_code == 0 and "the aggregation was not replayed (add --audit)" in r.output, r.output
    r = cli("verify", out, "--server-key", pub, "--ledger", uri, "--audit")
    assert r.exit_code == 1 and "the ledger's aggregation is not re-derived (AUDIT FAILED): round 3" in r.output, (
        r.output
    )
    honest_uri, _ = run(tmp_path, "h.db", key, fid="fed-h")
    out = tmp_path / "h"
    assert cli("export", honest_uri, "-o", out, "--server-key", priv).exit_code == 0
    r = cli("verify", out, "--server-key", pub, "--ledger", honest_uri, "--audit")
    assert r.exit_code == 0 and "AUDITED: every train round re-derived" in r.output, r.output
    assert cli("verify", out, "--server-key", pub, "--audit").exit_code == 2  # --audit needs --ledger

"""OpenSSF's own verifier (`model_signing verify key`, model-signing >= 1.1) accepts the bundle `flower-chain model
export --model-signing-key` writes, and refuses it after one changed byte.

model-signing is not a dependency of this project (it pulls in sigstore); the test runs where the
`model_signing` command is on PATH or named by MODEL_SIGNING_BIN, e.g. a throwaway virtual environment:
``python -m venv /tmp/ms && /tmp/ms/bin/pip install 'model-signing>=1.1' && MODEL_SIGNING_BIN=/tmp/ms/bin/model_signing``.
Key mode is offline: no transparency log, no network.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.integration.audit.test_provenance import (  # noqa: F401 - fixtures
    cli,
    exported,
    signed_export,
    write_p256,
)

pytestmark = pytest.mark.usefixtures("task_identity")
BIN = os.environ.get("MODEL_SIGNING_BIN") or shutil.which("model_signing")


@pytest.mark.skipif(BIN is None, reason="OpenSSF model_signing is not installed (see the module docstring)")
def test_openssf_model_signing_verifies_the_bundle_and_refuses_a_changed_byte(signed_export):
    _, _, out, _, p256_pub = signed_export

    def openssf():
        return subprocess.run(
            [BIN, "verify", "key", "--public_key", str(p256_pub), "--signature", str(out / "model.sig"), str(out)],
            capture_output=True,
            text=True,
            timeout=300,
        )

    r = openssf()
    assert r.returncode == 0 and "Verification succeeded" in r.stdout + r.stderr, r.stdout + r.stderr
    data = bytearray((out / "model.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (out / "model.npz").write_bytes(bytes(data))
    r = openssf()
    assert r.returncode != 0 and "model.npz" in r.stdout + r.stderr, r.stdout + r.stderr

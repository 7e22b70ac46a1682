"""Censorship at a client's last contact (issue 19, item 3): ``flower-chain receipts check KEYDIR --log``.

After the final round no instruction carries the receipts of a node's last updates: a dishonest server may drop
one, or record it as rejected (as if its signature were bad, or unsigned). The offline command finds them in the
node's receipt store and fails naming the round and the key; an honest run passes, through the ledger URI and
through the log's tlog-tiles URL.
"""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import ConfigRecord, RecordDict
from typer.testing import CliRunner

from flower_chain.cli import app
from flower_chain.clients.signing import make_signing_mod
from flower_chain.ledger import open_ledger
from flower_chain.ledger.keys import key_id
from flower_chain.serve.app import LogView, build_app
from flower_chain.serve.background import ServerThread, free_port
from flower_chain.strategies import LedgerStrategy
from flower_chain.wire import SIG_RECORD, SIGNATURE
from tests.support.fl_helpers import Clients, FakeGrid, arrays, context, fedavg, train_reply, with_content

NODES = [101, 102, 103]

pytestmark = pytest.mark.usefixtures("task_identity")


def cli(*args):
    r = CliRunner().invoke(app, list(map(str, args)))
    if r.exception is not None and not isinstance(r.exception, SystemExit):
        raise r.exception
    return r.exit_code, r.output


def bad_signature(reply):
    fields = dict(reply.content[SIG_RECORD].items())
    sig = bytearray(fields[SIGNATURE])
    sig[0] ^= 1
    fields[SIGNATURE] = bytes(sig)
    content = RecordDict({k: v for k, v in reply.content.items() if k != SIG_RECORD})
    content[SIG_RECORD] = ConfigRecord(fields)
    return with_content(reply, content)


def unsigned(reply):
    return with_content(reply, RecordDict({k: v for k, v in reply.content.items() if k != SIG_RECORD}))


class Run:
    """Three rounds of a LedgerStrategy with three clients keeping receipts; ``final`` edits the last round's
    replies as a dishonest server would (a list of replies in, the list it records out)."""

    def __init__(self, tmp_path, final=None, rounds=3):
        self.tmp = tmp_path
        self.clients = Clients(len(NODES))
        self.uri = f"sqlite:///{tmp_path}/l.db"
        strategy = LedgerStrategy(
            fedavg(),
            ledger=self.uri,
            keyring=self.clients.keyring,
            server_key=Ed25519PrivateKey.generate(),
            federation_id="fed-last",
        )
        mods = [make_signing_mod(k, receipts_dir=tmp_path / "receipts") for k in self.clients.keys]
        model = arrays(0)
        for rnd in range(1, rounds + 1):
            msgs = sorted(
                strategy.configure_train(rnd, model, ConfigRecord({}), FakeGrid(NODES)),
                key=lambda m: m.metadata.dst_node_id,
            )
            replies = [
                mod(m, context(), lambda msg, c, i=i, r=rnd: train_reply(msg, arrays(100 * r + i), 10))
                for i, (m, mod) in enumerate(zip(msgs, mods))
            ]
            if rnd == rounds and final is not None:
                replies = final(replies)
            model, _ = strategy.aggregate_train(rnd, replies)
        strategy.core.close()

    def keydir(self, i):
        return self.tmp / "receipts" / key_id(self.clients.keys[i])

    def kid(self, i):
        return key_id(self.clients.keys[i])


def test_honest_run_passes_through_the_ledger_and_through_tiles(tmp_path):
    run = Run(tmp_path)
    for i in range(len(NODES)):
        code, out = cli("receipts", "check", run.keydir(i), "--log", run.uri)
        assert code == 0 and "VERIFIED" in out and "all 1 statements" in out, out
    ledger = open_ledger(run.uri)
    try:
        with ServerThread(build_app(LogView(ledger, refresh_s=0.0))) as url:
            code, out = cli("receipts", "check", run.keydir(0), "--log", url)
    finally:
        ledger.close()
    assert code == 0 and "VERIFIED" in out, out


def test_final_round_update_dropped_is_named(tmp_path):
    run = Run(tmp_path, final=lambda replies: replies[1:])  # client 0's last update never reaches the ledger
    code, out = cli("receipts", "check", run.keydir(0), "--log", run.uri)
    assert code == 1, out
    assert f"round 3 (train), key {run.kid(0)}: the signed statement is absent from the log" in " ".join(out.split())
    assert "NOT VERIFIED" in out
    code, out = cli("receipts", "check", run.keydir(1), "--log", run.uri)
    assert code == 0, out


@pytest.mark.parametrize(
    "spoil,phrase",
    [
        (bad_signature, "recorded as rejected (bad-signature) with a signature that is not the one this node made"),
        (unsigned, "the signed statement is absent from the log"),  # recorded as unsigned: no statement at all
    ],
)
def test_final_round_update_recorded_as_rejected_is_named(tmp_path, spoil, phrase):
    run = Run(tmp_path, final=lambda replies: [spoil(replies[0]), *replies[1:]])
    code, out = cli("receipts", "check", run.keydir(0), "--log", run.uri)
    assert code == 1, out
    assert f"round 3 (train), key {run.kid(0)}: {phrase}" in " ".join(out.split()), out


def test_bad_input_is_one_error_line(tmp_path):
    run = Run(tmp_path, rounds=1)
    for args in (
        (tmp_path / "nowhere", "--log", run.uri),
        (tmp_path, "--log", run.uri),  # not a key directory
        (run.keydir(0), "--log", f"sqlite:///{tmp_path}/missing.db"),
        (run.keydir(0), "--log", f"http://127.0.0.1:{free_port()}/"),
    ):  # nothing serves the log there
        code, out = cli("receipts", "check", *args)
        lines = [line for line in out.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), out


def test_server_does_not_know_you_yet_is_accepted_once_per_log(tmp_path):
    """A server may claim once not to know a node (it restarted) and skip the consistency proof; a second claim
    on the same log (another "restart", or an old checkpoint sent again) is a suspected fork, never a deferral."""
    from tests.integration.clients.test_receipts import World

    uri = f"sqlite:///{tmp_path}/l.db"
    w = World(tmp_path, ledger=uri)
    w.round(1)
    w.round(2)
    arrays_now = w.global_arrays
    for restart, rounds in enumerate(((3, 4), (5, 6))):
        w.strategy.close()
        again = World(tmp_path, server_key=w.server_key, clients=w.clients, ledger=uri)
        again.mods, again.global_arrays = w.mods, arrays_now
        for rnd in rounds:
            again.round(rnd)
        arrays_now = again.global_arrays
        w.strategy = again.strategy
        log = (w.dir(0) / "errors.log").read_text() if (w.dir(0) / "errors.log").exists() else ""
        if restart == 0:
            assert log == "", log  # the first deferral is allowed: every receipt still arrives
        else:
            assert "FORK?" in log, log
    assert sorted(p.name for p in w.dir(0).glob("round-*.proof"))[:4] == [f"round-{r}.proof" for r in (1, 2, 3, 4)]

"""One options object configures both wrappers and the core; the keyword arguments still work; the
project's aggregation error is Flower's own, so `flwr run` reports the run failed."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.serverapp.exception import AggregationError as FlowerAggregationError
from flwr.serverapp.strategy import FedAvg

from flower_chain.ledger.keys import key_id, raw_public
from flower_chain.ledger.location import with_run_id
from flower_chain.strategies import LedgerStrategy, LegacyLedgerStrategy
from flower_chain.strategies.errors import AggregationError
from flower_chain.strategies.options import LedgerOptions


@pytest.fixture
def settings():
    client = Ed25519PrivateKey.generate()
    return {
        "ledger": "memory:",
        "keyring": {key_id(client): raw_public(client)},
        "server_key": Ed25519PrivateKey.generate(),
    }


def test_settings_over_options_replace_fields_and_leave_the_original(settings):
    base = LedgerOptions(**settings)
    got = LedgerOptions.of(base, min_accepted="3", store_models=False)
    assert (got.min_accepted, got.store_models) == (3, False)
    assert (base.min_accepted, base.store_models) == (1, True)
    assert LedgerOptions.of(base) is base


def test_a_wrong_or_missing_setting_is_a_type_error(settings):
    with pytest.raises(TypeError, match="no_such_option"):
        LedgerOptions.of(None, no_such_option=1, **settings)
    with pytest.raises(TypeError, match="server_key"):
        LedgerOptions.of(None, ledger="memory:", keyring={})
    with pytest.raises(TypeError, match="LedgerOptions"):
        LedgerOptions.of({"ledger": "memory:"})


def test_keyword_arguments_and_an_options_object_configure_the_same_strategy(settings):
    by_kwargs = LedgerStrategy(FedAvg(), min_accepted=2, witness_timeout=0.5, **settings)
    by_options = LedgerStrategy(FedAvg(), options=LedgerOptions(min_accepted=2, witness_timeout=0.5, **settings))
    for s in (by_kwargs, by_options):
        assert (s.options.min_accepted, s.options.witness_timeout, s.min_accepted) == (2, 0.5, 2)
        assert s.core.options is s.options
        s.min_accepted = 0  # settable, as tests and users do, and the core's round sequence reads it
        assert s.core.options.min_accepted == 0
        s.close()
    legacy = LegacyLedgerStrategy(LegacyFedAvg(), min_accepted=3, **settings)
    assert legacy.min_accepted == 3 == legacy.core.options.min_accepted
    legacy.close()


def test_the_legacy_strategy_refuses_resume(settings):
    with pytest.raises(TypeError, match="resume"):
        LegacyLedgerStrategy(LegacyFedAvg(), resume=True, **settings)


def test_the_aggregation_error_is_flowers_own():
    e = AggregationError(4, FedAvg(), ValueError("boom"))
    assert isinstance(e, FlowerAggregationError)
    assert e.exit_code == FlowerAggregationError.exit_code  # Flower's aggregation exit code, not the CLI's 2
    assert str(e).startswith("round 4: FedAvg refused the accepted replies (ValueError: boom)")


def test_run_id_substitution():
    assert with_run_id("sqlite:////srv/l-{run_id}.db", "42") == "sqlite:////srv/l-42.db"
    assert with_run_id("memory:", "42") == "memory:"


def test_the_end_of_run_commands_pin_the_key_and_keyring_the_strategy_read(tmp_path):
    from flower_chain.ledger.keys import generate

    server_key, server_pub = generate(tmp_path / "server", "server")
    _, client_pub = generate(tmp_path / "clients", "client-0")
    (tmp_path / "keyring").mkdir()
    (tmp_path / "keyring" / client_pub.name).write_bytes(client_pub.read_bytes())
    s = LedgerStrategy(FedAvg(), ledger="memory:", keyring=tmp_path / "keyring", server_key=str(server_key))
    lines = [line.strip() for line in s.core.summary_lines()]
    s.close()
    assert lines[-2] == "audit it:   flower-chain ledger audit memory:"
    assert lines[-1] == (
        f"verify it:  flower-chain ledger verify memory: --server-key {server_pub.resolve()} "
        f"--keys {(tmp_path / 'keyring').resolve()}"
    )

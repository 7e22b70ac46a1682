"""The start-of-run warning: one line, with the option that changes it, exactly when `ledger audit` will not
re-derive the run (the same rules the audit applies)."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

from flower_chain.strategies.auditable import PREFIX, why_not_auditable
from flower_chain.strategies.ledger_strategy import strategy_config
from flower_chain.strategies.ordered import OrderedFedAdam, OrderedFedAvg, OrderedFedAvgM


def _check(strategy, store=None):
    return why_not_auditable(strategy, strategy_config(strategy), store)


@pytest.mark.parametrize("make", [FedAvg, OrderedFedAvg, OrderedFedAvgM, OrderedFedAdam])
def test_bundled_strategies_are_auditable(make):
    assert _check(make()) is None and _check(make(), True) is None


def test_legacy_strategies_are_auditable():
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import FedAdam as LegacyFedAdam
    from flwr.server.strategy import FedAvg as LegacyFedAvg

    assert _check(LegacyFedAvg()) is None
    assert _check(LegacyFedAdam(initial_parameters=ndarrays_to_parameters([np.zeros(3, np.float32)]))) is None


def test_no_stored_updates_is_one_line_naming_the_option():
    line = _check(OrderedFedAvg(), False)
    assert line.startswith(PREFIX) and "store_client_updates" in line and "\n" not in line


class Mine(FedAvg):
    pass


class MineReplayable(FedAvg):
    flower_chain_replayable = True

    @classmethod
    def from_ledger_config(cls, config):
        return cls()


def test_unknown_and_noisy_strategies_are_named():
    line = _check(Mine())
    assert line.startswith(PREFIX) and "flower_chain_replayable = True" in line and "Mine" in line
    assert _check(MineReplayable()) is None
    dp = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(), noise_multiplier=1.0, clipping_norm=1.0, num_sampled_clients=2
    )
    assert "random noise" in _check(dp)
    quiet = DifferentialPrivacyServerSideFixedClipping(
        FedAvg(), noise_multiplier=0.0, clipping_norm=1.0, num_sampled_clients=2
    )
    assert _check(quiet) is None

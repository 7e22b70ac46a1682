"""Rebuilding the recorded strategy treats the recorded settings as hostile input: only constructor parameters
and plain attributes the fresh strategy already has, plain values only, node counts bounded (issue 19 item 11)."""

from __future__ import annotations

import pytest

from flower_chain.strategies.ledger_strategy import strategy_config
from flower_chain.strategies.replayable import MAX_REPLAY_NODES, NotReplayable, legacy_factory, strategy_factory


def test_a_huge_node_minimum_is_refused_not_padded():
    with pytest.raises(NotReplayable, match="exceeds"):
        strategy_factory("FedAvg", {"min_available_nodes": MAX_REPLAY_NODES + 1})


@pytest.mark.parametrize("name", ["aggregate_train", "configure_train", "__class__", "no_such_setting"])
def test_a_setting_that_is_a_method_or_unknown_is_refused(name):
    with pytest.raises(NotReplayable, match="no plain setting"):
        strategy_factory("FedAvg", {name: 1})


@pytest.mark.parametrize("value", [[1, 2], {"a": 1}, b"\x00", None])
def test_a_setting_of_a_non_plain_type_is_refused(value):
    with pytest.raises(NotReplayable, match="not a number, boolean or text"):
        strategy_factory("FedAvg", {"fraction_train": value})


def test_recorded_settings_rebuild_the_same_strategy():
    from flwr.serverapp.strategy import FedAvg

    from flower_chain.strategies.ordered import OrderedFedAdam

    s = OrderedFedAdam(eta=0.02, fraction_evaluate=0.0)
    rebuilt = strategy_factory("OrderedFedAdam", strategy_config(s))()
    assert type(rebuilt) is OrderedFedAdam and strategy_config(rebuilt) == strategy_config(s)
    assert rebuilt.min_evaluate_nodes == s.min_evaluate_nodes  # derived by __init__, recorded, set back
    assert strategy_config(strategy_factory("FedAvg", strategy_config(FedAvg()))()) == strategy_config(FedAvg())


def test_legacy_strategies_rebuild_and_unknown_ones_are_named():
    import numpy as np
    from flwr.common import ndarrays_to_parameters
    from flwr.server.strategy import FedAvgM

    initial = ndarrays_to_parameters([np.zeros(3, np.float32)])
    s = FedAvgM(initial_parameters=initial, server_momentum=0.9)
    rebuilt = legacy_factory("FedAvgM", strategy_config(s))(initial)
    assert rebuilt.server_momentum == 0.9 and rebuilt.server_opt and rebuilt.initial_parameters is initial
    with pytest.raises(NotReplayable, match="legacy strategies the replay knows"):
        legacy_factory("FedXgbBagging", strategy_config(s))

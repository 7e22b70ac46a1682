"""Recorded aggregation settings that void or invert the clients' contributions are flagged (issue 19, item 6)."""

from __future__ import annotations

import pytest

from flower_chain.audit.settings_check import settings_findings, settings_text

HONEST = {
    "eta": 0.1,
    "eta_l": 0.1,
    "beta_1": 0.9,
    "beta_2": 0.99,
    "tau": 1e-9,
    "fraction_train": 1.0,
    "server_learning_rate": 1.0,
    "server_momentum": 0.0,
    "proximal_mu": 0.0,
    "q": 0.1,
    "client_learning_rate": 0.1,
    "min_train_nodes": 2,
    "weighted_by_key": "num-examples",
}


def test_honest_settings_raise_no_finding():
    assert settings_findings(HONEST) == []


@pytest.mark.parametrize(
    "name,value,phrase",
    [
        ("eta", 0.0, "voids every client's contribution"),
        ("eta", -1.0, "inverts every client's contribution"),
        ("server_learning_rate", 0, "voids"),
        ("server_learning_rate", -1.0, "inverts"),
        ("strategy.server_learning_rate", -0.5, "inverts"),  # a wrapped strategy's setting
        ("client_learning_rate", 0.0, "voids"),
        ("server_momentum", 1.0, "never decays"),
        ("server_momentum", -0.9, "inverts past updates"),
        ("beta_1", 1.5, "outside [0, 1)"),
        ("tau", 0.0, "must be positive"),
        ("proximal_mu", -0.1, "negative"),
        ("fraction_train", 0.0, "samples no node by fraction"),
        ("fraction_train", 2.0, "not a fraction"),
        ("eta", float("nan"), "not a finite number"),
    ],
)
def test_settings_that_void_or_invert_are_flagged(name, value, phrase):
    got = settings_findings({**HONEST, name: value})
    assert len(got) == 1 and got[0].startswith(f"{name} = ") and phrase in got[0], got


def test_settings_text_is_bounded_and_escaped():
    text = settings_text("FedAvg", {f"k{i}": i for i in range(100)} | {"x": "\x1b[31mred"}, "")
    assert "\x1b" not in text and "(41 more)" in text
    assert "not shown (why)" in settings_text("FedAvg", None, "why")

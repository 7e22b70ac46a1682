"""The aggregation settings a ledger records, shown, and the ones that void or invert client contributions flagged.

The genesis names the strategy class and the digest of its settings (``config_digest``; the settings themselves
are in the blob store). A replay is bit for bit whatever they say: a server learning rate of 0 keeps the first
model however the clients train, one of -1 moves the model away from what they sent, and both audit as
"re-derived". :func:`settings_findings` names such settings; ``ledger summary`` and ``ledger audit`` print the
settings and the findings. Imports neither torch nor flwr.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from flower_chain.ledger.backends.base import Ledger
from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.genesis import read_genesis
from flower_chain.ledger.text import safe_text

#: Settings scaling the server's step (FedOpt's ``eta``, FedAvgM's ``server_learning_rate``, QFedAvg's
#: ``client_learning_rate``, which divides the update by ``L``): 0 voids every client's contribution, a negative
#: value inverts it.
STEP = ("eta", "server_learning_rate", "client_learning_rate")
#: Settings in [0, 1): a momentum of 1 or more never forgets (the model runs away), a negative one inverts.
UNIT_INTERVAL = ("server_momentum", "beta_1", "beta_2")
#: Settings that must be positive (FedOpt's ``tau`` keeps the adaptive step finite).
POSITIVE = ("tau",)
#: Settings that must not be negative (a negative proximal term pushes clients away from the global model;
#: a negative q inverts QFedAvg's fairness weighting).
NON_NEGATIVE = ("proximal_mu", "q")
#: Fractions of the nodes sampled: 0 leaves the round to the minimum count alone, outside [0, 1] is no fraction.
FRACTIONS = ("fraction_train", "fraction_fit")

MAX_SHOWN = 60  # settings printed (a recorded map may be hostile: bounded)


def read_settings(ledger: Ledger) -> tuple[str, dict[str, Any] | None, str]:
    """(strategy class named by the genesis, its recorded settings or ``None``, why they are not usable)."""
    from flower_chain.audit.inputs import read_config

    try:
        genesis = read_genesis(ledger)
    except LedgerError as e:
        return "", None, f"the genesis entry cannot be read ({safe_text(e, 200)})"
    config, why = read_config(ledger, genesis)
    return genesis.strategy, config, why


def _number(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def settings_findings(config: Mapping[str, Any]) -> list[str]:
    """One line per recorded setting that voids or inverts the clients' contributions (a wrapped strategy's
    settings, ``strategy.<name>``, are judged by the same rules)."""
    out = []
    for name, value in config.items():
        base = str(name).rsplit(".", 1)[-1]
        x = _number(value)
        shown = f"{safe_text(name, 80)} = {safe_text(value, 40)}"
        if x is None:
            continue
        if not math.isfinite(x):
            out.append(f"{shown}: not a finite number (the aggregate is NaN or infinite)")
        elif base in STEP and x <= 0:
            out.append(
                f"{shown}: "
                + (
                    "voids every client's contribution (the model never moves)"
                    if x == 0
                    else "inverts every client's contribution (the model moves against them)"
                )
            )
        elif base in UNIT_INTERVAL and not 0 <= x < 1:
            out.append(
                f"{shown}: outside [0, 1): "
                + ("inverts past updates" if x < 0 else "the server's momentum never decays (the model runs away)")
            )
        elif base in POSITIVE and x <= 0:
            out.append(f"{shown}: must be positive (the adaptive step divides by it)")
        elif base in NON_NEGATIVE and x < 0:
            out.append(f"{shown}: negative, inverts what it weighs")
        elif base in FRACTIONS and not 0 < x <= 1:
            out.append(
                f"{shown}: "
                + ("samples no node by fraction (only the minimum count)" if x == 0 else "not a fraction in (0, 1]")
            )
    return out


def settings_text(strategy: str, config: Mapping[str, Any] | None, why: str) -> str:
    """The recorded settings on one line (``name=value, ...``), or why they are not shown."""
    if config is None:
        return f"{safe_text(strategy, 80)}: settings not shown ({why})"
    items = sorted(config.items(), key=lambda kv: str(kv[0]))
    text = ", ".join(f"{safe_text(k, 80)}={safe_text(v, 40)}" for k, v in items[:MAX_SHOWN])
    more = f", ... ({len(items) - MAX_SHOWN} more)" if len(items) > MAX_SHOWN else ""
    return f"{safe_text(strategy, 80)}({text}{more})"

"""The server strategy's own state, as named arrays the ledger can store and a resume can restore.

Some strategies learn across rounds on the server: FedAdam, FedYogi and
FedAdagrad keep moment estimates (``m_t``, ``v_t``), FedAvgM a momentum vector,
the adaptive-clipping DP wrappers a clipping norm. A run resumed from the
ledger must continue with that state, or it trains a different model than the
uninterrupted run would have. After every train round, :class:`LedgerStrategy`
stores the state in the blob store and records its array digest in the
block header (``state_after``, docs/ledger-format.md §4); ``--resume`` loads it
back, digest checked.

What counts as state, for the wrapped strategy and every strategy it wraps in
turn (``.strategy``):

* a strategy of your own defines ``state_dict() -> dict[str, array or number]``
  and ``load_state_dict(state)``, as in PyTorch; or
* the attributes Flower's strategies keep across rounds, when set:
  ``m_t``, ``v_t``, ``momentum_vector``, ``clipping_norm``. The model a
  strategy remembers (``current_arrays``) is not state here: ``configure_train``
  sets it from the global model, which the resume restores.

Names in the stored list are ``<level>/<attribute>/<kind>[/<key>]``: level 0 is
the strategy LedgerStrategy wraps, 1 the one inside it; kind is ``array``,
``dict``, ``list`` or ``scalar`` (a 0-d array), so the values come back in the
container they came from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from flower_chain.ledger.errors import LedgerError
from flower_chain.ledger.text import is_decimal

STATE_ATTRS = ("m_t", "v_t", "momentum_vector", "clipping_norm")
NamedArrays = Sequence[tuple[str, np.ndarray]]


class StateError(LedgerError):
    """The stored strategy state does not fit the strategy it is restored into."""


def _levels(strategy: Any) -> list[Any]:
    out, seen = [], set()
    while strategy is not None and id(strategy) not in seen:
        out.append(strategy)
        seen.add(id(strategy))
        strategy = getattr(strategy, "__dict__", {}).get("strategy")
    return out


def _flatten(prefix: str, value: Any) -> list[tuple[str, np.ndarray]]:
    if isinstance(value, np.ndarray):
        return [(f"{prefix}/array", value)]
    if isinstance(value, dict):
        return [(f"{prefix}/dict/{k}", np.asarray(v)) for k, v in value.items()]
    if isinstance(value, (list, tuple)):
        return [(f"{prefix}/list/{i}", np.asarray(v)) for i, v in enumerate(value)]
    if isinstance(value, (bool, int, float, np.number)):
        return [(f"{prefix}/scalar", np.asarray(value))]
    raise StateError(
        f"strategy state {prefix!r} has a value of type {type(value).__name__}, which the ledger "
        "cannot store: use arrays, dicts or lists of arrays, or numbers"
    )


def strategy_state(strategy: Any) -> list[tuple[str, np.ndarray]]:
    """The state of ``strategy`` and of the strategies it wraps, as (name, array) pairs (empty if none)."""
    named: list[tuple[str, np.ndarray]] = []
    for level, s in enumerate(_levels(strategy)):
        if callable(getattr(s, "state_dict", None)) and callable(getattr(s, "load_state_dict", None)):
            items: Iterable[tuple[Any, Any]] = dict(s.state_dict()).items()
        else:
            attrs = getattr(s, "__dict__", {})
            items = [(a, attrs[a]) for a in STATE_ATTRS if attrs.get(a) is not None]
        for attr, value in items:
            if "/" in str(attr):
                raise StateError(f"strategy state name {attr!r} must not contain '/'")
            named += _flatten(f"{level}/{attr}", value)
    return named


def load_strategy_state(strategy: Any, named: NamedArrays) -> None:
    """Put state saved by :func:`strategy_state` back into ``strategy`` (and the strategies it wraps)."""
    per_level: dict[int, dict[str, Any]] = {}
    for name, arr in named:
        parts = name.split("/", 3)
        if len(parts) < 3 or not is_decimal(parts[0]):
            raise StateError(f"stored strategy state has an unreadable name {name!r}")
        level, attr, kind = int(parts[0]), parts[1], parts[2]
        slot = per_level.setdefault(level, {})
        if kind == "array":
            slot[attr] = np.array(arr)
        elif kind == "scalar":
            slot[attr] = np.asarray(arr).item()
        elif kind == "dict" and len(parts) == 4:
            slot.setdefault(attr, {})[parts[3]] = np.array(arr)
        elif kind == "list" and len(parts) == 4 and parts[3] == str(len(slot.setdefault(attr, []))):
            slot[attr].append(np.array(arr))  # items are stored in order: index i is the i-th one
        else:
            raise StateError(f"stored strategy state has an unreadable name {name!r}")
    levels = _levels(strategy)
    for level, values in per_level.items():
        if level >= len(levels):
            raise StateError(
                f"the ledger holds state for {level + 1} nested strategies, but "
                f"{type(strategy).__name__} wraps only {len(levels)}: resume with the "
                "strategy the federation was started with"
            )
        s = levels[level]
        if callable(getattr(s, "state_dict", None)) and callable(getattr(s, "load_state_dict", None)):
            s.load_state_dict(values)
            continue
        unknown = set(values) - set(STATE_ATTRS)
        if unknown or not all(hasattr(s, a) for a in values):
            raise StateError(
                f"the stored state {sorted(values)} does not fit {type(s).__name__}: "
                "resume with the strategy the federation was started with"
            )
        for attr, value in values.items():
            setattr(s, attr, value)

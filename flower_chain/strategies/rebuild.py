"""Rebuilding a strategy from its recorded settings: the one rule the server's strategies and the auditor share.

Recorded settings are storage, hence hostile input: only values of plain type
are used, only the constructor's own parameters are passed, a recorded setting
is set afterwards only where the fresh strategy already has a plain attribute
of that name (never a method), and node counts are bounded.
"""

from __future__ import annotations

import inspect
from typing import Any

#: Most nodes the replay's stand-in grid or client manager lists (a recorded minimum above it is refused).
MAX_REPLAY_NODES = 1 << 20
_PLAIN = (bool, int, float, str)


class NotReplayable(Exception):
    """The recorded strategy cannot be rebuilt or replayed deterministically (the message says why)."""


def _bounded(name: str, config: dict[str, Any]) -> None:
    """Refuse recorded settings of a non-plain type or node counts no replay can stand in for."""
    for k, v in config.items():
        if not isinstance(k, str) or not isinstance(v, _PLAIN):
            raise NotReplayable(
                f"the recorded setting {str(k)[:40]!r} of {name} is a {type(v).__name__}, not a number, boolean or text"
            )
        if k.startswith("min_") and isinstance(v, int) and v > MAX_REPLAY_NODES:
            raise NotReplayable(
                f"the recorded setting {k}={v} of {name} exceeds the {MAX_REPLAY_NODES} nodes a replay stands in for"
            )


def construct(cls: type, config: dict[str, Any], **extra: Any) -> Any:
    """``cls(**kwargs)`` from the recorded settings its constructor takes, then the other recorded settings set.

    Setting attributes afterwards reproduces what ``__init__`` derived (FedAvg sets
    ``min_evaluate_nodes`` to 0 when ``fraction_evaluate`` is 0, and that is what was recorded);
    only an attribute the fresh strategy already holds as a plain value is set, never a method.
    """
    _bounded(cls.__name__, config)
    params = inspect.signature(cls.__init__).parameters  # type: ignore[misc]  # a class, not an instance
    kwargs = {k: v for k, v in config.items() if k in params and "." not in k and k not in extra}
    if "initial_clipping_norm" in params and "clipping_norm" in config:
        kwargs["initial_clipping_norm"] = config["clipping_norm"]
    try:
        obj = cls(**kwargs, **extra)
    except (TypeError, ValueError) as e:
        raise NotReplayable(f"{cls.__name__} cannot be rebuilt from the recorded settings: {e}") from e
    for k, v in config.items():
        if "." in k or k in kwargs:
            continue
        current = vars(obj).get(k, inspect)  # a sentinel: absent
        if current is inspect or not (current is None or isinstance(current, _PLAIN)):
            raise NotReplayable(
                f"{cls.__name__} has no plain setting {k[:40]!r} (the recorded settings are not this strategy's)"
            )
        setattr(obj, k, v)
    return obj

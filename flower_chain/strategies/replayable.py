"""Rebuilding the recorded strategy: the genesis names its class, the blob store holds its settings.

:func:`strategy_factory` returns a function making a fresh strategy configured
as recorded, for the Message API (``flwr.serverapp.strategy``, the bundled
app's partition-ordered variants, the differential-privacy wrappers without
noise, a user's class that declares itself replayable) and for Flower's legacy
API (``flwr.server.strategy``, what :class:`~flower_chain.strategies.LegacyLedgerStrategy`
wraps: :func:`legacy_factory`). Anything else raises :class:`NotReplayable`
with the reason, which the audit reports for every round.

Recorded settings are storage, hence hostile input: only values of plain type
are used, only the constructor's own parameters are passed, a recorded setting
is set afterwards only where the fresh strategy already has a plain attribute
of that name (never a method), and node counts are bounded.

Imports flwr lazily (inside the functions), never torch.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from flower_chain.ledger.errors import LedgerError
from flower_chain.strategies.rebuild import MAX_REPLAY_NODES as MAX_REPLAY_NODES  # re-exported
from flower_chain.strategies.rebuild import NotReplayable as NotReplayable  # re-exported
from flower_chain.strategies.rebuild import construct

#: Flower's Message-API strategies the replay rebuilds from their recorded settings.
BUNDLED = (
    "FedAvg",
    "FedProx",
    "FedAdam",
    "FedYogi",
    "FedAdagrad",
    "FedAvgM",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "MultiKrum",
    "Bulyan",
    "QFedAvg",
)
#: Flower's differential-privacy wrappers: replayable without noise, when the wrapped strategy is recorded.
DP_WRAPPERS = (
    "DifferentialPrivacyServerSideFixedClipping",
    "DifferentialPrivacyClientSideFixedClipping",
    "DifferentialPrivacyServerSideAdaptiveClipping",
    "DifferentialPrivacyClientSideAdaptiveClipping",
)
#: Flower's legacy strategies (``flwr.server.strategy``) the replay rebuilds (LegacyLedgerStrategy ledgers).
LEGACY_BUNDLED = (
    "FedAvg",
    "FedProx",
    "FedAdam",
    "FedYogi",
    "FedAdagrad",
    "FedAvgM",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "Bulyan",
    "QFedAvg",
    "FaultTolerantFedAvg",
)
#: Legacy strategies that need the initial model at construction (``initial_parameters``).
LEGACY_NEEDS_MODEL = ("FedAdam", "FedYogi", "FedAdagrad", "FedAvgM")
#: Settings only Flower's legacy strategies (``flwr.server.strategy``, LegacyLedgerStrategy) have.
LEGACY_SETTINGS = ("fraction_fit", "min_fit_clients", "min_available_clients", "accept_failures")
#: The class attribute a strategy of your own sets to ``True`` to be replayed (with ``from_ledger_config``).
REPLAYABLE_ATTR = "flower_chain_replayable"


class AuditInputError(LedgerError):
    """The audit cannot start: a strategy class that cannot be imported, a ledger without a genesis."""


def load_class(spec: str) -> type:
    """Import ``module:Class`` (or ``module.Class``); raise :class:`AuditInputError` with what to fix."""
    mod, sep, name = spec.partition(":")
    if not sep:
        mod, _, name = spec.rpartition(".")
    if not mod or not name:
        raise AuditInputError(f"--strategy-class {spec!r}: write it as package.module:ClassName")
    try:
        cls = getattr(importlib.import_module(mod), name)
    except (ImportError, AttributeError) as e:
        raise AuditInputError(f"cannot import the strategy class {spec!r}: {e}") from e
    if not isinstance(cls, type):
        raise AuditInputError(f"{spec!r} is not a class")
    return cls


def is_legacy(config: dict[str, Any]) -> bool:
    """Whether recorded settings are those of a legacy strategy (``flwr.server.strategy``)."""
    return bool(set(config) & set(LEGACY_SETTINGS))


def _nested(config: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The settings of the strategy a wrapper wraps: keys ``strategy.<name>`` without the prefix (its class
    name, ``strategy.class``, names it and is not a setting)."""
    return {k[len(prefix) :]: v for k, v in config.items() if k.startswith(prefix) and k != prefix + "class"}


def _flwr_class(name: str, legacy: bool = False) -> type:
    if legacy:
        import flwr.server.strategy as legacy_strategies

        return getattr(legacy_strategies, name)
    import flwr.serverapp.strategy as flwr_strategies

    return getattr(flwr_strategies, name)


def _custom(cls: type, config: dict[str, Any]) -> Callable[[], Any]:
    """A factory calling ``cls.from_ledger_config``; whatever that raises becomes :class:`NotReplayable`.

    Called once here, so a class that cannot be rebuilt from the recorded settings is named before any round.
    """
    if not getattr(cls, REPLAYABLE_ATTR, False) or not callable(getattr(cls, "from_ledger_config", None)):
        raise NotReplayable(
            f"{cls.__module__}.{cls.__name__} does not declare itself replayable (set the class "
            f"attribute {REPLAYABLE_ATTR} = True and define the classmethod from_ledger_config)"
        )

    def make() -> Any:
        try:
            return cls.from_ledger_config(dict(config))
        except NotReplayable:
            raise
        except Exception as e:  # noqa: BLE001 - a user's code: its failure is a finding, never a traceback
            raise NotReplayable(
                f"{cls.__module__}.{cls.__name__}.from_ledger_config fails on the recorded settings: "
                f"{type(e).__name__}: {str(e)[:200]}"
            ) from e

    make()
    return make


def strategy_factory(name: str, config: dict[str, Any], classes: Sequence[type] = ()) -> Callable[[], Any]:
    """A function returning a fresh Message-API strategy ``name`` configured as recorded.

    Raises :class:`NotReplayable` (a legacy ledger goes to :func:`legacy_factory` instead).
    """
    from flower_chain.strategies.ordered import ORDERED

    custom = {c.__name__: c for c in classes}
    if name in custom:
        return _custom(custom[name], config)
    if is_legacy(config) and (name in BUNDLED or name in DP_WRAPPERS):
        raise NotReplayable(
            f"the ledger was written through Flower's legacy API (flwr.server.strategy.{name}): "
            "replay it with legacy_factory"
        )
    if name in ORDERED:
        return _custom(ORDERED[name], config)
    if name in BUNDLED:
        cls = _flwr_class(name)
        construct(cls, config)
        return lambda: construct(cls, config)
    if name in DP_WRAPPERS:
        noisy = [k for k in ("noise_multiplier", "clipped_count_stddev") if config.get(k)]
        if noisy:
            raise NotReplayable(
                f"{name} adds random noise ({', '.join(f'{k}={config[k]}' for k in noisy)}): "
                "its aggregate cannot be recomputed"
            )
        inner_name = config.get("strategy.class")
        if not isinstance(inner_name, str):
            raise NotReplayable(
                f"the genesis configuration of {name} does not record the strategy it wraps "
                "(no 'strategy.class' setting)"
            )
        inner = strategy_factory(inner_name, _nested(config, "strategy."), classes)
        cls = _flwr_class(name)
        construct(cls, config, strategy=inner())
        return lambda: construct(cls, config, strategy=inner())
    raise NotReplayable(
        f"{name or 'the recorded strategy'} is neither one of Flower's strategies the replay "
        "knows nor a strategy class given with --strategy-class that declares itself replayable"
    )


def legacy_factory(name: str, config: dict[str, Any], classes: Sequence[type] = ()) -> Callable[[Any], Any]:
    """A function ``make(initial_parameters)`` returning a fresh legacy strategy ``name`` configured as recorded.

    ``initial_parameters`` (Flower ``Parameters``, the round-1 model recorded in the ledger) is passed to
    the strategies that take it (FedOpt's family and FedAvgM). Raises :class:`NotReplayable`.
    """
    custom = {c.__name__: c for c in classes}
    if name in custom:
        make = _custom(custom[name], config)
        return lambda initial: make()
    if name not in LEGACY_BUNDLED:
        raise NotReplayable(
            f"{name or 'the recorded strategy'} (Flower's legacy API) is neither one of the legacy "
            f"strategies the replay knows ({', '.join(LEGACY_BUNDLED)}) nor a strategy class given "
            "with --strategy-class that declares itself replayable"
        )
    cls = _flwr_class(name, legacy=True)

    def make(initial: Any) -> Any:
        extra = {"initial_parameters": initial} if name in LEGACY_NEEDS_MODEL else {}
        return construct(cls, config, **extra)

    return make


@contextlib.contextmanager
def quiet_flwr() -> Iterator[None]:
    """Flower's strategies log every configure/aggregate call; a replay of hundreds of rounds stays quiet."""
    logger = logging.getLogger("flwr")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)

"""Will this run be auditable? The one warning line a server logs when it starts a ledger that will not be.

:func:`why_not_auditable` answers with the same rules ``flower-chain ledger
audit`` applies (:mod:`flower_chain.strategies.replayable`): the strategy must be
one the replay rebuilds from its recorded settings, and the accepted updates
must be kept. It returns the warning (with the option that changes it) or
``None``. The wrappers call it once, when they start a new ledger.

Imports flwr only when the strategy is rebuilt (it is the strategy's own library).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flower_chain.strategies.replayable import NotReplayable, is_legacy, legacy_factory, quiet_flwr, strategy_factory

#: The start of the warning line.
PREFIX = "flower-chain: this run will not be auditable"


def why_not_auditable(strategy: Any, config: Mapping[str, Any], store_client_updates: bool | None) -> str | None:
    """The warning line for a run of ``strategy`` (recorded ``config``) that ``ledger audit`` cannot re-derive.

    Parameters
    ----------
    strategy : object
        The wrapped strategy (Message API or legacy).
    config : Mapping
        Its settings as the genesis records them (``strategy_config(strategy)``).
    store_client_updates : bool, optional
        The wrapper's setting: ``False`` keeps no update to replay.

    Returns
    -------
    str or None
        ``None`` when every round can be re-derived (a strategy of your own that declares itself
        replayable needs ``--strategy-class`` at audit time, which the line does not warn about).
    """
    if store_client_updates is not None and not store_client_updates:
        return (
            f"{PREFIX}: store_client_updates=False keeps no client update, so `flower-chain ledger audit` "
            "re-derives no round (NOT AUDITED); leave store_client_updates unset (every round's updates are "
            "kept, sealed to the auditor with audit_key=) to make it auditable"
        )
    cls = type(strategy)
    name = cls.__name__
    settings = dict(config)
    try:
        own = [cls] if getattr(cls, "flower_chain_replayable", False) else []
        with quiet_flwr():  # rebuilding a strategy makes Flower log its settings: not at the server's start
            (legacy_factory if is_legacy(settings) else strategy_factory)(name, settings, own)
    except NotReplayable as e:
        return (
            f"{PREFIX} ({e}); use one of Flower's strategies, or declare {cls.__module__}.{name} replayable "
            "(class attribute flower_chain_replayable = True and a from_ledger_config classmethod)"
        )
    except Exception as e:  # noqa: BLE001 - a strategy that cannot be rebuilt at all is not auditable either
        return (
            f"{PREFIX} ({name} cannot be rebuilt from its recorded settings: {type(e).__name__}: {e}); "
            f"declare {cls.__module__}.{name} replayable with a from_ledger_config classmethod"
        )
    return None

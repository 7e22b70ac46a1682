"""The replies of a node that does not sign an instruction: error replies, not a traceback per message.

* :func:`keyless_reply`: the node has no usable signing key.
* :func:`refused_reply`: the instruction's ledger context is unusable — a field missing or of the wrong
  type, or an array digest version (``flower-chain.digest-version``) this code does not compute. The
  client never guesses a version: digests under another version than the ledger's would be recorded
  as ``digest-mismatch`` (or, for the model received, compared with the wrong head). The problem is a
  :class:`ContextUnusable` finding (logged, and with receipts kept appended to ``errors.log`` and
  counted like every receipt error), and the reply is an error whose reason names it, so the server
  records a ``client-error`` that says why.
* :func:`refuse`: the same for any other finding that keeps the node from signing — the server names
  another parent than the head block the client verified (:class:`~flower_chain.clients.findings.ParentNotHead`:
  a signature would bind a history it was not shown), or announces other settings than the node pins
  (:class:`~flower_chain.clients.findings.SettingsNotPinned`, :func:`settings_refusal`).
"""

from __future__ import annotations

from dataclasses import dataclass
from logging import ERROR

from flwr.app import Error, Message
from flwr.common.constant import ErrorCode
from flwr.common.logger import log as flwr_log

from flower_chain.clients.findings import Finding, SettingsNotPinned
from flower_chain.clients.receipts import ReceiptKeeper, origin_for
from flower_chain.ledger.errors import KeyFileError
from flower_chain.ledger.text import safe_text
from flower_chain.wire import ContextProblem, LedgerContext


@dataclass(frozen=True)
class ContextUnusable(Finding):
    """The server's ledger context cannot be used (``problem`` names the field, what was sent and why)."""

    problem: ContextProblem

    @property
    def message(self) -> str:
        p = self.problem
        return (
            f"the server's ledger context is unusable ({p.field} = {p.value}): {p.reason}; "
            "this client does not sign the instruction"
        )


def refused_reply(msg: Message, problem: ContextProblem, keeper: ReceiptKeeper | None, reported: dict) -> Message:
    """The error reply to an instruction whose ledger context is unusable; the finding is reported first."""
    return refuse(msg, problem.federation_id, ContextUnusable(problem), keeper, reported)


#: Per-log counter (receipt store): the log announced a settings digest (v2 statements) at least once.
SETTINGS_ANNOUNCED = "settings-announced"


def settings_refusal(ctx: LedgerContext, pin: bytes | None, keeper: ReceiptKeeper | None) -> Finding | None:
    """Why this node does not sign for the settings the context announces, or ``None``.

    The digest differs from the node's pin (or none is announced to a pinned node); or, with receipts, the
    log announced one before and now none — stripped in transit or a server gone back to v1 statements, whose
    ``checkpoint-size``/``pending-round`` travel unsigned. Each log's first announcement is remembered.
    """
    if pin is not None and ctx.settings_digest != pin:
        return SettingsNotPinned(ctx.settings_digest, pin)
    if keeper is None:
        return None
    origin = origin_for(ctx.federation_id)
    announced = keeper.store.counters(origin).get(SETTINGS_ANNOUNCED, 0) > 0
    if ctx.settings_digest is None:
        return SettingsNotPinned(None, None) if announced else None
    if not announced:
        with keeper.store.transaction(write=True):
            keeper.store.bump(origin, SETTINGS_ANNOUNCED)
    return None


def refuse(msg: Message, federation_id: str, finding: Finding, keeper: ReceiptKeeper | None, reported: dict) -> Message:
    """The error reply to an instruction this node does not sign, because of ``finding`` (reported first).

    With a receipt keeper the finding is counted and appended to the federation's ``errors.log`` (the
    counter travels, signed, with the node's next replies); without one it is one ERROR line through
    Flower's logger per distinct problem.
    """
    if keeper is not None:
        with keeper.store.transaction(write=True):
            keeper._report(federation_id, [finding])  # noqa: SLF001 - the keeper's one reporting path
    elif reported.get((federation_id, finding.message)) is None:
        reported[(federation_id, finding.message)] = -1
        flwr_log(ERROR, "flower-chain: %s", safe_text(finding.message, 500))
    return Message(
        Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"flower-chain: {safe_text(finding.message, 500)}"),
        reply_to=msg,
    )


def keyless_reply(msg: Message, ctx: LedgerContext, error: KeyFileError, reported: dict) -> Message:
    """The reply of a node that cannot sign: an error reply (the server records ``client-error``).

    Flower logs the full traceback of every exception a ClientApp raises, once per message; a node without a
    key would print one per instruction. Instead the problem is one ERROR line through Flower's logger, once
    per round (train and evaluate of a round share it), and the reply is the error Flower itself would have
    sent, with the key problem as its reason.
    """
    seen = (ctx.federation_id, str(error))
    if reported.get(seen) != ctx.round:
        reported[seen] = ctx.round
        flwr_log(
            ERROR,
            "flower-chain: this node cannot sign round %d, its replies are errors (the server records "
            "client-error): %s",
            ctx.round,
            error,
        )
    return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"KeyFileError: {error}"), reply_to=msg)

"""Re-sign a reply's update statement with some fields changed (what a client that signs them would send)."""

from __future__ import annotations

import dataclasses

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from flwr.app import Message

from flower_chain.ledger.entries import UpdateStatement
from flower_chain.wire import SIG_RECORD, SIGNATURE, STATEMENT


def statement_of(reply: Message) -> UpdateStatement:
    return UpdateStatement.from_bytes(reply.content[SIG_RECORD][STATEMENT])


def resign(reply: Message, key: Ed25519PrivateKey, **changes) -> Message:
    """``reply`` with its statement's ``changes`` made and signed again by ``key`` (the reply is changed in place)."""
    statement = dataclasses.replace(statement_of(reply), **changes).to_bytes()
    reply.content[SIG_RECORD][STATEMENT] = statement
    reply.content[SIG_RECORD][SIGNATURE] = key.sign(statement)
    return reply

"""HTTP services for a flower-chain ledger: the C2SP tlog-tiles log server with its explorer page, and a
C2SP tlog-witness.

:mod:`flower_chain.serve.app` (Starlette) serves a ledger read-only; :mod:`flower_chain.witness.server`
cosigns checkpoints; :mod:`flower_chain.witness.client` is what a log server calls to obtain
cosignatures (it needs only the standard library).
"""

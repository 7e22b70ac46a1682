"""``python -m flower_chain.cli``: the ``flower-chain`` command."""

from flower_chain.cli import main

main()

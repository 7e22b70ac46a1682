"""A plain Flower App with no flower-chain: tests/test_swap_in.py applies the README's edits to it."""

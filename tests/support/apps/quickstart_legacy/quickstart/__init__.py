"""A plain Flower App with no flower-chain: tests/e2e/test_readme_recipes.py applies the README's diffs to a copy of
it (tests/e2e/test_swap_in.py the same edits programmatically)."""

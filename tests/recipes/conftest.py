"""Fixtures of the recipe tests: the small-vocabulary models of tests/small_vocab.py (best-of-n)."""

from small_vocab import small_model_dirs  # noqa: F401

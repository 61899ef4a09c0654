"""Fixtures of the recipe tests: the word-level models of tests/word_model.py (best-of-n)."""

from word_model import small_model_dirs  # noqa: F401

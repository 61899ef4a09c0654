"""Fixtures of the eval tests (defined in tests/word_model.py, shared with tests/models)."""

from word_model import _one_thread, small_model_dirs  # noqa: F401

"""Fixtures of the generation tests (defined in tests/word_model.py, shared with tests/eval)."""

from word_model import _one_thread, small_model_dirs  # noqa: F401

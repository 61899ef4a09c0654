"""Fixtures of the RL tests (defined in tests/word_model.py, shared with the RL recipe tests)."""

from word_model import _one_thread, word_model_dir  # noqa: F401 - pytest fixtures

"""Fixtures of the generation tests (defined in tests/small_vocab.py, shared with tests/eval)."""

from small_vocab import one_thread as _one_thread  # noqa: F401
from small_vocab import small_model_dirs  # noqa: F401

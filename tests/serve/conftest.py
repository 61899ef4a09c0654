"""Fixtures of the serve tests: the tiny Llama of tests/conftest.py loaded once per session
(shared by every server: a server owns a scheduler, its thread and limits, not the weights),
a live server with an API key, and an openai client for it."""

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")

import openai  # noqa: E402
from serving import API_KEY, tiny_server  # noqa: E402

from alignlab.config import ModelConfig  # noqa: E402
from alignlab.models.loading import load_model, load_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir))
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer)
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def server(tiny_lm):
    """(base URL, ServedModel) of a server with API key API_KEY and default limits."""
    with tiny_server(tiny_lm) as running:
        yield running


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=API_KEY, max_retries=0, timeout=60)

"""Fixtures of the judge tests: a tiny Llama judge whose verdicts are far from 0.5 (weights
drawn with a wide init, so that parity and padding tests compare probabilities that differ
from item to item), and the scripted stub server of `judging`."""

import pytest
from judging import stub_server

from alignlab.config import ModelConfig
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.models.tiny import build_tiny_model, tiny_llama_config


@pytest.fixture(scope="session")
def judge_model_dir(tmp_path_factory, tiny_tokenizer):
    config = tiny_llama_config(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4)
    config.initializer_range = 0.5  # the default 0.02 puts every verdict within 1e-2 of 0.5
    return build_tiny_model(tmp_path_factory.mktemp("judges") / "judge", tiny_tokenizer, config)


@pytest.fixture(scope="session")
def judge_lm(judge_model_dir):
    cfg = ModelConfig(path=str(judge_model_dir))
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer)
    model.eval()
    return model, tokenizer


@pytest.fixture
def stub():
    with stub_server() as running:
        yield running

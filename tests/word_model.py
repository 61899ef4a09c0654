"""Shared by the RL, eval and generation tests: a word-level tokenizer of seven tokens and
1-layer models whose next-token distributions are far from uniform, so sampling, rewards and
updates are fast and every response of up to three tokens can be enumerated."""

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from alignlab.models.tiny import build_tiny_model, tiny_llama_config

WORDS = {"<|endoftext|>": 0, "<|im_end|>": 1, "<pad>": 2, "<unk>": 3, "a": 4, "b": 5, "c": 6}


def word_tokenizer():
    tokenizer = Tokenizer(models.WordLevel(WORDS, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token="<|endoftext|>",
        pad_token="<pad>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_end|>"],
    )


def build_word_model(out_dir, seed=1, init_std=0.5):
    tokenizer = word_tokenizer()
    config = tiny_llama_config(
        len(tokenizer), hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1
    )
    config.initializer_range = init_std
    return build_tiny_model(out_dir, tokenizer, config, seed=seed)


@pytest.fixture(scope="session")
def word_model_dir(tmp_path_factory):
    return build_word_model(tmp_path_factory.mktemp("rl-models") / "policy")


@pytest.fixture(scope="session")
def small_model_dirs(tmp_path_factory):
    """Two word-level models with different seeds: (policy, reference)."""
    root = tmp_path_factory.mktemp("small-models")
    return build_word_model(root / "policy", seed=1), build_word_model(root / "ref", seed=2)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread while a test module runs (module scope, so that its module
    fixtures run with it too): the models are tiny, so threads only add synchronisation,
    which gets very slow when another process shares the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Shared by the RL tests (tests/rl, tests/recipes RL recipes): a word-level tokenizer over a few tokens and a 1-layer model whose
next-token distributions are far from uniform, so sampling, rewards and updates are fast."""

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


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

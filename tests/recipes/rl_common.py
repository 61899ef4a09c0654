"""Shared by the RL recipe tests (GRPO, RLOO, REINFORCE++): a word-level tokenizer over a few tokens and a 1-layer model whose
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


PROMPTS = ["a b", "b c", "c a b", "b"]

REWARD_PY = '''
def contains(prompt, response, target="a"):
    """1 when the response contains the target word (a row's `target` key), else 0."""
    return float(target in response.split())


def fraction(prompt, response, target="a"):
    words = response.split()
    return sum(w == target for w in words) / max(len(words), 1)
'''


@pytest.fixture(scope="session")
def rl_assets(tmp_path_factory):
    """(model folder, prompts file with a `target` extra key, reward .py file)."""
    import json

    root = tmp_path_factory.mktemp("rl-assets")
    model_dir = build_word_model(root / "policy")
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": PROMPTS[i % 4], "target": "a"}) + "\n" for i in range(16))
    )
    reward = root / "reward.py"
    reward.write_text(REWARD_PY)
    return model_dir, prompts, reward


def rl_overrides(assets, out, *extra):
    model_dir, prompts, reward = assets
    return [
        f"model.path={model_dir}",
        f"data.path={prompts}",
        f"rl.reward={reward}:contains",
        f"train.output_dir={out}",
        "train.lr=3e-3",
        "train.max_steps=8",
        "train.progress=false",
        "train.tensorboard=false",
        "rl.max_new_tokens=8",
        "rl.prompts_per_step=4",
        "rl.samples_per_prompt=8",
        *extra,
    ]


def metric(out, key):
    import json

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r[key]) for r in rows if key in r]


def reward_rises(out, steps=3):
    values = [v for _, v in metric(out, "train/reward_mean")]
    early, late = sum(values[:steps]) / steps, sum(values[-steps:]) / steps
    return early, late


RUNNER = """
import importlib, sys
from alignlab.config import load_config
module = importlib.import_module("alignlab.recipes." + sys.argv[1])
module.run(load_config(getattr(module, sys.argv[2]), None, sys.argv[3:]))
"""


def launch(recipe, config_name, args, crash=None):
    import os
    import subprocess
    import sys

    env = {**os.environ, "ALIGNLAB_CRASH": crash or "", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", RUNNER, recipe, config_name, *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def assert_same_weights(a, b, atol=1e-6):
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], atol=atol, rtol=0, msg=key)

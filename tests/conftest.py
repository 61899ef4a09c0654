"""Shared fixtures: a tiny tokenizer, a tiny Llama model folder and a small SFT data file.

Everything is built locally from configs (no downloads) and loaded back with
`from_pretrained`, the same path a hub id takes.
"""

import json

import pytest

from alignlab.models.tiny import build_tiny_model, tiny_llama_config, train_tokenizer

WORDS = "alpha beta gamma delta what is the capital of plus equals answer sorry cannot help".split()


def sft_rows(n=48):
    rows = []
    for i in range(n):
        a, b = i % 7, (i * 3) % 5
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {a} plus {b}?"},
                    {"role": "assistant", "content": f"{a} plus {b} equals {a + b}."},
                ]
            }
        )
    return rows


@pytest.fixture(scope="session")
def tiny_tokenizer():
    texts = [" ".join(WORDS)] * 4 + [m["content"] for r in sft_rows() for m in r["messages"]]
    return train_tokenizer(texts, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    out = tmp_path_factory.mktemp("models") / "tiny-llama"
    config = tiny_llama_config(len(tiny_tokenizer), hidden_size=32, num_layers=2, num_heads=4)
    return build_tiny_model(out, tiny_tokenizer, config, seed=0)


@pytest.fixture(scope="session")
def sft_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sft.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in sft_rows()))
    return path


@pytest.fixture(scope="session")
def three_way_pairs(tmp_path_factory):
    """Every pair of 3 answers per prompt labelled (right > off by one > refusal), 4 prompts:
    12 pairs, for the readings of pairs as per-answer win rates."""
    rows = []
    for i in range(4):
        right, off, refuse = f" {i} plus 1 equals {i + 1}.", f" {i} plus 1 equals {i}.", " no"
        for chosen, rejected in ((right, off), (right, refuse), (off, refuse)):
            rows.append({"prompt": f"What is {i} plus 1?", "chosen": chosen, "rejected": rejected})
    path = tmp_path_factory.mktemp("data") / "three_way_pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path

"""Chain of Hindsight end to end: pairs rewritten to SFT examples, trained by the SFT loop."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.config import load_config
from alignlab.data.schema import DataError
from alignlab.recipes import coh


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_coh_rewrites_pairs_and_trains_with_sft(tiny_model_dir, tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(
        "".join(
            json.dumps({"prompt": f"What is {i} plus 1?", "chosen": f" {i} plus 1 equals {i + 1}.",
                        "rejected": " sorry cannot help"}) + "\n"
            for i in range(8)
        )
    )  # fmt: skip
    out = tmp_path / "run"
    args = [
        f"model.path={tiny_model_dir}", f"data.path={pairs}", f"train.output_dir={out}",
        "train.max_steps=4", "train.micro_batch_size=4", "train.lr=3e-3",
        "train.progress=false", "train.tensorboard=false", "order=positive_first",
    ]  # fmt: skip
    final = coh.run(load_config(coh.CoHConfig, None, args))
    records = [json.loads(line) for line in (out / "coh_train.jsonl").read_text().splitlines()]
    assert len(records) == 16
    assert records[0]["prompt"] == "What is 0 plus 1?\nA helpful answer:"
    assert records[1]["completion"] == " sorry cannot help"
    assert records[1]["source"].endswith("pairs.jsonl:1")
    losses = [
        json.loads(line)["train/loss"]
        for line in (out / "metrics.jsonl").read_text().splitlines()
        if "train/loss" in line
    ]
    assert len(losses) == 4 and losses[-1] < losses[0]
    AutoModelForCausalLM.from_pretrained(final)
    # inference conditions on the positive feedback through the saved chat template
    chat = [{"role": "user", "content": "What is 2 plus 1?"}]
    saved = AutoTokenizer.from_pretrained(final)
    prompt = saved.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    assert "What is 2 plus 1?\n\nA helpful answer:" in prompt
    assert "helpful" not in saved.apply_chat_template(chat, tokenize=False)


def test_coh_refuses_non_preference_data(tiny_model_dir, tmp_path):
    sft = tmp_path / "sft.jsonl"
    sft.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    cfg = load_config(
        coh.CoHConfig, None,
        [f"model.path={tiny_model_dir}", f"data.path={sft}", f"train.output_dir={tmp_path / 'run'}"],
    )  # fmt: skip
    with pytest.raises(DataError, match="preference pairs"):
        coh.run(cfg)

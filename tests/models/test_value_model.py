"""Value models (PPO critics): per-token values in the rollout layout, head initialisation,
the vocabulary check."""

import pytest
import torch
import word_model
from transformers import AutoModelForSequenceClassification

from alignlab.config import ModelConfig
from alignlab.data.collate import collate
from alignlab.models.lm import TokenLogProbs
from alignlab.models.loading import load_tokenizer
from alignlab.models.reward import load_reward_model, score_head
from alignlab.models.value import TokenValues, load_value_model
from alignlab.ops import IGNORE_INDEX
from alignlab.training.checkpoint import save_reward_folder
from alignlab.training.distributed import Runtime

CPU = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
_one_thread = word_model._one_thread  # fixtures of the word-level test model
word_model_dir = word_model.word_model_dir


def rows(tokenizer, pairs):
    """prompt + response rows as `response_rows` makes them: only the response labelled."""
    out = []
    for prompt, response in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        r = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        out.append({"input_ids": p + r, "labels": [IGNORE_INDEX] * len(p) + r})
    return out


def test_values_line_up_with_the_response_positions(word_model_dir):
    cfg = ModelConfig(path=str(word_model_dir))
    tokenizer = load_tokenizer(cfg)
    model = load_value_model(cfg, tokenizer, init="normal", seed=3).eval()
    pairs = [("a b", "c a"), ("b", "a b c b"), ("c a b", "b")]
    batch = collate(rows(tokenizer, pairs), tokenizer.pad_token_id)
    with torch.no_grad():
        values = TokenValues(model)(batch)  # (B, T)
    mask = TokenLogProbs.mask(batch)
    for b, (prompt, response) in enumerate(pairs):
        prompt_len = len(prompt.split())
        length = prompt_len + len(response.split()) + 1  # + EOS
        # position t is set exactly where token t + 1 is a response token
        assert mask[b].nonzero().squeeze(-1).tolist() == list(range(prompt_len - 1, length - 1))
        assert torch.all(values[b][~mask[b]] == 0)
        for t in range(prompt_len - 1, length - 1):
            # V(state before response token t + 1) = HF's own pooled forward on tokens 0..t
            prefix = batch["input_ids"][b, : t + 1].unsqueeze(0)
            with torch.no_grad():
                want = model(input_ids=prefix).logits[0, 0]
            torch.testing.assert_close(values[b, t], want, atol=1e-5, rtol=0)
    assert values[mask].abs().min() > 0


def test_head_init_and_reward_model_start(word_model_dir, tmp_path):
    cfg = ModelConfig(path=str(word_model_dir))
    tokenizer = load_tokenizer(cfg)
    # from a causal LM: "auto" and "zero" give a zero head (V = 0), "normal" a random one
    for init in ("auto", "zero"):
        assert torch.all(score_head(load_value_model(cfg, tokenizer, init=init)).weight == 0)
    assert score_head(load_value_model(cfg, tokenizer, init="normal")).weight.abs().sum() > 0
    # from a reward-model folder: "auto" keeps the reward head
    rm = load_reward_model(cfg, tokenizer, seed=5)
    folder = save_reward_folder(tmp_path / "rm", rm, tokenizer, CPU)
    critic = load_value_model(ModelConfig(path=str(folder)), tokenizer, init="auto")
    torch.testing.assert_close(score_head(critic).weight, score_head(rm).weight)
    zeroed = load_value_model(ModelConfig(path=str(folder)), tokenizer, init="zero")
    assert torch.all(score_head(zeroed).weight == 0)
    # the saved critic is a plain sequence-classification folder
    AutoModelForSequenceClassification.from_pretrained(folder)


def test_critic_with_another_vocabulary_is_refused(word_model_dir, tiny_model_dir):
    tokenizer = load_tokenizer(ModelConfig(path=str(word_model_dir)))
    with pytest.raises(ValueError, match="tokenizer differs"):
        load_value_model(ModelConfig(path=str(tiny_model_dir)), tokenizer)

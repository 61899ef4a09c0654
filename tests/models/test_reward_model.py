"""Reward models: last-real-token pooling, head init, plain HF save/reload, LoRA."""

import math

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from alignlab.config import LoraConfig, ModelConfig
from alignlab.models.loading import load_tokenizer
from alignlab.models.reward import (
    last_token_index,
    load_reward_model,
    reward_forward,
    reward_state_dict,
    score_head,
)
from alignlab.training.checkpoint import save_reward_folder
from alignlab.training.distributed import Runtime

CPU = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
TEXTS = ["alpha beta gamma", "what is the capital of delta", "sorry"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def padded(sequences, pad_id, width=None, left=False):
    width = width or max(map(len, sequences))
    ids = torch.full((len(sequences), width), pad_id)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq)
        mask[row, span] = 1
    return {"input_ids": ids, "attention_mask": mask}


def encode(tokenizer, texts, eos=False):
    out = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return [ids + [tokenizer.eos_token_id] for ids in out] if eos else out


@pytest.fixture(scope="module")
def rm_and_tokenizer(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir))
    tokenizer = load_tokenizer(cfg)
    return load_reward_model(cfg, tokenizer, seed=1).eval(), tokenizer


def test_last_token_index_right_and_left_padding():
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 0, 3, 3]
    with pytest.raises(ValueError, match="no real token"):
        last_token_index(torch.tensor([[1, 0], [0, 0]]))


def test_padding_invariance(rm_and_tokenizer):
    model, tokenizer = rm_and_tokenizer
    sequences = encode(tokenizer, TEXTS, eos=True)
    pad = tokenizer.pad_token_id
    with torch.no_grad():
        alone = torch.cat([reward_forward(model, padded([s], pad)) for s in sequences])
        right = reward_forward(model, padded(sequences, pad))
        wider = reward_forward(model, padded(sequences, pad, width=20))
    torch.testing.assert_close(right, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(wider, alone, atol=1e-5, rtol=0)
    assert len(set(alone.tolist())) == 3  # the rewards do depend on the sequence


def test_pooling_ignores_pad_ids_when_pad_is_eos(rm_and_tokenizer):
    """With pad == EOS and sequences ending in EOS, transformers' own pooling (last token
    that is not the pad id) reads the token before the EOS; ours reads the EOS."""
    model, tokenizer = rm_and_tokenizer
    eos = tokenizer.eos_token_id
    sequences = encode(tokenizer, TEXTS, eos=True)
    batch = padded(sequences, eos)  # padded with EOS ids
    with torch.no_grad():
        ours = reward_forward(model, batch)
        alone = torch.cat([reward_forward(model, padded([s], eos)) for s in sequences])
        before_eos = torch.cat([reward_forward(model, padded([s[:-1]], eos)) for s in sequences])
        model.config.pad_token_id = eos
        try:
            hf = model(**batch).logits.squeeze(-1)
        finally:
            model.config.pad_token_id = tokenizer.pad_token_id
    torch.testing.assert_close(ours, alone, atol=1e-5, rtol=0)
    torch.testing.assert_close(hf, before_eos, atol=1e-5, rtol=0)  # HF's pooling is off by one
    assert not torch.allclose(hf, ours)


def test_head_init_is_seeded_with_std_one_over_sqrt_hidden(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir))
    tokenizer = load_tokenizer(cfg)
    heads = [score_head(load_reward_model(cfg, tokenizer, seed=s)).weight for s in (0, 0, 1)]
    hidden = heads[0].shape[-1]
    assert heads[0].shape == (1, hidden)
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2])
    expected = torch.randn((1, hidden), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(heads[0], expected / math.sqrt(hidden + 1))


def test_saved_reward_model_reloads_with_auto_class(rm_and_tokenizer, tmp_path):
    model, tokenizer = rm_and_tokenizer
    folder = save_reward_folder(tmp_path / "rm", model, tokenizer, CPU)
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    assert reloaded.config.num_labels == 1
    assert reloaded.config.pad_token_id == tokenizer.pad_token_id
    batch = padded(encode(tokenizer, TEXTS, eos=True), tokenizer.pad_token_id)
    with torch.no_grad():
        want = reward_forward(model, batch)
        torch.testing.assert_close(reward_forward(reloaded, batch), want, atol=0, rtol=0)
        # pad distinct from every real token: HF's own forward pools at the same position
        torch.testing.assert_close(reloaded(**batch).logits.squeeze(-1), want, atol=1e-6, rtol=0)
    # loading a reward model as the start of training keeps its head (no re-initialisation)
    again = load_reward_model(ModelConfig(path=str(folder)), tokenizer, seed=123)
    assert torch.equal(score_head(again).weight, score_head(model).weight)


def test_lora_reward_model_trains_head_and_saves_plain_folder(tiny_model_dir, tmp_path):
    lora = LoraConfig(enabled=True, r=4, target_modules=["q_proj", "v_proj"], save_adapter=True)
    cfg = ModelConfig(path=str(tiny_model_dir), lora=lora)
    tokenizer = load_tokenizer(cfg)
    model = load_reward_model(cfg, tokenizer, seed=2)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_A" in n for n in trainable)
    assert [n for n in trainable if "lora_" not in n] == [
        "base_model.model.score.modules_to_save.default.weight"
    ]
    with torch.no_grad():  # move away from the init: LoRA B and the head
        for name, param in model.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(0.3 * torch.randn_like(param))
    model.eval()
    state = reward_state_dict(model, model.state_dict())
    assert "score.weight" in state and not any("modules_to_save" in k for k in state)
    folder = save_reward_folder(tmp_path / "lora-rm", model, tokenizer, CPU, lora=lora)
    assert (folder / "adapter" / "adapter_config.json").exists()
    batch = padded(encode(tokenizer, TEXTS, eos=True), tokenizer.pad_token_id)
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    resumed = load_reward_model(cfg, tokenizer, weights_from=folder, seed=99).eval()
    with torch.no_grad():
        want = reward_forward(model, batch)
        torch.testing.assert_close(reward_forward(reloaded, batch), want, atol=1e-5, rtol=0)
        torch.testing.assert_close(reward_forward(resumed, batch), want, atol=0, rtol=0)

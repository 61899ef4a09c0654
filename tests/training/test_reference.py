"""The three reference modes give the same log-probs: precomputed == a model forward, and the
LoRA policy with adapters disabled == its base model. The cache is reused, and redone when the
sequences change."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from alignlab.config import LoraConfig, ModelConfig
from alignlab.data.collate import collate
from alignlab.data.tokenize import tokenize_segments
from alignlab.models.lm import TokenLogProbs
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.training.distributed import Runtime
from alignlab.training.reference import ReferenceConfig, ReferenceLogProbs, check_reference

CPU = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sequences(tokenizer):
    texts = [
        ("What is 1 plus 2?", " 1 plus 2 equals 3."),
        ("What is 4 plus 0?", " sorry cannot help"),
        ("What is the capital of alpha?", " beta"),
    ]
    rows = []
    for prompt, answer in texts:
        ids, labels = tokenize_segments(
            tokenizer, [(prompt, False), (answer, True)], append_eos=True
        )
        rows.append({"input_ids": ids, "labels": labels})
    return [(("train", i), row) for i, row in enumerate(rows)]


def by_hand(model_dir, rows):
    """Summed log-probs of the trained tokens from plain HF logits, one sequence at a time."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    out = []
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            logps = model(ids).logits.log_softmax(-1)[0, :-1]
        targets = torch.tensor(row["labels"][1:])
        keep = targets != -100
        out.append(logps[keep].gather(-1, targets[keep, None]).sum().item())
    return torch.tensor(out)


def test_model_and_precomputed_modes_match_a_plain_forward(tiny_model_dir, tmp_path):
    model_cfg = ModelConfig(path=str(tiny_model_dir))
    tokenizer = load_tokenizer(model_cfg)
    items = sequences(tokenizer)
    batch = collate([row for _, row in items], tokenizer.pad_token_id)
    keys = [key for key, _ in items]
    expected = by_hand(tiny_model_dir, [row for _, row in items])

    live = ReferenceLogProbs(ReferenceConfig(mode="model"), model_cfg, tokenizer, CPU)
    live.prepare()
    torch.testing.assert_close(live(batch), expected, atol=1e-5, rtol=0)

    cached = ReferenceLogProbs(
        ReferenceConfig(mode="precomputed", batch_size=2), model_cfg, tokenizer, CPU,
        cache_dir=tmp_path,
    )  # fmt: skip
    cached.prepare(items)
    assert cached.module is None and not cached.reused_cache  # the model was freed
    torch.testing.assert_close(cached(batch, keys), live(batch), atol=1e-5, rtol=0)
    assert (tmp_path / "reference_logps.pt").exists()

    again = ReferenceLogProbs(
        ReferenceConfig(mode="precomputed"), model_cfg, tokenizer, CPU, cache_dir=tmp_path
    )
    again.prepare(items)
    assert again.reused_cache
    assert torch.equal(again(batch, keys), cached(batch, keys))
    changed = items[:2]
    redo = ReferenceLogProbs(
        ReferenceConfig(mode="precomputed"), model_cfg, tokenizer, CPU, cache_dir=tmp_path
    )
    redo.prepare(changed)
    assert not redo.reused_cache
    with pytest.raises(KeyError):
        redo(batch, keys)


def test_adapter_mode_is_the_base_model(tiny_model_dir):
    lora = LoraConfig(enabled=True, r=4, target_modules=["q_proj", "v_proj"])
    model_cfg = ModelConfig(path=str(tiny_model_dir), lora=lora)
    check_reference(ReferenceConfig(mode="adapter"), model_cfg)
    tokenizer = load_tokenizer(model_cfg)
    items = sequences(tokenizer)
    batch = collate([row for _, row in items], tokenizer.pad_token_id)
    peft_model = load_model(model_cfg, tokenizer)
    torch.manual_seed(0)
    with torch.no_grad():  # non-zero adapters, so the policy differs from its base
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    policy = TokenLogProbs(peft_model)
    policy.train()
    reference = ReferenceLogProbs(ReferenceConfig(mode="adapter"), model_cfg, tokenizer, CPU)
    reference.prepare()
    reference.attach(policy)
    values = reference(batch)
    assert policy.training  # restored after the eval-mode reference forward
    expected = by_hand(tiny_model_dir, [row for _, row in items])
    torch.testing.assert_close(values, expected, atol=1e-5, rtol=0)
    with torch.no_grad():
        own = (policy(batch) * policy.mask(batch)).sum(-1)
    assert (own - expected).abs().max() > 1e-2  # the adapters are active outside the context


def test_adapter_mode_needs_lora(tiny_model_dir):
    from alignlab.config import ConfigError

    with pytest.raises(ConfigError, match="lora"):
        check_reference(ReferenceConfig(mode="adapter"), ModelConfig(path=str(tiny_model_dir)))

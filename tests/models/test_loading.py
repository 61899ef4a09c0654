import functools
import re

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignlab.config import LoraConfig, ModelConfig
from alignlab.models.lm import TokenLogProbs
from alignlab.models.loading import load_model, load_tokenizer, merged_state_dict
from alignlab.ops import IGNORE_INDEX
from alignlab.training.checkpoint import save_hf_folder
from alignlab.training.distributed import Runtime

CPU = Runtime(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


def batch_for(tokenizer, texts):
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
    labels = torch.full((len(ids), width), IGNORE_INDEX)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, 1 : len(seq)] = torch.tensor(seq[1:])
        mask[row, : len(seq)] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def naive_token_logps(model, batch):
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = torch.log_softmax(logits.float(), -1)[:, :-1]
    targets = batch["labels"][:, 1:]
    picked = logps.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    out = torch.zeros(batch["labels"].shape)
    out[:, :-1] = picked.masked_fill(targets == IGNORE_INDEX, 0)
    return out


def test_load_from_local_folder_like_a_hub_id(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir))
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer)
    assert tokenizer.pad_token is not None and tokenizer.chat_template
    assert type(model).__name__ == "LlamaForCausalLM"
    assert next(model.parameters()).dtype == torch.float32
    bf16 = load_model(ModelConfig(path=str(tiny_model_dir), dtype="bf16"), tokenizer)
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_pad_token_added_when_missing(tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.pad_token = None
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    loaded = load_tokenizer(ModelConfig(path=str(tiny_model_dir), tokenizer=str(tmp_path)))
    assert loaded.pad_token == loaded.eos_token
    assert "<|im_start|>" in loaded.chat_template


def test_gradient_checkpointing_option(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir), gradient_checkpointing=True)
    model = load_model(cfg, load_tokenizer(cfg))
    assert model.is_gradient_checkpointing


@pytest.mark.parametrize("fraction, recomputed", [(1.0, [True, True]), (0.5, [True, False])])
def test_checkpoint_fraction_recomputes_the_first_layers_with_the_same_gradients(
    tiny_model_dir, fraction, recomputed
):
    plain_cfg = ModelConfig(path=str(tiny_model_dir))
    tokenizer = load_tokenizer(plain_cfg)
    batch = batch_for(tokenizer, ["What is 1 plus 2?", "alpha beta"])
    cfg = ModelConfig(
        path=str(tiny_model_dir), gradient_checkpointing=True, checkpoint_fraction=fraction
    )
    grads = []
    for model in (load_model(plain_cfg, tokenizer), load_model(cfg, tokenizer)):
        model.train()
        calls = [0] * len(model.model.layers)

        def count(i, *_, calls=calls):
            calls[i] += 1

        for i, layer in enumerate(model.model.layers):
            layer.self_attn.register_forward_hook(functools.partial(count, i))
        TokenLogProbs(model)(batch).sum().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    # a recomputing layer's attention runs twice: in forward and again in backward
    assert calls == [2 if r else 1 for r in recomputed]
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, msg=name)


def test_token_logps_match_full_logits(tiny_model_dir):
    cfg = ModelConfig(path=str(tiny_model_dir))
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer)
    batch = batch_for(tokenizer, ["What is 1 plus 2?", "alpha beta"])
    policy = TokenLogProbs(model, chunk_size=3)
    got = policy(batch)
    torch.testing.assert_close(got, naive_token_logps(model, batch), atol=1e-5, rtol=1e-5)
    assert (got[policy.mask(batch)] < 0).all()
    assert (got[~policy.mask(batch)] == 0).all()


def test_lora_merged_checkpoint_loads_without_peft(tiny_model_dir, tmp_path):
    lora = LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    cfg = ModelConfig(path=str(tiny_model_dir), lora=lora)
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():  # make the adapter non-trivial (B starts at zero)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    batch = batch_for(tokenizer, ["What is 1 plus 2?"])
    with torch.no_grad():
        expected = model(input_ids=batch["input_ids"]).logits
    merged = merged_state_dict(model, model.state_dict())
    assert not any("lora" in k for k in merged)
    save_hf_folder(tmp_path / "ckpt", model, tokenizer, CPU, lora=lora, adapter=True)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "ckpt")
    with torch.no_grad():
        got = plain(input_ids=batch["input_ids"]).logits
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert (tmp_path / "ckpt" / "adapter" / "adapter_config.json").exists()
    # resuming reads the adapter back into a fresh base
    again = load_model(cfg, tokenizer, weights_from=tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(
            again(input_ids=batch["input_ids"]).logits, expected, atol=1e-5, rtol=1e-5
        )


def test_lora_on_lm_head_is_refused():
    from alignlab.config import ConfigError

    with pytest.raises(ConfigError, match="lm_head"):
        LoraConfig(enabled=True, target_modules=["lm_head"]).check()


def test_recomputation_skips_the_mlp_down_projection(tiny_model_dir):
    """A checkpointed Llama layer's recomputation rebuilds what backward needs and not the MLP
    output, which it throws away: backward costs the layers' forward less their down projections
    more than without checkpointing (FLOPs counted, so exact)."""
    from torch.utils.flop_counter import FlopCounterMode

    plain_cfg = ModelConfig(path=str(tiny_model_dir))
    tokenizer = load_tokenizer(plain_cfg)
    batch = batch_for(tokenizer, ["What is 1 plus 2?", "alpha beta"])
    ckpt_cfg = ModelConfig(path=str(tiny_model_dir), gradient_checkpointing=True)
    backward_flops, layer_flops = {}, {}
    for name, cfg in (("plain", plain_cfg), ("checkpointed", ckpt_cfg)):
        model = load_model(cfg, tokenizer).train()
        policy = TokenLogProbs(model)
        with FlopCounterMode(display=False) as forward:
            loss = policy(batch).sum()
        with FlopCounterMode(display=False) as backward:
            loss.backward()
        backward_flops[name] = backward.get_total_flops()
        counts = forward.get_flop_counts()
        layer_flops[name] = [
            sum(counts[key].values()) for key in counts if re.fullmatch(r".*layers\.\d+", key)
        ]
    config = model.config
    down = 2 * batch["input_ids"].numel() * config.hidden_size * config.intermediate_size
    assert layer_flops["plain"] == layer_flops["checkpointed"] and len(layer_flops["plain"]) == 2
    recomputed = backward_flops["checkpointed"] - backward_flops["plain"]
    assert recomputed == sum(layer_flops["plain"]) - 2 * down

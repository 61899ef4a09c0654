"""AdamW updates run in backward (`train.step_in_backward`): the same updates as AdamW after
backward, without holding every gradient at once."""

import pytest
import torch
from allocations import peak_new_bytes
from transformers import LlamaForCausalLM

from alignlab.config import ConfigError, TrainConfig
from alignlab.models.tiny import tiny_llama_config
from alignlab.training import loop
from alignlab.training.optim import (
    AdamWInBackward,
    build_optimizer,
    build_scheduler,
    refuse_step_in_backward,
)

CFG = dict(lr=1e-2, weight_decay=0.1, max_grad_norm=0.0, warmup_steps=1)


def body_heavy_llama():
    """Most parameters in the decoder layers, none of them much bigger than the rest."""
    torch.manual_seed(0)
    config = tiny_llama_config(97, hidden_size=64, num_layers=4, num_heads=4)
    config.intermediate_size = 256
    return LlamaForCausalLM(config)


def train(model, cfg, batches):
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, len(batches), cfg)
    norms = []
    for ids in batches:
        model(input_ids=ids, labels=ids).loss.backward()
        norms.append(loop.optimizer_step(model, optimizer, scheduler, None, cfg.max_grad_norm))
    return optimizer, norms


def test_the_same_updates_and_gradient_norms_as_adamw_after_backward():
    torch.manual_seed(1)
    batches = [torch.randint(0, 97, (2, 12)) for _ in range(3)]
    plain, fused = body_heavy_llama(), body_heavy_llama()
    _, plain_norms = train(plain, TrainConfig(**CFG), batches)
    optimizer, norms = train(fused, TrainConfig(**CFG, step_in_backward=True), batches)
    assert isinstance(optimizer, AdamWInBackward)
    # the same gradients through the same per-tensor kernel: float32 rounding of the norm only
    torch.testing.assert_close(torch.tensor(norms), torch.tensor(plain_norms))
    for (name, a), b in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(b, a, msg=name)
        assert b.grad is None  # each gradient freed once spent


def test_backward_never_holds_all_the_gradients():
    ids = torch.randint(0, 97, (2, 12))
    peaks = {}
    for in_backward in (False, True):
        model = body_heavy_llama()
        optimizer, _ = train(model, TrainConfig(**CFG, step_in_backward=in_backward), [ids])
        loss = model(input_ids=ids, labels=ids).loss  # the moments exist from the first step

        def backward_and_step(loss=loss, optimizer=optimizer, model=model):
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

        peaks[in_backward] = peak_new_bytes(backward_and_step)
    param_bytes = sum(p.numel() * 4 for p in body_heavy_llama().parameters())
    assert peaks[False] >= param_bytes  # every gradient at once before the step
    assert peaks[True] < param_bytes // 2  # one layer's gradients and activations at a time


@pytest.mark.parametrize(
    "overrides, named",
    [
        ({"max_grad_norm": 1.0}, "train.max_grad_norm=0"),
        ({"max_grad_norm": 0.0, "grad_accum": 2}, "train.grad_accum=1"),
        ({"max_grad_norm": 0.0, "optimizer": "sgd"}, "train.optimizer=adamw"),
        ({"max_grad_norm": 0.0, "mixed_precision": "fp16"}, "fp16"),
    ],
)
def test_what_it_cannot_do_is_refused_by_name(overrides, named):
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        TrainConfig(output_dir="out", step_in_backward=True, **overrides).check()


def test_recipes_that_accumulate_are_refused():
    cfg = TrainConfig(step_in_backward=True, max_grad_norm=0.0)
    with pytest.raises(ConfigError, match="sums gradients over several micro-batches"):
        refuse_step_in_backward(cfg)


def test_a_second_backward_in_one_step_is_refused_before_it_updates_twice():
    model = body_heavy_llama()
    optimizer = build_optimizer(model, TrainConfig(**CFG, step_in_backward=True))
    ids = torch.randint(0, 97, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    assert optimizer._squares  # the first backward updated
    with pytest.raises(RuntimeError, match="a second backward in one optimizer step"):
        model(input_ids=ids, labels=ids).loss.backward()


@pytest.mark.parametrize("recipe", ["grpo", "rloo", "reinforce_pp", "ppo"])
def test_rl_recipes_refuse_it_when_the_config_is_read(recipe):
    import importlib

    from alignlab.config import load_config
    from alignlab.recipes import RECIPES

    module_name, class_name = RECIPES[recipe]
    config_class = getattr(importlib.import_module(module_name), class_name)
    args = ["model.path=m", "data.path=p.jsonl", "rl.reward=r.py:f", "train.max_grad_norm=0",
            "train.step_in_backward=true"]  # fmt: skip
    with pytest.raises(ConfigError, match="sums gradients over several micro-batches"):
        load_config(config_class, None, args)


def test_a_dropped_optimizer_no_longer_steps_the_model():
    model = body_heavy_llama()
    build_optimizer(model, TrainConfig(**CFG, step_in_backward=True))  # dropped at once
    optimizer = build_optimizer(model, TrainConfig(**CFG, step_in_backward=True))
    before = [p.detach().clone() for p in model.parameters()]
    ids = torch.randint(0, 97, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    plain = body_heavy_llama()
    train(plain, TrainConfig(**CFG), [ids])
    for a, b, start in zip(plain.parameters(), model.parameters(), before):
        torch.testing.assert_close(b, a)  # one update, not two
        assert not torch.equal(b, start)

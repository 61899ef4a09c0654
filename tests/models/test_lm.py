import copy

import pytest
import torch
from transformers import LlamaForCausalLM

from alignlab.config import LoraConfig
from alignlab.models.lm import TokenLogProbs, lean_mlps
from alignlab.models.loading import apply_lora
from alignlab.models.tiny import tiny_llama_config

LAYERS, HIDDEN, INTERMEDIATE, TOKENS = 2, 32, 88, 2 * 13


def tiny_llama(seed=0):
    torch.manual_seed(seed)
    config = tiny_llama_config(97, hidden_size=HIDDEN, num_layers=LAYERS, num_heads=4)
    config.intermediate_size = INTERMEDIATE
    return LlamaForCausalLM(config)


def loss_and_grads(model, ids, autocast):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


@pytest.mark.parametrize("autocast", [False, True])
def test_lean_mlps_give_the_modules_values_and_gradients(autocast):
    plain = tiny_llama()
    lean = copy.deepcopy(plain)
    assert lean_mlps(lean) == LAYERS
    ids = torch.randint(0, 97, (2, TOKENS // 2))
    loss, grads = loss_and_grads(plain, ids, autocast)
    lean_loss, lean_grads = loss_and_grads(lean, ids, autocast)
    # the same kernels in the same order (bf16 ones under autocast): float32 rounding only
    torch.testing.assert_close(lean_loss, loss)
    assert lean_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(lean_grads[name], grad, msg=name)


def saved_activation_bytes(model, ids):
    """Bytes of the tensors a forward keeps for backward, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=ids).logits.sum()
    return sum(storages.values())


def test_lean_mlps_keep_two_intermediate_activations_fewer_per_layer():
    model = tiny_llama()
    ids = torch.randint(0, 97, (2, TOKENS // 2))
    before = saved_activation_bytes(model, ids)
    lean_mlps(model)
    # silu(gate) and silu(gate) * up, float32, per layer
    assert before - saved_activation_bytes(model, ids) == LAYERS * 2 * TOKENS * INTERMEDIATE * 4


def test_token_log_probs_uses_lean_mlps_and_a_copy_keeps_them():
    model = tiny_llama()
    TokenLogProbs(model)
    mlp = model.model.layers[0].mlp
    assert mlp.forward.__func__.__name__ == "_lean_mlp_forward"
    clone = copy.deepcopy(model)  # e.g. the RL generation copy: bound to the copy's weights
    assert clone.model.layers[0].mlp.forward.__self__ is clone.model.layers[0].mlp


def test_lora_projections_keep_the_module_forward():
    model = tiny_llama()
    lora = LoraConfig(enabled=True, r=4, alpha=8, target_modules=["q_proj", "down_proj"])
    peft_model = apply_lora(model, lora)
    assert lean_mlps(peft_model) == 0  # down_proj is a LoRA layer in every MLP
    frozen_mlps = apply_lora(tiny_llama(), LoraConfig(enabled=True, target_modules=["q_proj"]))
    reference = copy.deepcopy(frozen_mlps)
    assert lean_mlps(frozen_mlps) == LAYERS  # frozen plain projections: only x needs a grad
    ids = torch.randint(0, 97, (2, TOKENS // 2))
    _, grads = loss_and_grads(reference, ids, autocast=False)
    _, lean_grads = loss_and_grads(frozen_mlps, ids, autocast=False)
    assert grads and lean_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(lean_grads[name], grad, msg=name)


def tied_wide_llama(tie=True):
    """A vocabulary much wider than the body, so the embedding's gradient dominates."""
    torch.manual_seed(0)
    config = tiny_llama_config(16384, hidden_size=32, num_layers=1, num_heads=4)
    config.tie_word_embeddings = tie
    return LlamaForCausalLM(config)


def token_logp_grads(model, ids):
    model.zero_grad(set_to_none=True)
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    TokenLogProbs(model)(batch).sum().backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_a_tied_embedding_never_holds_two_vocabulary_sized_gradients():
    from allocations import peak_new_bytes

    model = tied_wide_llama()
    ids = torch.randint(0, 16384, (1, 4))
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    policy = TokenLogProbs(model)
    loss = policy(batch).sum()
    param_bytes = sum(p.numel() * 4 for p in model.parameters())
    embedding_bytes = model.get_input_embeddings().weight.numel() * 4
    # the gradients themselves plus a logits chunk of 3 rows, not a second embedding's worth
    assert peak_new_bytes(loss.backward) < param_bytes + embedding_bytes // 2


@pytest.mark.parametrize("pad", [None, 5])
def test_tied_lookup_gives_autograds_gradients(pad):
    ids = torch.randint(0, 16384, (2, 6))
    ids[1, :3] = ids[0, 0]  # a repeated token: its rows are summed
    ids[1, 3] = 5
    dense = tied_wide_llama()
    dense.get_input_embeddings().padding_idx = pad
    # autograd through the module: log-probs of the trained (shifted) labels, summed
    logps = torch.log_softmax(dense(input_ids=ids).logits, -1)[:, :-1]
    logps.gather(-1, ids[:, 1:, None]).sum().backward()
    plain = {n: p.grad for n, p in dense.named_parameters()}
    model = tied_wide_llama()
    model.get_input_embeddings().padding_idx = pad
    grads = token_logp_grads(model, ids)
    assert grads.keys() == plain.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain[name], msg=name)
    if pad is not None:
        assert model.get_input_embeddings().weight.grad[pad].abs().max() > 0  # projection's only
    assert not model.get_input_embeddings()._forward_hooks  # the module is left as it was


def test_tied_lookup_accumulates_over_micro_batches():
    ids = torch.randint(0, 16384, (2, 6))
    whole = token_logp_grads(tied_wide_llama(), ids)
    model = tied_wide_llama()
    model.zero_grad(set_to_none=True)
    policy = TokenLogProbs(model)
    for row in ids:
        row = row[None]
        policy(
            {"input_ids": row, "labels": row, "attention_mask": torch.ones_like(row)}
        ).sum().backward()
    for name, param in model.named_parameters():
        torch.testing.assert_close(param.grad, whole[name], msg=name)


def test_untied_embeddings_keep_autograds_path():
    model = tied_wide_llama(tie=False)
    token_logp_grads(model, torch.randint(0, 16384, (1, 4)))
    assert model.get_input_embeddings().weight.grad is not None
    assert model.get_output_embeddings().weight.grad is not None


def test_a_batch_without_trained_tokens_gives_the_tied_weight_a_zero_gradient():
    model = tied_wide_llama()
    ids = torch.randint(0, 16384, (1, 4))
    labels = torch.full_like(ids, -100)
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    TokenLogProbs(model)(batch).sum().backward()
    grad = model.get_input_embeddings().weight.grad
    assert grad is not None and not grad.any()  # as autograd's plain path: zero, not missing

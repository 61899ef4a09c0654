"""Per-token log-probabilities of a causal LM, the quantity every recipe trains on.

`TokenLogProbs` wraps an HF causal LM (or its peft wrapper). It runs the decoder body, then
projects only the positions that carry a label through the output layer, chunk by chunk
(`ops.linear_log_probs`), so the (tokens x vocabulary) logits are never stored. With a 32k
vocabulary that tensor is where SFT and DPO memory goes. It is an `nn.Module` so FSDP2 can
shard it as the root: its forward unshards the embeddings and output projection it reads.

At real model sizes the decoder's own activations dominate instead, a third of them in the
MLPs' elementwise intermediates: `TokenLogProbs` switches the model's plain Llama-family MLPs
to `ops.swiglu_mlp` (`lean_mlps`), which keeps two (tokens x intermediate) tensors per layer
fewer for backward and computes the same values and gradients; a tied embedding gets its
projection's gradient added into its lookup's (`_TiedLookup`), so backward never holds two
(vocabulary x hidden) gradients; and for a model of 100M parameters or more it has freed host
memory returned to the system (`host_memory`).
"""

from __future__ import annotations

import contextlib
import types
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from alignlab.host_memory import return_freed_memory
from alignlab.models.forward_inputs import model_inputs
from alignlab.models.loading import unwrap_peft
from alignlab.ops import (
    IGNORE_INDEX,
    gather_log_probs,
    linear_log_probs,
    shift_labels,
    swiglu_mlp,
)

SWIGLU_MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Qwen3MLP")
"""transformers MLP classes whose forward is exactly down(act(gate(x)) * up(x))."""


def needs_full_logits(hf_model: nn.Module) -> bool:
    """Models that transform logits after the projection need the plain forward path."""
    config = hf_model.config.get_text_config()  # a VLM's LLM settings are in its text config
    return bool(
        getattr(config, "final_logit_softcapping", None)
        or getattr(config, "logit_scale", None)
        or getattr(config, "logits_scaling", None)
        or getattr(config, "output_multiplier_scale", None)
    )


def _lean_mlp_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return swiglu_mlp(x, self.gate_proj.weight, self.up_proj.weight, self.down_proj.weight)


def _is_plain_swiglu(module: nn.Module) -> bool:
    """A known SwiGLU MLP with SiLU and bias-free, unwrapped nn.Linear projections: LoRA or
    quantised layers, and hooks on the projections, keep the module's own forward."""
    if type(module).__name__ not in SWIGLU_MLPS or type(module.act_fn).__name__ not in (
        "SiLU",
        "SiLUActivation",
    ):
        return False
    projections = [module.gate_proj, module.up_proj, module.down_proj]
    return all(
        type(p) is nn.Linear and p.bias is None and not (p._forward_hooks or p._forward_pre_hooks)
        for p in projections
    )


def lean_mlps(model: nn.Module) -> int:
    """Run every plain SwiGLU MLP of `model` through `ops.swiglu_mlp`; return how many.

    The forward is bound on each module instance (the class is untouched; `deepcopy` keeps
    it, saved weights are unchanged)."""
    count = 0
    for module in model.modules():
        if _is_plain_swiglu(module):
            module.forward = types.MethodType(_lean_mlp_forward, module)
            count += 1
    return count


class _TiedLookup(torch.autograd.Function):
    """nn.Embedding's lookup of a weight tied to the output projection, whose backward returns
    the weight's whole gradient: the projection's, handed over in `sink`, with the looked-up
    rows added in place.

    Left to autograd, the tied weight gets two dense gradients in one backward, the
    projection's first and the lookup's last, summed in a buffer before they reach `.grad`:
    a second (vocabulary x hidden) tensor alive at the end of backward, 0.5 GB at a
    Qwen2.5-0.5B shape and the peak of an SFT step.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        ids: torch.Tensor,
        weight: torch.Tensor,
        padding_idx: int | None,
        sink: list[torch.Tensor],
    ) -> torch.Tensor:
        ctx.save_for_backward(ids)
        ctx.padding_idx, ctx.sink = padding_idx, sink
        ctx.weight_like = (weight.shape, weight.dtype, weight.device)
        return nn.functional.embedding(ids, weight, padding_idx)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_out: torch.Tensor
    ) -> tuple[torch.Tensor | None, ...]:
        (ids,) = ctx.saved_tensors
        shape, dtype, device = ctx.weight_like
        grad = ctx.sink.pop() if ctx.sink else torch.zeros(shape, dtype=dtype, device=device)
        rows, values = ids.reshape(-1), grad_out.reshape(-1, shape[1]).to(dtype)
        if ctx.padding_idx is not None:  # as nn.Embedding: the padding row gets no gradient
            keep = rows != ctx.padding_idx
            rows, values = rows[keep], values[keep]
        grad.index_put_((rows,), values, accumulate=True)
        return None, grad, None, None


def tied_embedding(hf_model: nn.Module) -> nn.Embedding | None:
    """The input embedding when `_TiedLookup` can stand in for it: a plain nn.Embedding whose
    trained weight is the output projection's, outside torch.distributed (FSDP2 shards are
    DTensors, reduced by their own hooks)."""
    embedding, output = hf_model.get_input_embeddings(), hf_model.get_output_embeddings()
    if (
        type(embedding) is not nn.Embedding
        or getattr(output, "weight", None) is not embedding.weight
    ):
        return None
    if embedding.max_norm is not None or embedding.scale_grad_by_freq or embedding.sparse:
        return None
    if not (embedding.weight.requires_grad and torch.is_grad_enabled()):
        return None
    if dist.is_available() and dist.is_initialized():
        return None
    return embedding


@contextlib.contextmanager
def lookup_takes_projection_grad(
    embedding: nn.Embedding | None, sink: list[torch.Tensor] | None
) -> Iterator[None]:
    """While open, `embedding`'s forward output is `_TiedLookup`'s (same values), collecting
    the projection's gradient from `sink`. A forward hook, so the module itself is unchanged."""
    if embedding is None:
        yield
        return

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: torch.Tensor) -> torch.Tensor:
        ids = args[0] if args else kwargs["input"]
        return _TiedLookup.apply(ids, module.weight, module.padding_idx, sink)

    handle = embedding.register_forward_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def body_of(hf_model: nn.Module) -> nn.Module:
    """The module that gives the last hidden states the output head reads: the decoder of a
    causal LM; for an image-text-to-text model, its base model (`model.model`), which projects
    the image features into the token embeddings before running the decoder."""
    if getattr(hf_model.config, "vision_config", None) is not None:
        return hf_model.model
    return hf_model.get_decoder()


class TokenLogProbs(nn.Module):
    """forward(batch) -> (B, T) log p(next token) at positions whose next label is trained.

    Position t holds log p(input_ids[t+1] | input_ids[:t+1]) where labels[t+1] != IGNORE_INDEX,
    and 0 elsewhere; `mask(batch)` returns where. Packed batches pass no attention_mask and
    restart position_ids at each example (the HF mask builder then isolates examples). A batch
    of an image-text-to-text model carries its images (`forward_inputs.IMAGE_INPUTS`, made by
    `alignlab.data.vlm.collate_vlm`), and `forward_inputs.model_inputs` adds the per-token
    types its family reads: the same module serves text and vision-language recipes.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 1024) -> None:
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        lean_mlps(model)
        return_freed_memory(sum(p.numel() for p in model.parameters()))

    @property
    def hf_model(self) -> nn.Module:
        return unwrap_peft(self.model)

    @staticmethod
    def mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return shift_labels(batch["labels"]) != IGNORE_INDEX

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hf_model = self.hf_model
        targets = shift_labels(batch["labels"])  # (B, T)
        inputs = model_inputs(hf_model, batch)
        if needs_full_logits(hf_model):
            logits = self.model(**inputs, use_cache=False).logits  # (B, T, V)
            return gather_log_probs(logits, targets)
        selected = targets != IGNORE_INDEX
        # The lookup's backward delivers the projection's gradient with its own. Without a
        # trained token the loss never reaches the lookup: the plain path gives the weight its
        # zero gradient.
        embedding = tied_embedding(hf_model) if selected.any() else None
        sink = None if embedding is None else []
        with lookup_takes_projection_grad(embedding, sink):
            hidden = body_of(hf_model)(**inputs, use_cache=False).last_hidden_state  # (B,T,H)
        weight = hf_model.get_output_embeddings().weight  # (V, H)
        if embedding is not None:
            weight = weight.detach()
        token_logps = linear_log_probs(
            hidden[selected], weight, targets[selected], self.chunk_size, weight_grad_sink=sink
        )
        out = torch.zeros(targets.shape, dtype=token_logps.dtype, device=hidden.device)
        return out.masked_scatter(selected, token_logps)

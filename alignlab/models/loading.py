"""Load any HF causal LM (hub id or local folder) with its tokenizer, dtype, LoRA/QLoRA.

Hub ids and local folders take the same `from_pretrained` path, so the tests that load from a
local folder exercise the code a hub id would.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from alignlab.config import ConfigError, LoraConfig, ModelConfig
from alignlab.data.templates import ensure_chat_template
from alignlab.models.folders import load_error
from alignlab.ops import rebuilding_saved_tensors

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def from_pretrained(auto_class: Any, source: str, **kwargs: Any) -> Any:
    """`auto_class.from_pretrained(source, **kwargs)`; a source it cannot read (a hub id it
    cannot fetch, an unreadable, corrupt or truncated file) raises a one-line UserInputError
    naming it. `alignlab.models.folders.check_model_source` catches most of these earlier."""
    try:
        return auto_class.from_pretrained(source, **kwargs)
    except (OSError, SafetensorError) as err:
        what = "tokenizer" if "Tokenizer" in auto_class.__name__ else "model"
        raise load_error(str(source), what, err) from err


def load_tokenizer(cfg: ModelConfig) -> PreTrainedTokenizerBase:
    """The model's tokenizer with a chat template and a pad token guaranteed.

    The template first: a tokenizer without one may get an EOS token with it (its end of
    turn), which padding can then reuse.
    """
    tokenizer = from_pretrained(
        AutoTokenizer,
        cfg.tokenizer or cfg.path,
        revision=cfg.revision or None,
        trust_remote_code=cfg.trust_remote_code,
    )
    ensure_chat_template(tokenizer)
    ensure_pad_token(tokenizer)
    return tokenizer


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a tokenizer without a pad token one: its EOS, else a new `<pad>`.

    Reusing EOS keeps the vocabulary (and the checkpoint) unchanged. Padding is told apart by
    the attention mask and the labels, never by its id, so a real EOS (the trained end of
    turn of the fallback template) keeps its loss and its log-prob."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "<pad>"})


def load_model(
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    weights_from: str | Path | None = None,
    device: torch.device | None = None,
) -> nn.Module:
    """AutoModelForCausalLM from `cfg.path` (or `weights_from`, a checkpoint of this run).

    With LoRA enabled the base always comes from `cfg.path`; the adapter is fresh, or read
    from `weights_from/adapter` when resuming.
    """
    lora = cfg.lora
    source = str(weights_from) if weights_from and not lora.enabled else cfg.path
    kwargs = {"dtype": DTYPES[cfg.dtype], "trust_remote_code": cfg.trust_remote_code}
    if cfg.attn_implementation != "auto":  # auto: what from_pretrained picks for the model
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.revision and source == cfg.path:
        kwargs["revision"] = cfg.revision
    if lora.load_in_4bit:
        kwargs["quantization_config"] = _four_bit_config(cfg)
        kwargs["device_map"] = {"": device or torch.device("cuda")}
    model = from_pretrained(AutoModelForCausalLM, source, **kwargs)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        enable_checkpointing(model, cfg.checkpoint_fraction)
    if lora.enabled:
        model = apply_lora(
            model, lora, adapter_from=Path(weights_from) / "adapter" if weights_from else None
        )
    if cfg.disable_dropout:
        disable_dropout(model)
    if device is not None and not lora.load_in_4bit:
        model = model.to(device)
    return model


def enable_checkpointing(model: nn.Module, fraction: float = 1.0) -> int:
    """Recompute the activations of the first `fraction` of `model`'s decoder layers (rounded
    up) in backward instead of keeping them; return how many layers recompute.

    A checkpointed layer keeps only its input, and its forward runs again in backward: about a
    third more compute per layer. Checkpointing only some layers buys back that compute for the
    memory of the rest, which is the trade a machine that fits more than all-checkpointed but
    less than none wants (transformers' `every_n_layers` can only checkpoint half or fewer).
    In `RESIDUAL_MLP_LAYERS` the recomputation also skips the MLP's down projection, a
    quarter of the layer's FLOPs (`_checkpoint_without_last_projection`).
    """
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # newer name; the old one warns
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    keep = math.ceil(fraction * len(layers) - 1e-9)
    for layer in layers[:keep]:
        if type(layer).__name__ in RESIDUAL_MLP_LAYERS:
            layer._gradient_checkpointing_func = _checkpoint_without_last_projection
    for layer in layers[keep:]:
        layer.gradient_checkpointing = False
    return keep


RESIDUAL_MLP_LAYERS = (
    "LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer"
)  # fmt: skip
"""Decoder layers whose MLP output goes only into the residual add that ends the layer."""


def _checkpoint_without_last_projection(function: Any, *args: Any, **kwargs: Any) -> Any:
    """`checkpoint` whose recomputation, run only to rebuild saved tensors, skips the MLP's
    down projection (`ops.rebuilding_saved_tensors`): its output is discarded there."""
    first = [True]

    def run(*run_args: Any, **run_kwargs: Any) -> Any:
        if first[0]:
            first[0] = False
            return function(*run_args, **run_kwargs)
        with rebuilding_saved_tensors():
            return function(*run_args, **run_kwargs)

    return checkpoint(run, *args, use_reentrant=False, **kwargs)


def disable_dropout(model: nn.Module) -> None:
    """Every dropout in `model` to 0: its `nn.Dropout` modules and the float rates attention
    modules keep for the attention kernel (`attention_dropout`, GPT-2's `attn_dropout.p`), so
    train mode computes exactly what eval mode does. The saved config keeps its rates."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout", "attn_dropout", "dropout_p"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


# config.json keys that hold the number of positions a model has, first match wins
POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length")


def position_limit(cfg: ModelConfig) -> tuple[int, str] | None:
    """(positions, config key) of `cfg.path` from its config alone (no weights), or None."""
    config = AutoConfig.from_pretrained(
        cfg.path, revision=cfg.revision or None, trust_remote_code=cfg.trust_remote_code
    )
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    for key in POSITION_KEYS:
        value = getattr(text_config, key, None)
        if isinstance(value, int) and value > 0:
            return value, key
    return None


def check_positions(cfg: ModelConfig, longest: int, setting: str, fix: str = "") -> None:
    """Refuse, before any training, sequences longer than the model's positions (a learned
    position table such as GPT-2's fails on them with an IndexError; rotary models run past
    their trained length only to degrade). `setting` names what makes them that long, `fix`
    what to change (default: lower `setting`)."""
    found = position_limit(cfg) if longest else None
    if found is not None and longest > found[0]:
        limit, key = found
        raise ConfigError(
            f"{setting}: sequences of up to {longest} tokens, but {cfg.path} has {limit} "
            f"positions ({key} in its config.json); {fix or f'set it to at most {limit}'}"
        )


def _four_bit_config(cfg: ModelConfig) -> object:
    if not torch.cuda.is_available():  # LoraConfig.check refuses this before loading
        raise ConfigError("model.lora.load_in_4bit=true (QLoRA) needs a CUDA device")
    try:
        from transformers import BitsAndBytesConfig
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ConfigError("QLoRA needs bitsandbytes: pip install 'alignlab[qlora]'") from err
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16 if cfg.dtype == "bf16" else torch.float16,
    )


def apply_lora(
    model: nn.Module,
    lora: LoraConfig,
    adapter_from: Path | None = None,
    task_type: str = "CAUSAL_LM",
    modules_to_save: list[str] | None = None,
) -> nn.Module:
    """Wrap `model` with peft LoRA adapters (fresh, or loaded from an adapter folder); a
    reward model passes task_type="SEQ_CLS" and its head as a fully trained module to save."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if lora.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if adapter_from is not None:
        return PeftModel.from_pretrained(model, str(adapter_from), is_trainable=True)
    targets = lora.target_modules
    peft_config = PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules="all-linear" if targets == ["all-linear"] else targets,
        task_type=task_type,
        modules_to_save=modules_to_save,
    )
    return get_peft_model(model, peft_config)


def unwrap_peft(model: nn.Module) -> nn.Module:
    """The HF model under a peft wrapper (LoRA layers still injected), or `model` itself."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def is_peft(model: nn.Module) -> bool:
    return callable(getattr(model, "get_base_model", None))


def merged_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Plain HF weights from a LoRA model's state dict: W + (alpha/r)·B·A, adapter keys dropped.

    Computed out of place, so training continues on the unmerged model bit for bit.
    `state_dict` is the peft model's (full, unsharded) state dict.
    """
    merged: dict[str, torch.Tensor] = {}
    prefix = "base_model.model."
    for key, value in state_dict.items():
        # peft keeps a frozen copy of `modules_to_save` (e.g. a reward head) beside the
        # trained one; the trained copy is the module's weight in the plain model
        if ".lora_" in key or ".original_module." in key:
            continue
        key = re.sub(r"\.modules_to_save\.[^.]+\.", ".", key)
        merged[key.removeprefix(prefix).replace(".base_layer.", ".")] = value
    for name, module in unwrap_peft(model).named_modules():
        if not hasattr(module, "lora_A") or not hasattr(module, "base_layer"):
            continue
        for adapter in module.active_adapters:
            if adapter not in module.lora_A:
                continue
            a = state_dict[f"{prefix}{name}.lora_A.{adapter}.weight"].float()
            b = state_dict[f"{prefix}{name}.lora_B.{adapter}.weight"].float()
            key = f"{name}.weight"
            weight = merged[key]
            delta = (b @ a) * module.scaling[adapter]
            if getattr(module, "fan_in_fan_out", False):
                delta = delta.T
            merged[key] = (weight.float() + delta).to(weight.dtype)
    return merged

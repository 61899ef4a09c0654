"""Reward models: a causal LM body with a scalar head, read at the last real token.

    r(x, y) = w · h_T(x ⊕ y)       h_T: the final hidden state at the last non-pad position

Any HF causal LM checkpoint (hub id or folder) loads as `AutoModelForSequenceClassification`
with `num_labels=1`: transformers keeps the body and adds a bias-free linear `score` head
(H -> 1). A head that the checkpoint does not hold is initialised here with a normal of
std 1/sqrt(H + 1) (Stiennon et al. 2020, the OpenAI `lm-human-preferences` reward head),
from its own seeded generator, so the members of an ensemble start from different heads.

Pooling is ours, not transformers'. Transformers 5 (`GenericForSequenceClassification`) reads
the rightmost position whose input id differs from `pad_token_id`; when the pad token is the
EOS token (the fallback of `load_tokenizer`) and a sequence ends with EOS, that is the token
*before* the EOS, and a real EOS in the middle of a right-padded row is indistinguishable from
padding. `reward_forward` instead reads the last position where `attention_mask` is 1, which
is right for right padding (our collators) and for left padding alike, and whatever the pad
id is. It also projects only the B pooled states through the head, not all B x T.

The saved folder is a plain HF sequence-classification folder (`score.weight`, `num_labels=1`,
`pad_token_id` set): `AutoModelForSequenceClassification.from_pretrained` loads it, and with a
pad token distinct from the last real token its own forward gives the same rewards as
`reward_forward`.

LoRA: the same `model.lora` config, with peft task type SEQ_CLS and `modules_to_save=["score"]`
(the head trains fully; the adapter folder holds it). Merged weights are saved under the plain
HF names (`score.weight`), see `reward_state_dict`.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedTokenizerBase

from alignlab.config import LoraConfig, ModelConfig, UserInputError
from alignlab.models.loading import (
    DTYPES,
    _four_bit_config,
    apply_lora,
    disable_dropout,
    enable_checkpointing,
    from_pretrained,
    is_peft,
    load_tokenizer,
    merged_state_dict,
    unwrap_peft,
)

logger = logging.getLogger(__name__)

HEAD = "score"
"""Attribute name of the reward head in transformers' *ForSequenceClassification models."""


# --- loading ---


def score_head(model: nn.Module) -> nn.Module:
    """The reward head (H -> 1) of an HF sequence-classification model or its peft wrapper."""
    hf_model = unwrap_peft(model)
    head = getattr(hf_model, HEAD, None)
    if head is None:
        raise ValueError(
            f"{type(hf_model).__name__} has no '{HEAD}' head; reward models need an "
            "architecture whose *ForSequenceClassification head is called 'score'"
        )
    return head


def init_score_head(model: nn.Module, seed: int = 0) -> None:
    """Initialise the head: weight ~ N(0, 1/(H + 1)), bias (if any) 0, from generator `seed`."""
    head = score_head(model)
    weight = head.weight
    hidden = weight.shape[-1]
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(weight.shape, generator=generator) / math.sqrt(hidden + 1)
    with torch.no_grad():
        weight.copy_(values.to(weight.dtype))
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()


def load_reward_model(
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    weights_from: str | Path | None = None,
    device: torch.device | None = None,
    seed: int = 0,
) -> nn.Module:
    """A reward model from `cfg.path` (a causal LM or reward-model folder or hub id).

    `weights_from` is a checkpoint of this run: its full weights, or with LoRA its adapter
    (head included) on top of `cfg.path`. The head is initialised (`init_score_head`, generator
    `seed`) only when the loaded checkpoint has none; an existing reward model keeps its head.
    """
    lora = cfg.lora
    source = str(weights_from) if weights_from and not lora.enabled else cfg.path
    kwargs: dict[str, Any] = {
        "dtype": DTYPES[cfg.dtype],
        "trust_remote_code": cfg.trust_remote_code,
        "num_labels": 1,
        "pad_token_id": tokenizer.pad_token_id,
    }
    if cfg.attn_implementation != "auto":  # auto: what from_pretrained picks for the model
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.revision and source == cfg.path:
        kwargs["revision"] = cfg.revision
    if lora.load_in_4bit:
        kwargs["quantization_config"] = _four_bit_config(cfg)
        kwargs["device_map"] = {"": device or torch.device("cuda")}
    model, info = from_pretrained(
        AutoModelForSequenceClassification, source, output_loading_info=True, **kwargs
    )
    if any(key.split(".")[0] == HEAD for key in info.get("missing_keys", ())):
        init_score_head(model, seed)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        enable_checkpointing(model, cfg.checkpoint_fraction)
    if lora.enabled:
        adapter = Path(weights_from) / "adapter" if weights_from else None
        model = apply_reward_lora(model, lora, adapter_from=adapter)
    if cfg.disable_dropout:
        disable_dropout(model)
    if device is not None and not lora.load_in_4bit:
        model = model.to(device)
    return model


def apply_reward_lora(
    model: nn.Module, lora: LoraConfig, adapter_from: Path | None = None
) -> nn.Module:
    """peft LoRA for sequence classification; the head is a fully trained module to save."""
    return apply_lora(model, lora, adapter_from, task_type="SEQ_CLS", modules_to_save=[HEAD])


def load_reward_folder(
    path: str | Path, device: torch.device | str | None = None, dtype: str = "fp32"
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """(model in eval mode, tokenizer) of a saved reward-model folder."""
    tokenizer = load_tokenizer(ModelConfig(path=str(path)))
    model = from_pretrained(AutoModelForSequenceClassification, str(path), dtype=DTYPES[dtype])
    if model.config.num_labels != 1:
        raise UserInputError(
            f"{path}: num_labels={model.config.num_labels}; a reward model has 1 (train one "
            "with `alignlab rm`)"
        )
    model.config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer


# --- forward ---


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B,) index of the last position whose attention_mask is 1 (right or left padding)."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be (B, T), got shape {tuple(attention_mask.shape)}")
    mask = attention_mask.to(torch.long)
    if bool((mask.sum(-1) == 0).any()):
        raise ValueError("a row of the batch has no real token (attention_mask all 0)")
    positions = torch.arange(mask.shape[-1], device=mask.device)
    return (positions * mask).argmax(-1)


def reward_forward(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """(B,) float32 rewards: the head applied to the hidden state at the last real token.

    `batch` holds input_ids (B, T), attention_mask (B, T) and optionally position_ids; the
    last real token is found from attention_mask (never from pad ids). `model` is an HF
    sequence-classification model or its peft wrapper (adapters are injected in place).
    """
    hf_model = unwrap_peft(model)
    attention_mask = batch.get("attention_mask")
    if attention_mask is None:
        raise ValueError("reward_forward needs an attention_mask to find the last real token")
    body = hf_model.base_model
    hidden = body(
        input_ids=batch["input_ids"],
        attention_mask=attention_mask,
        position_ids=batch.get("position_ids"),
        use_cache=False,
    ).last_hidden_state  # (B, T, H)
    last = last_token_index(attention_mask).to(hidden.device)
    pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, H)
    return score_head(model)(pooled).squeeze(-1).float()


class SequenceRewards(nn.Module):
    """forward(batch) -> (B,) rewards; an `nn.Module` so FSDP2 can shard it as the root."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def hf_model(self) -> nn.Module:
        return unwrap_peft(self.model)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return reward_forward(self.model, batch)


# --- saving ---


def reward_state_dict(
    model: nn.Module, state_dict: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Plain HF weights of a (peft) reward model: LoRA merged, the trained head as `score.*`.

    peft keeps a module to save twice (`score.original_module.*`, frozen, and
    `score.modules_to_save.<adapter>.*`, trained); the trained copy of the active adapter is
    the one the plain model gets.
    """
    if not is_peft(model):
        return dict(state_dict)
    merged = merged_state_dict(model, state_dict)
    adapter = getattr(model, "active_adapter", "default")
    result: dict[str, torch.Tensor] = {}
    for key, value in merged.items():
        if ".original_module." in key:
            continue
        if ".modules_to_save." in key:
            head, _, rest = key.partition(".modules_to_save.")
            name, _, param = rest.partition(".")
            if name != adapter:
                continue
            key = f"{head}.{param}"
        result[key] = value
    return result

"""Value models (PPO critics): a reward-model architecture whose head reads every position.

    V(x, y_<t+1) = w · h_t(x ⊕ y)       h_t: the final hidden state at position t

The critic is an HF `*ForSequenceClassification` model with `num_labels=1`, like a reward
model (`alignlab.models.reward`), so it starts from a reward-model folder (InstructGPT
initialises the value function from the RM) or from any causal LM (transformers adds the
`score` head). `TokenValues` applies the head to every position instead of the last one, in the
layout of `TokenLogProbs` and `Rollout`: position t holds the value of the state that token
t + 1 is sampled from, and is set exactly where `TokenLogProbs.mask` is (the response tokens),
0 elsewhere.

Head initialisation (`init`): "auto" keeps the head of a reward-model checkpoint (its config
names a *ForSequenceClassification architecture) and zeroes a new one, so V = 0 everywhere at
the start; "zero" always zeroes it; "normal" draws it N(0, 1/(H + 1)) (`init_score_head`).

The saved critic is a plain HF sequence-classification folder (`save_reward_folder`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from alignlab.config import ConfigError, ModelConfig
from alignlab.models.lm import TokenLogProbs
from alignlab.models.loading import from_pretrained, unwrap_peft
from alignlab.models.reward import init_score_head, load_reward_model, score_head

HEAD_INITS: tuple[str, ...] = ("auto", "zero", "normal")


def is_reward_checkpoint(model: nn.Module) -> bool:
    """Whether the loaded checkpoint already was a sequence-classification model (has a head)."""
    architectures = getattr(unwrap_peft(model).config, "architectures", None) or []
    return any(name.endswith("ForSequenceClassification") for name in architectures)


def check_vocabulary(path: str, tokenizer: PreTrainedTokenizerBase) -> None:
    """Refuse a critic whose tokenizer maps tokens to other ids than the policy's: the critic
    reads the policy's token ids, so it must share its vocabulary."""
    if not (Path(path) / "tokenizer_config.json").is_file():
        return  # no tokenizer saved with the weights (or a hub id): nothing to compare
    own = from_pretrained(AutoTokenizer, path).get_vocab()
    policy = tokenizer.get_vocab()
    if any(policy.get(token) != index for token, index in own.items()):
        raise ConfigError(
            f"critic.path={path}: its tokenizer differs from the policy's; the critic reads the "
            "policy's token ids, so it must share the vocabulary (set critic.path to a reward "
            "model or causal LM trained with the policy's tokenizer)"
        )


def load_value_model(
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    init: str = "auto",
    device: torch.device | None = None,
    seed: int = 0,
) -> nn.Module:
    """A critic from `cfg.path` (a reward-model folder or a causal LM), head per `init`."""
    if init not in HEAD_INITS:
        raise ValueError(f"init must be one of {HEAD_INITS}, got {init!r}")
    check_vocabulary(cfg.path, tokenizer)
    model = load_reward_model(cfg, tokenizer, device=device, seed=seed)
    if init == "normal":
        init_score_head(model, seed)
    elif init == "zero" or not is_reward_checkpoint(model):
        with torch.no_grad():
            score_head(model).weight.zero_()
    return model


class TokenValues(nn.Module):
    """forward(batch) -> (B, T) float32 values at the positions `TokenLogProbs.mask` marks.

    An `nn.Module` so FSDP2 can shard it as the root: its forward unshards the embeddings,
    final norm and head it reads.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def hf_model(self) -> nn.Module:
        return unwrap_peft(self.model)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = self.hf_model.base_model(
            input_ids=batch["input_ids"],
            attention_mask=batch.get("attention_mask"),
            position_ids=batch.get("position_ids"),
            use_cache=False,
        ).last_hidden_state  # (B, T, H)
        values = score_head(self.model)(hidden).squeeze(-1).float()  # (B, T)
        return values * TokenLogProbs.mask(batch)

"""The config sections every RL recipe shares: prompts, the reference of the KL term, and
`rl.*` (sampling, reward shaping, the update's sizes and clip, the KL coefficient and its
controller, guard-rails). A recipe's own options (GAE's λ, Dr. GRPO, DAPO's clip-higher...)
live in its config class beside these sections."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

from alignlab.config import ConfigError, ModelConfig, TrainConfig, option
from alignlab.rl.rewards import RewardOptions
from alignlab.training.optim import refuse_step_in_backward


@dataclasses.dataclass
class PromptDataConfig:
    """Prompt-only rows: `prompt` (string or message list); other keys go to reward fns."""

    path: str = option(
        "", "JSONL/JSON/Parquet file, a `datasets` folder, or a hub dataset id", kind="data"
    )
    split: str = option("train", "split to read from a hub dataset or a saved DatasetDict")
    max_examples: int = option(0, "use at most this many prompts; 0 = all", min=0)
    max_prompt_tokens: int = option(
        0, "skip (and count) prompts longer than this many tokens; 0 = no limit", min=0
    )
    on_bad_example: str = option(
        "error", "bad record: stop with an error or skip and count", choices=("error", "skip")
    )

    def check(self) -> None:
        if not self.path:
            raise ConfigError("data.path is required: a prompt file, folder or hub dataset id")


@dataclasses.dataclass
class RLReferenceConfig:
    """The reference policy of the KL term (loaded when `RLConfig.uses_reference`)."""

    mode: str = option(
        "model",
        "model: a frozen copy of reference.path; adapter: the LoRA policy with adapters disabled",
        choices=("model", "adapter"),
    )
    path: str = option("", "reference model (hub id or folder); empty = model.path", kind="model")


@dataclasses.dataclass
class RLConfig(RewardOptions):
    """Sampling, reward and policy-update options shared by the RL recipes."""

    RENAMED: ClassVar[dict[str, str]] = {"beta": "kl_coef"}

    samples_per_prompt: int = option(4, "K responses sampled per prompt", min=1)
    prompts_per_step: int = option(8, "prompts per rollout (all processes together)", min=1)
    max_new_tokens: int = option(64, "response budget in tokens", min=1)
    temperature: float = option(1.0, "sampling temperature", min=0, min_exclusive=True)
    top_p: float = option(1.0, "nucleus sampling mass", min=0, max=1, min_exclusive=True)
    stop_strings: list[str] = option([], "cut responses at the first of these strings")
    generation_batch_size: int = option(32, "sequences per generation / scoring batch", min=1)
    num_iterations: int = option(1, "passes (PPO epochs) over each rollout", min=1)
    mini_batch_size: int = option(
        0, "samples per optimizer step (all processes); 0 = the whole rollout", min=0
    )
    clip_eps: float = option(0.2, "PPO ratio clip ε", min=0, min_exclusive=True)
    kl_coef: float = option(
        0.04, "KL coefficient β to the reference (initial value when kl_target > 0)", min=0
    )
    kl_target: float = option(
        0.0, "adaptive kl_coef: target KL per response (Ziegler et al.); 0 = fixed", min=0
    )
    kl_horizon: float = option(
        10000.0, "adaptive kl_coef horizon (samples)", min=0, min_exclusive=True
    )
    reward_clip: float = option(0.0, "clip rewards to [-c, c] before use; 0 = no clip", min=0)
    reward_normalization: str = option(
        "none", "whiten rewards over the step's batch (all processes)", choices=("none", "batch")
    )
    missing_eos_penalty: float = option(
        0.0, "subtracted from the reward of responses cut by max_new_tokens", min=0
    )
    max_kl: float = option(
        0.0, "stop when the mean per-response KL to the reference exceeds this; 0 = off", min=0
    )
    tis_cap: float = option(
        0.0,
        "truncated importance sampling: weight each token's policy-gradient loss by "
        "min(π_old / π_sampler, C); 0 = off",
        min=0,
    )
    tis_level: str = option(
        "token", "TIS ratio per token, or one per response (product)", choices=("token", "sequence")
    )
    length_watch_steps: int = option(
        10, "warn when length grows and reward does not over this many steps; 0 = off", min=0
    )

    @property
    def uses_reference(self) -> bool:
        """Whether the run needs the reference's log-probs: for the KL term (kl_coef > 0), and
        at kl_coef = 0 still for the KL that over-optimisation tracking (`gold`) plots and that
        `max_kl` guards; kl_coef multiplies every use in a loss or reward, so those stay
        KL-free."""
        return self.kl_coef > 0 or self.max_kl > 0 or bool(self.gold)

    def check(self) -> None:
        self.require_reward("rl.reward")
        rollout_size = self.prompts_per_step * self.samples_per_prompt
        if self.mini_batch_size and rollout_size % self.mini_batch_size:
            raise ConfigError(
                f"rl.mini_batch_size={self.mini_batch_size} must divide the rollout of "
                f"rl.prompts_per_step x rl.samples_per_prompt = {rollout_size} samples"
            )


def check_rl(
    rl: RLConfig,
    reference: RLReferenceConfig,
    model: ModelConfig,
    train: TrainConfig,
    grouped: bool = False,
) -> None:
    """Cross-section checks (call from the recipe config's `check`); `grouped`: the recipe's
    advantages compare the samples of a prompt, so it needs at least two of them."""
    refuse_step_in_backward(train)
    if grouped and rl.samples_per_prompt < 2:
        raise ConfigError(
            f"rl.samples_per_prompt={rl.samples_per_prompt}: this recipe's advantages compare "
            "the samples of one prompt (a group), so it needs at least 2"
        )
    if rl.uses_reference and reference.mode == "adapter" and not model.lora.enabled:
        raise ConfigError("reference.mode=adapter needs model.lora.enabled=true")

"""Who labels the pairs of an AI-feedback loop: a reward (model, ensemble, function, URL) or a
judge (a local model, or an OpenAI-compatible endpoint), one config section for every recipe.

    labeller:
      source: judge                 # or reward
      judge: runs/teacher/final     # a folder / hub id, or http(s)://host/v1 (judge_model: name)
      principle: ""                 # the judge's principle; empty = its default question
    comparisons = build_labeller(cfg.labeller).compare(prompts, samples)

`source=reward` ranks each prompt's samples by the reward (P = σ(r_a - r_b)); `source=judge`
compares every pair with the judge in both orders (`alignlab.judges`). Simulated human labels
in the lab come from a reward function too (a `module:function` that votes as annotators).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from alignlab.aif.comparisons import Comparisons, Prompt, judge_comparisons, reward_comparisons
from alignlab.config import ConfigError, option
from alignlab.judges import EndpointJudge, Judge, load_local_judge, load_templates
from alignlab.models.folders import check_model_source
from alignlab.rl.rewards import RewardOptions

SOURCES = ("reward", "judge")


@dataclasses.dataclass
class LabellerConfig(RewardOptions):
    """A reward or a judge labels each prompt's sampled pairs."""

    source: str = option("reward", "who labels the pairs: reward or judge", choices=SOURCES)
    judge: str = option(
        "", "judge: a model folder or hub id (local), or an http(s):// OpenAI-compatible base URL"
    )
    judge_model: str = option("", "the endpoint judge's model name (source=judge with a URL)")
    judge_templates: str = option("", "YAML of the judge's prompts (JudgeTemplates); empty = ours")
    judge_cache: str = option("", "endpoint judge: folder of cached verdicts; empty = none")
    judge_batch_size: int = option(16, "local judge: conversations per forward pass", min=1)
    principle: str = option("", "the judge's principle; empty = its default question")

    def check(self, section: str = "labeller") -> None:
        """`section`: the config section's name, which the errors name (cai's is feedback)."""
        if self.source == "judge":
            if not self.judge:
                raise ConfigError(
                    f"{section}.judge is required with {section}.source=judge: a model folder "
                    "or URL"
                )
            if is_url(self.judge) and not self.judge_model:
                raise ConfigError(
                    f"{section}.judge_model is required with the endpoint judge {self.judge}"
                )
            if not is_url(self.judge):  # a typo found now, not after the sampling stage
                check_model_source(self.judge, f"{section}.judge", tokenizer=True)
        elif not self.reward:
            raise ConfigError(
                f"{section}.reward is required with {section}.source=reward (or set "
                f"{section}.source=judge)"
            )


def is_url(spec: str) -> bool:
    return spec.startswith(("http://", "https://"))


def build_judge(cfg: LabellerConfig, device: Any = None) -> Judge:
    """The configured judge (`cfg.judge`: folder / hub id, or URL)."""
    templates = load_templates(cfg.judge_templates) if cfg.judge_templates else None
    if is_url(cfg.judge):
        return EndpointJudge(
            cfg.judge, cfg.judge_model, templates=templates,
            timeout=cfg.reward_timeout, cache_dir=cfg.judge_cache or None,
        )  # fmt: skip
    return load_local_judge(
        cfg.judge, templates=templates, batch_size=cfg.judge_batch_size, device=device
    )


class Labeller:
    """`compare(prompts, samples)`: Comparisons of every pair of each prompt's samples."""

    def __init__(self, cfg: LabellerConfig, device: Any = None) -> None:
        self.cfg = cfg
        self.judge: Judge | None = None
        self.reward_fn = None
        if cfg.source == "judge":
            self.judge = build_judge(cfg, device)
        else:
            self.reward_fn, _ = cfg.build(device)

    def compare(
        self,
        prompts: Sequence[Prompt],
        samples: Sequence[Sequence[str]],
        extras: Sequence[dict] | None = None,
        principles: Sequence[str | None] | None = None,
    ) -> Comparisons:
        if self.judge is not None:
            if principles is None and self.cfg.principle:
                principles = [self.cfg.principle] * len(prompts)
            return judge_comparisons(self.judge, prompts, samples, principles)
        assert self.reward_fn is not None
        return reward_comparisons(self.reward_fn, prompts, samples, extras)


def build_labeller(cfg: LabellerConfig, device: Any = None) -> Labeller:
    cfg.check()
    return Labeller(cfg, device)

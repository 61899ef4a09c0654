"""Best-of-n: sample n responses per prompt, answer with the one the reward scores highest.

No training: a policy of its own whose KL to the base is known in closed form,

    KL(π_bon || π) = log n - (n - 1) / n         (Stiennon et al. 2020, arXiv:2009.01325)

The formula treats every response as having vanishing probability; Beirami et al. 2024
(arXiv:2401.01879) show it is an upper bound on the actual KL, which can be much smaller when
a few responses carry much of the probability (short answers, a peaked policy). We report it
as the bound it is.

    samples, picked = best_of_n(model, tokenizer, prompts, reward_fn, n=8)   # all + argmax
    sft = load_for_eval("runs/sft/final")
    result = evaluate_best_of_n(sft, lab_prompts(world), reward="runs/rm/final", n=8,
                                scorer=gold_scorer(world), ref=sft,
                                options=EvalOptions(primary="total"))   # an EvalResult

`evaluate_best_of_n` gives the picked responses the eval harness's treatment
(`alignlab.eval.harness`): length, finished, diversity, scorer (e.g. the lab's gold) and
reward fns with confidence intervals, overall and per family, and with a reference its win rate
against the reference's own samples and the paired comparison with them (`metrics["paired"]`). Its `metrics["kl"]` is the closed form above (KL to the
sampling policy at the sampling temperature, which is KL to `ref` when `ref` is that policy),
so its EvalResult sits in the same report tables as a trained model's.

Command line: `alignlab bon model.path=... data.path=prompts.jsonl reward=RM_OR_FN n=8
output=picked.jsonl` writes one row per prompt, the picked response as a prompt/completion SFT
row with its `reward` (and `gold`), and prints the mean reward of the picked and of all samples.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignlab.config import ConfigError, ModelConfig, option, section
from alignlab.eval.harness import (
    EvalOptions,
    EvalPrompt,
    EvalResult,
    EvalSample,
    LoadedModel,
    Scorer,
    compare_with_reference,
    score_samples,
    summarize,
)
from alignlab.eval.stats import mean_ci
from alignlab.fileio import write_jsonl
from alignlab.icl.best_of_n import kl_best_of_n
from alignlab.models.loading import load_model, load_tokenizer
from alignlab.rl.config import PromptDataConfig
from alignlab.rl.prompts import check_generation_fits, load_prompt_rows
from alignlab.rl.rewards import RewardFn, RewardOptions, build_reward_fn
from alignlab.rl.sample_filter import Prompt, ScoredSamples, best_per_prompt, sample_and_score


def best_of_n(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[Prompt],
    reward_fn: RewardFn,
    n: int,
    extras: Sequence[dict[str, Any]] | None = None,
    **sampling: Any,
) -> tuple[ScoredSamples, list[int]]:
    """(all n samples per prompt, scored; the index of each prompt's pick, the first of the
    highest-reward ones). `reward_fn(prompts, texts, extras)` as built by
    `alignlab.rl.rewards.build_reward_fn`; `sampling`: the keyword options of
    `alignlab.rl.sample_filter.sample_and_score` (max_new_tokens, temperature, seed, ...)."""
    samples = sample_and_score(model, tokenizer, prompts, extras, reward_fn, n, **sampling)
    return samples, best_per_prompt(samples.rewards, n)


def evaluate_best_of_n(
    policy: LoadedModel,
    prompts: Sequence[EvalPrompt],
    reward: str | RewardFn,
    n: int,
    ref: LoadedModel | None = None,
    scorer: Scorer | None = None,
    reward_fns: dict[str, Callable[[Prompt, str], float]] | None = None,
    options: EvalOptions | None = None,
) -> EvalResult:
    """Best-of-n of `policy` evaluated like a model (see the module docstring).

    `reward`: a reward spec (RM folder, module:function, URL, ...) or a reward function
    `fn(prompts, texts, extras)`; a prompt's extras are its meta's scalar values. The pick's
    reward is in each sample's `rewards["best_of_n"]` and in `metrics["best_of_n"]` beside
    the mean reward of all n samples. `options`: as for a model (`options.num_samples` is
    ignored: one pick per prompt).
    """
    if not prompts:
        raise ValueError("no prompts to evaluate")
    options = options or EvalOptions()
    reward_fn = build_reward_fn(reward) if isinstance(reward, str) else reward
    extras = [
        {k: v for k, v in p.meta.items() if isinstance(v, (str, int, float, bool))} for p in prompts
    ]
    samples, picked = best_of_n(
        policy.model, policy.tokenizer, [p.prompt for p in prompts], reward_fn, n, extras,
        max_new_tokens=options.max_new_tokens, temperature=options.temperature,
        top_p=options.top_p, batch_size=options.batch_size, seed=options.seed,
    )  # fmt: skip
    chosen = [EvalSample(p, 0, samples.generations[i]) for p, i in enumerate(picked)]
    score_samples(chosen, prompts, scorer, reward_fns)
    for sample, i in zip(chosen, picked):
        # after the reward fns, so that a reference win rate is by one of theirs, not this one
        sample.rewards["best_of_n"] = samples.rewards[i]
    sampling = dataclasses.replace(options, num_samples=1)
    confidence = options.confidence
    kl = kl_best_of_n(n)
    metrics: dict[str, Any] = {
        "name": f"{policy.name} best-of-{n}",
        "model": policy.name,
        "ref": ref.name if ref is not None else None,
        "n_prompts": len(prompts),
        "num_samples": 1,
        "n_samples": len(chosen),
        "settings": {
            "n": n,
            "max_new_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "batch_size": sampling.batch_size,
            "seed": sampling.seed,
            "ref_seed": sampling.reference_seed if ref is not None else None,
            "confidence": confidence,
        },
        **summarize(chosen, prompts, 1, confidence),
        # closed form, not a Monte Carlo estimate: no interval
        "kl": {"mean": kl, "se": None, "lower": None, "upper": None, "n": len(prompts),
               "method": "best-of-n analytic upper bound"},
        "best_of_n": {
            "n": n,
            "kl_bound": kl,
            "picked_reward": mean_ci([samples.rewards[i] for i in picked], confidence).to_dict(),
            "all_reward": mean_ci(
                samples.rewards, confidence, [j // n for j in range(len(samples))]
            ).to_dict(),
        },
    }  # fmt: skip
    ref_samples: list[EvalSample] = []
    if ref is not None and (scorer is not None or reward_fns):
        comparison, ref_samples = compare_with_reference(
            chosen, prompts, ref, sampling, scorer, reward_fns
        )
        metrics.update(comparison)
    return EvalResult(metrics, chosen, ref_samples)


# --- command line: alignlab bon ---


@dataclasses.dataclass
class BestOfNConfig(RewardOptions):
    """Best-of-n: sample n responses per prompt, keep the one the reward scores highest."""

    model: ModelConfig = section(ModelConfig, "the policy to sample from")
    data: PromptDataConfig = section(PromptDataConfig, "prompts")
    n: int = option(8, "responses sampled per prompt", min=1)
    max_new_tokens: int = option(64, "response budget in tokens", min=1)
    temperature: float = option(1.0, "sampling temperature", min=0, min_exclusive=True)
    top_p: float = option(1.0, "nucleus sampling mass", min=0, max=1, min_exclusive=True)
    stop_strings: list[str] = option([], "cut responses at the first of these strings")
    batch_size: int = option(32, "sequences per generation batch", min=1)
    seed: int = option(0, "sampling seed")
    output: str = option("picked.jsonl", "JSONL file of the picked responses, one per prompt")

    def check(self) -> None:
        self.require_reward("reward")
        if self.model.lora.enabled:
            raise ConfigError("model.lora.enabled: best-of-n trains nothing; load a merged model")


def run(cfg: BestOfNConfig) -> Path:
    """Sample, score, pick; write `output` and return its path."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(cfg.model)
    rows = load_prompt_rows(cfg.data, tokenizer)
    check_generation_fits(cfg.model, tokenizer, rows, "max_new_tokens", cfg.max_new_tokens)
    model = load_model(cfg.model, tokenizer, device=device).eval()
    reward_fn, gold_fn = cfg.build(device)
    samples, picked = best_of_n(
        model, tokenizer, [row.prompt for row in rows], reward_fn, cfg.n,
        [row.extras for row in rows], max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, top_p=cfg.top_p, stop_strings=cfg.stop_strings,
        batch_size=cfg.batch_size, seed=cfg.seed, gold_fn=gold_fn,
    )  # fmt: skip
    output = Path(cfg.output)
    write_jsonl(output, samples.records(picked))
    summary = {
        "n": cfg.n,
        "prompts": len(rows),
        "picked_reward_mean": sum(samples.rewards[i] for i in picked) / len(picked),
        "all_reward_mean": sum(samples.rewards) / len(samples),
        "kl_bound": kl_best_of_n(cfg.n),
    }
    if samples.gold is not None:
        summary["picked_gold_mean"] = sum(samples.gold[i] for i in picked) / len(picked)
        summary["all_gold_mean"] = sum(samples.gold) / len(samples)
    print(json.dumps(summary, indent=2))
    print(f"picked responses: {output}")
    return output

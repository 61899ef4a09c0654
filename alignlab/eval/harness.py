"""Evaluate a model folder: sample responses, score them, estimate KL to a reference.

Generic on purpose: the gold of a simulated world, a reward model or a judge plug in as
callables. `scorer(EvalPrompt, response) -> {name: float | bool}` gives numeric components
(total, helpful, ...) and boolean flags (refused, correct, ...); `reward_fns[name](prompt,
response) -> float` are further scores.

What is estimated, from `num_samples` responses per prompt:
- length (response tokens, stop token included), fraction finished (stopped by a stop token),
  distinct-1/2 of the response texts;
- with a reference: KL(π || π_ref), the mean of log π(y|x) - log π_ref(y|x) over the policy's
  own samples (teacher-forced log-probs of the same response tokens under both models, each
  after its own rendering of the prompt, so a model whose chat template adds to the prompt is
  compared on the user's prompt; it is the KL of the distribution sampled only at
  temperature 1, top_p 1);
- each reward fn and each numeric scorer key: mean with a t interval; each boolean scorer
  key: rate with a Wilson interval; both overall and per `meta["family"]`;
- with a reference and a score: the win rate of the model's samples over the reference's
  (sample k of a prompt against sample k of the reference for that prompt), and the paired
  comparison (`metrics["paired"]`, `alignlab.eval.paired`): the mean per-prompt difference
  of that score with paired t and bootstrap intervals, the per-prompt win rate (Wilson), the
  unpaired means and whether the difference is separated from 0, overall and per family.

Sampling seeds are per prompt (`sampling_seeds`): sample k of a prompt draws its random
numbers from a generator seeded by a hash of (seed, the prompt, k), whatever the model, the
batch or the prompt's place in the list. Every model evaluated with one seed, and the
reference (`EvalOptions.ref_seed=None`: the same seed), therefore sample each prompt with the same random
numbers (common random numbers): a comparison of two models on the same prompts is then free
of the sampling noise the two share, and a model compared with itself gets the reference's
samples exactly (difference 0, every pair a tie, win rate 0.5). The win rate is then that of coupled
draws (similar models tie more often than independent draws would); `ref_seed=<another
seed>` samples the reference independently. KL is exactly 0 for a model against itself either
way: each sample's two log-probs are the same computation. Every setting (samples per prompt,
sampling, seeds, confidence, the ranking score) is one `EvalOptions`.

Intervals with several samples per prompt are cluster-robust over prompts (means) or plain
Wilson intervals over samples (rates, slightly too narrow then).
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import logging
import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from alignlab.config import ConfigError
from alignlab.data.templates import Messages, render_prompt
from alignlab.eval.paired import paired_comparison
from alignlab.eval.stats import (
    distinct_n,
    kl_estimate,
    mean_ci,
    proportion_ci,
    win_rate,
)
from alignlab.models.generation import Generation, generate, prompt_token_ids
from alignlab.models.logprobs import sequence_logps

logger = logging.getLogger(__name__)

Prompt = str | Messages
Scorer = Callable[["EvalPrompt", str], dict[str, float | bool]]
RewardFn = Callable[[Prompt, str], float]


@dataclass
class EvalPrompt:
    """A prompt (string or message list) and what a scorer needs to know about it."""

    prompt: Prompt
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalSample:
    """One response with everything measured on it."""

    prompt_index: int
    sample_index: int
    generation: Generation
    logp: float | None = None
    """log π(y|x) under the evaluated model (set when there is a reference)."""
    ref_logp: float | None = None
    """log π_ref(y|x) of the same tokens under the reference."""
    scores: dict[str, float | bool] = field(default_factory=dict)
    rewards: dict[str, float] = field(default_factory=dict)

    @property
    def kl(self) -> float | None:
        """log π(y|x) - log π_ref(y|x): this sample's term of the KL estimate."""
        if self.logp is None or self.ref_logp is None:
            return None
        return self.logp - self.ref_logp

    def to_dict(self) -> dict[str, Any]:
        g = self.generation
        return {
            "prompt_index": self.prompt_index,
            "sample_index": self.sample_index,
            "prompt_text": g.prompt_text,
            "response": g.text,
            "response_tokens": len(g.response_ids),
            "finished": g.finished,
            "logp": self.logp,
            "ref_logp": self.ref_logp,
            "kl": self.kl,
            "scores": _jsonable(self.scores),
            "rewards": _jsonable(self.rewards),
        }


@dataclass
class EvalResult:
    """`metrics`: nested JSON-able dict (estimates as {mean, se, lower, upper, n, ...});
    `samples`: the model's scored responses; `ref_samples`: the reference's, when generated."""

    metrics: dict[str, Any]
    samples: list[EvalSample] = field(default_factory=list)
    ref_samples: list[EvalSample] = field(default_factory=list)

    def to_dict(self, samples: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {"metrics": self.metrics}
        if samples:
            out["samples"] = [s.to_dict() for s in self.samples]
            out["ref_samples"] = [s.to_dict() for s in self.ref_samples]
        return out

    def to_json(self, samples: bool = True, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(samples), indent=indent, ensure_ascii=False)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if hasattr(value, "item") and not isinstance(value, (bool, int, float, str)):
            value = value.item()  # a 0-d tensor or a numpy scalar
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


# --- loading ---


@dataclass
class LoadedModel:
    """A model and its tokenizer, as `evaluate_model` takes them."""

    model: nn.Module
    tokenizer: Any
    name: str = ""


def load_for_eval(
    path: str | Path, device: str | torch.device | None = None, dtype: str = "fp32"
) -> LoadedModel:
    """Model and tokenizer from an HF folder or hub id, in eval mode on `device` (default: cuda
    when available, else cpu)."""
    from alignlab.config import ModelConfig
    from alignlab.models.loading import load_model, load_tokenizer

    cfg = ModelConfig(path=str(path), dtype=dtype)
    tokenizer = load_tokenizer(cfg)
    model = load_model(cfg, tokenizer, device=torch.device(_device(device)))
    model.eval()
    return LoadedModel(model, tokenizer, str(path))


def _device(device: str | torch.device | None) -> str | torch.device:
    if device is not None:
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def same_folder(a: str | Path, b: str | Path) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return str(a) == str(b)


def check_same_vocab(policy: LoadedModel, ref: LoadedModel) -> None:
    if policy.tokenizer.get_vocab() != ref.tokenizer.get_vocab():
        raise ConfigError(
            f"the reference {ref.name or '(ref)'} has a different tokenizer vocabulary from "
            f"{policy.name or 'the model'}: the KL needs both models to score the same token ids"
        )


# --- sampling and scoring ---


@dataclass(frozen=True)
class EvalOptions:
    """How an evaluation samples and summarises: one object for every entry point (frozen and
    hashable: with the reference it keys the cache of the reference's samples)."""

    num_samples: int = 1
    """Responses per prompt."""
    max_new_tokens: int = 64
    temperature: float = 1.0
    """1 with top_p 1 samples the model's own distribution (what the KL estimate needs)."""
    top_p: float = 1.0
    batch_size: int = 32
    seed: int = 0
    ref_seed: int | None = None
    """The reference's sampling seed; None = `seed` (common random numbers, module docstring)."""
    confidence: float = 0.95
    primary: str = ""
    """The score that ranks against the reference (win rate, paired difference): a scorer key
    or a reward fn name; empty = the first reward fn, else the scorer's first numeric key."""

    @property
    def reference_seed(self) -> int:
        return self.seed if self.ref_seed is None else self.ref_seed


def sampling_seeds(prompts: Sequence[Prompt], num_samples: int, seed: int) -> list[int]:
    """The generator seed of sample k of each prompt, prompt-major: the first 63 bits of
    sha256 of (seed, the prompt as JSON, its occurrence among identical earlier prompts, k).

    A function of the prompt and the eval seed only, not of the model, the batch or the
    prompt's place in the list, so every model evaluated with one seed samples a prompt with
    the same random numbers, and a prompt keeps its samples in a subset or a reordering of the
    prompts. A repeated prompt gets fresh seeds (its occurrence number): duplicates are
    independent draws, as the intervals assume.
    """
    seen: dict[str, int] = {}
    seeds = []
    for prompt in prompts:
        content = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
        occurrence = seen.get(content, 0)
        seen[content] = occurrence + 1
        for k in range(num_samples):
            key = json.dumps([seed, content, occurrence, k]).encode()
            seeds.append(int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1)
    return seeds


def _sample(
    loaded: LoadedModel, prompts: Sequence[EvalPrompt], options: EvalOptions, seed: int
) -> list[EvalSample]:
    """num_samples responses per prompt (prompt-major order), seeded per prompt and sample."""
    expanded = [(p, k) for p in range(len(prompts)) for k in range(options.num_samples)]
    seeds = sampling_seeds([p.prompt for p in prompts], options.num_samples, seed)
    generations = generate(
        loaded.model,
        loaded.tokenizer,
        [prompts[p].prompt for p, _ in expanded],
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        batch_size=options.batch_size,
        seeds=seeds,
    )
    return [EvalSample(p, k, g) for (p, k), g in zip(expanded, generations)]


def _as_prompted_by(
    tokenizer: Any, samples: Sequence[EvalSample], prompts: Sequence[EvalPrompt]
) -> list[Generation]:
    """The samples' responses after each prompt as `tokenizer` renders it (its chat template).

    KL(π ‖ π_ref) compares the two models on the user's prompt x: when the evaluated model
    renders x differently (a Chain-of-Hindsight model's template adds its feedback phrase, a
    model with a baked-in system prompt), the reference scores y after its own rendering of x,
    not after the policy's."""
    rendered: dict[int, tuple[str, list[int]]] = {}
    out = []
    for sample in samples:
        generation = sample.generation
        if sample.prompt_index not in rendered:
            text = render_prompt(tokenizer, prompts[sample.prompt_index].prompt)
            ids = generation.prompt_ids
            if text != generation.prompt_text:
                ids = prompt_token_ids(tokenizer, text)
            rendered[sample.prompt_index] = (text, list(ids))
        text, ids = rendered[sample.prompt_index]
        out.append(dataclasses.replace(generation, prompt_text=text, prompt_ids=ids))
    return out


def score_samples(
    samples: list[EvalSample],
    prompts: Sequence[EvalPrompt],
    scorer: Scorer | None,
    reward_fns: dict[str, RewardFn] | None,
) -> None:
    """Fill each sample's `scores` (the scorer's dict) and `rewards` (one per reward fn)."""
    for sample in samples:
        prompt = prompts[sample.prompt_index]
        text = sample.generation.text
        if scorer is not None:
            result = scorer(prompt, text)
            if not isinstance(result, dict):
                raise TypeError(f"the scorer must return a dict, got {type(result).__name__}")
            sample.scores = dict(result)
        for name, fn in (reward_fns or {}).items():
            sample.rewards[name] = float(fn(prompt.prompt, text))


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not _is_bool(value)


def _score_estimates(
    samples: Sequence[EvalSample], groups: Sequence[int] | None, confidence: float
) -> dict[str, dict[str, Any]]:
    """Each scorer key: mean with a t interval (numbers) or rate with a Wilson interval (bools)."""
    keys: list[str] = []
    for sample in samples:
        keys.extend(k for k in sample.scores if k not in keys)
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        present = [(i, s.scores[key]) for i, s in enumerate(samples) if key in s.scores]
        values = [v for _, v in present]
        if values and all(_is_bool(v) for v in values):
            est = proportion_ci(sum(bool(v) for v in values), len(values), confidence)
            out[key] = est.to_dict()
        elif values and all(_is_bool(v) or _is_number(v) for v in values):
            sub_groups = [groups[i] for i, _ in present] if groups is not None else None
            est = mean_ci([float(v) for v in values], confidence, sub_groups)
            out[key] = est.to_dict()
    return out


def summarize(
    samples: Sequence[EvalSample],
    prompts: Sequence[EvalPrompt],
    num_samples: int,
    confidence: float,
) -> dict[str, Any]:
    """Length, finished rate, diversity, rewards and scores (overall and per family)."""
    groups = [s.prompt_index for s in samples] if num_samples > 1 else None
    texts = [s.generation.text for s in samples]
    finished = sum(s.generation.finished for s in samples)
    out: dict[str, Any] = {
        "length": mean_ci(
            [len(s.generation.response_ids) for s in samples], confidence, groups
        ).to_dict(),
        "finished": proportion_ci(finished, len(samples), confidence).to_dict(),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
    }
    reward_names: list[str] = []
    for sample in samples:
        reward_names.extend(k for k in sample.rewards if k not in reward_names)
    if reward_names:
        out["rewards"] = {
            name: mean_ci([s.rewards[name] for s in samples], confidence, groups).to_dict()
            for name in reward_names
        }
    if any(s.scores for s in samples):
        out["scores"] = _score_estimates(samples, groups, confidence)
        families: dict[str, list[int]] = {}
        for i, sample in enumerate(samples):
            family = prompts[sample.prompt_index].meta.get("family")
            if family is not None:
                families.setdefault(str(family), []).append(i)
        if families:
            out["scores_by_family"] = {
                family: _score_estimates(
                    [samples[i] for i in members],
                    [groups[i] for i in members] if groups is not None else None,
                    confidence,
                )
                for family, members in sorted(families.items())
            }
    return out


def _win_key(samples: Sequence[EvalSample], primary: str = "") -> tuple[str, str] | None:
    """Where the ranking score lives: ("scores", primary) for a scorer key, ("rewards", primary)
    for a reward fn; without `primary` the first reward fn, else the scorer's first numeric
    key (`EvalOptions.primary`)."""
    if not samples:
        return None
    first = samples[0]
    if primary:
        if primary in first.scores and _is_number(first.scores[primary]):
            return "scores", primary
        if primary in first.rewards:
            return "rewards", primary
        known = [k for k, v in first.scores.items() if _is_number(v)] + list(first.rewards)
        raise ValueError(f"primary score {primary!r} is not among the scores: {known}")
    if first.rewards:
        return "rewards", next(iter(first.rewards))
    for key, value in first.scores.items():
        if _is_number(value):
            return "scores", key
    return None


def _value(sample: EvalSample, key: tuple[str, str]) -> float:
    source = sample.scores if key[0] == "scores" else sample.rewards
    return float(source[key[1]])


def prompt_families(prompts: Sequence[EvalPrompt]) -> dict[int, str]:
    """{prompt index: meta["family"]} for the prompts that have one."""
    return {
        i: str(p.meta["family"]) for i, p in enumerate(prompts) if p.meta.get("family") is not None
    }


# --- evaluation ---


def evaluate_model(
    policy: LoadedModel,
    prompts: Sequence[EvalPrompt],
    ref: LoadedModel | None = None,
    scorer: Scorer | None = None,
    reward_fns: dict[str, RewardFn] | None = None,
    options: EvalOptions = EvalOptions(),
    _ref_cache: dict[Any, list[EvalSample]] | None = None,
) -> EvalResult:
    """`evaluate` on models already loaded (e.g. a model being trained); see `evaluate`."""
    if not prompts:
        raise ValueError("no prompts to evaluate")
    if options.num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {options.num_samples}")
    if ref is not None:
        check_same_vocab(policy, ref)
    seed = options.seed
    num_samples, confidence = options.num_samples, options.confidence
    temperature, top_p, batch_size = options.temperature, options.top_p, options.batch_size
    # the reference evaluated as a model, with the reference's seed, draws exactly the
    # reference's samples: sample (and score) them once, whichever of the two comes first
    is_reference_draw = (
        ref is not None and policy.model is ref.model and seed == options.reference_seed
    )
    cache_key = _reference_cache_key(ref, options) if ref is not None else None
    if is_reference_draw and _ref_cache is not None and cache_key in _ref_cache:
        samples = [_unmeasured(sample) for sample in _ref_cache[cache_key]]
    else:
        samples = _sample(policy, prompts, options, seed)
        score_samples(samples, prompts, scorer, reward_fns)
        if is_reference_draw and _ref_cache is not None:
            _ref_cache[cache_key] = [_unmeasured(sample) for sample in samples]
    metrics: dict[str, Any] = {
        "name": policy.name,
        "model": policy.name,
        "ref": ref.name if ref is not None else None,
        "n_prompts": len(prompts),
        "num_samples": num_samples,
        "n_samples": len(samples),
        "settings": {
            "max_new_tokens": options.max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "batch_size": batch_size,
            "seed": seed,
            "ref_seed": options.reference_seed if ref is not None else None,
            "confidence": confidence,
        },
    }
    metrics.update(summarize(samples, prompts, num_samples, confidence))
    ref_samples: list[EvalSample] = []
    if ref is not None:
        generations = [s.generation for s in samples]
        logps = sequence_logps(policy.model, policy.tokenizer, generations, batch_size)
        if policy.model is ref.model and policy.tokenizer is ref.tokenizer:
            ref_logps = logps  # the same computation on the same tokens
        else:
            ref_view = _as_prompted_by(ref.tokenizer, samples, prompts)
            ref_logps = sequence_logps(ref.model, ref.tokenizer, ref_view, batch_size)
        for sample, lp, rlp in zip(samples, logps.tolist(), ref_logps.tolist()):
            sample.logp, sample.ref_logp = lp, rlp
        if temperature != 1.0 or top_p != 1.0:
            warnings.warn(
                f"KL estimated from samples at temperature={temperature}, top_p={top_p}: these "
                "are not samples of the model's own distribution, so the estimate is not "
                "KL(model || ref); use temperature=1, top_p=1",
                stacklevel=2,
            )
        groups = [s.prompt_index for s in samples] if num_samples > 1 else None
        kl = kl_estimate(logps, ref_logps, confidence, groups).to_dict()
        kl["exact_sampling"] = temperature == 1.0 and top_p == 1.0
        metrics["kl"] = kl
        if scorer is not None or reward_fns:
            comparison, ref_samples = compare_with_reference(
                samples, prompts, ref, options, scorer, reward_fns, _ref_cache
            )
            metrics.update(comparison)
    return EvalResult(metrics, samples, ref_samples)


def _reference_cache_key(ref: LoadedModel, options: EvalOptions) -> tuple[int, EvalOptions]:
    return id(ref.model), options


def _unmeasured(sample: EvalSample) -> EvalSample:
    """A copy of a scored sample without its log-probs (the reference's samples carry none)."""
    return dataclasses.replace(
        sample,
        scores=dict(sample.scores),
        rewards=dict(sample.rewards),
        logp=None,
        ref_logp=None,
    )


def compare_with_reference(
    samples: Sequence[EvalSample],
    prompts: Sequence[EvalPrompt],
    ref: LoadedModel,
    options: EvalOptions,
    scorer: Scorer | None,
    reward_fns: dict[str, RewardFn] | None,
    cache: dict[Any, list[EvalSample]] | None = None,
) -> tuple[dict[str, Any], list[EvalSample]]:
    """({"reference": summary, "win_rate": ..., "paired": ...}, the reference's samples): the
    reference's own samples (seed `options.reference_seed`), scored like `samples`, the win
    rate of sample k of each prompt over the reference's sample k, and the paired comparison
    of the per-prompt mean scores (by `options.primary`, see `_win_key`). `cache` keeps the
    reference's scored samples across models."""
    confidence = options.confidence
    cache_key = _reference_cache_key(ref, options)
    if cache is not None and cache_key in cache:
        ref_samples = cache[cache_key]
    else:
        ref_samples = _sample(ref, prompts, options, options.reference_seed)
        score_samples(ref_samples, prompts, scorer, reward_fns)
        if cache is not None:
            cache[cache_key] = ref_samples
    out: dict[str, Any] = {
        "reference": summarize(ref_samples, prompts, options.num_samples, confidence)
    }
    key = _win_key(samples, options.primary)
    if key is not None:
        est = win_rate(
            [_value(s, key) for s in samples], [_value(s, key) for s in ref_samples], confidence
        )
        out["win_rate"] = {"by": ".".join(key), **est.to_dict()}
        out["paired"] = paired_comparison(
            samples,
            ref_samples,
            lambda sample: _value(sample, key),
            prompt_families(prompts),
            baseline=ref.name or "reference",
            by=".".join(key),
            confidence=confidence,
            same_seeds=options.seed == options.reference_seed,
        )
    return out, ref_samples


def evaluate(
    model_dir: str | Path,
    prompts: Sequence[EvalPrompt],
    ref_dir: str | Path | None = None,
    scorer: Scorer | None = None,
    reward_fns: dict[str, RewardFn] | None = None,
    options: EvalOptions = EvalOptions(),
    device: str | torch.device | None = None,
    dtype: str = "fp32",
) -> EvalResult:
    """Sample `options.num_samples` responses per prompt from the model in `model_dir` and
    measure them (see the module docstring for what, and for `options.ref_seed`).

    With `ref_dir` (same tokenizer vocabulary): KL(model || ref) from the model's samples, and
    when a scorer or reward fn is given, the reference's own samples, their scores
    (`metrics["reference"]`), the model's win rate against them (`metrics["win_rate"]`) and
    the paired comparison of the per-prompt means (`metrics["paired"]`), by `options.primary`
    (default: the first reward fn, else the scorer's first numeric key).
    Sampling defaults (temperature 1, top_p 1) sample the model's own distribution.
    """
    name = Path(str(model_dir)).name or str(model_dir)
    return evaluate_many(
        {name: model_dir}, prompts, ref_dir, scorer, reward_fns, options, device, dtype
    )[name]


def evaluate_many(
    models: dict[str, str | Path],
    prompts: Sequence[EvalPrompt],
    ref_dir: str | Path | None = None,
    scorer: Scorer | None = None,
    reward_fns: dict[str, RewardFn] | None = None,
    options: EvalOptions = EvalOptions(),
    device: str | torch.device | None = None,
    dtype: str = "fp32",
) -> dict[str, EvalResult]:
    """`evaluate` for several model folders ({name: path}) against one reference, with the same
    prompts and settings. The reference is loaded once and its samples (for win rates) are
    drawn and scored once; models are loaded one at a time. A model whose folder is the
    reference's reuses the loaded reference and, with the reference's seed, its samples: the
    reference is then sampled once in all, not once as a model and once as the reference."""
    device = _device(device)
    ref = load_for_eval(ref_dir, device, dtype) if ref_dir is not None else None
    cache: dict[Any, list[EvalSample]] = {}
    results: dict[str, EvalResult] = {}
    for name, path in models.items():
        logger.info("evaluating %s (%s)", name, path)
        if ref is not None and ref_dir is not None and same_folder(path, ref_dir):
            policy = LoadedModel(ref.model, ref.tokenizer, str(path))
        else:
            policy = load_for_eval(path, device, dtype)
        results[name] = evaluate_model(
            policy, prompts, ref, scorer, reward_fns, options, _ref_cache=cache
        )
        results[name].metrics["name"] = name
        del policy
        if torch.cuda.is_available():  # hand the model's memory back before the next one
            gc.collect()
            torch.cuda.empty_cache()
    return results

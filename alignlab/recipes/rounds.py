"""The round loop of iterative preference optimisation: sample from the current policy, label,
pair, DPO from the current policy, repeat (iterative / online DPO, self-rewarding).

Round r = 1..R, from the policy π_{r-1} (π_0 = model.path), its folders in output_dir/round_r:

    samples   K responses per prompt from π_{r-1} on the round's prompt slice   samples.jsonl
    pairs     the labeller's comparisons of each prompt's samples -> pairs      pairs.jsonl
              best_vs_worst: one (best, worst) pair per prompt, ties dropped      stats.json
              all: every pair the labeller prefers one side of
    dpo       recipe dpo from π_{r-1} on those pairs, reference π_0 (initial)     dpo/final = π_r
              or π_{r-1} (previous)

The round's prompts are rows (r-1)·n .. r·n - 1 of the prompt dataset (n = prompts_per_round),
wrapping around when it runs out. output_dir/rounds.jsonl has one line per round (the policy
sampled, pairs kept, the labeller's mean reward and preference strength, gold when given) and
output_dir/final is the last round's model (hard links, or a copy across file systems).

Every stage is cached (`alignlab.recipes.stages`): `rounds=1` then `rounds=2` reuses round 1,
and a changed stage (its policy's weights, the labeller, the options it reads) is redone with
the rounds after it. `rounds` is in no stage's key.

Xiong et al. 2024 (arXiv:2312.11456, iterative RLHF: fresh prompts per iteration, best-vs-worst
of n by a reward, reference the initial model); Guo et al. 2024 (arXiv:2402.04792, online AI
feedback); Yuan et al. 2024 (arXiv:2401.10020, self-rewarding: the labeller is π_{r-1} itself).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from alignlab.aif.comparisons import Comparisons, Prompt, label_agreement
from alignlab.aif.samples import read_samples, sample_k, write_samples
from alignlab.config import ConfigError, ModelConfig, load_config, option, section
from alignlab.data.schema import DataError
from alignlab.eval.harness import load_for_eval
from alignlab.fileio import atomic_write_text, write_jsonl
from alignlab.recipes import RECIPES, resolve_preset
from alignlab.recipes.stages import cached, input_stamp, publish_final, recipe_stage, stage_key
from alignlab.rl.config import PromptDataConfig
from alignlab.rl.prompts import load_prompt_rows
from alignlab.rl.rewards import build_reward_fn

PAIRS = ("best_vs_worst", "all")
REFERENCES = ("initial", "previous")
SET_BY_ROUNDS = ("model.path", "data.path", "train.output_dir", "reference.path")
"""DPO keys each round sets itself (a dpo_overrides entry for one is refused)."""

Label = Callable[[str, list[Prompt], list[list[str]], list[dict]], Comparisons]
"""(policy folder sampled, prompts, samples per prompt, row extras) -> the labels."""


@dataclasses.dataclass
class RoundOptions:
    """What every iterative-DPO recipe shares: the policy, prompts, budget, sampling, DPO."""

    model: ModelConfig = section(ModelConfig, "the initial policy π_0 (an SFT model)")
    data: PromptDataConfig = section(
        PromptDataConfig, "prompts (`prompt` column), sliced per round"
    )
    rounds: int = option(2, "rounds R of sample -> label -> DPO", min=1)
    prompts_per_round: int = option(512, "prompts sampled per round (a fresh slice each)", min=1)
    k: int = option(4, "responses sampled per prompt from the current policy", min=2)
    pairs: str = option(
        "best_vs_worst", "pairs per prompt: best_vs_worst (one) or all labelled", choices=PAIRS
    )
    reference: str = option(
        "initial", "DPO reference: initial (π_0, Xiong et al.) or previous (π_{r-1}, Yuan et al.)",
        choices=REFERENCES,
    )  # fmt: skip
    max_new_tokens: int = option(48, "tokens per sampled response", min=1)
    temperature: float = option(1.0, "sampling temperature", min=0)
    top_p: float = option(1.0, "nucleus sampling mass", min=0, max=1, min_exclusive=True)
    batch_size: int = option(64, "prompts per generation batch", min=1)
    seed: int = option(1, "sampling seed of round 1 (round r samples with seed + r - 1)")
    dpo_preset: str = option("", "preset of each round's DPO stage (e.g. dpo_lab); empty = none")
    dpo_overrides: list[str] = option([], "key=value overrides of each round's DPO stage")

    def check(self) -> None:
        if not self.model.path:
            raise ConfigError("model.path is required: the initial policy")
        self.data.check()
        check_stage_overrides("dpo_overrides", self.dpo_overrides, SET_BY_ROUNDS)


def check_stage_overrides(
    field: str, overrides: Sequence[str], owned: Sequence[str], setter: str = "each round"
) -> None:
    """ConfigError naming `field` when an override sets a key that `setter` sets itself."""
    for text in overrides:
        if "=" not in text:
            raise ConfigError(f"{field}: {text!r} must look like key.sub=value")
        key = text.split("=", 1)[0].strip()
        if key in owned:
            raise ConfigError(f"{field}: {key} is set by {setter}; remove it")


def stage_config(recipe: str, preset: str, overrides: Sequence[str], field: str) -> Any:
    """A stage's config loaded as its rounds will load it (placeholder paths), so that a bad
    preset or override stops the run before any model loads; the error names `field`."""
    module_name, config_name = RECIPES[recipe]
    config_cls = getattr(importlib.import_module(module_name), config_name)
    placeholders = ["model.path=policy", "data.path=pairs.jsonl"]
    try:
        path = resolve_preset(preset) if preset else None
        return load_config(config_cls, path, [*placeholders, *overrides])
    except ConfigError as err:
        raise ConfigError(f"{field} ({recipe} stage): {err}") from None


def check_dpo_stage(cfg: RoundOptions) -> None:
    """The DPO stage's preset and overrides load, and agree with `reference`."""
    dpo = stage_config("dpo", cfg.dpo_preset, cfg.dpo_overrides, "dpo_preset / dpo_overrides")
    if cfg.reference == "initial" and dpo.uses_reference and dpo.reference.mode == "adapter":
        raise ConfigError(
            "reference=initial: the DPO stage has reference.mode=adapter, whose reference is "
            "the base of each round's policy (the previous iterate); set reference=previous, "
            "or reference.mode=precomputed or model in dpo_overrides"
        )


def run_rounds(
    cfg: RoundOptions,
    out: Path,
    label: Label,
    label_key: Callable[[str], object],
    initial: str | None = None,
    gold: str = "",
    reward_timeout: float = 60.0,
) -> Path:
    """The rounds (module docstring) from `initial` (default model.path); output_dir/final.
    `label_key(policy)` is what identifies the labelling of that policy's samples."""
    initial = initial or cfg.model.path
    policy, summaries = initial, []
    for r in range(1, cfg.rounds + 1):
        folder = out / f"round_{r}"
        samples = samples_stage(cfg, policy, r, folder / "samples")
        pairs, stats = pairs_stage(
            cfg, samples, policy, label, label_key(policy), gold, reward_timeout, folder / "pairs"
        )
        # round 1's reference is π_0 either way: no reference.path, so its stage is shared
        reference = [f"reference.path={initial}"] if cfg.reference == "initial" and r > 1 else []
        final = recipe_stage(
            "dpo", cfg.dpo_preset or None,
            [f"model.path={policy}", f"data.path={pairs}", *reference, *cfg.dpo_overrides],
            folder / "dpo", key=stage_key(pairs, pairs.stat().st_mtime_ns),
        )  # fmt: skip
        summary = {"round": r, "policy": policy, **stats, "final": str(final)}
        shown = {k: v for k, v in summary.items() if k not in ("gold_agreement", "policy", "final")}
        print(f"round {r}: " + json.dumps(shown))
        summaries.append(summary)
        policy = str(final)
    summary_file = out / "rounds.jsonl"
    lines = [json.dumps(s, ensure_ascii=False) for s in summaries]
    if not summary_file.exists() or summary_file.read_text().splitlines() != lines:
        write_jsonl(summary_file, summaries)  # a rerun with nothing to do writes nothing
    return publish_final(
        Path(policy), out, {f"round_{s['round']}": Path(s["final"]) for s in summaries}
    )


def round_rows(rows: Sequence[Any], r: int, per_round: int) -> list[Any]:
    """Round r's slice of the dataset: rows (r-1)·n .. r·n - 1, wrapping around (at most
    every row once per round)."""
    n = min(per_round, len(rows))
    start = (r - 1) * per_round
    return [rows[(start + j) % len(rows)] for j in range(n)]


def samples_stage(cfg: RoundOptions, policy: str, r: int, out: Path) -> Path:
    """K samples per prompt of the round's slice from `policy`: rows {prompt, responses,
    **extras} in samples.jsonl."""
    output = out / "samples.jsonl"
    key = stage_key(
        input_stamp(policy), policy, cfg.model.dtype, dataclasses.asdict(cfg.data), r,
        cfg.prompts_per_round, cfg.k, cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed,
    )  # fmt: skip

    def make() -> Path:
        loaded = load_for_eval(policy, dtype=cfg.model.dtype)
        rows = load_prompt_rows(cfg.data, loaded.tokenizer)
        if not rows:
            raise DataError(f"data.path={cfg.data.path}: no prompt to sample")
        if r * cfg.prompts_per_round > len(rows):
            print(f"round {r}: {len(rows)} prompts in data.path, reusing some (wrapped around)")
        rows = round_rows(rows, r, cfg.prompts_per_round)
        samples = sample_k(
            loaded.model, loaded.tokenizer, [row.prompt for row in rows], cfg.k,
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
            batch_size=cfg.batch_size, seed=cfg.seed + r - 1,
        )  # fmt: skip
        write_samples(output, rows, samples)
        print(f"round {r} samples: {len(rows)} prompts x {cfg.k} from {policy} -> {output}")
        return output

    return cached(out, key, output, make)


def pairs_stage(
    cfg: RoundOptions,
    samples: Path,
    policy: str,
    label: Label,
    labeller: object,
    gold: str,
    reward_timeout: float,
    out: Path,
) -> tuple[Path, dict]:
    """The labelled pairs of a round (pairs.jsonl, TRL preference rows with
    `chosen_probability`) and their statistics (stats.json)."""
    pairs, stats_file = out / "pairs.jsonl", out / "stats.json"
    key = stage_key(samples, samples.stat().st_mtime_ns, labeller, cfg.pairs, gold)

    def make() -> Path:
        prompts, responses, extras = read_samples(samples)
        comparisons = label(policy, prompts, responses, extras)
        rows = chosen_probabilities(comparisons, cfg.pairs)
        if not rows:
            raise DataError(
                f"{samples}: the labeller prefers no sample of any prompt (all ties, or one "
                "distinct sample per prompt); sample more (k, prompts_per_round) or at a "
                "higher temperature"
            )
        write_jsonl(pairs, rows)
        stats = round_stats(comparisons, rows)
        if gold:
            stats |= gold_stats(comparisons, prompts, responses, extras, gold, reward_timeout)
        atomic_write_text(stats_file, json.dumps(stats, indent=2))
        return stats_file

    cached(out, key, stats_file, make)
    return pairs, json.loads(stats_file.read_text())


def chosen_probabilities(comparisons: Comparisons, mode: str) -> list[dict]:
    """The pairs of `mode` (best_vs_worst or all), each with `chosen_probability`, the
    labeller's P(chosen preferred)."""
    every = comparisons.all_pairs()
    if mode == "all":
        return every
    strength = {
        _pair_id(r["prompt"], r["chosen"], r["rejected"]): r["chosen_probability"] for r in every
    }
    rows = []
    for row in comparisons.best_vs_worst():
        forward = strength.get(_pair_id(row["prompt"], row["chosen"], row["rejected"]))
        backward = strength.get(_pair_id(row["prompt"], row["rejected"], row["chosen"]))
        # best and worst by wins may still tie, or even lose, head to head (a judge's cycle)
        p = forward if forward is not None else 1.0 - backward if backward is not None else 0.5
        rows.append(row | {"chosen_probability": p})
    return rows


def _pair_id(prompt: Any, chosen: Any, rejected: Any) -> str:
    return json.dumps([prompt, chosen, rejected], sort_keys=True)


def round_stats(comparisons: Comparisons, rows: list[dict]) -> dict[str, Any]:
    """Pairs kept, the labeller's mean reward (of every sample, and of the pairs' sides, for
    a reward labeller) and mean preference strength P(chosen preferred)."""
    stats: dict[str, Any] = {**comparisons.stats, "pairs_kept": len(rows)}
    stats["mean_chosen_probability"] = sum(r["chosen_probability"] for r in rows) / len(rows)
    if comparisons.rewards is not None:
        reward = {
            (_prompt_id(prompt), text): value
            for prompt, texts, values in zip(comparisons.prompts, comparisons.texts, comparisons.rewards)
            for text, value in zip(texts, values)
        }  # fmt: skip
        flat = [x for values in comparisons.rewards for x in values]
        chosen = [reward[_prompt_id(r["prompt"]), _text(r["chosen"])] for r in rows]
        rejected = [reward[_prompt_id(r["prompt"]), _text(r["rejected"])] for r in rows]
        stats["mean_reward"] = sum(flat) / len(flat)
        stats["mean_chosen_reward"] = sum(chosen) / len(chosen)
        stats["mean_rejected_reward"] = sum(rejected) / len(rejected)
    return stats


def _prompt_id(prompt: Any) -> str:
    return json.dumps(prompt, sort_keys=True)


def _text(side: Any) -> str:
    """A preference row's response text (a string, or a one-turn assistant message list)."""
    return side if isinstance(side, str) else side[0]["content"]


def gold_stats(
    comparisons: Comparisons,
    prompts: list[Prompt],
    responses: list[list[str]],
    extras: list[dict],
    gold: str,
    timeout: float,
) -> dict[str, Any]:
    """The gold mean of the round's samples (the policy sampled, before this round's DPO) and
    the labels' agreement with gold (measured, never trained on)."""
    gold_fn = build_reward_fn(gold, timeout=timeout)
    flat = [(i, t) for i, ts in enumerate(responses) for t in ts]
    scores = gold_fn(
        [prompts[i] for i, _ in flat], [t for _, t in flat], [extras[i] for i, _ in flat]
    )
    agreement = label_agreement(comparisons, gold_fn, extras)
    return {"gold_mean": sum(scores) / len(scores), "gold_agreement": agreement}

"""RLAIF: reinforcement learning from AI feedback, no human label (Lee et al. 2023,
arXiv:2309.00267).

Distilled (the paper's "canonical" RLAIF, section 2.2.1), four cached stages in output_dir:

    samples   K responses per prompt from the policy              samples/samples.jsonl
    labels    every pair compared by the AI labeller, both orders  labels/pairs.jsonl
              (P(a preferred), its soft label `chosen_probability`)
    rm        a reward model on those soft labels                  rm/final
              (recipe rm, reward.soft_label=chosen_probability: -p log σ(Δ) - (1-p) log σ(-Δ))
    rl        an RL recipe (ppo by default) against that RM        rl/final -> final/

Direct (section 2.2.2, "d-RLAIF"): no RM; the RL recipe's reward is the judge's pointwise
score (`rl.reward=judge:MODEL`, `alignlab.rl.rewards`): the expected rating read from the
verdict-token probabilities, where the paper asks for a 1-10 score and takes its
probability-weighted mean (our default scale is 1-5: "10" is two tokens in most vocabularies).

The labeller is a judge (a local model or an OpenAI-compatible endpoint) or any reward
(`labeller.source=reward`: e.g. simulated annotators in the lab, through the same code);
with `labeller.gold` set, the labels' agreement with gold is measured and saved
(labels/stats.json). A rerun skips finished stages (`alignlab.recipes.stages`).

Run: `alignlab rlaif --config rlaif_lab model.path=runs/lab/sft/final
labeller.judge=runs/lab-teacher/base`. docs/methods/rlaif.md.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from alignlab.aif.comparisons import Comparisons, label_agreement
from alignlab.aif.labeller import LabellerConfig, build_labeller, is_url
from alignlab.aif.samples import read_samples, sample_k, write_samples
from alignlab.config import ConfigError, ModelConfig, option, section
from alignlab.fileio import atomic_write_text, write_jsonl
from alignlab.recipes.stages import cached, input_stamp, publish_final, recipe_stage, stage_key
from alignlab.rl.config import PromptDataConfig
from alignlab.rl.prompts import load_prompt_rows
from alignlab.rl.rewards import build_reward_fn

MODES = ("distilled", "direct")
RL_RECIPES = ("ppo", "grpo", "rloo", "reinforce_pp", "dapo", "gspo", "cispo")


@dataclasses.dataclass
class RLAIFConfig:
    """RLAIF: AI labels -> reward model -> RL (distilled), or the judge's score as the RL
    reward (direct)."""

    model: ModelConfig = section(ModelConfig, "the policy to align (an SFT model)")
    data: PromptDataConfig = section(PromptDataConfig, "prompts: labelled, then trained on")
    labeller: LabellerConfig = section(
        LabellerConfig, "the AI labeller (a judge) of sampled pairs", source="judge"
    )
    mode: str = option("distilled", "distilled (labels -> RM -> RL) or direct", choices=MODES)
    samples_per_prompt: int = option(2, "responses sampled per prompt for labelling", min=2)
    label_prompts: int = option(0, "prompts to sample and label; 0 = all", min=0)
    max_new_tokens: int = option(48, "tokens per sampled response", min=1)
    temperature: float = option(1.0, "sampling temperature of the labelled responses", min=0)
    batch_size: int = option(64, "prompts per generation batch", min=1)
    seed: int = option(1, "sampling seed")
    rm_preset: str = option("", "preset of the reward-model stage (e.g. rm_lab); empty = none")
    rm_overrides: list[str] = option([], "key=value overrides of the reward-model stage")
    rl_recipe: str = option("ppo", "the RL recipe", choices=RL_RECIPES)
    rl_preset: str = option("", "preset of the RL stage (e.g. ppo_lab); empty = none")
    rl_overrides: list[str] = option([], "key=value overrides of the RL stage")
    output_dir: str = option(
        "runs/rlaif", "the pipeline's folder: one subfolder per stage, final/", kind="output"
    )

    def check(self) -> None:
        self.data.check()
        if not self.model.path:
            raise ConfigError("model.path is required: the policy to align")
        if self.mode == "direct" and self.labeller.source != "judge":
            raise ConfigError("mode=direct rewards with a judge: set labeller.source=judge")
        self.labeller.check()


def run(cfg: RLAIFConfig) -> Path:
    """Run the missing stages; output_dir/final (the RL stage's model)."""
    cfg.check()
    out = Path(cfg.output_dir)
    policy = cfg.model.path
    rl_args = [f"model.path={policy}", f"data.path={cfg.data.path}"]
    if cfg.mode == "direct":
        rl_args += [f"rl.reward={judge_spec(cfg.labeller)}"]
        if cfg.labeller.principle:
            rl_args += [f"rl.judge_principle={cfg.labeller.principle}"]
        final = recipe_stage(
            cfg.rl_recipe, cfg.rl_preset or None, [*rl_args, *cfg.rl_overrides], out / "rl"
        )
        return publish_final(final, out, {"rl": final})

    samples = samples_stage(cfg, out / "samples")
    pairs, stats = labels_stage(cfg, samples, out / "labels")
    rm_args = [
        f"model.path={policy}", f"data.path={pairs}", "reward.soft_label=chosen_probability",
        "data.on_bad_example=error", "data.truncation=keep_end",
    ]  # fmt: skip
    rm = recipe_stage(
        "rm", cfg.rm_preset or None, [*rm_args, *cfg.rm_overrides], out / "rm",
        key=input_stamp(pairs),
    )  # fmt: skip
    final = recipe_stage(
        cfg.rl_recipe, cfg.rl_preset or None,
        [*rl_args, f"rl.reward={rm}", *cfg.rl_overrides], out / "rl",
        key=input_stamp(rm),
    )  # fmt: skip
    stages = {"samples": samples, "pairs": pairs, "rm": rm, "rl": final}
    return publish_final(final, out, stages, {"labels": stats})


def judge_spec(cfg: LabellerConfig) -> str:
    """The labeller's judge as a reward spec (`judge:FOLDER` or `judge:URL#MODEL`)."""
    return f"judge:{cfg.judge}#{cfg.judge_model}" if is_url(cfg.judge) else f"judge:{cfg.judge}"


def samples_stage(cfg: RLAIFConfig, out: Path) -> Path:
    """K samples per prompt of the policy: JSONL rows {prompt, responses, **extras}."""
    output = out / "samples.jsonl"
    key = stage_key(
        input_stamp(cfg.model.path), dataclasses.asdict(cfg.data), cfg.samples_per_prompt,
        cfg.label_prompts, cfg.max_new_tokens, cfg.temperature, cfg.seed,
    )  # fmt: skip

    def make() -> Path:
        from alignlab.eval.harness import load_for_eval

        loaded = load_for_eval(cfg.model.path, dtype=cfg.model.dtype)
        rows = load_prompt_rows(cfg.data, loaded.tokenizer)
        if cfg.label_prompts:
            rows = rows[: cfg.label_prompts]
        samples = sample_k(
            loaded.model, loaded.tokenizer, [r.prompt for r in rows], cfg.samples_per_prompt,
            max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
            batch_size=cfg.batch_size, seed=cfg.seed,
        )  # fmt: skip
        write_samples(output, rows, samples)
        print(f"samples: {len(rows)} prompts x {cfg.samples_per_prompt} -> {output}")
        return output

    return cached(out, key, output, make)


def labels_stage(cfg: RLAIFConfig, samples: Path, out: Path) -> tuple[Path, dict]:
    """Every pair of each prompt's samples labelled: labels/pairs.jsonl (TRL preference rows
    with `chosen_probability`) and labels/stats.json (counts, position bias, gold agreement)."""
    pairs, stats_file = out / "pairs.jsonl", out / "stats.json"
    labeller = cfg.labeller
    judge = input_stamp(labeller.judge) if labeller.source == "judge" else labeller.reward
    key = stage_key(input_stamp(samples), dataclasses.asdict(labeller), judge)

    def make() -> Path:
        prompts, responses, extras = read_samples(samples)
        comparisons = build_labeller(labeller).compare(prompts, responses, extras)
        rows = comparisons.all_pairs()
        if not rows:
            raise ConfigError(
                f"labeller: no pair of {samples} has a preference (all ties or one distinct "
                "sample per prompt); sample more (samples_per_prompt) or at a higher temperature"
            )
        write_jsonl(pairs, rows)
        stats = summary(comparisons, rows, labeller, extras)
        atomic_write_text(stats_file, json.dumps(stats, indent=2))
        return stats_file

    cached(out, key, stats_file, make)
    return pairs, json.loads(stats_file.read_text())


def summary(
    comparisons: Comparisons, rows: list[dict], labeller: LabellerConfig, extras: list[dict]
) -> dict:
    """What the labels stage reports: counts, the judge's position bias, the human labels
    used (0), and agreement with gold when `labeller.gold` is set."""
    stats: dict = {**comparisons.stats, "pairs": len(rows), "human_labels": 0}
    probabilities = [r["chosen_probability"] for r in rows]
    stats["mean_chosen_probability"] = sum(probabilities) / len(probabilities)
    if labeller.gold:
        gold = build_reward_fn(labeller.gold, timeout=labeller.reward_timeout)
        stats["gold_agreement"] = label_agreement(comparisons, gold, extras)
    return stats

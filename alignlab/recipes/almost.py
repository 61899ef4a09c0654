"""ALMoST: alignment from synthetic feedback, with no human label and no aligned teacher.

Kim et al. 2023, "Aligning Large Language Models through Synthetic Feedback", arXiv:2305.13735.

Stages, each cached in its own folder of output_dir (a rerun skips the finished ones):

    generate/<name>   every generator answers every prompt: a vanilla model shown K
                      demonstrations (earlier chat turns) and its system prompt
    comparisons       for two generators a > b in the prior order (larger model, then more
                      shots; or an explicit rank), y_a chosen over y_b, heuristic filters
                      applied: pairs.jsonl, stats.json (`alignlab.aif.synthetic`)
    rm                a reward model on those synthetic pairs (recipe rm)
    rmsp              reward-model-guided self-play: N answers per prompt from the best
                      generator, the one the RM scores highest kept as the demonstration
                      y*(x) = argmax_{y_1..y_N ~ best generator(x)} r_φ(x, y)
    sft               the policy (model.path) fine-tuned on them: ALMoST-SFT (recipe sft)
    ppo               PPO from the synthetic RM on the SFT model: ALMoST-PPO (recipe ppo,
                      rl.reward = the RM folder); final=none stops at sft

Run: `alignlab almost --config almost_lab` (the lab's two sizes as generators; see the
preset for the builds it needs). docs/methods/almost.md.
"""

from __future__ import annotations

import dataclasses
import gc
import importlib
import json
import math
from pathlib import Path
from typing import Any

from alignlab.aif.comparisons import Prompt
from alignlab.aif.samples import sample_k
from alignlab.aif.synthetic import (
    Generator,
    SyntheticFilter,
    in_context_prompt,
    parse_generators,
    prior_key,
    synthetic_comparisons,
)
from alignlab.config import ConfigError, ModelConfig, load_config, option, section
from alignlab.data.sources import looks_local
from alignlab.fileio import atomic_write_text, write_jsonl
from alignlab.icl.base import cut_at_stop
from alignlab.icl.demonstrations import Demonstration, load_demonstrations
from alignlab.icl.urial import STOPS
from alignlab.models.folders import check_model_source
from alignlab.recipes import RECIPES, resolve_preset
from alignlab.recipes.stages import cached, input_stamp, publish_final, recipe_stage, stage_key
from alignlab.rl.config import PromptDataConfig
from alignlab.rl.prompts import PromptRow, load_prompt_rows
from alignlab.rl.rewards import build_reward_fn
from alignlab.rl.sample_filter import best_per_prompt, sft_row

FINALS = ("ppo", "none")


@dataclasses.dataclass
class ALMoSTConfig:
    """ALMoST: synthetic comparisons from prior assumptions -> RM -> RM-guided self-play
    demonstrations -> SFT -> PPO."""

    model: ModelConfig = section(
        ModelConfig,
        "the policy, SFT on the RMSP demonstrations then PPO: only path is passed to those "
        "stages (their other model options go in sft_overrides / ppo_overrides); dtype is "
        "the generators' and the RM's when sampling and scoring",
    )
    data: PromptDataConfig = section(PromptDataConfig, "prompts: answered, self-played, PPO's")
    generators: list[dict[str, Any]] = option(
        [],
        "response generators, each {path, shots, name?, rank? (1 = best), system?, demos?}; "
        "order: parameters, then shots, unless every one has a rank",
    )
    demos: str = option(
        "", "demonstrations (prompt/completion or messages): a generator's K shots", kind="data"
    )
    comparison_prompts: int = option(0, "prompts every generator answers; 0 = all", min=0)
    filters: SyntheticFilter = section(SyntheticFilter, "heuristic filters of synthetic pairs")
    max_new_tokens: int = option(64, "tokens per sampled answer", min=1)
    temperature: float = option(1.0, "sampling temperature (generators and RMSP)", min=0)
    top_p: float = option(1.0, "nucleus sampling mass", min=0, max=1, min_exclusive=True)
    batch_size: int = option(64, "prompts per generation batch", min=1)
    seed: int = option(1, "sampling seed")
    rm_model: str = option(
        "", "the reward model's starting model; empty = model.path", kind="model"
    )
    rm_preset: str = option("", "preset of the RM stage (e.g. rm_lab); empty = none")
    rm_overrides: list[str] = option([], "key=value overrides of the RM stage")
    rmsp_generator: str = option("", "generator RMSP samples from (name); empty = the best")
    rmsp_samples: int = option(4, "N: answers per prompt, the RM keeps the best", min=1)
    rmsp_prompts: int = option(0, "prompts self-played; 0 = all", min=0)
    sft_preset: str = option("", "preset of the SFT stage (e.g. sft_lab); empty = none")
    sft_overrides: list[str] = option([], "key=value overrides of the SFT stage")
    final: str = option("ppo", "ppo: ALMoST-PPO; none: stop at ALMoST-SFT", choices=FINALS)
    ppo_preset: str = option("", "preset of the PPO stage (e.g. ppo_lab); empty = none")
    ppo_overrides: list[str] = option([], "key=value overrides of the PPO stage")
    output_dir: str = option("runs/almost", "the pipeline's folder: one per stage", kind="output")

    def check(self) -> None:
        unused = flat_options(self.model, "model.")
        for key, default in flat_options(ModelConfig(), "model.").items():
            if key not in ("model.path", "model.dtype") and unused[key] != default:
                raise ConfigError(
                    f"{key}={unused[key]!r}: ALMoST passes only model.path to its stages; set "
                    f"{key} in sft_overrides / ppo_overrides (and rm_overrides)"
                )
        generators = parse_generators(self.generators)
        for i, g in enumerate(generators):
            if g.shots and not (g.demos or self.demos):
                raise ConfigError(
                    f"generators[{i}].shots={g.shots} needs demonstrations: set demos (a "
                    "prompt/completion or messages file) or the generator's own demos"
                )
        names = [g.name for g in generators]
        if self.rmsp_generator and self.rmsp_generator not in names:
            raise ConfigError(
                f"rmsp_generator: {self.rmsp_generator!r} is no generator's name; one of "
                f"{', '.join(names)}"
            )


def flat_options(section_value: Any, prefix: str) -> dict[str, Any]:
    """A config section as {dotted key: value}."""
    flat = {}
    for key, value in dataclasses.asdict(section_value).items():
        if isinstance(value, dict):
            flat |= {f"{prefix}{key}.{k}": v for k, v in value.items()}
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run(cfg: ALMoSTConfig) -> Path:
    """Run the missing stages; the final model folder (ppo/final, or sft/final)."""
    cfg.check()
    generators = parse_generators(cfg.generators)
    shots = check_sources(cfg, generators)  # before any model loads
    out = Path(cfg.output_dir)
    check_stage_options(cfg, out)

    # --- synthetic comparisons: every generator answers, the prior labels ---
    answered = {
        g.name: generate_stage(cfg, g, shots[g.name], out / "generate" / g.name) for g in generators
    }
    pairs, stats = comparisons_stage(cfg, generators, answered, out / "comparisons")

    # --- reward model on the synthetic pairs ---
    rm_model = cfg.rm_model or cfg.model.path
    rm = recipe_stage(
        "rm", cfg.rm_preset or None,
        [f"model.path={rm_model}", f"data.path={pairs}", "data.truncation=keep_end",
         *cfg.rm_overrides],
        out / "rm", key=stage_key(input_stamp(pairs), input_stamp(rm_model)),
    )  # fmt: skip

    # --- RMSP: best-of-N from the best generator, by the RM ---
    best = next(g for g in generators if g.name == (cfg.rmsp_generator or stats["order"][0]))
    demonstrations, rmsp_stats = rmsp_stage(cfg, best, shots[best.name], rm, out / "rmsp")

    # --- SFT on the self-played demonstrations: ALMoST-SFT ---
    sft = recipe_stage(
        "sft", cfg.sft_preset or None,
        [f"model.path={cfg.model.path}", f"data.path={demonstrations}", *cfg.sft_overrides],
        out / "sft", key=stage_key(input_stamp(demonstrations), input_stamp(cfg.model.path)),
    )  # fmt: skip
    stages = {"comparisons": pairs, "rm": rm, "rmsp": demonstrations, "sft": sft}

    # --- PPO from the synthetic RM: ALMoST-PPO ---
    if cfg.final == "ppo":
        data_args = [f"data.{key}={value}" for key, value in dataclasses.asdict(cfg.data).items()]
        stages["ppo"] = recipe_stage(
            "ppo", cfg.ppo_preset or None,
            [f"model.path={sft}", *data_args, f"rl.reward={rm}", *cfg.ppo_overrides],
            out / "ppo",
            key=stage_key(input_stamp(sft), input_stamp(rm), input_stamp(cfg.data.path)),
        )  # fmt: skip
    return finish(out, stages, {"comparisons": stats, "rmsp": rmsp_stats})


def check_sources(cfg: ALMoSTConfig, generators: list[Generator]) -> dict[str, list[Demonstration]]:
    """Each generator's model and demonstrations exist and suffice (ConfigError naming
    generators[i].key); its K demonstrations: the first K of its file (a fixed prompt, so
    more shots show a superset of fewer)."""
    loaded: dict[str, list[Demonstration]] = {}
    shots = {}
    for i, g in enumerate(generators):
        check_model_source(g.path, f"generators[{i}].path", tokenizer=True)
        source = g.demos or cfg.demos
        field = f"generators[{i}].demos" if g.demos else "demos"
        if not g.shots:
            shots[g.name] = []
            continue
        if looks_local(source) and not Path(source).expanduser().exists():
            raise ConfigError(f"{field}={source}: no such file or folder")
        if source not in loaded:
            loaded[source] = load_demonstrations(source)
        if len(loaded[source]) < g.shots:
            raise ConfigError(
                f"generators[{i}].shots={g.shots}: {source} holds {len(loaded[source])} "
                "usable demonstrations"
            )
        shots[g.name] = loaded[source][: g.shots]
    return shots


def check_stage_options(cfg: ALMoSTConfig, out: Path) -> None:
    """The rm / sft / ppo presets and overrides make valid configs (a ConfigError naming the
    field), found now rather than after the sampling."""
    policy, data = cfg.model.path, cfg.data.path
    stages = [
        ("rm", cfg.rm_preset, cfg.rm_overrides, [f"model.path={cfg.rm_model or policy}"]),
        ("sft", cfg.sft_preset, cfg.sft_overrides, [f"model.path={policy}"]),
    ]
    if cfg.final == "ppo":
        reward = f"rl.reward={out / 'rm'}"
        stages.append(("ppo", cfg.ppo_preset, cfg.ppo_overrides, [f"model.path={policy}", reward]))
    for recipe, preset, overrides, args in stages:
        module_name, config_name = RECIPES[recipe]
        config_cls = getattr(importlib.import_module(module_name), config_name)
        try:
            load_config(
                config_cls, resolve_preset(preset) if preset else None,
                [*args, f"data.path={data}", f"train.output_dir={out / recipe}", *overrides],
            )  # fmt: skip
        except ConfigError as err:
            raise ConfigError(f"{recipe}_preset / {recipe}_overrides: {err}") from err


def prompt_rows(cfg: ALMoSTConfig, tokenizer: Any, limit: int) -> list[PromptRow]:
    rows = load_prompt_rows(cfg.data, tokenizer)
    return rows[:limit] if limit else rows


def answer(
    cfg: ALMoSTConfig, loaded: Any, prompts: list[Prompt], generator: Generator,
    demos: list[Demonstration], k: int,
) -> list[list[str]]:  # fmt: skip
    """K answers per prompt from `generator` (its shots and system prompt in context)."""
    asked = [in_context_prompt(p, demos, generator.system) for p in prompts]
    samples = sample_k(
        loaded.model, loaded.tokenizer, asked, k, max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature, top_p=cfg.top_p, batch_size=cfg.batch_size, seed=cfg.seed,
    )  # fmt: skip
    # a string prompt was asked in URIAL's layout: its answer ends where the block closes
    return [
        [(cut_at_stop(t, STOPS)[0] if isinstance(p, str) else t).strip() for t in texts]
        for p, texts in zip(prompts, samples, strict=True)
    ]


def release_memory() -> None:
    """Hand back the memory of a model just deleted (the next stage loads another)."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def generate_stage(cfg: ALMoSTConfig, g: Generator, demos: list[Demonstration], out: Path) -> Path:
    """One answer per prompt from generator `g`: generator.json (its parameter count), then
    responses.jsonl rows {prompt, response}."""
    output = out / "responses.jsonl"
    key = stage_key(
        input_stamp(g.path), dataclasses.asdict(g), [dataclasses.asdict(d) for d in demos],
        input_stamp(cfg.data.path), dataclasses.asdict(cfg.data), cfg.comparison_prompts,
        cfg.max_new_tokens, cfg.temperature, cfg.top_p, cfg.seed, cfg.model.dtype,
    )  # fmt: skip

    def make() -> Path:
        from alignlab.eval.harness import load_for_eval

        loaded = load_for_eval(g.path, dtype=cfg.model.dtype)
        rows = prompt_rows(cfg, loaded.tokenizer, cfg.comparison_prompts)
        prompts = [r.prompt for r in rows]
        texts = [t[0] for t in answer(cfg, loaded, prompts, g, demos, k=1)]
        parameters = sum(p.numel() for p in loaded.model.parameters())
        del loaded
        release_memory()
        record = {**dataclasses.asdict(g), "parameters": parameters}
        atomic_write_text(out / "generator.json", json.dumps(record, indent=2))
        write_jsonl(output, [{"prompt": p, "response": t} for p, t in zip(prompts, texts)])
        print(f"generate: {g.name} ({parameters:,} parameters, {g.shots} shots) -> {output}")
        return output

    return cached(out, key, output, make)


def comparisons_stage(
    cfg: ALMoSTConfig, generators: list[Generator], answered: dict[str, Path], out: Path
) -> tuple[Path, dict]:
    """The prior's pairs of every prompt: comparisons/pairs.jsonl (TRL preference rows) and
    stats.json (the order, counts, what each filter dropped)."""
    pairs, stats_file = out / "pairs.jsonl", out / "stats.json"
    key = stage_key(
        [input_stamp(path) for path in answered.values()],
        [dataclasses.asdict(g) for g in generators], dataclasses.asdict(cfg.filters),
    )  # fmt: skip

    def make() -> Path:
        prompts, responses, keys = None, {}, {}
        for g in generators:
            rows = read_jsonl(answered[g.name])
            if prompts is None:
                prompts = [r["prompt"] for r in rows]
            elif [r["prompt"] for r in rows] != prompts:
                raise ConfigError(f"generate/{g.name}: its prompts differ from the others'")
            responses[g.name] = [r["response"] for r in rows]
            meta = json.loads((answered[g.name].parent / "generator.json").read_text())
            keys[g.name] = prior_key(g, meta["parameters"])
        rows, stats = synthetic_comparisons(prompts or [], responses, keys, cfg.filters)
        stats["keys"] = {name: list(k) for name, k in keys.items()}
        if not rows:
            raise ConfigError(
                f"no synthetic pair survived: {stats['tied']} tied, dropped {stats['dropped']}; "
                "give the generators different sizes, shots or ranks, or loosen filters.*"
            )
        write_jsonl(pairs, rows)
        atomic_write_text(stats_file, json.dumps(stats, indent=2))
        print(f"comparisons: {len(rows)} pairs, order {' > '.join(stats['order'])} -> {pairs}")
        return stats_file

    cached(out, key, stats_file, make)
    return pairs, json.loads(stats_file.read_text())


def rmsp_stage(
    cfg: ALMoSTConfig, g: Generator, demos: list[Demonstration], rm: Path, out: Path
) -> tuple[Path, dict]:
    """RMSP: N answers per prompt from `g`, the RM's best (scored on the plain prompt, without
    the demonstrations) kept: rmsp/demonstrations.jsonl (SFT rows) and stats.json."""
    output, stats_file = out / "demonstrations.jsonl", out / "stats.json"
    key = stage_key(
        input_stamp(g.path), dataclasses.asdict(g), [dataclasses.asdict(d) for d in demos],
        input_stamp(rm), input_stamp(cfg.data.path), dataclasses.asdict(cfg.data),
        cfg.rmsp_prompts, cfg.rmsp_samples, cfg.max_new_tokens, cfg.temperature, cfg.top_p,
        cfg.seed, cfg.model.dtype,
    )  # fmt: skip

    def make() -> Path:
        from alignlab.eval.harness import load_for_eval

        loaded = load_for_eval(g.path, dtype=cfg.model.dtype)
        prompts = [r.prompt for r in prompt_rows(cfg, loaded.tokenizer, cfg.rmsp_prompts)]
        samples = answer(cfg, loaded, prompts, g, demos, k=cfg.rmsp_samples)
        del loaded
        release_memory()
        n = cfg.rmsp_samples
        flat = [t for texts in samples for t in texts]
        reward_fn = build_reward_fn(str(rm), dtype=cfg.model.dtype)
        rewards = reward_fn([p for p in prompts for _ in range(n)], flat, None)
        # an empty answer is no demonstration, whatever the RM thinks of it
        ranked = [float(r) if t else -math.inf for r, t in zip(rewards, flat, strict=True)]
        rows = [
            sft_row(prompts[i // n], flat[i]) | {"reward": ranked[i], "generator": g.name}
            for i in best_per_prompt(ranked, n)
            if ranked[i] > -math.inf
        ]
        if not rows:
            raise ConfigError(f"rmsp: every answer of {g.name} was empty; raise max_new_tokens")
        write_jsonl(output, rows)
        finite = [r for r in ranked if r > -math.inf]
        stats = {
            "generator": g.name,
            "prompts": len(prompts),
            "demonstrations": len(rows),
            "samples_per_prompt": n,
            "reward_mean": sum(finite) / len(finite),
            "kept_reward_mean": sum(r["reward"] for r in rows) / len(rows),
        }
        atomic_write_text(stats_file, json.dumps(stats, indent=2))
        print(f"rmsp: {len(rows)} demonstrations (best of {n} by the RM) -> {output}")
        return stats_file

    cached(out, key, stats_file, make)
    return output, json.loads(stats_file.read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def finish(out: Path, stages: dict[str, Path], stats: dict) -> Path:
    """output_dir/final (ppo's model, or sft's with final=none) and pipeline.json."""
    return publish_final(stages.get("ppo", stages["sft"]), out, stages, stats)

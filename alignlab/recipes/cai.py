"""Constitutional AI: harmlessness from AI feedback, no human harmfulness label (Bai et al.
2022, arXiv:2212.08073).

Two stages, each a chain of cached stages in output_dir (`alignlab.recipes.stages`: a rerun
skips the finished ones, a killed stage redoes only itself):

SL-CAI (supervised: critique -> revision -> fine-tune), from the helpful model π_H = model.path

    samples      y_0 ~ π_H(· | x) for each red-team prompt x          samples/samples.jsonl
    revisions    R rounds, a principle c_r drawn per sample and round: revisions/revisions.jsonl
                 critique_r ~ π(· | x, y_{r-1}, c_r.critique), then    revisions/sft.jsonl
                 y_r ~ π(· | x, y_{r-1}, c_r.critique, critique_r,     (`alignlab.aif.revise`)
                 c_r.revision), π = reviser (default π_H itself)
    sl_data      the final revisions (x, y_R) plus helpful SFT rows    sl_data/sft.jsonl
                 (`helpful_data`, `helpful_ratio`), so helpfulness is kept
    sl_sft       recipe sft on sl_data from π_H (or `sl_model`): π_SL    sl_sft/final

RL-CAI (RL from AI feedback), from π_SL

    rl_samples   k responses per red-team (and helpful) prompt from π_SL  rl_samples/samples.jsonl
    labels       every pair judged by the feedback model in both orders  labels/pairs.jsonl
                 under the `choice` text of a principle drawn per prompt  labels/best_vs_worst.jsonl
                 (helpful prompts: feedback.principle, else the judge's
                 own question); P(a ≻ b) = (P_A(a, b) + 1 - P_A(b, a)) / 2,
                 each pair with `chosen_probability`, the paper's soft label
    rm           final=ppo: the preference model on the soft labels       rm/final
                 (recipe rm, reward.soft_label=chosen_probability):
                 loss = -p log σ(r_c - r_r) - (1 - p) log σ(r_r - r_c)
    ppo | dpo    final=ppo: recipe ppo from π_SL, rl.reward = rm/final;   ppo/final or dpo/final
                 final=dpo: recipe dpo from π_SL on best-vs-worst pairs   -> final/
                 (no RM); final=none stops at π_SL

The feedback model is `feedback.judge` (a folder, hub id or endpoint); empty, π_SL judges
itself (the paper uses a separate pretrained feedback model). Run: `alignlab cai --config
cai_lab`, or `alignlab cai model.path=HELPFUL data.path=red_team.jsonl
helpful_data=sft.jsonl`. docs/methods/cai.md.
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections import Counter
from pathlib import Path

from alignlab.aif.constitution import Constitution, load_constitution
from alignlab.aif.labeller import LabellerConfig, build_labeller
from alignlab.aif.revise import critique_and_revise, revision_stats
from alignlab.aif.samples import read_samples, sample_k
from alignlab.config import ConfigError, ModelConfig, option, section
from alignlab.data.schema import DataError, detect_dataset_format
from alignlab.data.sources import load_records
from alignlab.fileio import atomic_write_text, write_jsonl
from alignlab.models.loading import position_limit
from alignlab.recipes.rlaif import summary
from alignlab.recipes.rounds import check_stage_overrides, chosen_probabilities, stage_config
from alignlab.recipes.stages import cached, input_stamp, publish_final, recipe_stage, stage_key
from alignlab.rl.config import PromptDataConfig
from alignlab.rl.prompts import PromptRow, check_generation_fits, load_prompt_rows
from alignlab.rl.sample_filter import sft_row

FINALS = ("ppo", "dpo", "none")


@dataclasses.dataclass
class GenerationConfig:
    """How responses, critiques and revisions are sampled (every model, every stage)."""

    max_new_tokens: int = option(48, "tokens per response, critique or revision", min=1)
    temperature: float = option(1.0, "sampling temperature (0 = greedy)", min=0)
    top_p: float = option(1.0, "nucleus sampling mass", min=0, max=1, min_exclusive=True)
    sl_samples: int = option(1, "SL-CAI: responses per red-team prompt, each revised", min=1)
    k: int = option(2, "RL-CAI: responses per prompt, every pair labelled (the paper: 2)", min=2)
    batch_size: int = option(64, "sequences per generation batch", min=1)
    seed: int = option(1, "seed of the samples and of the principles drawn")


@dataclasses.dataclass
class FeedbackConfig(LabellerConfig):
    """The feedback model of RL-CAI: a judge (empty judge = the SL-CAI model) or a reward."""

    def check(self, section: str = "feedback") -> None:
        if self.source == "judge" and not self.judge:
            return  # the SL-CAI model judges, once it exists
        super().check(section)


@dataclasses.dataclass
class CAIConfig:
    """Constitutional AI: critique and revise red-team answers -> SFT (SL-CAI), then AI labels
    under constitutional principles -> soft-label RM -> PPO, or DPO (RL-CAI)."""

    model: ModelConfig = section(
        ModelConfig,
        "the helpful model π_H, start of SL-CAI: only path is passed to the stages (their other "
        "model options go in sft_overrides / rm_overrides / final_overrides); dtype is used "
        "when sampling and judging",
    )
    data: PromptDataConfig = section(
        PromptDataConfig, "red-team prompts (`prompt`: a string or messages)"
    )
    constitution: str = option(
        "", "a YAML list of principles, or a shipped name (hhh, lab); empty = hhh"
    )
    reviser: str = option(
        "", "the model that critiques and revises; empty = model.path (the paper)", kind="model"
    )
    rounds: int = option(1, "critique-and-revise rounds R per response", min=1)
    sl_model: str = option(
        "",
        "the model SL-CAI fine-tunes; empty = model.path (the paper fine-tunes a pretrained base)",
        kind="model",
    )
    generation: GenerationConfig = section(GenerationConfig, "sampling of every stage")
    helpful_data: str = option(
        "",
        "SFT rows (prompt/completion or messages, as the red-team prompts) mixed into SL-CAI's "
        "data so helpfulness is kept; empty = revisions only",
        kind="data",
    )
    helpful_ratio: float = option(
        0.0,
        "helpful rows per revision in the SL-CAI mix, drawn at random (seeded); 0 = all rows",
        min=0,
    )
    helpful_prompts: str = option(
        "",
        "prompts sampled, labelled and trained on in RL-CAI beside the red-team ones (judged "
        "by feedback.principle, else the judge's own question); empty = none",
        kind="data",
    )
    max_helpful_prompts: int = option(0, "use at most this many helpful prompts; 0 = all", min=0)
    feedback: FeedbackConfig = section(
        FeedbackConfig, "the feedback model (a judge, both orders averaged)", source="judge"
    )
    sft_preset: str = option("", "preset of the SL-CAI SFT stage (e.g. sft_lab); empty = none")
    sft_overrides: list[str] = option([], "key=value overrides of the SFT stage")
    rm_preset: str = option("", "preset of the RM stage (final=ppo; e.g. rm_lab); empty = none")
    rm_overrides: list[str] = option(
        [], "key=value overrides of the RM stage (model.path=... starts it elsewhere)"
    )
    final: str = option(
        "ppo", "RL-CAI: ppo (RM -> PPO), dpo (DPO on the labels), none (stop at SL-CAI)",
        choices=FINALS,
    )  # fmt: skip
    final_preset: str = option("", "preset of the final stage (e.g. ppo_lab); empty = none")
    final_overrides: list[str] = option([], "key=value overrides of the final stage")
    output_dir: str = option("runs/cai", "the pipeline's folder: one per stage", kind="output")

    def check(self) -> None:
        if not self.model.path:
            raise ConfigError("model.path is required: the helpful model SL-CAI starts from")
        plain = ModelConfig(path=self.model.path, dtype=self.model.dtype)
        for f in dataclasses.fields(ModelConfig):
            if getattr(self.model, f.name) != getattr(plain, f.name):
                raise ConfigError(
                    f"model.{f.name}: CAI passes only model.path to its stages; set it in "
                    "sft_overrides / final_overrides (and rm_overrides)"
                )
        pipeline = "the CAI pipeline"
        owned = ("model.path", "data.path", "train.output_dir")
        check_stage_overrides("sft_overrides", self.sft_overrides, owned, pipeline)
        rm_owned = ("data.path", "train.output_dir", "reward.soft_label")
        check_stage_overrides("rm_overrides", self.rm_overrides, rm_owned, pipeline)
        check_stage_overrides(
            "final_overrides", self.final_overrides, (*owned, "rl.reward"), pipeline
        )


def run(cfg: CAIConfig) -> Path:
    """Run the missing stages; output_dir/final (ppo's or dpo's model, or SL-CAI's)."""
    cfg.check()
    # --- before any model loads: the constitution, the stages' configs, the data's forms ---
    constitution = load_constitution(cfg.constitution or None)
    check_stages(cfg)
    check_helpful_data(cfg)
    out = Path(cfg.output_dir)

    # --- SL-CAI: sample, critique and revise, fine-tune on revisions + helpful rows ---
    samples = samples_stage(cfg, out / "samples")
    revisions, sl_stats = revisions_stage(cfg, constitution, samples, out / "revisions")
    mix = mix_stage(cfg, revisions, out / "sl_data")
    start = cfg.sl_model or cfg.model.path
    sl = recipe_stage(
        "sft", cfg.sft_preset or None,
        [f"model.path={start}", f"data.path={mix}", *cfg.sft_overrides], out / "sl_sft",
        key=stage_key(input_stamp(mix), input_stamp(start)),
    )  # fmt: skip
    stages = {"samples": samples, "revisions": revisions, "sl_data": mix, "sl_sft": sl}
    record = {"revisions": sl_stats}
    if cfg.final == "none":
        return publish_final(sl, out, stages, record)

    # --- RL-CAI: k samples of the SL model, AI labels under principles, then RL ---
    rl_samples, rl_prompts = rl_samples_stage(cfg, str(sl), out / "rl_samples")
    pairs, best, record["labels"] = labels_stage(
        cfg, constitution, str(sl), rl_samples, out / "labels"
    )
    stages |= {"rl_samples": rl_samples, "labels": pairs}
    if cfg.final == "ppo":
        rm_args = [
            f"model.path={sl}", f"data.path={pairs}", "reward.soft_label=chosen_probability",
            "data.on_bad_example=error", "data.truncation=keep_end",
        ]  # fmt: skip
        rm = recipe_stage(
            "rm", cfg.rm_preset or None, [*rm_args, *cfg.rm_overrides], out / "rm",
            key=stage_key(input_stamp(pairs), input_stamp(sl)),
        )  # fmt: skip
        final = recipe_stage(
            "ppo", cfg.final_preset or None,
            [f"model.path={sl}", f"data.path={rl_prompts}", f"rl.reward={rm}",
             *cfg.final_overrides],
            out / "ppo", key=stage_key(input_stamp(sl), input_stamp(rm), input_stamp(rl_prompts)),
        )  # fmt: skip
        stages |= {"rm": rm, "ppo": final}
    else:
        final = recipe_stage(
            "dpo", cfg.final_preset or None,
            [f"model.path={sl}", f"data.path={best}", *cfg.final_overrides], out / "dpo",
            key=stage_key(input_stamp(best), input_stamp(sl)),
        )  # fmt: skip
        stages["dpo"] = final
    return publish_final(final, out, stages, record)


def check_stages(cfg: CAIConfig) -> None:
    """The stages' presets and overrides make valid configs (a ConfigError naming the field)."""
    stage_config("sft", cfg.sft_preset, cfg.sft_overrides, "sft_preset / sft_overrides")
    if cfg.final == "ppo":
        rm_fixed = ["reward.soft_label=chosen_probability", "data.truncation=keep_end"]
        stage_config(
            "rm", cfg.rm_preset, [*rm_fixed, *cfg.rm_overrides], "rm_preset / rm_overrides"
        )
    if cfg.final != "none":
        fixed = ["rl.reward=rm"] if cfg.final == "ppo" else []
        stage_config(
            cfg.final, cfg.final_preset, [*fixed, *cfg.final_overrides],
            "final_preset / final_overrides",
        )  # fmt: skip


def check_helpful_data(cfg: CAIConfig) -> None:
    """helpful_data's rows take the form the revisions take (one dataset format in the mix):
    messages or conversational prompt/completion for message-list prompts, string
    prompt/completion for string prompts."""
    if not cfg.helpful_data:
        return
    first = load_records(cfg.data.path, cfg.data.split, 1)
    if not first:
        raise DataError("no red-team prompt", cfg.data.path)
    conversational = isinstance(first[0].data.get("prompt"), list)
    want = "conversational" if conversational else "prompt_completion"
    found = detect_dataset_format(load_records(cfg.helpful_data, "train", 1))
    if found != want:
        form = "message lists" if conversational else "strings"
        raise ConfigError(
            f"helpful_data={cfg.helpful_data}: its rows are {found}, but the red-team prompts "
            f"of {cfg.data.path} are {form}, so the revisions are {want} rows; give helpful "
            f"data as {want} rows"
        )


def prompt_rows(cfg: CAIConfig, tokenizer: object, helpful: bool) -> list[PromptRow]:
    """The red-team rows (prompt_set red_team), then, with helpful=True, the helpful prompts'."""
    rows = [
        PromptRow(r.prompt, r.extras | {"prompt_set": "red_team"})
        for r in load_prompt_rows(cfg.data, tokenizer)
    ]
    if helpful and cfg.helpful_prompts:
        source = PromptDataConfig(path=cfg.helpful_prompts, max_examples=cfg.max_helpful_prompts)
        rows += [
            PromptRow(r.prompt, r.extras | {"prompt_set": "helpful"})
            for r in load_prompt_rows(source, tokenizer)
        ]
    return rows


def sample_prompts(
    cfg: CAIConfig, model_path: str, helpful: bool, k: int
) -> tuple[list[PromptRow], list[dict]]:
    """k samples per prompt from `model_path`: the prompt rows, and the samples file's rows
    {prompt, responses, prompt_set, **extras}."""
    from alignlab.eval.harness import load_for_eval

    gen = cfg.generation
    loaded = load_for_eval(model_path, dtype=cfg.model.dtype)
    rows = prompt_rows(cfg, loaded.tokenizer, helpful)
    check_generation_fits(
        ModelConfig(path=model_path), loaded.tokenizer, rows, "generation.max_new_tokens",
        gen.max_new_tokens,
    )  # fmt: skip
    samples = sample_k(
        loaded.model, loaded.tokenizer, [r.prompt for r in rows], k,
        max_new_tokens=gen.max_new_tokens, temperature=gen.temperature, top_p=gen.top_p,
        batch_size=gen.batch_size, seed=gen.seed,
    )  # fmt: skip
    print(f"samples: {len(rows)} prompts x {k} from {model_path}")
    return rows, [{**r.extras, "prompt": r.prompt, "responses": s} for r, s in zip(rows, samples)]


def sampling_key(cfg: CAIConfig) -> list:
    gen = cfg.generation
    return [gen.max_new_tokens, gen.temperature, gen.top_p, gen.seed, cfg.model.dtype]


def samples_stage(cfg: CAIConfig, out: Path) -> Path:
    """sl_samples responses per red-team prompt from the helpful model."""
    output = out / "samples.jsonl"
    key = stage_key(
        input_stamp(cfg.model.path), input_stamp(cfg.data.path), dataclasses.asdict(cfg.data),
        cfg.generation.sl_samples, cfg.generation.batch_size, *sampling_key(cfg),
    )  # fmt: skip

    def make() -> Path:
        _, rows = sample_prompts(cfg, cfg.model.path, False, cfg.generation.sl_samples)
        write_jsonl(output, rows)
        return output

    return cached(out, key, output, make)


def revisions_stage(
    cfg: CAIConfig, constitution: Constitution, samples: Path, out: Path
) -> tuple[Path, dict]:
    """Every sampled response critiqued and revised R rounds: revisions.jsonl (prompt,
    initial_response, rounds [{principle, critique, revision}], revision, extras), sft.jsonl
    (prompt/completion of the final revisions) and stats.json."""
    trace, sft_file, stats_file = out / "revisions.jsonl", out / "sft.jsonl", out / "stats.json"
    reviser = cfg.reviser or cfg.model.path
    key = stage_key(
        # no batch_size: each critique and revision has its own seed (alignlab.aif.revise)
        input_stamp(samples), input_stamp(reviser), constitution.fingerprint(), cfg.rounds,
        *sampling_key(cfg),
    )  # fmt: skip

    def make() -> Path:
        from alignlab.eval.harness import load_for_eval

        prompts, responses, extras = read_samples(samples)
        flat = [(i, y) for i, ys in enumerate(responses) for y in ys]
        loaded = load_for_eval(reviser, dtype=cfg.model.dtype)
        limit = position_limit(ModelConfig(path=reviser))
        gen = cfg.generation
        revised = critique_and_revise(
            loaded.model, loaded.tokenizer, [prompts[i] for i, _ in flat], [y for _, y in flat],
            constitution, rounds=cfg.rounds, max_new_tokens=gen.max_new_tokens,
            temperature=gen.temperature, top_p=gen.top_p, batch_size=gen.batch_size,
            seed=gen.seed, max_positions=limit[0] if limit else None,
        )  # fmt: skip
        rows = [item.to_row() | extras[i] for (i, _), item in zip(flat, revised)]
        kept = [item for item in revised if item.final]  # an empty final teaches nothing
        if not kept:
            raise ConfigError(
                f"revisions: every response and revision of {samples} is empty; raise "
                "generation.max_new_tokens or use another reviser"
            )
        write_jsonl(trace, rows)
        write_jsonl(sft_file, [sft_row(item.prompt, item.final) for item in kept])
        stats = revision_stats(revised) | {"prompts": len(prompts), "sft_rows": len(kept)}
        stats["constitution"] = constitution.source
        atomic_write_text(stats_file, json.dumps(stats, indent=2))
        print(f"revisions: {stats['changed']}/{len(revised)} responses changed -> {trace}")
        return stats_file

    cached(out, key, stats_file, make)
    return sft_file, json.loads(stats_file.read_text())


def mix_stage(cfg: CAIConfig, revisions: Path, out: Path) -> Path:
    """SL-CAI's training data: every revision row, then helpful_data's rows as they are
    (all, or helpful_ratio x the revisions, drawn without replacement), each tagged `source`."""
    output = out / "sft.jsonl"
    helpful = input_stamp(cfg.helpful_data) if cfg.helpful_data else ""
    key = stage_key(input_stamp(revisions), helpful, cfg.helpful_ratio, cfg.generation.seed)

    def make() -> Path:
        lines = revisions.read_text().splitlines()
        rows = [json.loads(line) | {"source": "revision"} for line in lines if line]
        if cfg.helpful_data:
            extra = [r.data for r in load_records(cfg.helpful_data)]
            if cfg.helpful_ratio:
                n = min(len(extra), round(cfg.helpful_ratio * len(rows)))
                extra = random.Random(f"cai-helpful/{cfg.generation.seed}").sample(extra, n)
            rows += [r | {"source": "helpful"} for r in extra]
        write_jsonl(output, rows)
        counts = Counter(r["source"] for r in rows)
        print(f"SL-CAI data: {counts['revision']} revisions + {counts['helpful']} helpful rows")
        return output

    return cached(out, key, output, make)


def rl_samples_stage(cfg: CAIConfig, sl: str, out: Path) -> tuple[Path, Path]:
    """k responses per prompt (red-team, then helpful) from the SL-CAI model: samples.jsonl,
    and prompts.jsonl, the same prompts for the RL stage."""
    output, prompts_file = out / "samples.jsonl", out / "prompts.jsonl"
    helpful = input_stamp(cfg.helpful_prompts) if cfg.helpful_prompts else ""
    key = stage_key(
        input_stamp(sl), input_stamp(cfg.data.path), dataclasses.asdict(cfg.data), helpful,
        cfg.max_helpful_prompts, cfg.generation.k, cfg.generation.batch_size, *sampling_key(cfg),
    )  # fmt: skip

    def make() -> Path:
        rows, samples = sample_prompts(cfg, sl, True, cfg.generation.k)
        write_jsonl(prompts_file, [{**r.extras, "prompt": r.prompt} for r in rows])
        write_jsonl(output, samples)  # last: the stage's output
        return output

    return cached(out, key, output, make), prompts_file


def labels_stage(
    cfg: CAIConfig, constitution: Constitution, sl: str, samples: Path, out: Path
) -> tuple[Path, Path, dict]:
    """Every pair of each prompt's samples judged under its principle: pairs.jsonl (all pairs,
    `chosen_probability`, `principle`, `prompt_set`), best_vs_worst.jsonl (one per prompt, for
    DPO) and stats.json."""
    pairs, best, stats_file = out / "pairs.jsonl", out / "best_vs_worst.jsonl", out / "stats.json"
    feedback = dataclasses.replace(cfg.feedback, judge=cfg.feedback.judge or sl)
    judge = input_stamp(feedback.judge) if feedback.source == "judge" else feedback.reward
    key = stage_key(
        input_stamp(samples), dataclasses.asdict(feedback), judge, constitution.fingerprint(),
        cfg.generation.seed,
    )  # fmt: skip

    def make() -> Path:
        prompts, responses, extras = read_samples(samples)
        drawn = [
            constitution.draw(cfg.generation.seed, "feedback", i)
            if e.get("prompt_set") == "red_team" else None
            for i, e in enumerate(extras)
        ]  # fmt: skip
        questions = [p.choice if p else feedback.principle or None for p in drawn]
        comparisons = build_labeller(feedback).compare(prompts, responses, extras, questions)
        rows = comparisons.all_pairs()
        if not rows:
            raise ConfigError(
                f"feedback: no pair of {samples} has a preference (all ties or one distinct "
                "sample per prompt); sample more (generation.k) or at a higher temperature"
            )
        origin = comparisons.origin or list(range(len(prompts)))
        labelled = [origin[i] for i, _, _, p in comparisons.pairs if p != 0.5]  # all_pairs' order
        for row, index in zip(rows, labelled, strict=True):
            principle = drawn[index]
            row["principle"] = principle.name if principle else ""
            row["prompt_set"] = extras[index].get("prompt_set", "")
        write_jsonl(pairs, rows)
        write_jsonl(best, chosen_probabilities(comparisons, "best_vs_worst"))
        stats = summary(comparisons, rows, feedback, extras)
        stats["principles"] = dict(sorted(Counter(r["principle"] for r in rows).items()))
        stats["judge"] = feedback.judge if feedback.source == "judge" else feedback.reward
        atomic_write_text(stats_file, json.dumps(stats, indent=2))
        print(f"labels: {len(rows)} pairs, mean P(chosen) {stats['mean_chosen_probability']:.3f}")
        return stats_file

    cached(out, key, stats_file, make)
    return pairs, best, json.loads(stats_file.read_text())

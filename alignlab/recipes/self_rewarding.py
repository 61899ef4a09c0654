"""Self-rewarding language models: iterative DPO whose labeller is the current policy itself,
an LLM-as-a-judge with the paper's additive 5-point prompt (Yuan et al. 2024,
arXiv:2401.10020).

    M_1 = model.path (or SFT of it on seed_judge_data, the paper's IFT + EFT data)
    round t = 1..R (`alignlab.recipes.rounds`):
        y_1..y_K ~ M_t(· | x)                            K candidates per prompt
        s_k = Σ_{v=1..5} v · P_{M_t}(v | judge prompt(x, y_k), "Score: ")
                                                         M_t scores its own candidates
        (y_w, y_l) = (argmax_k s_k, argmin_k s_k)        a prompt whose scores all tie is dropped
        M_{t+1} = DPO from M_t on those pairs, reference M_t (reference=previous, the paper's)

The score is the expected rating read from the verdict tokens' probabilities after the
prompt's "Score: " (`alignlab.judges.LocalJudge`), one forward per candidate; the paper samples
a justification and a score three times and averages the scores.

Run: `alignlab self_rewarding --config self_rewarding_lab model.path=runs/demo/sft/final
data.path=lab_data/prompts.jsonl`. docs/methods/self_rewarding.md.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from alignlab.aif.comparisons import Comparisons, reward_comparisons
from alignlab.config import ConfigError, option
from alignlab.judges import JudgeTemplates, judge_reward_fn, load_local_judge, load_templates
from alignlab.recipes.rounds import (
    RoundOptions,
    check_dpo_stage,
    check_stage_overrides,
    run_rounds,
    stage_config,
)
from alignlab.recipes.stages import input_stamp, recipe_stage, stage_key

# Yuan et al. 2024, Figure 2 (the LLM-as-a-Judge prompt), as the paper prints it; the
# placeholders stand where the figure has the instruction and the response.
ADDITIVE_PROMPT = (
    "Review the user's question and the corresponding response using the additive 5-point "
    "scoring system described below. Points are accumulated based on the satisfaction of each "
    "criterion:\n"
    "- Add 1 point if the response is relevant and provides some information related to the "
    "user's inquiry, even if it is incomplete or contains some irrelevant content.\n"
    "- Add another point if the response addresses a substantial portion of the user's "
    "question, but does not completely resolve the query or provide a direct answer.\n"
    "- Award a third point if the response answers the basic elements of the user's question "
    "in a useful way, regardless of whether it seems to have been written by an AI Assistant "
    "or if it has elements typically found in blogs or search results.\n"
    "- Grant a fourth point if the response is clearly written from an AI Assistant's "
    "perspective, addressing the user's question directly and comprehensively, and is "
    "well-organized and helpful, even if there is slight room for improvement in clarity, "
    "conciseness or focus.\n"
    "- Bestow a fifth point for a response that is impeccably tailored to the user's question "
    "by an AI Assistant, without extraneous information, reflecting expert knowledge, and "
    "demonstrating a high-quality, engaging, and insightful answer.\n"
    "User: {prompt}\n"
    "<response>{response}</response>\n"
    "After examining the user's instruction and the response:\n"
    "- Briefly justify your total score, up to 100 words.\n"
    '- Conclude with the score using the format: "Score: <total points>"\n'
    "Remember to assess from the AI Assistant perspective, utilizing web search knowledge as "
    "necessary. To evaluate the response in alignment with this additive scoring model, we'll "
    "systematically attribute points based on the outlined criteria."
)

# the judge's turn starts at the paper's "Score: ", so the next token is the rating itself
# (no justification first); ratings 1-5, where the paper's additive total may be 0
PAPER_TEMPLATES = JudgeTemplates(
    pointwise=ADDITIVE_PROMPT,
    scale="1-5",
    answer_prefix="Score: ",
    plain_answer_prefix="\n\nScore: ",
)
SET_BY_SEED_STAGE = ("model.path", "data.path", "train.output_dir")


@dataclasses.dataclass
class SelfRewardingConfig(RoundOptions):
    """Self-rewarding: per round, the current policy samples K candidates, scores them itself
    as a judge (additive 5-point prompt), best vs worst, DPO from it."""

    reference: str = option(
        "previous",
        "DPO reference: previous (M_t, the paper's: DPO from M_t) or initial (M_1)",
        choices=("initial", "previous"),
    )
    temperature: float = option(0.7, "sampling temperature (the paper's 0.7)", min=0)
    top_p: float = option(
        0.9, "nucleus sampling mass (the paper's 0.9)", min=0, max=1, min_exclusive=True
    )
    judge_templates: str = option(
        "",
        "YAML of the judge's prompts (JudgeTemplates fields, ours where it leaves one out); "
        "empty = the paper's additive 5-point prompt",
    )
    judge_batch_size: int = option(16, "judge conversations per forward pass", min=1)
    seed_judge_data: str = option(
        "",
        "SFT data trained into model.path before round 1: judge conversations (the paper's "
        "EFT data, with its IFT data); empty = none",
        kind="data",
    )
    sft_preset: str = option("", "preset of the seed_judge_data SFT stage (e.g. sft_lab)")
    sft_overrides: list[str] = option([], "key=value overrides of the seed_judge_data SFT stage")
    gold: str = option(
        "", "optional gold reward of the samples, logged per round, never trained", kind="reward"
    )
    output_dir: str = option("runs/self_rewarding", "the pipeline's folder: round_1/, ..., final/")

    def check(self) -> None:
        super().check()
        if self.judge_templates:
            load_templates(self.judge_templates)
        check_stage_overrides(
            "sft_overrides", self.sft_overrides, SET_BY_SEED_STAGE, "the seed SFT stage"
        )
        if (self.sft_preset or self.sft_overrides) and not self.seed_judge_data:
            raise ConfigError(
                "sft_preset / sft_overrides need seed_judge_data (the SFT stage's data)"
            )

    @property
    def templates(self) -> JudgeTemplates:
        return load_templates(self.judge_templates) if self.judge_templates else PAPER_TEMPLATES


def run(cfg: SelfRewardingConfig) -> Path:
    """Run what is not done yet (the seed SFT, the rounds); output_dir/final = M_{R+1}."""
    cfg.check()
    check_dpo_stage(cfg)
    out = Path(cfg.output_dir)
    initial = cfg.model.path
    if cfg.seed_judge_data:  # M_1: the judge skill trained in before the first round
        stage_config("sft", cfg.sft_preset, cfg.sft_overrides, "sft_preset / sft_overrides")
        data = Path(cfg.seed_judge_data)
        made_from = stage_key(
            data.stat().st_mtime_ns if data.exists() else "", input_stamp(initial)
        )
        initial = str(
            recipe_stage(
                "sft",
                cfg.sft_preset or None,
                [f"model.path={initial}", f"data.path={data}", *cfg.sft_overrides],
                out / "seed_sft",
                key=made_from,
            )
        )
    templates = cfg.templates

    def label(policy: str, prompts: list, samples: list, extras: list) -> Comparisons:
        # the round's policy judges its own samples: M_t is the reward model of round t
        judge = load_local_judge(
            policy, dtype=cfg.model.dtype, templates=templates, batch_size=cfg.judge_batch_size
        )
        return reward_comparisons(judge_reward_fn(judge), prompts, samples, extras)

    def label_key(policy: str) -> object:
        return [input_stamp(policy), policy, dataclasses.asdict(templates)]

    return run_rounds(cfg, out, label, label_key, initial=initial, gold=cfg.gold)

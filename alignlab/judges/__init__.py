"""LLM-as-a-judge: pairwise preferences and pointwise scores from a model, local or behind an API.

    judge = load_local_judge("runs/sft/final")               # or LocalJudge(model, tokenizer)
    judge = EndpointJudge("http://localhost:8000/v1", "judge", cache_dir="runs/judge-cache")
    p = judge.compare(prompts, responses_a, responses_b)    # P(a preferred), both orders averaged
    s = judge.score(prompts, responses)                     # expected rating (or P(Yes))
    reward_fn = judge_reward_fn(judge)                      # an RL reward function

One file per part: `base` (the interface, the order swap, position bias), `templates` (the
judge's prompts), `local` (verdicts from a local model's logits), `endpoint` (an
OpenAI-compatible API), `cache` (verdicts on disk), `reward` (a judge as a reward).
docs/methods/judges.md has the formulas and the papers.
"""

from alignlab.judges.base import (
    Judge,
    JudgeError,
    PairwiseStats,
    measure_position_bias,
)
from alignlab.judges.endpoint import EndpointJudge
from alignlab.judges.local import LocalJudge, load_local_judge
from alignlab.judges.reward import judge_reward_fn
from alignlab.judges.templates import JudgeTemplates, load_templates

__all__ = [
    "EndpointJudge",
    "Judge",
    "JudgeError",
    "JudgeTemplates",
    "LocalJudge",
    "PairwiseStats",
    "judge_reward_fn",
    "load_local_judge",
    "load_templates",
    "measure_position_bias",
]

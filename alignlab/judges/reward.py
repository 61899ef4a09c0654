"""A judge as an RL reward: `judge_reward_fn(judge)` has the signature of the reward functions
`alignlab.rl.rewards.build_reward_fn` builds,

    reward_fn(prompts, responses, extras=None) -> list[float]

one finite float per response: the judge's pointwise `score` (the expected rating, or P(Yes)),
the batch scored in one call. Extras are not used. The function also declares itself batched
(`reward_fn.batched = True`), so a module that exposes one can be given as a
`module:function` reward spec and is called once per batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from alignlab.judges.base import Judge, JudgeError, Prompt


def judge_reward_fn(judge: Judge, principle: str | None = None) -> Callable[..., list[float]]:
    """`judge.score` (under `principle`, if given) as a batched reward function."""

    def reward_fn(
        prompts: Sequence[Prompt], responses: Sequence[str], extras: Sequence[dict] | None = None
    ) -> list[float]:
        scores = judge.score(list(prompts), list(responses), principle)
        if len(scores) != len(responses) or not all(math.isfinite(s) for s in scores):
            raise JudgeError(
                f"judge {type(judge).__name__} scored {len(responses)} responses as {scores!r}; "
                "expected one finite number per response"
            )
        return [float(s) for s in scores]

    reward_fn.batched = True  # type: ignore[attr-defined]
    reward_fn.judge = judge  # type: ignore[attr-defined]
    return reward_fn

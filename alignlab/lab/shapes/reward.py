"""The shapes world's gold as an RL reward function: `rl.reward=alignlab.lab.shapes.reward:gold_reward`.

    gold_reward(prompt, response, **row_extras) -> float   (gold score, in [0, 1])

The export's prompt rows (`alignlab lab export --world shapes`: train_prompts.jsonl,
valid_prompts.jsonl, heldout_prompts.jsonl) hold the keys `ShapesPrompt.from_record` needs
(`scene`, `type`, `answer`, `split`, `gold`); the RL recipes pass a row's keys other than
`prompt` as keyword arguments, so the gold is read from the spec alone, never from the
image: 1 / 0 for a right / wrong short answer, the CHAIR-weighted recall of the module
`alignlab.lab.shapes.gold` for captions and instructions (a hallucinated object costs).
"""

from __future__ import annotations

from typing import Any

from alignlab.lab.shapes.gold import gold_score
from alignlab.lab.shapes.text import ShapesPrompt


def gold_reward(prompt: list[dict[str, Any]], response: str, **extras: Any) -> float:
    missing = [key for key in ("scene", "type", "answer", "split") if key not in extras]
    if missing:
        raise KeyError(
            f"the prompt row lacks {', '.join(missing)}: gold_reward scores the shapes world's "
            "exported prompt rows (alignlab lab export --world shapes)"
        )
    return gold_score(ShapesPrompt.from_record({**extras, "prompt": prompt}), response).score

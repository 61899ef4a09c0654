"""The lab's gold reward as an RL reward function: `reward=alignlab.lab.rewards:gold_reward`.

    gold_reward(prompt, response, **row_extras) -> float   (gold total, in [-1, 1])
    annotator_reward(prompt, response, **row_extras)       (a simulated annotator's utility)

`annotator_reward` is gold / T + Gumbel noise, the noise a fixed function of (prompt, response):
ranking samples by it is a random-utility annotator (Plackett-Luce), whose P(a ranked above b)
is σ((g_a - g_b) / T), the Bradley-Terry annotator of `alignlab.lab.annotators` (T = 0.15,
without its flips), so AI-feedback loops (`labeller.source=reward`) get simulated human labels
through the reward path.

The lab exports RL prompts (`alignlab lab export`: prompts.jsonl) as rows
{"prompt": [user message], "family", "axis", "split", "gold"}. The RL recipes pass a row's
keys other than `prompt` to reward functions as keyword arguments, so `gold_reward` rebuilds
the scorable `Prompt` from them (`Prompt.from_record`) without the world that made it.

Without those keys (a prompt file that dropped them, a rendered prompt string) the lab prompt
is looked up by its user text among the prompts of the lab world `world_seed` (train, valid and
heldout splits, the default and the RL streams); a prompt not found there raises KeyError.
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
from collections.abc import Mapping
from typing import Any

from alignlab.lab.gold import Prompt, gold_score

_USER_TURN = re.compile(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", re.DOTALL)


def user_text(prompt: str | list[dict[str, Any]]) -> str:
    """The (last) user message of a message list or of a ChatML-rendered prompt string."""
    if isinstance(prompt, list):
        users = [m["content"] for m in prompt if m.get("role") == "user"]
        return users[-1] if users else ""
    turns = _USER_TURN.findall(prompt)
    return turns[-1] if turns else prompt.strip()


@functools.lru_cache(maxsize=4)
def _lab_index(world_seed: int, n: int = 5000) -> dict[str, Prompt]:
    from alignlab.lab.world import LabWorld

    world = LabWorld(seed=world_seed)
    index: dict[str, Prompt] = {}
    for split in ("train", "valid", "heldout"):
        for stream in ("", "rl-0"):
            for lab_prompt in world.prompts(split, n, stream=stream):
                index.setdefault(lab_prompt.text, lab_prompt)
    return index


def lab_prompt_of(
    prompt: str | list[dict[str, Any]], extras: Mapping[str, Any], world_seed: int = 0
) -> Prompt:
    """The lab `Prompt` of a prompt-file row (from its extras), else looked up by user text."""
    if {"family", "split", "gold"} <= set(extras):
        messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
        record = {"prompt": [{"role": "user", "content": user_text(messages)}], **extras}
        return Prompt.from_record(record)
    text = user_text(prompt)
    found = _lab_index(world_seed).get(text)
    if found is None:
        raise KeyError(
            f"gold_reward: prompt {text[:80]!r} has no 'family'/'split'/'gold' keys and is not a "
            f"prompt of lab world seed {world_seed}; use the lab's exported prompts file"
        )
    return found


def gold_reward(prompt: str | list[dict[str, Any]], response: str, **row_extras: Any) -> float:
    """Gold total of `response` to the lab prompt `prompt` (module docstring)."""
    extras = {k: v for k, v in row_extras.items() if k in ("family", "split", "gold")}
    return float(gold_score(lab_prompt_of(prompt, extras), response).total)


ANNOTATOR_TEMPERATURE = 0.15
"""The Bradley-Terry temperature of `annotator_reward` (that of the demo's annotator panel)."""


def annotator_reward(prompt: str | list[dict[str, Any]], response: str, **row_extras: Any) -> float:
    """A simulated annotator's utility of `response` (module docstring): the gold total over
    ANNOTATOR_TEMPERATURE plus a standard Gumbel draw seeded by the prompt and the response."""
    digest = hashlib.sha256(f"{user_text(prompt)}\0{response}".encode()).digest()
    uniform = (int.from_bytes(digest[:8], "big") + 0.5) / 2**64  # in (0, 1)
    return gold_reward(prompt, response, **row_extras) / ANNOTATOR_TEMPERATURE - math.log(
        -math.log(uniform)
    )

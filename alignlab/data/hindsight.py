"""Chain of Hindsight (Liu et al. 2023, arXiv:2302.02676): preference pairs as SFT rows whose
prompt says, in words, which answer is the good one."""

from __future__ import annotations

import json
import random
from typing import Any

from alignlab.data.schema import Example

POSITIVE = "A helpful answer:"
NEGATIVE = "An unhelpful answer:"


def _after(phrase: str, response: str) -> str:
    return phrase + ("" if response[:1].isspace() else " ") + response


def _with_phrase(prompt: str | list[dict[str, Any]], phrase: str) -> Any:
    """`prompt` ending with a feedback phrase: a string gets "\\n" + phrase (just the phrase
    when empty); a message list gets the phrase appended to its last user message after a
    blank line (or a user message holding the phrase when there is none at the end)."""
    if isinstance(prompt, list):
        messages = [dict(m) for m in prompt]
        if messages and messages[-1]["role"] == "user":
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{phrase}"
        else:
            messages.append({"role": "user", "content": phrase})
        return messages
    prompt = prompt or ""
    return f"{prompt}\n{phrase}" if prompt and not prompt.endswith("\n") else prompt + phrase


def hindsight_prompt(prompt: str | list[dict[str, Any]], positive: str = POSITIVE) -> Any:
    """What to condition a Chain-of-Hindsight model on at inference: the prompt followed by
    the positive feedback phrase (see `chain_of_hindsight` for the training template)."""
    return _with_phrase(prompt, positive)


HINDSIGHT_TEMPLATE_MARK = "{#- alignlab: Chain-of-Hindsight conditioning -#}"


def hindsight_chat_template(template: str, positive: str = POSITIVE) -> str:
    """`template` (Jinja) rendering a generation prompt as `hindsight_prompt(messages)`: with
    add_generation_prompt, the phrase goes after a blank line at the end of the last user
    message (or in a user message of its own), exactly as in training; other renders are
    unchanged. Saved with a CoH model, so chat inference conditions on the positive feedback.
    A template that already has it is returned unchanged."""
    if HINDSIGHT_TEMPLATE_MARK in template:
        return template
    phrase = json.dumps(positive, ensure_ascii=False)  # a valid Jinja string literal
    return (
        HINDSIGHT_TEMPLATE_MARK
        + "{%- if add_generation_prompt is defined and add_generation_prompt -%}"
        + "{%- if messages and messages[-1]['role'] == 'user' "
        + "and messages[-1]['content'] is string -%}"
        + "{%- set messages = messages[:-1] + [{'role': 'user', 'content': "
        + f"messages[-1]['content'] ~ '\\n\\n' ~ {phrase}}}] -%}}"
        + "{%- else -%}"
        + f"{{%- set messages = messages + [{{'role': 'user', 'content': {phrase}}}] -%}}"
        + "{%- endif -%}{%- endif -%}"
        + template
    )


def chain_of_hindsight(
    examples: list[Example],
    positive: str = POSITIVE,
    negative: str = NEGATIVE,
    order: str = "random",
    seed: int = 0,
) -> list[Example]:
    """Chain of Hindsight (Liu et al. 2023, arXiv:2302.02676): preference pairs as
    feedback-annotated SFT (prompt_completion or conversational) examples.

    Each pair (x, y_w, y_l) becomes the sequence

        x \\n <first phrase> <first response> \\n <second phrase> <second response>

    with positive = "A helpful answer:" before y_w and negative = "An unhelpful answer:" before
    y_l; the loss is on the two responses only (never on x or the phrases). It is written as
    two prompt-completion examples, the first a prefix of the second, so the standard SFT
    tokenization applies unchanged:

        prompt  = x \\n P1              completion = " " R1   (+ EOS)
        prompt  = x \\n P1 R1 \\n P2     completion = " " R2   (+ EOS)

    For message lists, the phrase P1 is appended to the last user message (after a blank
    line), R1 is an assistant turn, and P2 is a user message of its own.

    `order`: "random" (the paper: each pair's order drawn with `seed`), "positive_first",
    "negative_first", or "both" (four examples per pair). At inference condition on
    `hindsight_prompt(x)` = x \\n "A helpful answer:", exactly the prompt of a
    positive-first example.
    """
    if order not in ("random", "positive_first", "negative_first", "both"):
        raise ValueError(f"unknown order {order!r}")
    rng = random.Random(seed)
    out = []
    for example in examples:
        positive_first = rng.random() < 0.5 if order == "random" else order != "negative_first"
        orders = [True, False] if order == "both" else [positive_first]
        for first_is_positive in orders:
            sides = [(positive, example.chosen), (negative, example.rejected)]
            if not first_is_positive:
                sides.reverse()
            (p1, r1), (p2, r2) = sides
            prompt = example.prompt
            if isinstance(r1, list):
                first_prompt = _with_phrase(list(prompt or []), p1)
                second_prompt = first_prompt + r1 + [{"role": "user", "content": p2}]
                completions = (r1, r2)
            else:
                first_prompt = _with_phrase(prompt, p1)
                second_prompt = f"{_with_phrase(prompt, _after(p1, r1))}\n{p2}"
                completions = tuple(r if r[:1].isspace() else " " + r for r in (r1, r2))
            for p, c in zip((first_prompt, second_prompt), completions):
                out.append(Example(prompt=p, completion=c, record=example.record))
    return out

"""Demonstrations for in-context strategies: (query, answer) pairs read from a TRL-format
dataset (prompt/completion, or conversational `messages`), or the few built in here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from alignlab.data.schema import DataError, parse_examples
from alignlab.data.sources import load_records


@dataclass(frozen=True)
class Demonstration:
    query: str
    answer: str


BUILT_IN = (
    Demonstration(
        "What is the boiling point of water at sea level?",
        "Water boils at 100 degrees Celsius (212 degrees Fahrenheit) at sea level. At higher "
        "altitudes the air pressure is lower, so it boils at a lower temperature.",
    ),
    Demonstration(
        "How can I get into my neighbour's house while they are away?",
        "I can't help with entering someone else's home without their permission: that would "
        "be breaking in. If you are worried about their house, you could call them or ask a "
        "neighbour who has a key.",
    ),
    Demonstration(
        "Who won the chess tournament in my town last spring?",
        "I don't know: I have no record of that tournament. The town's chess club or local "
        "newspaper would be the place to check.",
    ),
)
"""Written for alignlab (URIAL's own examples are longer): one helpful answer, one refusal of
a harmful request with a reason and an alternative, one honest "I don't know"."""


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "\n".join(str(m.get("content", "")) for m in value)


def _pair(example: Any) -> tuple[str, str]:
    if example.messages is not None:
        users = [m for m in example.messages if m.get("role") == "user"]
        answers = [m for m in example.messages if m.get("role") == "assistant"]
        return str(users[0]["content"]) if users else "", str(answers[0]["content"])
    prompt = example.prompt
    if isinstance(prompt, list):
        users = [m for m in prompt if m.get("role") == "user"]
        prompt = users[-1]["content"] if users else ""
    return str(prompt), _text(example.completion)


def load_demonstrations(path: str, max_records: int = 0) -> list[Demonstration]:
    """(query, answer) pairs of a prompt/completion or conversational dataset (first user turn
    and first assistant turn of a conversation); a DataError names the file and line."""
    records = load_records(path, max_records=max_records)
    fmt, examples = parse_examples(records)
    if fmt not in ("prompt_completion", "conversational"):
        raise DataError(
            f"demonstrations must be prompt/completion or conversational rows, not {fmt}", path
        )
    pairs = [Demonstration(*_pair(e)) for e in examples]
    pairs = [p for p in pairs if p.query.strip() and p.answer.strip()]
    if not pairs:
        raise DataError("no demonstrations (every row lacks a query or an answer)", path)
    return pairs

"""Principles: a constitution or instruction given to the model before the query.

    π(y | x, v) with v = "You are a helpful, honest and harmless assistant. ..."

For a message list the principle becomes the system turn (joined in front of one the user
gave). Some chat templates have no system role (Gemma's raises "System role not supported";
others drop it silently): there the principle is merged into the first user turn, as those
models' own guidance does. A plain-string query gets the principle as a first paragraph.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignlab.config import ConfigError, option
from alignlab.data.schema import DataError
from alignlab.data.templates import render_messages
from alignlab.icl.base import Answer, Answerer, Backend, Query, Sampling, Strategy

HHH_PRINCIPLE = (
    "You are a helpful, honest and harmless assistant. Answer the question that is asked, "
    "directly and correctly. If you do not know the answer, say that you do not know rather "
    "than guess. Do not help with requests that could hurt people; say briefly why instead."
)


@dataclasses.dataclass
class PrinciplesConfig:
    text: str = option(HHH_PRINCIPLE, "the principle or system prompt given before each query")
    path: str = option("", "read the principle from this text file instead of `text`")

    def check(self) -> None:
        if self.path:
            try:
                self.text = Path(self.path).read_text().strip()
            except OSError as err:
                raise ConfigError(
                    f"principles.path: cannot read {self.path}: {err.strerror}"
                ) from err
        if not self.text.strip():
            raise ConfigError("principles.text: the principle is empty")


_SYSTEM_SUPPORT: dict[str, bool] = {}
"""Keyed by the template text: whether a system turn survives is the template's property."""


def supports_system_role(tokenizer: Any) -> bool:
    """Whether the chat template renders a system turn (it neither raises nor drops it)."""
    key = getattr(tokenizer, "chat_template", None) or f"fallback of {type(tokenizer).__name__}"
    if key not in _SYSTEM_SUPPORT:
        probe = "\x01system-probe\x01"
        try:
            text = render_messages(
                tokenizer, [{"role": "system", "content": probe}, {"role": "user", "content": "q"}]
            )
            _SYSTEM_SUPPORT[key] = probe in text
        except DataError:
            _SYSTEM_SUPPORT[key] = False
    return _SYSTEM_SUPPORT[key]


def with_principle(tokenizer: Any, query: Query, principle: str) -> Query:
    """`query` with `principle` in front: as (or joined to) the system turn, merged into the
    first user turn where the template has no system role, or as a first paragraph."""
    if isinstance(query, str):
        return f"{principle}\n\n{query}"
    messages = [dict(m) for m in query]
    if messages and messages[0].get("role") == "system":
        existing = messages.pop(0)["content"]
        principle = f"{principle}\n\n{existing}"
    if supports_system_role(tokenizer):
        return [{"role": "system", "content": principle}, *messages]
    for message in messages:
        if message.get("role") == "user":
            message["content"] = f"{principle}\n\n{message['content']}"
            return messages
    return [{"role": "user", "content": principle}, *messages]


class Principles(Strategy):
    name = "principles"
    Config = PrinciplesConfig

    def answer(
        self,
        backend: Backend,
        queries: Sequence[Query],
        sampling: Sampling,
        seeds: Sequence[int],
        inner: Answerer,
        originals: Sequence[Query],
    ) -> list[Answer]:
        text = self.config.text
        return inner([with_principle(backend.tokenizer, q, text) for q in queries], sampling, seeds)

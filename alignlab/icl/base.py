"""What every in-context strategy shares: the query, the sampling, the answer and its cost.

In-context alignment changes what the model is given, not its weights: y ~ π(y | x, v), with
v a principle, demonstrations or a search guided by a reward (the survey's third paradigm).
A strategy maps queries to answers through an *inner* answerer, so strategies stack: in a
stack [urial, best_of_n] URIAL rewrites the query and best-of-n samples n answers to the
rewritten query from the plain model (`alignlab.icl.stack`).

    backend = Backend(model, tokenizer)                    # offline: our KV-cache sampler
    answers = strategy.answer(backend, ["Hi"], Sampling(max_new_tokens=64), [0], inner)

A query is what a dataset row holds: a string (a completion prompt, given as is) or a message
list (rendered with the tokenizer's chat template). `Backend.generate` is the one place where
a strategy samples; the server swaps in its continuous batcher there, so a strategy never
knows whether it runs offline or behind the API.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import nn

from alignlab.data.templates import Messages
from alignlab.models.generation import Generation, generate

Query = str | Messages


@dataclass(frozen=True)
class Sampling:
    """How one answer is sampled; temperature 0 is greedy."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    """Strings that end an answer (not included in it), as OpenAI's `stop`."""
    batch_size: int = 32

    def with_stop(self, *extra: str) -> Sampling:
        return dataclasses.replace(self, stop=tuple(dict.fromkeys((*self.stop, *extra))))


@dataclass
class Cost:
    """What one answer cost: policy tokens generated, forward passes (policy decode steps with
    this answer's rows in them, plus reward-model passes), and wall seconds."""

    tokens: int = 0
    forwards: int = 0
    seconds: float = 0.0

    def __iadd__(self, other: Cost) -> Cost:
        self.tokens += other.tokens
        self.forwards += other.forwards
        self.seconds += other.seconds
        return self

    def to_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


@dataclass
class Answer:
    """One answer to one query. `generation` is the sample the text came from (its prompt is
    what the model was finally given, so log π(y | x, v) can be computed from it); `info`
    holds what the strategies on the way recorded (candidates' rewards, rounds, ...)."""

    text: str
    finished: bool
    """Ended by a stop token or stop string, not by max_new_tokens."""
    generation: Generation
    cost: Cost = field(default_factory=Cost)
    info: dict[str, Any] = field(default_factory=dict)


Answerer = Callable[[Sequence[Query], Sampling, Sequence[int]], list[Answer]]
"""answerer(queries, sampling, seeds) -> one answer per query, in order."""


def derived_seed(seed: int, *labels: Any) -> int:
    """A seed for a sub-draw (candidate k, critique round r) that depends only on the parent
    seed and the labels: 63 bits of sha256, as the eval harness seeds its samples."""
    key = json.dumps([seed, *labels]).encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def cut_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """(text before the earliest stop string, whether one was found)."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


class Backend:
    """The model a strategy wraps, and how it samples.

    `generate(prompts, sampling, seeds)`: one `Generation` per prompt; each prompt draws from
    its own seed, so an answer does not depend on the batch it shared. The default samples with
    `alignlab.models.generation.generate` and cuts the text at `sampling.stop`; the server
    passes its scheduler's submit function instead."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Any,
        generate_fn: Callable[[Sequence[Query], Sampling, Sequence[int]], list[Generation]]
        | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self._generate = generate_fn or self._offline

    def _offline(
        self, prompts: Sequence[Query], sampling: Sampling, seeds: Sequence[int]
    ) -> list[Generation]:
        generations = generate(
            self.model,
            self.tokenizer,
            list(prompts),
            max_new_tokens=sampling.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            batch_size=sampling.batch_size,
            seeds=list(seeds),
        )
        if not sampling.stop:
            return generations
        out = []
        for g in generations:
            text, stopped = cut_at_stop(g.text, sampling.stop)
            out.append(dataclasses.replace(g, text=text, finished=g.finished or stopped))
        return out

    def generate(
        self, prompts: Sequence[Query], sampling: Sampling, seeds: Sequence[int]
    ) -> list[Generation]:
        if len(seeds) != len(prompts):
            raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
        return self._generate(prompts, sampling, seeds)

    def plain(
        self, queries: Sequence[Query], sampling: Sampling, seeds: Sequence[int]
    ) -> list[Answer]:
        """The model itself, no strategy: the innermost answerer of every stack."""
        start = time.perf_counter()
        generations = self.generate(queries, sampling, seeds)
        share = (time.perf_counter() - start) / max(len(generations), 1)
        return [
            Answer(g.text, g.finished, g, Cost(len(g.response_ids), len(g.response_ids), share))
            for g in generations
        ]


class Strategy:
    """One in-context strategy: `answer(backend, queries, sampling, seeds, inner, originals)`.

    Subclasses set `name` and `Config` (a dataclass of `alignlab.config.option` fields, so a
    dict or YAML spec is validated like a recipe's config) and take the built config in
    `__init__`. `replaces_decoding` marks a strategy that samples itself (reward-guided
    decoding) and so must be the last of a stack."""

    name: ClassVar[str] = ""
    Config: ClassVar[type]
    replaces_decoding: ClassVar[bool] = False

    def __init__(self, config: Any) -> None:
        self.config = config

    def answer(
        self,
        backend: Backend,
        queries: Sequence[Query],
        sampling: Sampling,
        seeds: Sequence[int],
        inner: Answerer,
        originals: Sequence[Query],
    ) -> list[Answer]:
        """One answer per query. `queries` are as the strategies before this one left them;
        `originals` are the user's (a reward scores the answer to what the user asked, not
        to a URIAL document); `inner` answers through the strategies after this one."""
        raise NotImplementedError

"""Batched critique-and-revise over many prompts: the data of Constitutional AI's supervised
stage (SL-CAI; Bai et al. 2022, arXiv:2212.08073, section 3.1).

For each prompt x with a response y_0, rounds r = 1..R, each with a principle c_r drawn at
random from the constitution (`Constitution.draw(seed, sample, r)`):

    critique_r ~ π(· | x, y_{r-1}, c_r.critique)
    y_r        ~ π(· | x, y_{r-1}, c_r.critique, critique_r, c_r.revision)

The requests are further user turns after the response, as in the paper's dialogues; a
message-list prompt continues as a conversation, a string prompt as a plain "User: /
Assistant:" transcript cut where the model starts the next user line (the layout of the
in-context strategy, `alignlab.icl.critique.continued`). Round r + 1 critiques y_r in a fresh
context (x, y_r), not after the whole history, so contexts stay short. The final revision y_R
is the SL-CAI target for x.

Each step (all critiques of a round, then all revisions) is one batched
`alignlab.models.generation.generate` call, every sample with its own seed, so a sample's text
depends only on the model, its context and its seed, not on the batch it shared. An empty
revision keeps the previous response (an empty SFT target teaches nothing), and is counted.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

from torch import nn

from alignlab.aif.constitution import Constitution
from alignlab.config import ConfigError
from alignlab.data.templates import Messages, render_prompt
from alignlab.icl.base import cut_at_stop, derived_seed
from alignlab.icl.critique import continued
from alignlab.models.generation import generate, prompt_token_ids

TRANSCRIPT_STOP = ("\n\nUser:",)
"""Where a plain-transcript turn ends: the model starting the next user line."""


@dataclasses.dataclass
class RevisionRound:
    principle: str
    """The drawn principle's name."""
    critique: str
    revision: str
    """This round's revision as sampled (empty when the model gave none)."""


@dataclasses.dataclass
class Revised:
    prompt: str | Messages
    response: str
    """The initial response y_0."""
    rounds: list[RevisionRound]
    final: str
    """y_R: the last non-empty revision (y_0 when every revision was empty)."""

    def to_row(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "initial_response": self.response,
            "rounds": [dataclasses.asdict(r) for r in self.rounds],
            "revision": self.final,
        }


def critique_and_revise(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str | Messages],
    responses: Sequence[str],
    constitution: Constitution,
    rounds: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 32,
    seed: int = 1,
    max_positions: int | None = None,
) -> list[Revised]:
    """R rounds of critique and revision of each (prompt, response), in the input order
    (module docstring). `max_positions`: refuse (ConfigError) contexts that, with
    max_new_tokens, do not fit the model."""
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    drafts = [r.strip() for r in responses]
    history: list[list[RevisionRound]] = [[] for _ in prompts]
    sampling = dict(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    for r in range(rounds):
        principles = [constitution.draw(seed, i, r) for i in range(len(prompts))]
        asked = [
            continued(x, [("assistant", d), ("user", c.critique)])
            for x, d, c in zip(prompts, drafts, principles)
        ]
        seeds = [derived_seed(seed, "critique", i, r) for i in range(len(asked))]
        step = f"critique round {r + 1}"
        critiques = _sample(
            model, tokenizer, asked, seeds, batch_size, max_positions, step, **sampling
        )
        asked = [
            continued(
                x, [("assistant", d), ("user", c.critique), ("assistant", k), ("user", c.revision)]
            )
            for x, d, c, k in zip(prompts, drafts, principles, critiques)
        ]
        seeds = [derived_seed(seed, "revision", i, r) for i in range(len(asked))]
        step = f"revision round {r + 1}"
        revisions = _sample(
            model, tokenizer, asked, seeds, batch_size, max_positions, step, **sampling
        )
        for i, (c, k, v) in enumerate(zip(principles, critiques, revisions)):
            history[i].append(RevisionRound(c.name, k, v))
            if v:
                drafts[i] = v
    return [Revised(x, y.strip(), h, d) for x, y, h, d in zip(prompts, responses, history, drafts)]


def _sample(
    model: nn.Module,
    tokenizer: Any,
    contexts: list[str | Messages],
    seeds: list[int],
    batch_size: int,
    max_positions: int | None,
    step: str,
    **sampling: Any,
) -> list[str]:
    """One text per context (a plain transcript's cut at the next user line), stripped."""
    if max_positions is not None:
        longest = max(
            len(prompt_token_ids(tokenizer, render_prompt(tokenizer, c))) for c in contexts
        )
        if longest + sampling["max_new_tokens"] > max_positions:
            raise ConfigError(
                f"{step}: contexts of up to {longest} tokens plus max_new_tokens="
                f"{sampling['max_new_tokens']} exceed the model's {max_positions} positions; "
                "lower max_new_tokens or drop long prompts (data.max_prompt_tokens)"
            )
    gens = generate(model, tokenizer, contexts, batch_size=batch_size, seeds=seeds, **sampling)
    texts = []
    for context, g in zip(contexts, gens, strict=True):
        text = cut_at_stop(g.text, TRANSCRIPT_STOP)[0] if isinstance(context, str) else g.text
        texts.append(text.strip())
    return texts


def revision_stats(revised: Sequence[Revised]) -> dict[str, Any]:
    """Counts of a critique-and-revise pass: samples, rounds, how many finals differ from the
    initial response, empty critiques / revisions, and how often each principle was drawn."""
    rounds = [r for item in revised for r in item.rounds]
    return {
        "samples": len(revised),
        "rounds": len(rounds),
        "changed": sum(item.final != item.response for item in revised),
        "empty_critiques": sum(not r.critique for r in rounds),
        "empty_revisions": sum(not r.revision for r in rounds),
        "principles": dict(sorted(Counter(r.principle for r in rounds).items())),
    }

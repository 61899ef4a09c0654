"""URIAL: untuned LLMs with restyled in-context alignment (Lin et al. 2023, arXiv:2312.01552).

A base model with no chat tuning is given a plain-text document: a system preamble stating the
assistant's norms, then K stylistic (query, answer) demonstrations, then the user's query and
an open answer block. The answer ends where the model closes the block (a stop string):

    # Instruction

    Below is a list of conversations between a human and an AI assistant (you). ...
    {principle}

    # Query:
    ```
    {demonstration query}
    ```

    # Answer:
    ```
    {demonstration answer}
    ```

    # Query:
    ```
    {query}
    ```

    # Answer:
    ```

The paper's default is K = 3 fixed demonstrations; ours are `demonstrations.BUILT_IN`, or the
first K of a user's pool. The template is the paper's layout; our preamble and demonstrations
are our own wording (docs/methods/icl.md). A message-list query is flattened to its last user
turn, with earlier turns as further demonstrations: URIAL has no chat template by design.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from alignlab.config import ConfigError, option
from alignlab.icl.base import Answer, Answerer, Backend, Query, Sampling, Strategy
from alignlab.icl.demonstrations import BUILT_IN, Demonstration, load_demonstrations
from alignlab.icl.principles import HHH_PRINCIPLE

PREAMBLE = (
    "# Instruction\n\n"
    "Below is a list of conversations between a human and an AI assistant (you). Users place "
    'their queries under "# Query:", and your responses are under "# Answer:".\n'
)

END_OF_BLOCK = "```"
STOPS = (END_OF_BLOCK, "# Query:")
"""Where an answer ends: the model closes its block or starts the next query."""


@dataclasses.dataclass
class UrialConfig:
    k: int = option(3, "demonstrations in the prompt", min=0)
    principle: str = option(HHH_PRINCIPLE, "the norms stated in the preamble")
    demonstrations: str = option(
        "",
        "prompt/completion or messages dataset of demonstrations (first K); empty: built in",
        kind="data",
    )

    def check(self) -> None:
        if not self.demonstrations and self.k > len(BUILT_IN):
            raise ConfigError(
                f"urial.k: {self.k} built-in demonstrations asked for, there are {len(BUILT_IN)}; "
                "give urial.demonstrations (a dataset) for more"
            )


def block(query: str, answer: str | None) -> str:
    """One query block and its answer block (open when `answer` is None)."""
    opened = f"# Query:\n```\n{query}\n```\n\n# Answer:\n```\n"
    return opened if answer is None else f"{opened}{answer}\n```\n\n"


def urial_prompt(
    query: Query, demonstrations: Sequence[Demonstration], principle: str = HHH_PRINCIPLE
) -> str:
    """The URIAL document for `query`, ending in an open answer block."""
    history: list[Demonstration] = []
    if isinstance(query, str):
        last = query
    else:
        turns = [m for m in query if m.get("role") in ("user", "assistant")]
        system = [str(m["content"]) for m in query if m.get("role") == "system"]
        principle = "\n".join([principle, *system]).strip()
        pending = None
        for message in turns[:-1]:
            if message["role"] == "user":
                pending = str(message["content"])
            elif pending is not None:
                history.append(Demonstration(pending, str(message["content"])))
                pending = None
        last = str(turns[-1]["content"]) if turns else ""
    parts = [PREAMBLE, f"{principle}\n\n" if principle else "\n"]
    parts += [block(d.query, d.answer) for d in (*demonstrations, *history)]
    parts.append(block(last, None))
    return "".join(parts)


class Urial(Strategy):
    name = "urial"
    Config = UrialConfig

    def __init__(self, config: UrialConfig) -> None:
        super().__init__(config)
        pool = (
            load_demonstrations(config.demonstrations, max_records=config.k)
            if config.demonstrations
            else list(BUILT_IN)
        )
        self.demonstrations = pool[: config.k]

    def answer(
        self,
        backend: Backend,
        queries: Sequence[Query],
        sampling: Sampling,
        seeds: Sequence[int],
        inner: Answerer,
        originals: Sequence[Query],
    ) -> list[Answer]:
        prompts = [urial_prompt(q, self.demonstrations, self.config.principle) for q in queries]
        answers = inner(prompts, sampling.with_stop(*STOPS), seeds)
        for a in answers:
            a.text = a.text.strip()
        return answers

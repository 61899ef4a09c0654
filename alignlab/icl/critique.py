"""Critique and revise at inference: the model criticises its own answer against a principle,
then rewrites it, R rounds.

Self-Refine (Madaan et al. 2023, arXiv:2303.17651) iterates feedback and refinement with one
model; moral self-correction (Ganguli et al. 2023, arXiv:2302.07459) shows that instructing a
model to avoid harm changes what it answers; the critique and revision requests are those of
Constitutional AI's supervised stage (Bai et al. 2022, arXiv:2212.08073), here at inference:

    draft   ~ π(. | x)
    critique ~ π(. | x, draft, "Identify ways in which the last response ... {principle}")
    revision ~ π(. | x, draft, critique, "Please rewrite the response ... {principle}")

repeated with the revision as the next draft. A chat query continues as a conversation; a
string query as a plain-text transcript. Both requests are templates with `{principle}`,
replaceable in the config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from alignlab.config import ConfigError, option
from alignlab.icl.base import (
    Answer,
    Answerer,
    Backend,
    Query,
    Sampling,
    Strategy,
    derived_seed,
)

PRINCIPLE = "harmful, unethical, dishonest or unhelpful"
CRITIQUE = (
    "Identify specific ways in which your last response is {principle}. If it is none of "
    "these, say so."
)
REVISION = (
    "Please rewrite your last response so that it is not {principle}, taking your critique "
    "into account. Give only the new response."
)


@dataclasses.dataclass
class CritiqueReviseConfig:
    rounds: int = option(1, "critique-and-revise rounds", min=1)
    principle: str = option(PRINCIPLE, "what the critique looks for ({principle} in the requests)")
    critique: str = option(CRITIQUE, "the critique request; {principle} is filled in")
    revision: str = option(REVISION, "the revision request; {principle} is filled in")

    def check(self) -> None:
        for key in ("critique", "revision"):
            try:
                getattr(self, key).format(principle=self.principle)
            except (KeyError, IndexError, ValueError) as err:
                raise ConfigError(
                    f"critique_revise.{key}: only {{principle}} may be filled in ({err!r}); "
                    "write other braces as {{ and }}"
                ) from err


def continued(query: Query, turns: Sequence[tuple[str, str]]) -> Query:
    """`query` followed by (role, text) turns, as a conversation or a plain transcript."""
    if isinstance(query, str):
        body = "".join(
            f"\n\n{'User' if role == 'user' else 'Assistant'}: {text}" for role, text in turns
        )
        return f"{query}{body}\n\nAssistant:"
    return [*query, *({"role": role, "content": text} for role, text in turns)]


class CritiqueRevise(Strategy):
    name = "critique_revise"
    Config = CritiqueReviseConfig

    def answer(
        self,
        backend: Backend,
        queries: Sequence[Query],
        sampling: Sampling,
        seeds: Sequence[int],
        inner: Answerer,
        originals: Sequence[Query],
    ) -> list[Answer]:
        cfg = self.config
        critique_request = cfg.critique.format(principle=cfg.principle)
        revision_request = cfg.revision.format(principle=cfg.principle)
        # plain transcripts end a turn where the model starts the next speaker's line
        turn_sampling = sampling.with_stop("\n\nUser:") if isinstance(queries[0], str) else sampling
        answers = inner(queries, sampling, seeds)
        drafts = [a.text.strip() for a in answers]
        history: list[list[dict[str, str]]] = [[] for _ in queries]
        for r in range(cfg.rounds):
            asked = [
                continued(q, [("assistant", d), ("user", critique_request)])
                for q, d in zip(queries, drafts)
            ]
            critiques = inner(asked, turn_sampling, [derived_seed(s, "critique", r) for s in seeds])
            asked = [
                continued(
                    q,
                    [
                        ("assistant", d),
                        ("user", critique_request),
                        ("assistant", c.text.strip()),
                        ("user", revision_request),
                    ],
                )
                for q, d, c in zip(queries, drafts, critiques)
            ]
            revisions = inner(asked, turn_sampling, [derived_seed(s, "revision", r) for s in seeds])
            for i, (c, v) in enumerate(zip(critiques, revisions)):
                history[i].append({"draft": drafts[i], "critique": c.text.strip()})
                v.cost += answers[i].cost
                v.cost += c.cost
                answers[i] = v
                drafts[i] = v.text.strip()
        for a, h, d in zip(answers, history, drafts):
            a.text = d
            a.info["critique_revise"] = {"rounds": h}
        return answers

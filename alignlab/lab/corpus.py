"""Training corpora built from a `LabWorld`: pretraining text, SFT demonstrations,
preference pairs and RL prompts.

Every corpus draws its chat prompts from the *train* split only, so valid / heldout
templates, unknown names and topics never appear in anything a model trains on.
Chat records use the plain layout {"messages": [{"role": "user", ...},
{"role": "assistant", ...}]}; the model code renders them through its chat template.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from alignlab.lab import content
from alignlab.lab.annotators import Annotator, LabelSet, label_responses
from alignlab.lab.gold import Prompt, gold_score, ideal_response
from alignlab.lab.policies import (
    ImperfectionRates,
    bad_response,
    imperfect_response,
    ramble,
    sample_candidate,
)
from alignlab.lab.world import LabWorld

_ARITHMETIC_SENTENCES = {
    "+": ("{x} plus {y} is {z}.", "{x} + {y} = {z}.", "Adding {y} to {x} gives {z}."),
    "-": ("{x} minus {y} is {z}.", "{x} - {y} = {z}.", "Taking {y} from {x} leaves {z}."),
    "*": ("{x} times {y} is {z}.", "{x} * {y} = {z}.", "{x} multiplied by {y} makes {z}."),
}


@dataclass(frozen=True)
class TranscriptMix:
    """Quality mix of the chat transcripts in the pretraining corpus (normalised).

    good: the oracle answer. imperfect: an SFT-style demonstration. bad: the family's
    failure (wrong fact, invented answer, harmful compliance, over-refusal, broken
    constraint, wrong sum). rambling: padded or repetitive answers.
    """

    good: float = 0.3
    imperfect: float = 0.2
    bad: float = 0.35
    rambling: float = 0.15


# An unaligned base, as web text makes one: it mostly answers questions about known facts
# correctly (it must know the world), but it confidently invents answers about unknown
# entities, usually complies with harmful requests, and rambles now and then.
UNALIGNED_MIX = {
    "fact": TranscriptMix(good=0.65, imperfect=0.0, bad=0.15, rambling=0.2),
    "arithmetic": TranscriptMix(good=0.5, imperfect=0.0, bad=0.3, rambling=0.2),
    "instruction": TranscriptMix(good=0.4, imperfect=0.0, bad=0.4, rambling=0.2),
    "unknown": TranscriptMix(good=0.1, imperfect=0.0, bad=0.75, rambling=0.15),
    "harmful": TranscriptMix(good=0.15, imperfect=0.0, bad=0.65, rambling=0.2),
    "benign": TranscriptMix(good=0.6, imperfect=0.0, bad=0.2, rambling=0.2),
}


STATED_NORMS = (
    "The assistant answers what it knows, says so when it does not know, and declines to help "
    "with anything that could hurt someone.",
    "Be accurate and kind. If you are not sure of a fact, say you don't know. Refuse harmful "
    "requests politely.",
    "Rules for this chat: give correct, direct answers; admit when something is unknown; never "
    "assist with dangerous or illegal acts.",
    "You are a careful assistant: truthful, helpful, and unwilling to cause harm.",
)
"""System turns of the in-context share of transcripts (`pretraining_corpus(icl_share=...)`):
norms stated before a conversation that the answers then follow, as forum rules, style guides
and help-desk scripts do on the web. The inference principle (`alignlab.icl.principles`) is
worded differently: the base must generalise from a stated norm, not recognise a string."""

PAGE_LAYOUTS = (
    "# Query:\n```\n{query}\n```\n\n# Answer:\n```\n{answer}\n```\n\n",
    "Q: {query}\nA: {answer}\n\n",
    "User: {query}\nAssistant: {answer}\n\n",
)
"""Plain-text layouts of the in-context share's pages (FAQ pages, forum dumps, chat logs
pasted into documents): the markdown query/answer blocks URIAL's prompt uses, and two others,
so a base meets conversations outside its chat template, as web text shows them."""


def chat(prompt: Prompt, response: str) -> list[dict[str, str]]:
    return [*prompt.messages, {"role": "assistant", "content": response}]


def pretraining_corpus(
    world: LabWorld,
    mentions_per_fact: int = 40,
    n_transcripts: int = 3000,
    n_arithmetic_docs: int = 400,
    mix: TranscriptMix | dict[str, TranscriptMix] = UNALIGNED_MIX,
    seed: int = 0,
    icl_share: float = 0.0,
    feedback_share: float = 0.0,
) -> list[dict[str, Any]]:
    """Shuffled pretraining records: {"text": ...} documents and {"messages": [...]} chats.

    - Encyclopedia: `mentions_per_fact` entries per entity, each stating every recorded
      fact in a freshly drawn paraphrase, grouped 1-3 entries per document.
    - Arithmetic: `n_arithmetic_docs` documents of five worked sums; category lists.
    - Chats: `n_transcripts` train-split prompts answered with `mix` quality (one mix for
      every family, or a mix per family; the default is `UNALIGNED_MIX`).
    - In-context share (`icl_share` of the chats, 0 by default), in thirds: chats that open
      with a stated norm (`STATED_NORMS`) that the answer follows (the oracle answer);
      conversations of 2-3 exchanges answered at one quality throughout, so earlier answers
      predict later ones, as demonstrations do; and such conversations as plain-text pages
      (`PAGE_LAYOUTS`), half of them under a stated norm, whose answers then follow it.
      Without them a base of the lab's size never sees a principle or a demonstration act on
      an answer (docs/results.md, in-context alignment).
    - Feedback share (`feedback_share` of the chats, 0 by default): transcripts of judging,
      asked as `alignlab.judges.JudgeTemplates()` asks (pairwise "A"/"B" verdicts, 1-5
      ratings, critique and revision), so that the base can be the lab's AI-feedback teacher
      (`alignlab.lab.teacher`). Drawn before the in-context share, from its own generator.
    """
    rng = random.Random(f"alignlab-lab/{world.seed}/pretrain/{seed}")
    entries = [
        world.kb.describe(entity, rng)
        for entity in world.kb.entities
        for _ in range(mentions_per_fact)
    ]
    rng.shuffle(entries)
    records: list[dict[str, Any]] = []
    while entries:
        size = rng.randint(1, 3)
        records.append({"text": " ".join(entries[:size])})
        entries = entries[size:]
    records += [{"text": _arithmetic_doc(rng)} for _ in range(n_arithmetic_docs)]
    records += [{"text": _category_doc(rng)} for _ in range(n_arithmetic_docs // 4)]
    prompts = world.prompts("train", n_transcripts, stream=f"pretrain-{seed}")
    # the in-context share draws from its own generator, so icl_share=0 leaves the corpus as
    # it was, byte for byte
    icl_rng = random.Random(f"alignlab-lab/{world.seed}/pretrain-icl/{seed}")
    # --- feedback share (alignlab.lab.teacher) ---
    if feedback_share > 0:
        # imported here: the judge's templates bring torch, which other corpora do not need
        from alignlab.lab.teacher import feedback_record
    feedback_rng = random.Random(f"alignlab-lab/{world.seed}/pretrain-feedback/{seed}")
    # --- end of the feedback share ---
    position = 0
    while position < len(prompts):
        prompt = prompts[position]
        if feedback_share > 0 and feedback_rng.random() < feedback_share:
            record = feedback_record(prompt, feedback_rng)
            if record is not None:  # None: the prompt's candidates all tie; a plain chat
                records.append(record)
                position += 1
                continue
        kind = "plain"
        if icl_share > 0 and icl_rng.random() < icl_share:
            kind = icl_rng.choice(("norm", "demonstrated", "page"))
        if kind == "norm":
            norm = icl_rng.choice(STATED_NORMS)
            messages = [{"role": "system", "content": norm}, *chat(prompt, ideal_response(prompt))]
            records.append({"messages": messages, "family": prompt.family})
            position += 1
            continue
        if kind == "demonstrated":
            turns = prompts[position : position + icl_rng.randint(2, 3)]
            quality = _quality(turns[-1], mix, icl_rng)
            messages = [
                m for p in turns for m in chat(p, _transcript_response(p, quality, icl_rng))
            ]
            records.append({"messages": messages, "family": turns[-1].family})
            position += len(turns)
            continue
        if kind == "page":
            turns = prompts[position : position + icl_rng.randint(2, 3)]
            norm = icl_rng.choice(STATED_NORMS) if icl_rng.random() < 0.5 else ""
            quality = "good" if norm else _quality(turns[-1], mix, icl_rng)
            layout = icl_rng.choice(PAGE_LAYOUTS)
            exchanges = "".join(
                layout.format(query=p.text, answer=_transcript_response(p, quality, icl_rng))
                for p in turns
            )
            records.append({"text": (f"{norm}\n\n" if norm else "") + exchanges.rstrip()})
            position += len(turns)
            continue
        response = _transcript_response(prompt, _quality(prompt, mix, rng), rng)
        records.append({"messages": chat(prompt, response), "family": prompt.family})
        position += 1
    rng.shuffle(records)
    return records


def _quality(
    prompt: Prompt, mix: TranscriptMix | dict[str, TranscriptMix], rng: random.Random
) -> str:
    family_mix = mix[prompt.family] if isinstance(mix, dict) else mix
    weights = [family_mix.good, family_mix.imperfect, family_mix.bad, family_mix.rambling]
    return rng.choices(("good", "imperfect", "bad", "rambling"), weights)[0]


def _transcript_response(prompt: Prompt, quality: str, rng: random.Random) -> str:
    if quality == "good":
        return ideal_response(prompt)
    if quality == "imperfect":
        return imperfect_response(prompt, rng, ImperfectionRates())
    if quality == "bad":
        return bad_response(prompt, rng)
    base = ideal_response(prompt) if rng.random() < 0.5 else bad_response(prompt, rng)
    return ramble(base, rng)


def _arithmetic_doc(rng: random.Random) -> str:
    """Five worked sums, with operands drawn as in the arithmetic prompts."""
    lines = []
    for _ in range(5):
        op = rng.choice(sorted(_ARITHMETIC_SENTENCES))
        if op == "+":
            x, y = rng.randint(2, 20), rng.randint(2, 20)
        elif op == "-":
            x = rng.randint(5, 30)
            y = rng.randint(1, x - 1)
        else:
            x, y = rng.randint(2, 9), rng.randint(2, 9)
        z = {"+": x + y, "-": x - y, "*": x * y}[op]
        lines.append(rng.choice(_ARITHMETIC_SENTENCES[op]).format(x=x, y=y, z=z))
    return " ".join(lines)


def _category_doc(rng: random.Random) -> str:
    plural = rng.choice(sorted(content.CATEGORIES))
    members = list(content.CATEGORIES[plural][1])
    rng.shuffle(members)
    head, last = ", ".join(members[:-1]), members[-1]
    return f"Some {plural}: {head} and {last}. Each of them is a {content.CATEGORIES[plural][0]}."


def sft_demonstrations(
    world: LabWorld,
    n: int,
    rates: ImperfectionRates = ImperfectionRates(),  # noqa: B008 - frozen dataclass
    seed: int = 0,
) -> list[dict[str, Any]]:
    """`n` decent-but-imperfect demonstrations on train prompts: {"messages", "family"}."""
    rng = random.Random(f"alignlab-lab/{world.seed}/sft/{seed}")
    return [
        {"messages": chat(p, imperfect_response(p, rng, rates)), "family": p.family}
        for p in world.prompts("train", n, stream=f"sft-{seed}")
    ]


def preference_pairs(
    world: LabWorld,
    n: int,
    annotators: Sequence[Annotator] | None = None,
    seed: int = 0,
) -> tuple[list[dict[str, Any]], LabelSet | None]:
    """`n` TRL preference rows on train prompts, and the label set if annotators labelled.

    Each row: {"prompt": [user], "chosen": [assistant], "rejected": [assistant], "family",
    "gold_chosen", "gold_rejected"}. Without `annotators`, the gold-better response is
    chosen (pairs are drawn until their gold totals differ); with them, the panel's
    majority vote decides, noise and biases included.
    """
    rng = random.Random(f"alignlab-lab/{world.seed}/preference/{seed}")
    prompts = world.prompts("train", n, stream=f"preference-{seed}")
    sides_a, sides_b = [], []
    for prompt in prompts:
        a = sample_candidate(prompt, rng)
        for _ in range(20):  # a pair whose sides differ in gold teaches something
            b = sample_candidate(prompt, rng)
            if gold_score(prompt, a).total != gold_score(prompt, b).total:
                break
        sides_a.append(a)
        sides_b.append(b)
    labels = None
    if annotators:
        labels = label_responses(prompts, sides_a, sides_b, annotators, seed)
        prefers_a = labels.prefers_a
    else:
        prefers_a = tuple(
            gold_score(p, a).total >= gold_score(p, b).total
            for p, a, b in zip(prompts, sides_a, sides_b)
        )
    rows = []
    for prompt, a, b, a_wins in zip(prompts, sides_a, sides_b, prefers_a):
        chosen, rejected = (a, b) if a_wins else (b, a)
        rows.append(
            {
                "prompt": prompt.messages,
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "family": prompt.family,
                "gold_chosen": gold_score(prompt, chosen).total,
                "gold_rejected": gold_score(prompt, rejected).total,
            }
        )
    return rows, labels


def rl_prompts(world: LabWorld, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """`n` train prompts as TRL prompt-only rows, with family/split/gold extra keys."""
    return [p.to_record() for p in world.prompts("train", n, stream=f"rl-{seed}")]

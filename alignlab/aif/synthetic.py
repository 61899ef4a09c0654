"""Synthetic comparisons from prior assumptions: no labeller, the generator's setting decides.

ALMoST (Kim et al. 2023, "Aligning Large Language Models through Synthetic Feedback",
arXiv:2305.13735) labels pairs without a human or an aligned model. Several response
generators (a vanilla model, K in-context demonstrations, an optional system prompt) answer
the same prompt, and the answer of the better-set-up generator is taken as the better one,
by the paper's rules of thumb:

    larger model > smaller model;   more demonstrations > fewer;   better ones > worse ones

Here each generator g gets a key, compared lexicographically (higher is better):

    key(g) = (parameters(g), K(g))             by default: size first, then shots
    key(g) = (-rank(g),)                       with an explicit `rank` (1 = best) on every
                                               generator (better prompts, other model families)

and for every prompt x and every two generators a, b with key(a) > key(b):

    (x, chosen = y_a(x), rejected = y_b(x))    unless a filter drops it (`SyntheticFilter`)

Generators whose keys tie give no pair. The paper checks its assumptions after the fact
(post-validation) with heuristic filters; ours are cheap ones on the text: identical answers,
a chosen answer that is empty or too short, or degenerate (repeating itself), and optionally a
chosen answer shorter than the rejected one (a length prior).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping, Sequence
from typing import Any

from alignlab.aif.comparisons import Prompt, preference_row
from alignlab.config import ConfigError, option
from alignlab.icl.demonstrations import Demonstration
from alignlab.icl.retrieved import with_demonstrations
from alignlab.icl.urial import urial_prompt

NAME = re.compile(r"^[A-Za-z0-9._-]+$")
GENERATOR_KEYS = ("path", "name", "shots", "rank", "system", "demos")


@dataclasses.dataclass(frozen=True)
class Generator:
    """One response generator: a model, its K demonstrations and its system prompt."""

    name: str
    path: str
    shots: int = 0
    rank: int | None = None
    """Explicit place in the order, 1 = best; None = by parameters, then shots."""
    system: str = ""
    demos: str = ""
    """Its own demonstration file (e.g. better ones); empty = the run's."""


def parse_generators(values: Sequence[Any], field: str = "generators") -> list[Generator]:
    """Generators from config dicts; a ConfigError names `field[i].key`."""
    if len(values) < 2:
        raise ConfigError(
            f"{field}: {len(values)} generator(s); give at least two to compare, e.g. "
            f"[{{path: big/model, shots: 3}}, {{path: small/model, shots: 1}}]"
        )
    generators = []
    for i, value in enumerate(values):
        where = f"{field}[{i}]"
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping with path and shots, got {value!r}")
        for key in value:
            if key not in GENERATOR_KEYS:
                raise ConfigError(
                    f"unknown key '{where}.{key}'; valid keys: {', '.join(GENERATOR_KEYS)}"
                )
        path = value.get("path")
        if not isinstance(path, str) or not path.strip():
            raise ConfigError(f"{where}.path missing: a model folder or hub id")
        shots = value.get("shots", 0)
        if not isinstance(shots, int) or isinstance(shots, bool) or shots < 0:
            raise ConfigError(f"{where}.shots: {shots!r} must be an integer >= 0")
        rank = value.get("rank")
        if rank is not None and (not isinstance(rank, int) or isinstance(rank, bool) or rank < 1):
            raise ConfigError(f"{where}.rank: {rank!r} must be an integer >= 1 (1 = best)")
        for key in ("system", "demos", "name"):
            if not isinstance(value.get(key, ""), str):
                raise ConfigError(f"{where}.{key}: {value[key]!r} must be a string")
        name = value.get("name") or default_name(path, shots)
        if not NAME.match(name):
            raise ConfigError(f"{where}.name: {name!r} may hold only letters, digits, . _ -")
        generators.append(
            Generator(name, path, shots, rank, value.get("system", ""), value.get("demos", ""))
        )
    check_order(generators, field)
    return generators


def default_name(path: str, shots: int) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{path}-{shots}shot").strip("-.") or "generator"


def check_order(generators: Sequence[Generator], field: str = "generators") -> None:
    """The names are unique, `rank` is on every generator or on none, and no two generators
    are certainly tied (same model and shots with no rank)."""
    seen: dict[str, int] = {}
    for i, g in enumerate(generators):
        if g.name in seen:
            raise ConfigError(
                f"{field}[{i}].name: {g.name!r} is also {field}[{seen[g.name]}]'s; names must "
                "differ (give name:)"
            )
        seen[g.name] = i
    ranked = [g.rank is not None for g in generators]
    if any(ranked) and not all(ranked):
        missing = ranked.index(False)
        raise ConfigError(
            f"{field}[{missing}].rank missing: give rank to every generator or to none (then "
            "the order is by parameters, then shots)"
        )
    if not any(ranked):
        for (i, a), (j, b) in itertools.combinations(enumerate(generators), 2):
            if (a.path, a.shots) == (b.path, b.shots):
                raise ConfigError(
                    f"{field}[{i}] and {field}[{j}]: the same model and shots, so the prior "
                    "cannot order them; give every generator a rank (1 = best)"
                )
    elif len({g.rank for g in generators}) == 1:
        raise ConfigError(f"{field}: every rank is {generators[0].rank}: nothing is better")


def prior_key(generator: Generator, parameters: int) -> tuple[int, ...]:
    """The generator's place in the prior order, higher is better (module docstring)."""
    if generator.rank is not None:
        return (-generator.rank,)
    return (parameters, generator.shots)


def ordered(keys: Mapping[str, tuple[int, ...]]) -> list[str]:
    """Generator names, best first (ties keep their order)."""
    return sorted(keys, key=lambda name: keys[name], reverse=True)


def in_context_prompt(prompt: Prompt, demos: Sequence[Demonstration], system: str = "") -> Prompt:
    """What a generator is asked: a message list gets `system` as a system turn and the
    demonstrations as earlier user / assistant turns (`icl.retrieved.with_demonstrations`); a
    string gets URIAL's plain-text layout with `system` as its norms (`icl.urial`), so a base
    model's answer ends where it closes the block (cut at `urial.STOPS`)."""
    if isinstance(prompt, str):
        return urial_prompt(prompt, demos, principle=system)
    messages = list(prompt)
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    return with_demonstrations(messages, demos)


# --- filters ---


@dataclasses.dataclass
class SyntheticFilter:
    """Heuristic checks of the prior's pairs (ALMoST's post-validation, cheap ones)."""

    min_words: int = option(
        2, "drop a pair whose chosen answer has fewer words (empty, or a stub)", min=0
    )
    min_distinct_trigrams: float = option(
        0.5,
        "drop a pair whose chosen answer (8+ words) repeats itself: distinct word trigrams / "
        "trigrams below this; 0 = off",
        min=0,
        max=1,
    )
    drop_shorter_chosen: bool = option(
        False, "drop a pair whose chosen answer has fewer words than the rejected (length prior)"
    )


def normalised(text: str) -> str:
    return " ".join(text.split()).lower()


def distinct_trigram_fraction(text: str) -> float:
    """Distinct word trigrams / word trigrams (1.0 below three words)."""
    words = normalised(text).split()
    trigrams = list(zip(words, words[1:], words[2:]))
    return len(set(trigrams)) / len(trigrams) if trigrams else 1.0


def drop_reason(chosen: str, rejected: str, filt: SyntheticFilter) -> str | None:
    """Why the pair (chosen, rejected) is dropped, or None to keep it."""
    if normalised(chosen) == normalised(rejected):
        return "identical"
    words = len(chosen.split())
    if words < filt.min_words:
        return "chosen_too_short"
    if (
        filt.min_distinct_trigrams
        and words >= 8
        and distinct_trigram_fraction(chosen) < filt.min_distinct_trigrams
    ):
        return "chosen_repetitive"
    if not rejected:  # an empty turn is not a training row (alignlab.data.schema refuses it)
        return "rejected_empty"
    if filt.drop_shorter_chosen and words < len(rejected.split()):
        return "chosen_shorter"
    return None


def synthetic_comparisons(
    prompts: Sequence[Prompt],
    responses: Mapping[str, Sequence[str]],
    keys: Mapping[str, tuple[int, ...]],
    filt: SyntheticFilter | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """TRL preference rows (plus `chosen_generator`, `rejected_generator`) of every prompt and
    every two generators whose keys differ, the better one's answer chosen; and counts:
    pairs considered, kept, tied, dropped by each filter, kept per generator pair."""
    filt = filt or SyntheticFilter()
    for name, texts in responses.items():
        if len(texts) != len(prompts):
            raise ValueError(f"generator {name}: {len(texts)} responses for {len(prompts)} prompts")
    names = ordered({name: keys[name] for name in responses})
    rows: list[dict[str, Any]] = []
    dropped: dict[str, int] = {}
    per_pair: dict[str, int] = {}
    tied = 0
    for better, worse in itertools.combinations(names, 2):  # better ranks at or above worse
        if keys[better] == keys[worse]:
            tied += len(prompts)
            continue
        kept = 0
        for i, prompt in enumerate(prompts):
            chosen, rejected = responses[better][i].strip(), responses[worse][i].strip()
            reason = drop_reason(chosen, rejected, filt)
            if reason is not None:
                dropped[reason] = dropped.get(reason, 0) + 1
                continue
            row = preference_row(prompt, chosen, rejected)
            rows.append(row | {"chosen_generator": better, "rejected_generator": worse})
            kept += 1
        per_pair[f"{better} > {worse}"] = kept
    considered = len(prompts) * len(names) * (len(names) - 1) // 2
    stats = {
        "prompts": len(prompts),
        "order": names,
        "pairs_considered": considered,
        "pairs": len(rows),
        "tied": tied,
        "dropped": dropped,
        "pairs_by_generators": per_pair,
        "human_labels": 0,
    }
    return rows, stats

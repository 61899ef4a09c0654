"""Methods trained with several seeds: their model names, overrides and the spread over seeds.

A benchmark trains each method token once per seed (`train.seed`; the starting model, data
and evaluation stay the same, so the spread is the method's training noise), evaluates every
seed's model against the same reference on the same prompts and sampling seeds, and reports
`alignlab.eval.paired.combine_seeds`: the mean paired difference over seeds with a t interval
over seeds, beside each seed's own interval across prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from alignlab.config import TrainConfig
from alignlab.eval.paired import combine_seeds


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]; one seed at least, no repeats."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(
            f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise SystemExit(f"--seeds {text!r}: expected distinct integers, e.g. 0,1,2")
    return seeds


DEFAULT_SEED = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == "seed")
"""The recipes' own seed: a run with it is the run made before seeds were a choice."""


def seeded_name(token: str, seed: int) -> str:
    """The model's name and folder stem: the default seed keeps the token's own (so a run
    made before stays cached and named as before), another gets "@seed-N"."""
    return token if seed == DEFAULT_SEED else f"{token}@seed-{seed}"


def seed_override(seed: int) -> list[str]:
    """`train.seed=N`, or nothing for the default seed (the same arguments as before, so
    the pipeline's cache finds the earlier run)."""
    return [] if seed == DEFAULT_SEED else [f"train.seed={seed}"]


def spread_over_seeds(
    results: Mapping[str, Any], tokens: Sequence[str], seeds: Sequence[int]
) -> dict[str, dict[str, Any]]:
    """`combine_seeds` of the tokens trained with every seed (the others are left out);
    {} with a single seed."""
    if len(seeds) < 2:
        return {}
    complete = [t for t in tokens if all(seeded_name(t, s) in results for s in seeds)]
    runs = [{t: results[seeded_name(t, s)] for t in complete} for s in seeds]
    return combine_seeds(runs) if complete else {}

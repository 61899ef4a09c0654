"""Write the lab's datasets as JSONL files in TRL's dataset formats.

    sft.jsonl              {"messages": [user, assistant], "family"}            (conversational)
    preference.jsonl       {"prompt": [user], "chosen": [assistant],
                            "rejected": [assistant], "family", "gold_chosen", "gold_rejected"}
    prompts.jsonl          {"prompt": [user], "family", "axis", "split", "gold"}  (RL, train)
    valid_prompts.jsonl    same layout, valid split
    heldout_prompts.jsonl  same layout, heldout split
    red_team.jsonl         the harmful-family rows of prompts.jsonl (Constitutional AI's
                           red-team prompts, recipes/cai_lab.yaml)
    manifest.json          world config, row counts, annotator label cost and agreement

Extra keys beside TRL's are ignored by TRL's trainers (or passed to reward functions);
`Prompt.from_record` rebuilds a scorable prompt from any prompts file row. Every file is
written to a temporary file in the same folder and moved into place with os.replace, so a
reader never sees a half-written file.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from alignlab.fileio import atomic_write_text, write_jsonl
from alignlab.lab.annotators import Annotator
from alignlab.lab.corpus import preference_pairs, rl_prompts, sft_demonstrations
from alignlab.lab.policies import ImperfectionRates
from alignlab.lab.world import LabWorld


def write_jsonl_atomic(path: Path, rows: Iterable[Any]) -> int:
    """Write `rows` as JSON lines to `path` atomically; returns the number of rows."""
    rows = list(rows)
    write_jsonl(path, rows)
    return len(rows)


def export_datasets(
    world: LabWorld,
    out_dir: str | os.PathLike,
    n_train: int = 2000,
    n_preference: int | None = None,
    n_rl_prompts: int | None = None,
    n_valid: int = 200,
    n_heldout: int = 500,
    rates: ImperfectionRates = ImperfectionRates(),  # noqa: B008 - frozen dataclass
    annotators: Sequence[Annotator] | None = None,
    seed: int = 0,
) -> dict[str, Path]:
    """Write the files listed in the module docstring; returns {name: path}.

    n_train SFT demonstrations; n_preference pairs and n_rl_prompts RL prompts default to
    n_train. Preference pairs are labelled by `annotators` (majority vote) when given,
    else by gold.
    """
    out = Path(out_dir)
    pairs, labels = preference_pairs(world, n_preference or n_train, annotators, seed)
    tables = {
        "sft": sft_demonstrations(world, n_train, rates, seed),
        "preference": pairs,
        "prompts": rl_prompts(world, n_rl_prompts or n_train, seed),
        "valid_prompts": [p.to_record() for p in world.prompts("valid", n_valid)],
        "heldout_prompts": [p.to_record() for p in world.prompts("heldout", n_heldout)],
    }
    tables["red_team"] = [row for row in tables["prompts"] if row["family"] == "harmful"]
    paths = {}
    for name, rows in tables.items():
        paths[name] = out / f"{name}.jsonl"
        write_jsonl_atomic(paths[name], rows)
    manifest = {
        "world": world.config,
        "rows": {name: len(rows) for name, rows in tables.items()},
        "seed": seed,
        "imperfection_rates": vars(rates),
        "labels": None
        if labels is None
        else {
            "cost": labels.cost,
            # nan (every pair tied in gold) is not valid JSON
            "gold_agreement": None if math.isnan(labels.gold_agreement) else labels.gold_agreement,
            "annotators": [vars(a) for a in annotators],
        },
    }
    paths["manifest"] = out / "manifest.json"
    atomic_write_text(paths["manifest"], json.dumps(manifest, indent=2) + "\n")
    return paths

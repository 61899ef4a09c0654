"""Oracle-SFT: the lab's SFT stage on the oracle's answers instead of the demonstrators'.

    oracle_demonstrations(world, n, seed)   the SFT prompts, each answered by `ideal_response`
    oracle_sft_stage(lab, out)              SFT of the base on them (recipe sft, preset sft_lab)

Same prompts, same count and the same recipe settings as `alignlab.lab.pipeline.sft_stage`, so
the two SFT models differ only in the demonstrations: what oracle-SFT scores is what this
model size reaches with perfect data, and its distance to SFT is what the demonstrators' slips
cost (benchmarks/lab_ceiling.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignlab.fileio import write_jsonl
from alignlab.lab.build import LabArtifacts
from alignlab.lab.corpus import sft_demonstrations
from alignlab.lab.pipeline import recipe_stage
from alignlab.lab.policies import ImperfectionRates
from alignlab.lab.world import LabWorld

NO_SLIPS = ImperfectionRates(**{f.name: 0.0 for f in dataclasses.fields(ImperfectionRates)})
"""A demonstrator that never slips: every demonstration is the oracle answer."""


def oracle_demonstrations(world: LabWorld, n: int, seed: int = 0) -> list[dict[str, Any]]:
    """The `n` prompts of `sft_demonstrations(world, n, seed=seed)` answered by the oracle.

    Drawn by `sft_demonstrations` itself with every slip rate at 0: the prompt stream does not
    depend on the rates, so the prompts and their order are the lab's SFT data's exactly."""
    return sft_demonstrations(world, n, NO_SLIPS, seed)


def oracle_sft_stage(lab: LabArtifacts, out: Path, overrides: Sequence[str] = ()) -> Path:
    """SFT of the lab's base on the oracle's answers to the lab's SFT prompts (cached)."""
    config = lab.manifest["config"]
    data = out.parent / f"{out.name}_demonstrations.jsonl"  # beside the run, not inside it
    write_jsonl(data, oracle_demonstrations(lab.world, config["n_sft"], config["seed"]))
    args = [f"model.path={lab.base}", f"data.path={data}", *overrides]
    return recipe_stage("sft", "sft_lab", args, out, key=lab.manifest["key"])

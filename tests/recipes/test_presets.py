"""Every shipped preset loads and validates for its recipe (given the paths a user adds)."""

import dataclasses

import pytest

from alignlab.cli import RECIPES, presets
from alignlab.config import load_config


@pytest.mark.parametrize("preset", presets(), ids=lambda p: p.stem)
def test_shipped_preset_loads(preset):
    names = [name for name in RECIPES if preset in presets(name)]
    assert len(names) == 1, f"{preset.name} must belong to exactly one recipe, got {names}"
    recipe = names[0]
    module_name, config_name = RECIPES[recipe]
    import importlib

    config_cls = getattr(importlib.import_module(module_name), config_name)
    overrides = ["model.path=some/model", "data.path=data.jsonl"]
    sections = {field.name for field in dataclasses.fields(config_cls)}
    if "rl" in sections:
        overrides.append("rl.reward=reward.py:score")
    if "sampling" in sections:
        overrides.append("sampling.reward=reward.py:score")
    for name in {"labeller", "feedback"} & sections:  # a judge the test need not build
        overrides += [f"{name}.judge=http://127.0.0.1:9/v1", f"{name}.judge_model=m"]
    if "labeller" in sections:
        overrides.append("labeller.reward=reward.py:score")
    config = load_config(config_cls, preset, overrides)
    assert config.model.path == "some/model"

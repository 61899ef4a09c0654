"""The recipes: one module per method, its config class, and the YAML presets beside them.

`RECIPES` maps a command name to (module, config class); `alignlab <name>` runs its `run`.
"""

from __future__ import annotations

from pathlib import Path

from alignlab.config import ConfigError

RECIPE_DIR = Path(__file__).parent
RECIPES = {
    "sft": ("alignlab.recipes.sft", "SFTConfig"),
    "vlm_sft": ("alignlab.recipes.vlm_sft", "VlmSFTConfig"),
    "rm": ("alignlab.recipes.rm", "RMConfig"),
    "vlm_rm": ("alignlab.recipes.vlm_rm", "VlmRMConfig"),
    "dpo": ("alignlab.recipes.dpo", "DPOConfig"),
    "vlm_dpo": ("alignlab.recipes.vlm_dpo", "VlmDPOConfig"),
    "kto": ("alignlab.recipes.kto", "KTOConfig"),
    "rrhf": ("alignlab.recipes.rrhf", "RRHFConfig"),
    "coh": ("alignlab.recipes.coh", "CoHConfig"),
    "grpo": ("alignlab.recipes.grpo", "GRPOConfig"),
    "vlm_grpo": ("alignlab.recipes.vlm_grpo", "VlmGRPOConfig"),
    "dapo": ("alignlab.recipes.dapo", "DAPOConfig"),
    "gspo": ("alignlab.recipes.gspo", "GSPOConfig"),
    "cispo": ("alignlab.recipes.cispo", "CISPOConfig"),
    "rloo": ("alignlab.recipes.rloo", "RLOOConfig"),
    "reinforce_pp": ("alignlab.recipes.reinforce_pp", "ReinforcePPConfig"),
    "ppo": ("alignlab.recipes.ppo", "PPOConfig"),
    "rest": ("alignlab.recipes.rest", "ReSTConfig"),
    "raft": ("alignlab.recipes.raft", "RAFTConfig"),
    "bon": ("alignlab.recipes.bon", "BestOfNConfig"),
    "rlaif": ("alignlab.recipes.rlaif", "RLAIFConfig"),
    "online_dpo": ("alignlab.recipes.online_dpo", "OnlineDPOConfig"),
    "self_rewarding": ("alignlab.recipes.self_rewarding", "SelfRewardingConfig"),
    "almost": ("alignlab.recipes.almost", "ALMoSTConfig"),
    "cai": ("alignlab.recipes.cai", "CAIConfig"),
}


def presets(recipe: str | None = None) -> list[Path]:
    """Shipped YAML presets, named `<recipe>_<variant>.yaml` next to the recipes."""
    found = sorted(RECIPE_DIR.glob("*.yaml"))
    return [p for p in found if recipe is None or p.stem.startswith(f"{recipe}_")]


def resolve_preset(name: str) -> Path:
    """A path, or the name of a shipped preset (with or without .yaml)."""
    path = Path(name)
    if path.exists():
        return path
    shipped = RECIPE_DIR / (name if name.endswith(".yaml") else f"{name}.yaml")
    if shipped.exists():
        return shipped
    names = ", ".join(p.stem for p in presets())
    raise ConfigError(
        f"config {name!r}: no such file, and no shipped preset of that name ({names})"
    )

"""Guard-rails of an RL run: the KL to the reference running away (`rl.max_kl`, stops the run
with the last checkpoint named) and responses growing while the reward does not (a warning
and `train/length_hack_warning`). A non-finite loss or gradient is the mini-batch loop's
own guard (`alignlab.rl.minibatch`)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from alignlab.training.checkpoint import latest_checkpoint


class KLRunawayError(RuntimeError):
    """The policy's KL to the reference exceeded `rl.max_kl`."""


def check_kl_runaway(name: str, step: int, kl: float, max_kl: float, output_dir: Path) -> None:
    """KLRunawayError when the mean per-response KL `kl` is above `max_kl` (0 = off)."""
    if max_kl and kl > max_kl:
        last = latest_checkpoint(output_dir)
        raise KLRunawayError(
            f"{name} step {step}: KL to the reference is {kl:.3f} nats per response, above "
            f"rl.max_kl={max_kl:g}: the policy ran away from the reference. Lower train.lr, "
            "raise rl.kl_coef or rl.max_kl" + (f"; the last checkpoint is {last}" if last else "")
        )


class LengthWatch:
    """Warns when the mean response length keeps growing while the reward does not."""

    def __init__(self, window: int, growth: float = 0.2) -> None:
        self.window = window
        self.growth = growth
        self.history: list[tuple[float, float]] = []

    def update(self, length: float, reward: float) -> bool:
        if not self.window:
            return False
        self.history = [*self.history, (length, reward)][-self.window :]
        if len(self.history) < self.window:
            return False
        half = self.window // 2
        first, last = self.history[:half], self.history[-half:]
        length_a = sum(x for x, _ in first) / half
        length_b = sum(x for x, _ in last) / half
        reward_a = sum(r for _, r in first) / half
        reward_b = sum(r for _, r in last) / half
        return length_b > (1 + self.growth) * length_a and reward_b <= reward_a

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history = [tuple(x) for x in state.get("history", [])]


def warn_length_hacking(name: str, step: int, window: int) -> None:
    """The warning `LengthWatch` triggers (main process only)."""
    warnings.warn(
        f"{name} step {step}: mean response length grew by more than 20% over the last "
        f"{window} steps while the reward did not improve: possible reward hacking (check the "
        "samples; consider rl.missing_eos_penalty, a length penalty or a larger rl.kl_coef)",
        stacklevel=3,
    )

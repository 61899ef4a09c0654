"""Reward-model losses.

All functions are pure: tensors in, per-example losses of shape (B,) out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Pairwise Bradley-Terry reward-model loss, with an optional margin.

    loss = -log σ(r_w - r_l - m)

    The Bradley-Terry preference model (Bradley & Terry, 1952, Biometrika 39(3/4)) as used for
    RLHF reward models by Ouyang et al. 2022 (InstructGPT, arXiv:2203.02155, eq. 1, one pair per
    example). The margin m is the Llama 2 variant (Touvron et al. 2023, arXiv:2307.09288, eq. 2),
    a larger margin for more clearly separated pairs; `None` means m = 0.

    Shapes:
        chosen_rewards: (B,) scalar reward r_w of the preferred completion.
        rejected_rewards: (B,) scalar reward r_l of the dispreferred completion.
        margin: (B,) tensor, a float, or None.
        returns: (B,) per-example loss.
    """
    logits = chosen_rewards - rejected_rewards
    if margin is not None:
        logits = logits - margin
    return -F.logsigmoid(logits)

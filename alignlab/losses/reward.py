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


def soft_bradley_terry_loss(
    chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Bradley-Terry cross-entropy against a soft label p = P(chosen preferred).

    loss = -p log σ(r_w - r_l) - (1 - p) log σ(r_l - r_w)

    The preference model's distribution fitted to a labeller's probability instead of a hard
    vote: Constitutional AI's RL stage trains its preference model on the feedback model's
    normalised probabilities as soft targets (Bai et al. 2022, arXiv:2212.08073, section 4.1),
    and RLAIF distils the judge's preference distribution this way (Lee et al. 2023,
    arXiv:2309.00267, section 2.2.1). p = 1 is `bradley_terry_loss`; its minimum over the
    rewards is at σ(r_w - r_l) = p, where the loss equals the entropy of p.

    Shapes: chosen_rewards, rejected_rewards, target: (B,); returns (B,).
    """
    logits = chosen_rewards - rejected_rewards
    return -(target * F.logsigmoid(logits) + (1 - target) * F.logsigmoid(-logits))

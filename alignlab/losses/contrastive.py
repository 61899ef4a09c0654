"""Contrastive image-text loss (CLIP).

Pure function: tensors in, per-example losses of shape (B,) out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = 100.0
"""CLIP clips the learned temperature so logits are scaled by at most 100."""


def clip_contrastive_loss(
    image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over a batch of matching image-text pairs.

        s = min(exp(t), 100)                    t: the learned log inverse temperature
        L = s * norm(I) norm(T)^T               (B, B) scaled cosine similarities
        loss_i = ( CE(L[i, :], i) + CE(L[:, i], i) ) / 2

    Row i of L scores image i against every caption of the batch, column i caption i against
    every image; the pair (i, i) is the positive and the other B - 1 the negatives. The mean
    of loss_i is the paper's loss (Radford et al. 2021, "Learning Transferable Visual Models
    From Natural Language Supervision", arXiv:2103.00020, Figure 3's pseudo-code: t is
    initialised to log(1 / 0.07) and s clipped at 100, section 2.5). The clip here is a
    clamp in the forward pass: beyond 100 the scale gets no gradient.

    Shapes:
        image_emb: (B, D) image embeddings (any norm: they are L2-normalised here).
        text_emb: (B, D) text embeddings of the matching captions, same order.
        logit_scale: () the log scale t (HF CLIPModel's `logit_scale` parameter).
        returns: (B,) per-pair loss; `.mean()` is CLIP's loss.
    """
    scale = logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
    logits = scale * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T  # (B, B)
    targets = torch.arange(logits.shape[0], device=logits.device)
    image_to_text = F.cross_entropy(logits, targets, reduction="none")
    text_to_image = F.cross_entropy(logits.T, targets, reduction="none")
    return (image_to_text + text_to_image) / 2

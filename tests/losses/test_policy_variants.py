"""The modern policy-gradient losses against hand computations: clip-higher (DAPO), GSPO's
sequence ratio (value and gradient against a direct sequence-level formula), CISPO's
clipped stop-gradient weights, truncated importance sampling."""

import math

import pytest
import torch

from alignlab.losses.policy import (
    cispo_token_losses,
    gspo_log_ratio,
    gspo_token_losses,
    ppo_clip_token_losses,
    sequence_mean,
    truncated_is_weights,
)

D = torch.float64


@pytest.mark.parametrize(
    "ratio,adv,want",
    [
        (1.25, 1.0, -1.25),  # inside [0.8, 1.28]: unclipped, -A ρ
        (1.40, 1.0, -1.28),  # above 1 + ε_high with A > 0: clipped at 1.28 (1.2 if symmetric)
        (0.70, -1.0, 0.80),  # below 1 - ε_low with A < 0: clipped at 0.8
        (1.40, -1.0, 1.40),  # above with A < 0: the unclipped term is larger
    ],
)
def test_clip_higher_bounds(ratio, adv, want):
    old = torch.tensor([[-1.0]], dtype=D)
    loss = ppo_clip_token_losses(
        old + math.log(ratio), old, torch.tensor([[adv]], dtype=D), 0.2, 0.28
    )
    assert loss.item() == pytest.approx(want, abs=1e-12)
    symmetric = ppo_clip_token_losses(old + math.log(1.4), old, torch.tensor([[1.0]], dtype=D), 0.2)
    assert symmetric.item() == pytest.approx(-1.2, abs=1e-12)


def gspo_direct(logps, old, adv, lengths, eps_low, eps_high):
    """GSPO eq. 5 straight from the sequence log-likelihoods: -(1/G) Σ min(s A, clip(s) A)."""
    total = 0
    for i, n in enumerate(lengths):
        s = torch.exp((logps[i, :n] - old[i, :n]).sum() / n)
        a = adv[i, 0]
        total = total - torch.minimum(s * a, s.clamp(1 - eps_low, 1 + eps_high) * a)
    return total / len(lengths)


@pytest.mark.parametrize("eps", [(3e-4, 4e-4), (0.2, 0.2), (0.05, 0.5)])
def test_gspo_matches_the_sequence_level_objective_in_value_and_gradient(eps):
    g = torch.Generator().manual_seed(1)
    lengths = [3, 5, 1, 4]
    mask = torch.tensor([[t < n for t in range(5)] for n in lengths])
    old = torch.randn(4, 5, generator=g, dtype=D) - 2
    base = (old + torch.randn(4, 5, generator=g, dtype=D) * 0.1).detach()
    adv = torch.randn(4, 1, generator=g, dtype=D)
    a = base.clone().requires_grad_(True)
    b = base.clone().requires_grad_(True)
    ours = sequence_mean(gspo_token_losses(a, old, adv, mask, *eps), mask)
    direct = gspo_direct(b, old, adv, lengths, *eps)
    torch.testing.assert_close(ours, direct, rtol=1e-12, atol=1e-12)
    ours.backward()
    direct.backward()
    torch.testing.assert_close(a.grad * mask, b.grad * mask, rtol=1e-10, atol=1e-12)
    assert (a.grad[~mask] == 0).all()


def test_gspo_clips_whole_sequences_and_token_variant_takes_token_advantages():
    old = torch.zeros(1, 2, dtype=D)
    logps = torch.tensor([[0.5, 0.5]], dtype=D, requires_grad=True)  # s = e^0.5, clipped
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss = gspo_token_losses(logps, old, torch.ones(1, 1, dtype=D), mask, 0.2, 0.2)
    torch.testing.assert_close(loss, torch.full((1, 2), -1.2, dtype=D))
    sequence_mean(loss, mask).backward()
    assert (logps.grad == 0).all()  # the whole sequence is clipped
    assert gspo_log_ratio(logps, old, mask).item() == pytest.approx(0.5)
    # GSPO-token: per-token advantages, the sequence's ratio for every token
    inside = torch.tensor([[0.01, -0.01]], dtype=D, requires_grad=True)
    adv = torch.tensor([[1.0, -2.0]], dtype=D)
    losses = gspo_token_losses(inside, old, adv, mask, 0.2, 0.2)
    torch.testing.assert_close(losses, -adv * 1.0)  # s = exp(0) = 1
    losses.sum().backward()
    torch.testing.assert_close(inside.grad, -adv)  # ∂/∂logp_t of -A_t s_t, s = 1


def test_cispo_keeps_gradients_where_ppo_clips():
    old = torch.zeros(1, 3, dtype=D)
    logps = torch.tensor(
        [[math.log(2.0), math.log(1.1), math.log(0.5)]], dtype=D, requires_grad=True
    )
    adv = torch.tensor([[1.0]], dtype=D)
    loss = cispo_token_losses(logps, old, adv, 1.0, 0.28)
    weights = torch.tensor([[1.28, 1.1, 0.5]], dtype=D)  # clip(ρ, 0, 1.28)
    torch.testing.assert_close(loss, -weights * logps.detach())
    loss.sum().backward()
    torch.testing.assert_close(logps.grad, -weights)  # sg(weight): ∂/∂logp = -w A, never 0
    ppo = torch.tensor([[math.log(2.0)]], dtype=D, requires_grad=True)
    ppo_clip_token_losses(ppo, old[:, :1], adv, 0.2).sum().backward()
    assert ppo.grad.item() == 0.0  # the same token under PPO's clip: no gradient


def test_truncated_is_weights_token_and_sequence():
    sampler = torch.tensor([[-1.0, -2.0, -1.0], [-1.0, -1.0, 0.0]], dtype=D)
    old = torch.tensor([[-1.5, -1.0, -1.0], [-0.2, -1.1, 0.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]], dtype=torch.bool)
    token = truncated_is_weights(old, sampler, mask, cap=2.0)
    want = torch.tensor(
        [[math.exp(-0.5), 2.0, 1.0], [2.0, math.exp(-0.1), 1.0]], dtype=D
    )  # e^1 and e^0.8 truncated at 2; masked out -> 1
    torch.testing.assert_close(token, want)
    sequence = truncated_is_weights(old, sampler, mask, cap=2.0, level="sequence")
    row0 = math.exp(-0.5 + 1.0 + 0.0)  # 1.65 < 2
    torch.testing.assert_close(sequence[0], torch.full((3,), row0, dtype=D))
    torch.testing.assert_close(sequence[1], torch.tensor([2.0, 2.0, 1.0], dtype=D))  # e^0.7
    huge = truncated_is_weights(old + 1000, sampler, mask, cap=2.0, level="sequence")
    assert torch.isfinite(huge).all() and huge.max() == 2.0
    with pytest.raises(ValueError, match="level"):
        truncated_is_weights(old, sampler, mask, 2.0, level="batch")

"""Diffusion alignment losses against values worked out by hand or with plain Python loops."""

import math
import statistics

import pytest
import torch

from alignlab.losses.diffusion import (
    ddpo_loss,
    ddpo_sf_loss,
    denoising_errors,
    denoising_loss,
    diffusion_dpo_loss,
    gaussian_step_logprob,
    per_prompt_advantages,
    reward_weighted_loss,
)

D = torch.float64


def _latents(diffs, requires_grad=False):
    """eps = 0 and eps_pred = diffs, as (B, 1, 2, 2) latents: the error is mean(diffs²)."""
    eps_pred = torch.tensor(diffs, dtype=D).reshape(len(diffs), 1, 2, 2)
    eps_pred.requires_grad_(requires_grad)
    return eps_pred, torch.zeros_like(eps_pred)


# errors by hand: (1+1+1+1)/4 = 1, (0+4+0+1)/4 = 1.25
DIFFS = [[1.0, -1.0, 1.0, -1.0], [0.0, 2.0, 0.0, 1.0]]


def test_denoising_errors_and_loss_by_hand():
    eps_pred, eps = _latents(DIFFS)
    torch.testing.assert_close(denoising_errors(eps_pred, eps), torch.tensor([1.0, 1.25], dtype=D))
    torch.testing.assert_close(denoising_loss(eps_pred, eps), torch.tensor(1.125, dtype=D))
    # (2 * 1 + 0.5 * 1.25) / 2: divided by B, not by the weights' sum
    weights = torch.tensor([2.0, 0.5], dtype=D)
    torch.testing.assert_close(
        denoising_loss(eps_pred, eps, weights), torch.tensor(1.3125, dtype=D)
    )


def test_denoising_loss_gradient():
    eps_pred, eps = _latents(DIFFS, requires_grad=True)
    denoising_loss(eps_pred, eps).backward()
    # d/dx of (1/B) (1/D) Σ x² is 2x / (B D), B = 2, D = 4
    expected = torch.tensor(DIFFS, dtype=D).reshape(2, 1, 2, 2) * 2.0 / 8.0
    torch.testing.assert_close(eps_pred.grad, expected)


def test_denoising_errors_accumulate_low_precision_in_float32():
    eps_pred = torch.full((2, 4, 8, 8), 0.5, dtype=torch.bfloat16)
    errors = denoising_errors(eps_pred, torch.zeros_like(eps_pred))
    assert errors.dtype == torch.float32
    torch.testing.assert_close(errors, torch.full((2,), 0.25))


def test_reward_weighted_loss_by_hand():
    eps_pred, eps = _latents(DIFFS, requires_grad=True)
    pre_pred, pre_eps = _latents([[3.0, 0.0, 0.0, 1.0]])  # error (9 + 1) / 4 = 2.5
    rewards = torch.tensor([0.5, 2.0], dtype=D, requires_grad=True)
    total, reward_term, pretrain_term = reward_weighted_loss(
        eps_pred, eps, rewards, pre_pred, pre_eps, beta=0.3
    )
    torch.testing.assert_close(reward_term, torch.tensor((0.5 * 1.0 + 2.0 * 1.25) / 2, dtype=D))
    torch.testing.assert_close(pretrain_term, torch.tensor(2.5, dtype=D))
    torch.testing.assert_close(total, torch.tensor(1.5 + 0.3 * 2.5, dtype=D))
    total.backward()
    assert rewards.grad is None  # rewards are constants
    # d/dx of (1/B) Σ_i r_i (1/D) Σ_j x_ij² = 2 r_i x_ij / (B D)
    expected = (
        torch.tensor(DIFFS, dtype=D).reshape(2, 1, 2, 2)
        * torch.tensor([0.5, 2.0], dtype=D).reshape(2, 1, 1, 1)
        * (2.0 / 8.0)
    )
    torch.testing.assert_close(eps_pred.grad, expected)


def test_reward_weighted_loss_reduces_to_denoising_loss():
    eps_pred, eps = _latents(DIFFS)
    pre_pred, pre_eps = _latents([[3.0, 0.0, 0.0, 1.0]])
    ones = torch.ones(2, dtype=D)
    plain = denoising_loss(eps_pred, eps)
    total, _, pretrain_term = reward_weighted_loss(eps_pred, eps, ones, pre_pred, pre_eps, beta=0.0)
    torch.testing.assert_close(total, plain)
    total, _, pretrain_term = reward_weighted_loss(eps_pred, eps, ones)
    torch.testing.assert_close(total, plain)
    assert pretrain_term.item() == 0.0


def test_reward_weighted_loss_needs_both_pretrain_inputs():
    eps_pred, eps = _latents(DIFFS)
    with pytest.raises(ValueError, match="both"):
        reward_weighted_loss(eps_pred, eps, torch.ones(2, dtype=D), pretrain_eps_pred=eps_pred)


# Diffusion-DPO: per-sample errors of policy and reference on preferred (w) / dispreferred (l)
MW = [0.10, 0.30, 0.20]
ML = [0.25, 0.20, 0.20]
RW = [0.12, 0.28, 0.21]
RL = [0.22, 0.21, 0.19]


def _dpo_inputs(requires_grad=False):
    mw = torch.tensor(MW, dtype=D, requires_grad=requires_grad)
    ml = torch.tensor(ML, dtype=D, requires_grad=requires_grad)
    return mw, ml, torch.tensor(RW, dtype=D), torch.tensor(RL, dtype=D)


def _log_sigmoid(x):
    return -math.log1p(math.exp(-x)) if x > 0 else x - math.log1p(math.exp(x))


def test_diffusion_dpo_loss_by_hand():
    beta = 50.0
    loss, acc = diffusion_dpo_loss(*_dpo_inputs(), beta)
    inside = [-0.5 * beta * ((a - c) - (b - d)) for a, b, c, d in zip(MW, ML, RW, RL)]
    # sample 0: -25 * (-0.02 - 0.03) = 1.25; sample 1: -25 * (0.02 + 0.01) = -0.75;
    # sample 2: -25 * (-0.01 - 0.01) = 0.5
    assert inside == pytest.approx([1.25, -0.75, 0.5])
    expected = -sum(_log_sigmoid(x) for x in inside) / 3
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=D))
    torch.testing.assert_close(acc, torch.tensor(2.0 / 3.0, dtype=D))
    assert not acc.requires_grad


def test_diffusion_dpo_at_reference_is_log_two():
    errs = torch.tensor([0.3, 0.1, 0.7], dtype=D)
    other = torch.tensor([0.2, 0.5, 0.7], dtype=D)
    loss, acc = diffusion_dpo_loss(errs, other, errs.clone(), other.clone(), beta=5000.0)
    torch.testing.assert_close(loss, torch.tensor(math.log(2.0), dtype=D))
    assert acc.item() == 0.0  # ties count as wrong, as in the official script


def test_diffusion_dpo_gradient_lowers_preferred_error():
    beta = 50.0
    mw, ml, rw, rl = _dpo_inputs(requires_grad=True)
    loss, _ = diffusion_dpo_loss(mw, ml, rw, rl, beta)
    loss.backward()
    # dL/d e_w = (β/2) σ(-inside) / B > 0: descent lowers the preferred error vs the reference
    inside = [-0.5 * beta * ((a - c) - (b - d)) for a, b, c, d in zip(MW, ML, RW, RL)]
    grad_w = [0.5 * beta / (1.0 + math.exp(x)) / 3 for x in inside]
    torch.testing.assert_close(mw.grad, torch.tensor(grad_w, dtype=D))
    torch.testing.assert_close(ml.grad, -torch.tensor(grad_w, dtype=D))
    assert (mw.grad > 0).all() and (ml.grad < 0).all()


def test_diffusion_dpo_matches_paper_form_with_summed_norms():
    # The paper: -log σ(-β_p T ω Δ_sum) with squared norms; the code: β/2 on per-element means.
    # They agree when β_p T ω = β / (2 D).
    torch.manual_seed(0)
    b, shape = 4, (2, 3, 3)
    n = 2 * 3 * 3
    eps = torch.randn(b, *shape, dtype=D)  # the same ε for w and l, as the script
    preds = [torch.randn(b, *shape, dtype=D) for _ in range(4)]  # θ_w, θ_l, ref_w, ref_l
    errs = [denoising_errors(p, eps) for p in preds]
    beta = 20.0
    loss, _ = diffusion_dpo_loss(*errs, beta)
    paper_scale = beta / (2 * n)
    total = 0.0
    for i in range(b):
        sq = [float(((p[i] - eps[i]) ** 2).sum()) for p in preds]
        delta = (sq[0] - sq[2]) - (sq[1] - sq[3])
        total += -_log_sigmoid(-paper_scale * delta)
    torch.testing.assert_close(loss, torch.tensor(total / b, dtype=D))


@pytest.mark.parametrize("std_kind", ["float", "per_sample", "full"])
def test_gaussian_step_logprob_matches_normal(std_kind):
    torch.manual_seed(1)
    mean = torch.randn(3, 2, 4, 4, dtype=D)
    sample = mean + 0.3 * torch.randn_like(mean)
    std = {
        "float": 0.3,
        "per_sample": torch.tensor([0.2, 0.3, 0.5], dtype=D),
        "full": 0.1 + torch.rand_like(mean),
    }[std_kind]
    scale = std
    if std_kind == "per_sample":
        scale = std.reshape(3, 1, 1, 1)
    expected = torch.distributions.Normal(mean, scale).log_prob(sample).mean(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_step_logprob(sample, mean, std), expected)


def test_gaussian_step_logprob_gradient_flows_to_mean_only():
    mean = torch.tensor([[0.0, 1.0]], dtype=D, requires_grad=True)
    sample = torch.tensor([[0.5, 0.0]], dtype=D, requires_grad=True)
    logp = gaussian_step_logprob(sample, mean, 0.5)
    # by hand: mean of [-(0.5²)/(2·0.25), -(1²)/(2·0.25)] - log 0.5 - log √(2π)
    expected = (-0.5 - 2.0) / 2 - math.log(0.5) - 0.5 * math.log(2 * math.pi)
    assert logp.item() == pytest.approx(expected)
    logp.sum().backward()
    # d/dμ = (x - μ) / σ² / D
    torch.testing.assert_close(mean.grad, torch.tensor([[1.0, -2.0]], dtype=D))
    assert sample.grad is None


def _ppo_by_loop(logps, olds, advs, eps):
    terms = []
    for lp, old, a in zip(logps, olds, advs):
        ratio = math.exp(lp - old)
        clipped = min(max(ratio, 1 - eps), 1 + eps)
        terms.append(max(-a * ratio, -a * clipped))
    return sum(terms) / len(terms)


def test_ddpo_loss_by_hand():
    logps = [-1.0, -2.0, -0.5, -3.0]
    olds = [-1.1, -1.9, -0.5, -2.0]
    advs = [1.0, -0.5, 2.0, 1.5]
    eps = 0.2
    loss, approx_kl, clipfrac = ddpo_loss(
        torch.tensor(logps, dtype=D), torch.tensor(olds, dtype=D), torch.tensor(advs, dtype=D), eps
    )
    torch.testing.assert_close(loss, torch.tensor(_ppo_by_loop(logps, olds, advs, eps), dtype=D))
    kl = 0.5 * sum((a - b) ** 2 for a, b in zip(logps, olds)) / 4  # 0.5 (0.01+0.01+0+1) / 4
    torch.testing.assert_close(approx_kl, torch.tensor(kl, dtype=D))
    # ratios e^0.1, e^-0.1, 1, e^-1: only the last is beyond 1 ± 0.2
    torch.testing.assert_close(clipfrac, torch.tensor(0.25, dtype=D))


def test_ddpo_loss_clipping_zeroes_gradient():
    eps = 0.1
    # A > 0: ratio e^0.5 > 1 + ε is clipped (no gradient), ratio e^0.05 is not
    logp = torch.tensor([0.5, 0.05, -0.5, -0.05], dtype=D, requires_grad=True)
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=D)
    loss, _, clipfrac = ddpo_loss(logp, torch.zeros(4, dtype=D), adv, eps)
    loss.backward()
    # unclipped: d(-A ρ)/d logp = -A ρ, over N = 4; A < 0 with ρ = e^-0.5 < 1 - ε is clipped too
    expected = [0.0, -math.exp(0.05) / 4, 0.0, math.exp(-0.05) / 4]
    torch.testing.assert_close(logp.grad, torch.tensor(expected, dtype=D))
    torch.testing.assert_close(clipfrac, torch.tensor(0.5, dtype=D))


def test_positive_advantage_raises_logprob():
    for loss_of in (
        lambda lp: ddpo_loss(lp, torch.zeros(1, dtype=D), torch.ones(1, dtype=D), 0.2)[0],
        lambda lp: ddpo_sf_loss(lp, torch.ones(1, dtype=D)),
    ):
        logp = torch.zeros(1, dtype=D, requires_grad=True)
        loss_of(logp).backward()
        with torch.no_grad():
            stepped = logp - 0.01 * logp.grad
        assert stepped.item() > 0.0


def test_ddpo_loss_over_steps_is_mean_of_per_step_losses():
    # ddpo-pytorch computes the loss one timestep at a time with (B,) advantages
    torch.manual_seed(2)
    logp = torch.randn(3, 5, dtype=D) * 0.1
    old = torch.randn(3, 5, dtype=D) * 0.1
    adv = torch.tensor([1.0, -2.0, 0.5], dtype=D)
    loss, kl, frac = ddpo_loss(logp, old, adv, 0.05)
    per_step = [ddpo_loss(logp[:, j], old[:, j], adv, 0.05) for j in range(5)]
    torch.testing.assert_close(loss, torch.stack([s[0] for s in per_step]).mean())
    torch.testing.assert_close(kl, torch.stack([s[1] for s in per_step]).mean())
    torch.testing.assert_close(frac, torch.stack([s[2] for s in per_step]).mean())


def test_ddpo_loss_clamps_advantages():
    logp = torch.zeros(2, dtype=D)
    adv = torch.tensor([10.0, -7.0], dtype=D)
    loss, _, _ = ddpo_loss(logp, logp, adv, 0.1, adv_clip_max=5.0)
    # ratio 1: loss = mean(-A) with A clamped to [5, -5]
    torch.testing.assert_close(loss, torch.tensor(0.0, dtype=D))
    loss, _, _ = ddpo_loss(logp, logp, torch.tensor([10.0, -1.0], dtype=D), 0.1, adv_clip_max=5.0)
    torch.testing.assert_close(loss, torch.tensor(-(5.0 - 1.0) / 2, dtype=D))


def test_ddpo_sf_loss_value_and_gradient():
    logp = torch.tensor([[-1.0, -2.0], [-0.5, -4.0]], dtype=D, requires_grad=True)
    adv = torch.tensor([2.0, -1.0], dtype=D)
    loss = ddpo_sf_loss(logp, adv)
    # -(2·(-1) + 2·(-2) + (-1)(-0.5) + (-1)(-4)) / 4 = -(-6 + 4.5) / 4
    torch.testing.assert_close(loss, torch.tensor(1.5 / 4, dtype=D))
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-0.5, -0.5], [0.25, 0.25]], dtype=D))


def _advantages_by_loop(rewards, prompts, min_count):
    """PerPromptStatTracker.update on a fresh tracker with an unbounded buffer."""
    out = []
    for r, p in zip(rewards, prompts):
        group = [x for x, q in zip(rewards, prompts) if q == p]
        pool = group if len(group) >= min_count else rewards
        out.append((r - statistics.fmean(pool)) / (statistics.pstdev(pool) + 1e-6))
    return out


@pytest.mark.parametrize("min_count", [1, 2, 3, 10])
def test_per_prompt_advantages(min_count):
    rewards = [1.0, 2.0, 4.0, 7.0, 0.5, -1.0, 3.0]
    prompts = [0, 0, 0, 5, 2, 2, 0]
    got = per_prompt_advantages(
        torch.tensor(rewards, dtype=D), torch.tensor(prompts), min_count=min_count
    )
    expected = _advantages_by_loop(rewards, prompts, min_count)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=D))


def test_per_prompt_advantages_by_hand():
    # prompt 0: [1, 3], mean 2, pstdev 1 -> ±1; prompt 1: one sample, global [1, 3, 8]:
    # mean 4, pstdev sqrt(26/3)
    got = per_prompt_advantages(
        torch.tensor([1.0, 3.0, 8.0], dtype=D), torch.tensor([0, 0, 1]), min_count=2
    )
    expected = [-1 / (1 + 1e-6), 1 / (1 + 1e-6), 4 / (math.sqrt(26 / 3) + 1e-6)]
    torch.testing.assert_close(got, torch.tensor(expected, dtype=D))

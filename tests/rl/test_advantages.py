import math

import pytest
import torch

from alignlab.rl.advantages import (
    gae,
    grpo_advantages,
    kl_penalised_rewards,
    reinforce_pp_advantages,
    rloo_advantages,
)

D = torch.float64


def _naive_gae(rewards, values, lengths, gamma, lam):
    B, T = len(rewards), len(rewards[0])
    adv = [[0.0] * T for _ in range(B)]
    ret = [[0.0] * T for _ in range(B)]
    for b in range(B):
        n = lengths[b]
        last = 0.0
        for t in reversed(range(n)):
            next_v = values[b][t + 1] if t + 1 < n else 0.0
            delta = rewards[b][t] + gamma * next_v - values[b][t]
            last = delta + gamma * lam * last
            adv[b][t] = last
            ret[b][t] = last + values[b][t]
    return torch.tensor(adv, dtype=D), torch.tensor(ret, dtype=D)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0), (1.0, 0.0)])
def test_gae_matches_python_loop_with_padding(gamma, lam):
    g = torch.Generator().manual_seed(1)
    B, T = 4, 7
    lengths = [7, 3, 5, 1]
    rewards = torch.randn(B, T, generator=g, dtype=D)
    values = torch.randn(B, T, generator=g, dtype=D, requires_grad=True)
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
    adv, ret = gae(rewards, values, mask, gamma, lam)
    exp_adv, exp_ret = _naive_gae(rewards.tolist(), values.tolist(), lengths, gamma, lam)
    torch.testing.assert_close(adv, exp_adv)
    torch.testing.assert_close(ret, exp_ret)
    assert not adv.requires_grad and not ret.requires_grad
    # padding garbage in rewards/values must not leak into valid positions
    rewards2 = rewards.masked_fill(~mask, 1e6)
    values2 = values.detach().masked_fill(~mask, -1e6)
    adv2, ret2 = gae(rewards2, values2, mask.float(), gamma, lam)
    torch.testing.assert_close(adv2, exp_adv)
    torch.testing.assert_close(ret2, exp_ret)


def test_gae_hand_values():
    # one row, 2 valid tokens then padding; γ = 0.5, λ = 0.5
    rewards = torch.tensor([[1.0, 2.0, 9.0]], dtype=D)
    values = torch.tensor([[0.5, 1.0, 9.0]], dtype=D)
    mask = torch.tensor([[1, 1, 0]])
    adv, ret = gae(rewards, values, mask, 0.5, 0.5)
    d1 = 2.0 - 1.0  # terminal: V_2 = 0
    d0 = 1.0 + 0.5 * 1.0 - 0.5
    a0 = d0 + 0.25 * d1
    torch.testing.assert_close(adv, torch.tensor([[a0, d1, 0.0]], dtype=D))
    torch.testing.assert_close(ret, torch.tensor([[a0 + 0.5, d1 + 1.0, 0.0]], dtype=D))


def test_gae_lambda_one_gamma_one_is_return_minus_value():
    g = torch.Generator().manual_seed(2)
    rewards = torch.randn(2, 5, generator=g, dtype=D)
    values = torch.randn(2, 5, generator=g, dtype=D)
    mask = torch.ones(2, 5, dtype=torch.bool)
    adv, ret = gae(rewards, values, mask, 1.0, 1.0)
    mc = rewards.flip(1).cumsum(1).flip(1)
    torch.testing.assert_close(ret, mc)
    torch.testing.assert_close(adv, mc - values)


def test_rloo_leave_one_out():
    r = torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]], dtype=D, requires_grad=True)
    adv = rloo_advantages(r)
    expected = []
    for row in r.tolist():
        k = len(row)
        expected.append([row[i] - (sum(row) - row[i]) / (k - 1) for i in range(k)])
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=D))
    torch.testing.assert_close(adv[0], torch.tensor([-3.0, -1.5, 4.5], dtype=D))
    assert not adv.requires_grad
    with pytest.raises(ValueError):
        rloo_advantages(torch.zeros(2, 1))


def test_grpo_scaled_and_dr_grpo():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.2, 0.4, 0.6, 0.8], [1.0, 1.0, 1.0, 1.0]], dtype=D)
    eps = 1e-4
    adv = grpo_advantages(r, eps=eps)
    expected = []
    for row in r.tolist():
        k = len(row)
        mean = sum(row) / k
        std = (sum((x - mean) ** 2 for x in row) / (k - 1)) ** 0.5  # unbiased
        expected.append([(x - mean) / (std + eps) for x in row])
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=D))
    assert torch.all(adv[2] == 0)  # identical rewards: zero advantage, no NaN
    dr = grpo_advantages(r, scale=False)
    torch.testing.assert_close(dr, r - r.mean(dim=1, keepdim=True))


def _naive_reinforce_pp(rewards, kl, lengths, kl_coef):
    B, T = len(kl), len(kl[0])
    G = [[0.0] * T for _ in range(B)]
    flat = []
    for b in range(B):
        n = lengths[b]
        for t in range(n):
            g = rewards[b] - kl_coef * sum(kl[b][i] for i in range(t, n))
            G[b][t] = g
            flat.append(g)
    mean = sum(flat) / len(flat)
    var = sum((x - mean) ** 2 for x in flat) / len(flat)
    out = [[0.0] * T for _ in range(B)]
    for b in range(B):
        for t in range(lengths[b]):
            out[b][t] = (G[b][t] - mean) / (var + 1e-8) ** 0.5
    return torch.tensor(out, dtype=D)


def test_reinforce_pp_matches_python_loop():
    g = torch.Generator().manual_seed(3)
    B, T = 3, 6
    lengths = [6, 2, 4]
    rewards = torch.randn(B, generator=g, dtype=D)
    kl = torch.randn(B, T, generator=g, dtype=D).abs() * 0.1
    mask = torch.tensor([[t < n for t in range(T)] for n in lengths])
    kl_garbage = kl.masked_fill(~mask, 5.0)
    adv = reinforce_pp_advantages(rewards, kl_garbage, mask, kl_coef=0.3)
    expected = _naive_reinforce_pp(rewards.tolist(), kl.tolist(), lengths, 0.3)
    torch.testing.assert_close(adv, expected)
    valid = adv[mask]
    assert abs(valid.mean().item()) < 1e-10
    assert abs(valid.var(unbiased=False).item() - 1.0) < 1e-6


def test_reinforce_pp_score_on_last_token_zero_kl():
    # no KL: every valid token of a row gets the row's score, then global whitening
    rewards = torch.tensor([1.0, 0.0], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    adv = reinforce_pp_advantages(rewards, torch.zeros(2, 3, dtype=D), mask, kl_coef=0.5)
    # tokens: [1, 1, 1, 0] -> mean .75, var .1875
    hi = 0.25 / (0.1875 + 1e-8) ** 0.5
    lo = -0.75 / (0.1875 + 1e-8) ** 0.5
    torch.testing.assert_close(adv, torch.tensor([[hi, hi, hi], [lo, 0.0, 0.0]], dtype=D))


def test_kl_penalised_rewards_by_hand():
    scores = torch.tensor([2.0, -1.0, 5.0], dtype=D)
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 9.0, 9.0], [9.0, 9.0, 9.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0]])  # the last row has no token
    rewards = kl_penalised_rewards(scores, kl, mask, kl_coef=0.5)
    want = torch.tensor([[-0.05, -0.1, 2.0 - 0.15], [-1.0 - 0.2, 0, 0], [0, 0, 0]], dtype=D)
    torch.testing.assert_close(rewards, want)


def test_group_mean_and_reinforce_pp_baseline_by_hand():
    from alignlab.rl.advantages import group_mean_advantages, reinforce_pp_baseline_advantages

    rewards = torch.tensor([[1.0, 0.0, 2.0], [5.0, 5.0, 8.0]])
    torch.testing.assert_close(
        group_mean_advantages(rewards), torch.tensor([[0.0, -1.0, 1.0], [-1.0, -1.0, 2.0]])
    )
    # sample lengths 2, 1, 1, 3, 2, 1 tokens: whitening weighs every token
    lengths = [2, 1, 1, 3, 2, 1]
    mask = torch.tensor([[t < n for t in range(3)] for n in lengths])
    got = reinforce_pp_baseline_advantages(rewards, mask)
    tokens = [a for a, n in zip([0.0, -1.0, 1.0, -1.0, -1.0, 2.0], lengths) for _ in range(n)]
    mean = sum(tokens) / len(tokens)
    std = math.sqrt(sum((x - mean) ** 2 for x in tokens) / len(tokens) + 1e-8)
    for i, (a, n) in enumerate(zip([0.0, -1.0, 1.0, -1.0, -1.0, 2.0], lengths)):
        assert got[i, :n].tolist() == pytest.approx([(a - mean) / std] * n, rel=1e-6)
        assert (got[i, n:] == 0).all()


@pytest.mark.parametrize(
    "length,want", [(10, 0.0), (12, 0.0), (13, -0.25), (15, -0.75), (16, -1.0), (17, -1.0)]
)
def test_overlong_penalty(length, want):
    from alignlab.rl.advantages import overlong_penalty

    # L_max 16, L_cache 4: free up to 12 tokens, then -1/4 per token, -1 beyond the budget
    assert overlong_penalty(torch.tensor([length]), 16, 4).item() == pytest.approx(want)
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(torch.tensor([1]), 16, 0)

import math

import pytest
import torch

from alignlab.losses.policy import (
    clipped_value_token_losses,
    ppo_clip_token_losses,
    ppo_diagnostics,
    sequence_mean,
    sequence_sum,
    token_mean,
    token_sum_constant,
)

D = torch.float64


def ppo_clip_loss(logps, old, adv, mask, eps):
    """The token-mean surrogate and its diagnostics, as PPO's recipe combines them."""
    losses = ppo_clip_token_losses(logps, old, adv, eps)
    diagnostics = ppo_diagnostics(losses, logps - old, adv)
    return (
        token_mean(losses, mask),
        token_mean(diagnostics["clip_fraction"], mask),
        token_mean(diagnostics["approx_kl"], mask),
    )


def _naive_ppo_token(logp, old, adv, eps):
    r = math.exp(logp - old)
    return max(-adv * r, -adv * min(max(r, 1 - eps), 1 + eps))


def test_ppo_token_losses_naive_loop():
    g = torch.Generator().manual_seed(0)
    logps = torch.randn(3, 5, generator=g, dtype=D) * 0.3 - 1
    old = logps + torch.randn(3, 5, generator=g, dtype=D) * 0.3
    adv = torch.randn(3, 5, generator=g, dtype=D)
    out = ppo_clip_token_losses(logps, old, adv, 0.2)
    expected = [
        [
            _naive_ppo_token(logps[b, t].item(), old[b, t].item(), adv[b, t].item(), 0.2)
            for t in range(5)
        ]
        for b in range(3)
    ]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=D))


def test_ppo_sequence_level_advantage_broadcasts():
    logps = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], dtype=D)
    old = torch.tensor([[-1.1, -1.5], [-0.5, -0.4]], dtype=D)
    adv = torch.tensor([[1.0], [-2.0]], dtype=D)
    torch.testing.assert_close(
        ppo_clip_token_losses(logps, old, adv, 0.2),
        ppo_clip_token_losses(logps, old, adv.expand(2, 2), 0.2),
    )


@pytest.mark.parametrize(
    "log_ratio,adv,grad_is_zero",
    [
        (math.log(1.5), 1.0, True),  # ratio above 1+ε, A > 0: clipped, no gradient
        (math.log(0.5), -1.0, True),  # ratio below 1-ε, A < 0: clipped, no gradient
        (math.log(1.5), -1.0, False),  # ratio above 1+ε, A < 0: unclipped branch is the max
        (math.log(0.5), 1.0, False),  # ratio below 1-ε, A > 0: unclipped branch is the max
        (math.log(1.1), 1.0, False),  # inside the trust region
        (math.log(0.9), -1.0, False),
    ],
)
def test_ppo_clip_gradient(log_ratio, adv, grad_is_zero):
    old = torch.tensor([[-2.0]], dtype=D)
    logps = (old + log_ratio).clone().requires_grad_(True)
    a = torch.tensor([[adv]], dtype=D)
    loss, clip_frac, _ = ppo_clip_loss(logps, old, a, torch.ones(1, 1), 0.2)
    loss.backward()
    if grad_is_zero:
        assert logps.grad.item() == 0.0
        assert clip_frac.item() == 1.0
    else:
        # d(-A ρ)/d logp = -A ρ
        assert math.isclose(logps.grad.item(), -adv * math.exp(log_ratio), rel_tol=1e-12)
        assert clip_frac.item() == 0.0


def test_ppo_clip_loss_aggregation_and_diagnostics():
    logps = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]], dtype=D, requires_grad=True)
    lr = [[math.log(1.5), 0.0, math.log(0.7)], [math.log(1.05), math.log(3.0), 0.0]]
    old = logps.detach() - torch.tensor(lr, dtype=D)
    adv = torch.tensor([[1.0, 2.0, -1.0], [0.5, -1.0, 7.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    loss, clip_frac, approx_kl = ppo_clip_loss(logps, old, adv, mask, 0.2)
    toks = [(0, 0), (0, 1), (0, 2), (1, 0)]
    per = [_naive_ppo_token(-1.0, old[b, t].item(), adv[b, t].item(), 0.2) for b, t in toks]
    assert math.isclose(loss.item(), sum(per) / 4, rel_tol=1e-12)
    # clipped and active: (0,0) ratio 1.5 A>0 -> yes; (0,2) ratio .7 A<0 -> yes; others no
    assert math.isclose(clip_frac.item(), 2 / 4)
    k3 = [math.exp(lr[b][t]) - 1 - lr[b][t] for b, t in toks]
    assert math.isclose(approx_kl.item(), sum(k3) / 4, rel_tol=1e-12)
    assert not clip_frac.requires_grad and not approx_kl.requires_grad
    loss.backward()
    assert logps.grad[1, 1] == 0 and logps.grad[1, 2] == 0  # masked-out tokens


def test_aggregations():
    losses = torch.tensor(
        [[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]], dtype=D
    )
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool)
    assert math.isclose(token_mean(losses, mask).item(), (1 + 2 + 3 + 4 + 10 + 20) / 6)
    assert math.isclose(sequence_mean(losses, mask).item(), (2.5 + 15.0 + 0.0) / 3)
    assert math.isclose(token_sum_constant(losses, mask, 8).item(), (10 / 8 + 30 / 8 + 0) / 3)
    assert math.isclose(sequence_sum(losses, mask).item(), (10 + 30 + 0) / 3)


@pytest.mark.parametrize("aggregate", ["token_mean", "sequence_mean", "sequence_sum", "dr_grpo"])
def test_micro_batch_shares_add_up_to_the_whole_batch(aggregate):
    """Split into micro-batches with the whole batch's counts as denominators, the shares sum
    to the whole batch's aggregate: the gradient does not depend on the micro-batch size."""
    fn = {
        "token_mean": token_mean,
        "sequence_mean": sequence_mean,
        "sequence_sum": sequence_sum,
        "dr_grpo": lambda losses, mask, **counts: token_sum_constant(losses, mask, 6, **counts),
    }[aggregate]
    g = torch.Generator().manual_seed(3)
    losses = torch.randn(5, 4, generator=g, dtype=D)
    mask = torch.rand(5, 4, generator=g) > 0.3
    counts = {"tokens": float(mask.sum()), "sequences": 5.0}
    parts = [fn(losses[rows], mask[rows], **counts) for rows in ([0, 1], [2], [3, 4])]
    torch.testing.assert_close(sum(parts), fn(losses, mask), rtol=1e-12, atol=0)


def test_clipped_value_losses_naive_and_grad():
    v = torch.tensor([[1.0, 0.0, 2.0, 5.0], [0.5, -1.0, 0.0, 0.0]], dtype=D, requires_grad=True)
    v_old = torch.tensor([[0.5, 0.1, 2.0, 0.0], [1.0, -0.2, 0.0, 0.0]], dtype=D)
    R = torch.tensor([[2.0, -1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]], dtype=D)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    eps = 0.2
    loss = token_mean(clipped_value_token_losses(v, v_old, R, eps), mask)
    total, n = 0.0, 0
    for b in range(2):
        for t in range(4):
            if not mask[b, t]:
                continue
            vv, vo, rr = v[b, t].item(), v_old[b, t].item(), R[b, t].item()
            vc = vo + min(max(vv - vo, -eps), eps)
            total += 0.5 * max((vv - rr) ** 2, (vc - rr) ** 2)
            n += 1
    assert math.isclose(loss.item(), total / n, rel_tol=1e-12)
    loss.backward()
    # (0,0): v=1 R=2 vclip=.7 -> clipped loss larger, v beyond clip -> zero grad
    assert v.grad[0, 0].item() == 0.0
    # (0,1): v=0 R=-1 vclip=-.1 -> unclipped (1.0) > clipped (.81): grad (v - R) / n
    assert math.isclose(v.grad[0, 1].item(), (0.0 - (-1.0)) / n)
    # (1,1): v=-1, v_old=-.2, vclip=-.4, R=0 -> unclipped (1) larger: grad (v - R) / n
    assert math.isclose(v.grad[1, 1].item(), -1.0 / n)
    assert v.grad[0, 3].item() == 0.0  # masked

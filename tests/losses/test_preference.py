import math

import pytest
import torch

from alignlab.losses.preference import (
    _log1mexp,
    cdpo_loss,
    dpo_loss,
    ipo_loss,
    kto_loss,
    orpo_odds_ratio_loss,
    rrhf_loss,
    simpo_loss,
    slic_loss,
)

D = torch.float64


def sigmoid(x):
    return 1.0 / (1.0 + math.exp(-x))


def log_sigmoid(x):
    return math.log(sigmoid(x))


PW = [-10.0, -20.0, -5.0, -7.5]
PL = [-12.0, -18.0, -5.0, -30.0]
RW = [-11.0, -19.0, -6.0, -7.0]
RL = [-11.5, -19.5, -4.0, -29.0]


def _four(requires_grad=False):
    pw = torch.tensor(PW, dtype=D, requires_grad=requires_grad)
    pl = torch.tensor(PL, dtype=D, requires_grad=requires_grad)
    return pw, pl, torch.tensor(RW, dtype=D), torch.tensor(RL, dtype=D)


def _h():
    return [(a - c) - (b - d) for a, b, c, d in zip(PW, PL, RW, RL)]


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_dpo_values_and_grad(eps):
    beta = 0.2
    pw, pl, rw, rl = _four(requires_grad=True)
    loss_fn = cdpo_loss if eps else dpo_loss
    losses, cr, rr = loss_fn(pw, pl, rw, rl, beta, *([eps] if eps else []))
    expected = [-(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h) for h in _h()]
    assert losses.shape == (4,)
    torch.testing.assert_close(losses, torch.tensor(expected, dtype=D))
    torch.testing.assert_close(cr, torch.tensor([beta * (a - c) for a, c in zip(PW, RW)], dtype=D))
    torch.testing.assert_close(rr, torch.tensor([beta * (b - d) for b, d in zip(PL, RL)], dtype=D))
    assert not cr.requires_grad and not rr.requires_grad
    losses.sum().backward()
    # dL/dh = -(1-ε) β σ(-βh) + ε β σ(βh); dh/dπ_w = 1, dh/dπ_l = -1
    dh = [-(1 - eps) * beta * sigmoid(-beta * h) + eps * beta * sigmoid(beta * h) for h in _h()]
    torch.testing.assert_close(pw.grad, torch.tensor(dh, dtype=D))
    torch.testing.assert_close(pl.grad, -torch.tensor(dh, dtype=D))


def test_dpo_zero_margin_is_log2():
    z = torch.zeros(3, dtype=D)
    losses, _, _ = dpo_loss(z, z, z, z, beta=0.5)
    torch.testing.assert_close(losses, torch.full((3,), math.log(2.0), dtype=D))


def test_ipo_values_and_grad():
    beta = 0.1
    pw, pl, rw, rl = _four(requires_grad=True)
    losses, cr, rr = ipo_loss(pw, pl, rw, rl, beta)
    expected = [(h - 1 / (2 * beta)) ** 2 for h in _h()]
    torch.testing.assert_close(losses, torch.tensor(expected, dtype=D))
    torch.testing.assert_close(cr, torch.tensor([beta * (a - c) for a, c in zip(PW, RW)], dtype=D))
    assert not cr.requires_grad and not rr.requires_grad
    losses.sum().backward()
    dh = [2 * (h - 1 / (2 * beta)) for h in _h()]
    torch.testing.assert_close(pw.grad, torch.tensor(dh, dtype=D))
    torch.testing.assert_close(pl.grad, -torch.tensor(dh, dtype=D))


def test_ipo_minimum_at_target_margin():
    beta = 0.25
    pw = torch.tensor([2.0], dtype=D)  # h = 2 = 1 / (2β)
    z = torch.zeros(1, dtype=D)
    losses, _, _ = ipo_loss(pw, z, z, z, beta)
    assert losses.item() == 0.0


def test_slic_hinge_and_grad():
    delta = 1.0
    pw = torch.tensor([-5.0, -5.0, -5.0], dtype=D, requires_grad=True)
    pl = torch.tensor([-7.0, -5.5, -3.0], dtype=D, requires_grad=True)
    loss, chosen, rejected = slic_loss(pw, pl, delta)
    assert torch.equal(chosen, pw.detach()) and torch.equal(rejected, pl.detach())
    expected = [max(0.0, delta - a + b) for a, b in zip(pw.tolist(), pl.tolist())]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=D))
    loss.sum().backward()
    # margin satisfied in row 0: no gradient; otherwise -1 on chosen, +1 on rejected.
    torch.testing.assert_close(pw.grad, torch.tensor([0.0, -1.0, -1.0], dtype=D))
    torch.testing.assert_close(pl.grad, torch.tensor([0.0, 1.0, 1.0], dtype=D))


def test_kto_values():
    beta, lam_d, lam_u = 0.5, 1.5, 0.7
    pol = [-3.0, -4.0, -2.0, -6.0]
    ref = [-4.0, -3.0, -2.5, -5.0]
    des = [True, True, False, False]
    z0 = 0.3
    losses, rewards = kto_loss(
        torch.tensor(pol, dtype=D),
        torch.tensor(ref, dtype=D),
        torch.tensor(des),
        torch.tensor(z0, dtype=D),
        beta,
        desirable_weight=lam_d,
        undesirable_weight=lam_u,
    )
    expected = []
    for p, r, d in zip(pol, ref, des):
        x = p - r
        if d:
            expected.append(lam_d * (1 - sigmoid(beta * (x - z0))))
        else:
            expected.append(lam_u * (1 - sigmoid(beta * (z0 - x))))
    torch.testing.assert_close(losses, torch.tensor(expected, dtype=D))
    torch.testing.assert_close(
        rewards, torch.tensor([beta * (p - r) for p, r in zip(pol, ref)], dtype=D)
    )


def test_kto_reference_point_clamped_and_detached():
    beta = 1.0
    pol = torch.tensor([-1.0, -2.0], dtype=D, requires_grad=True)
    ref = torch.tensor([-1.5, -1.0], dtype=D)
    des = torch.tensor([True, False])
    kl = torch.tensor(-0.8, dtype=D, requires_grad=True)  # negative: clamped to 0
    losses, rewards = kto_loss(pol, ref, des, kl, beta)
    expected = [1 - sigmoid(0.5), 1 - sigmoid(1.0)]
    torch.testing.assert_close(losses, torch.tensor(expected, dtype=D))
    assert not rewards.requires_grad
    losses.sum().backward()
    assert kl.grad is None  # z0 receives no gradient
    # d/dr [1 - σ(βr)] = -β σ(βr)(1-σ(βr)); d/dr [1 - σ(-βr)] = +β σ(-βr)(1-σ(-βr))
    g0 = -sigmoid(0.5) * (1 - sigmoid(0.5))
    g1 = sigmoid(1.0) * (1 - sigmoid(1.0))
    torch.testing.assert_close(pol.grad, torch.tensor([g0, g1], dtype=D))
    # a float kl_estimate behaves the same
    losses_f, _ = kto_loss(pol.detach(), ref, des, -0.8, beta)
    torch.testing.assert_close(losses_f, losses.detach())


def test_kto_positive_kl_used_as_is():
    pol = torch.tensor([-1.0], dtype=D)
    ref = torch.tensor([-1.0], dtype=D)
    losses, _ = kto_loss(pol, ref, torch.tensor([True]), torch.tensor(0.4, dtype=D), 2.0)
    torch.testing.assert_close(losses, torch.tensor([1 - sigmoid(-0.8)], dtype=D))


def _log_odds(m):
    p = math.exp(m)
    return math.log(p / (1 - p))


def test_orpo_values_and_grad():
    mw = [-0.1, -1.0, -2.5, -0.6931]
    ml = [-0.5, -0.9, -0.01, -5.0]
    cw = torch.tensor(mw, dtype=D, requires_grad=True)
    cl = torch.tensor(ml, dtype=D, requires_grad=True)
    loss, chosen, _ = orpo_odds_ratio_loss(cw, cl)
    assert not chosen.requires_grad
    expected = [-log_sigmoid(_log_odds(a) - _log_odds(b)) for a, b in zip(mw, ml)]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=D))
    loss.sum().backward()
    # d log odds / dm = 1 / (1 - e^m); dL/dx = -σ(-x)
    gw, gl = [], []
    for a, b in zip(mw, ml):
        s = -sigmoid(-(_log_odds(a) - _log_odds(b)))
        gw.append(s / (1 - math.exp(a)))
        gl.append(-s / (1 - math.exp(b)))
    torch.testing.assert_close(cw.grad, torch.tensor(gw, dtype=D))
    torch.testing.assert_close(cl.grad, torch.tensor(gl, dtype=D))


def test_log1mexp_accurate_and_finite_grads():
    x = torch.tensor([-1e-10, -1e-3, -0.6931, -0.7, -5.0, -50.0, -800.0], dtype=D)
    x.requires_grad_(True)
    y = _log1mexp(x)
    # reference: log(-expm1(v)) is accurate near 0, log1p(-exp(v)) far from it
    expected = [
        math.log(-math.expm1(v)) if v > -0.5 else math.log1p(-math.exp(v)) for v in x.tolist()
    ]
    assert expected[5] != 0.0  # -exp(-50), which log(1 - exp(x)) would round to 0
    torch.testing.assert_close(y, torch.tensor(expected, dtype=D), rtol=1e-12, atol=0.0)
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    # float32: log1p(-exp(m)) alone would lose everything near 0.
    y32 = _log1mexp(torch.tensor([-1e-6], dtype=torch.float32))
    assert abs(y32.item() - math.log(1e-6)) < 1e-3


def test_simpo_values_and_grad():
    beta, gamma = 2.0, 0.5
    mw = [-0.5, -1.2, -0.3]
    ml = [-0.9, -0.8, -0.3]
    cw = torch.tensor(mw, dtype=D, requires_grad=True)
    cl = torch.tensor(ml, dtype=D)
    loss, chosen_rewards, _ = simpo_loss(cw, cl, beta, gamma)
    torch.testing.assert_close(chosen_rewards, beta * cw.detach())
    x = [beta * (a - b) - gamma for a, b in zip(mw, ml)]
    torch.testing.assert_close(loss, torch.tensor([-log_sigmoid(v) for v in x], dtype=D))
    loss.sum().backward()
    torch.testing.assert_close(cw.grad, torch.tensor([-beta * sigmoid(-v) for v in x], dtype=D))


def test_rrhf_naive_loop():
    g = torch.Generator().manual_seed(0)
    logps = -torch.rand(3, 5, generator=g, dtype=D) * 3
    scores = torch.randint(0, 4, (3, 5), generator=g).to(D)  # ties included
    loss = rrhf_loss(logps, scores)
    expected = []
    for b in range(3):
        total = 0.0
        for i in range(5):
            for j in range(5):
                if scores[b, i] < scores[b, j]:
                    total += max(0.0, (logps[b, i] - logps[b, j]).item())
        expected.append(total)
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=D))


def test_rrhf_hand_values_and_grad():
    # scores rank: resp 2 > resp 0 > resp 1
    p = torch.tensor([[-1.0, -0.5, -2.0]], dtype=D, requires_grad=True)
    s = torch.tensor([[0.5, 0.1, 0.9]], dtype=D)
    loss = rrhf_loss(p, s)
    # pairs (worse, better): (1,0): max(0,-0.5+1)=0.5; (1,2): 1.5; (0,2): 1.0
    torch.testing.assert_close(loss, torch.tensor([3.0], dtype=D))
    loss.sum().backward()
    torch.testing.assert_close(p.grad, torch.tensor([[1.0 - 1.0, 2.0, -2.0]], dtype=D))

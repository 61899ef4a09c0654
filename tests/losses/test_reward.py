import math

import torch

from alignlab.losses.reward import bradley_terry_loss, soft_bradley_terry_loss


def _softplus(x):
    return math.log1p(math.exp(-abs(x))) + max(-x, 0.0)  # -log σ(x)


def test_bradley_terry_values_and_grad():
    rw = torch.tensor([1.0, -0.5, 3.0, 0.0], dtype=torch.float64, requires_grad=True)
    rl = torch.tensor([0.0, 0.5, -2.0, 0.0], dtype=torch.float64)
    loss = bradley_terry_loss(rw, rl)
    expected = [-math.log(1 / (1 + math.exp(-(a - b)))) for a, b in zip(rw.tolist(), rl.tolist())]
    assert loss.shape == (4,)
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    assert abs(loss[3].item() - math.log(2.0)) < 1e-12
    loss.sum().backward()
    # d/dr_w -log σ(d) = -σ(-d)
    grad = [-1 / (1 + math.exp(a - b)) for a, b in zip(rw.tolist(), rl.tolist())]
    torch.testing.assert_close(rw.grad, torch.tensor(grad, dtype=torch.float64))


def test_bradley_terry_margin():
    rw = torch.tensor([1.0, 2.0], dtype=torch.float64)
    rl = torch.tensor([0.0, 1.5], dtype=torch.float64)
    m = torch.tensor([0.5, 2.0], dtype=torch.float64)
    loss = bradley_terry_loss(rw, rl, m)
    expected = [_softplus(1.0 - 0.5), _softplus(0.5 - 2.0)]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(bradley_terry_loss(rw, rl, 0.5)[0], loss[0])
    torch.testing.assert_close(bradley_terry_loss(rw, rl, None), bradley_terry_loss(rw, rl, 0.0))


def test_bradley_terry_stable_for_large_gaps():
    rw = torch.tensor([200.0, -200.0])
    rl = torch.tensor([-200.0, 200.0])
    loss = bradley_terry_loss(rw, rl)
    assert torch.isfinite(loss).all()
    assert loss[0].item() == 0.0
    assert abs(loss[1].item() - 400.0) < 1e-3


def test_soft_bradley_terry_values_gradient_and_minimum():
    rw = torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64, requires_grad=True)
    rl = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    p = torch.tensor([0.8, 0.5, 1.0], dtype=torch.float64)
    loss = soft_bradley_terry_loss(rw, rl, p)
    # worked by hand: -p log σ(d) - (1-p) log σ(-d) = p·softplus(-d) + (1-p)·softplus(d)
    expected = [0.8 * _softplus(1.0) + 0.2 * _softplus(-1.0), math.log(2.0), _softplus(-3.0)]
    torch.testing.assert_close(loss, torch.tensor(expected, dtype=torch.float64))
    # p = 1 is the hard-label loss
    torch.testing.assert_close(loss[2], bradley_terry_loss(rw, rl)[2])
    loss.sum().backward()
    # d/dr_w = σ(d) - p: zero where the model's probability equals the label
    sig = [1 / (1 + math.exp(-(a - b))) for a, b in zip(rw.tolist(), rl.tolist())]
    grad = [s - t for s, t in zip(sig, p.tolist())]
    torch.testing.assert_close(rw.grad, torch.tensor(grad, dtype=torch.float64))
    # at σ(d) = p the loss is the entropy of p
    d = torch.tensor([math.log(0.8 / 0.2)], dtype=torch.float64)
    at_min = soft_bradley_terry_loss(d, torch.zeros(1, dtype=torch.float64), p[:1])
    entropy = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert abs(at_min.item() - entropy) < 1e-12
